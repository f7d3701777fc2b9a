"""Inference stage: a model directory in, an emotion and its word-level reasons out.

- `predictor`: `Predictor(model_dir).predict_file(path, transcript=None) -> Prediction`.
- `folder`: many files in parallel worker processes; CSV / JSONL results.
- `long`: a long recording predicted per speech segment (`predict_long`), one JSON shape per segment.
- `timeline`: a long recording's segments as one HTML page, a strip coloured by emotion over the waveform.
- `text`: text-only models (B-LEX, lstm-attn-semantic) predicted from sentences, no audio opened.
- `explain`: the explanation as HTML (self-contained) and PNG.
- `onnx_export`: acoustic-only models as ONNX, checked against PyTorch with onnxruntime.

The model directory's format lives beside the models (`emofuse.models.modeldir`); a run
directory is exported to one by `emofuse.training.export`. Nothing here imports
`emofuse.training`: prediction needs the model, its directory and the normaliser only.
"""

from emofuse.inference.predictor import Prediction, PredictionError, Predictor

__all__ = ["Prediction", "PredictionError", "Predictor"]
