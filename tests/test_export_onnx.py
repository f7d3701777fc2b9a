"""ONNX export of acoustic-only model directories, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from emofuse.errors import ConfigError
from emofuse.training.export import export_run
from emofuse.inference.onnx_export import TOLERANCE, export_onnx
from emofuse.inference.predictor import Predictor
from helpers import CLASSES, ravdess_files, registry_model_dir, trained_runs


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_multiview_student_exports_to_onnx_and_matches_the_predictor(ravdess_root, tmp_path):
    """The acoustic view of a trained multi-view run, on a real recording: onnxruntime on the
    raw frame features gives the Predictor's probabilities."""
    from emofuse.features.audio import load_audio
    from emofuse.features.frames import get_frame_feature

    model_dir = export_run(trained_runs(str(ravdess_root))["MV"], tmp_path / "mv")
    report = export_onnx(model_dir, tmp_path / "mv.onnx")
    assert max(report["max_abs_diff"].values()) <= TOLERANCE and report["normalised_inside"]
    path = ravdess_files(ravdess_root)[3]
    features = get_frame_feature("fbank40").extract(load_audio(path, 16000))[None]  # (1, T, 40)
    probabilities, logits = _session(tmp_path / "mv.onnx").run(None, {"features": features})
    want = Predictor(model_dir, warm=False).predict_file(path)
    np.testing.assert_allclose(probabilities[0], [want.probabilities[c] for c in CLASSES], atol=TOLERANCE)


@pytest.mark.parametrize("name", ["B-ACO-1", "B-ACO-1+attn"])
def test_acoustic_baselines_export_with_any_number_of_frames(name, tmp_path):
    model_dir = registry_model_dir(tmp_path / "m", name, words=None, hidden=16, layers=2)
    report = export_onnx(model_dir, tmp_path / "m.onnx")
    assert set(report["max_abs_diff"]) >= {"probabilities", "logits"}
    assert max(report["max_abs_diff"].values()) <= TOLERANCE
    session = _session(tmp_path / "m.onnx")
    outputs = [o.name for o in session.get_outputs()]
    assert outputs[:2] == ["probabilities", "logits"]
    for frames in (3, 700):
        result = session.run(None, {"features": np.random.default_rng(frames).standard_normal((1, frames, 40)).astype(np.float32)})
        assert result[0].shape == (1, 4) and np.isclose(result[0].sum(), 1.0, atol=1e-5)
        if name == "B-ACO-1+attn":
            assert outputs[2] == "frame_attention" and result[2].shape == (1, frames)


def test_word_level_models_are_refused_with_the_reason(tmp_path):
    model_dir = registry_model_dir(tmp_path / "m", "H-MM-4", word_layers=1)
    with pytest.raises(ConfigError, match="only acoustic-only models export to ONNX"):
        export_onnx(model_dir, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_models_trained_on_the_speech_span_are_refused_with_the_reason(tmp_path):
    import json

    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None)
    record = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**record, "trim": 0.1}))
    with pytest.raises(ConfigError, match=r"speech span only \(data.trim=0.1\)"):
        export_onnx(model_dir, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
