"""Inference stage: a model directory in, an emotion and its word-level reasons out.

- `modeldir`: export a trained run (best fold by validation UA) as a self-contained model
  directory (safetensors + model.json) and load it without the training data.
- `predictor`: `Predictor(model_dir).predict_file(path, transcript=None) -> Prediction`.
- `folder`: many files in parallel worker processes; CSV / JSONL results.
- `explain`: the explanation as HTML (self-contained) and PNG.
- `onnx_export`: acoustic-only models as ONNX, checked against PyTorch with onnxruntime.
"""

from emofuse.inference.modeldir import ModelInfo, export_fold, export_run, load_model_dir, write_model_dir
from emofuse.inference.predictor import Prediction, PredictionError, Predictor

__all__ = [
    "ModelInfo", "Prediction", "PredictionError", "Predictor", "export_fold", "export_run", "load_model_dir",
    "write_model_dir",
]
