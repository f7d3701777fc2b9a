"""The linear probe (`model.name: linear-probe`): pooled frames, a logistic back-end whose C the
validation speakers choose, through the same fold runner, export and predictor as any model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emofuse.cli import app
from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.models.base import InputSpec, get_model
from emofuse.training.config import load_config
from emofuse.training.run import run_folds

from helpers import EMOTION_CODES, folds_for, ravdess_files, synthetic_data

pytestmark = pytest.mark.usefixtures("one_thread")


def probe_config(tmp_path: Path, *overrides: str):
    raw = {
        "name": "probe", "corpus": "synthetic",
        "data": {"manifest": "unused.jsonl", "label_set": "ravdess4", "acoustic": "compare_lld", "align": "none",
                 "normalise": "speaker"},
        "model": {"name": "linear-probe"},
        "protocol": {"name": "speaker-kfold", "k": 4, "val_speakers": 1},
        "run_dir": str(tmp_path / "run"),
    }
    return load_config(None, list(overrides), raw=raw)


def test_pooled_vector_is_the_mean_and_std_of_the_real_frames_padded_or_not():
    rng = np.random.default_rng(0)
    frames = [(rng.normal(200.0, 3.0, (t, 5))).astype(np.float32) for t in (7, 19)]  # a large offset, as F0 in Hz
    model = get_model("linear-probe").build(InputSpec(num_classes=4, acoustic_dim=5))
    items = [UtteranceFeatures(id=f"u{i}", acoustic=a) for i, a in enumerate(frames)]
    together = model(collate(items, [0, 0])).utterance_vector  # (2, 10): the short one padded
    alone = model(collate(items[:1], [0])).utterance_vector
    for row, a in zip(together, frames):
        expected = np.concatenate([a.astype(np.float64).mean(0), a.astype(np.float64).std(0)])
        np.testing.assert_allclose(row.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(alone[0].numpy(), together[0].numpy(), rtol=1e-6)


def test_mean_only_pooling_halves_the_vector():
    model = get_model("linear-probe").build(InputSpec(num_classes=4, acoustic_dim=5), std=False)
    batch = collate([UtteranceFeatures(id="u", acoustic=np.ones((4, 5), np.float32))], [0])
    assert model(batch).utterance_vector.shape == (1, 5)


def test_c_is_chosen_on_validation_speakers_never_on_the_test_fold(tmp_path):
    data = synthetic_data(dim=4)
    cfg = probe_config(tmp_path, "fold=0")
    fold = folds_for(data, cfg)[0]
    first = run_folds(cfg, data, folds_for(data, cfg), tmp_path / "a", log=lambda s: None)["selected"][0]
    shuffled = data.labels.copy()
    test = np.asarray(fold.test)
    shuffled[test] = (shuffled[test] + 1) % len(data.classes)  # every test label wrong now
    data.labels = shuffled
    second = run_folds(cfg, data, folds_for(data, cfg), tmp_path / "b", log=lambda s: None)["selected"][0]
    assert first["backend"] == second["backend"]  # the same C and the same validation UA
    a, b = (json.loads((tmp_path / run / "fold-0" / "backend.json").read_text()) for run in ("a", "b"))
    np.testing.assert_array_equal(a["coef"], b["coef"])
    assert first["test"]["ua"] != second["test"]["ua"]  # the test labels did change what is scored


def test_a_probe_fold_writes_what_a_trained_fold_does_and_the_report_names_c(tmp_path):
    data = synthetic_data(dim=4)
    cfg = probe_config(tmp_path, "data.normalise=fold")
    run = run_folds(cfg, data, folds_for(data, cfg), tmp_path / "run", log=lambda s: None)
    fold_dir = tmp_path / "run" / "fold-0"
    assert {p.name for p in fold_dir.iterdir()} == {"normaliser.json", "split.json", "backend.json",
                                                     "predictions.csv", "metrics.json"}
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    assert metrics["backend"]["kind"] == "lr" and metrics["val_score"] == pytest.approx(metrics["backend"]["val_ua"])
    assert metrics["backend"]["C"] in get_model("linear-probe").config_cls().cs
    assert run["folds_done"] == 4 and run["summary"]["ua"]["mean"] > 0.9  # the class signal is linear in the mean
    report = (tmp_path / "run" / "report.md").read_text()
    assert "C chosen on the UA of the validation part" in report and "| C |" in report
    assert "epochs" not in report


@pytest.mark.parametrize("overrides, message", [
    (["data.normalise=utterance"], "speaker or fold"),
    (["protocol.backend=lr"], "remove protocol.backend"),
    (["protocol.refit=true"], "protocol.refit does not apply"),
    (["augment.time_masks=2"], "remove augment"),
])
def test_settings_a_probe_cannot_honour_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        probe_config(tmp_path, *overrides)


def test_trainer_and_optim_settings_are_not_read(tmp_path):
    data = synthetic_data(dim=4)
    runs = {}
    for name, extra in (("plain", []), ("odd", ["trainer.max_epochs=1", "optim.lr=0.5", "trainer.batch_size=3"])):
        cfg = probe_config(tmp_path, "fold=1", *extra)
        run_folds(cfg, data, folds_for(data, cfg), tmp_path / name, log=lambda s: None)
        runs[name] = (tmp_path / name / "fold-1" / "predictions.csv").read_text()
    assert runs["plain"] == runs["odd"]


def test_a_probe_model_directory_without_its_back_end_is_refused(tmp_path):
    from emofuse.models.modeldir import load_model_dir
    from emofuse.training.export import export_run

    data = synthetic_data(dim=4)
    cfg = probe_config(tmp_path, "fold=0")
    run_folds(cfg, data, folds_for(data, cfg), tmp_path / "run", log=lambda s: None)
    model_dir = export_run(tmp_path / "run", tmp_path / "model")
    record = json.loads((model_dir / "model.json").read_text())
    assert record["backend"]["kind"] == "speaker-lr" and record["weights"]["parameters"] == 0
    (model_dir / "model.json").write_text(json.dumps({**record, "backend": None}))
    with pytest.raises(DataError, match="answers through its fitted back-end"):
        load_model_dir(model_dir)


# ---------------------------------------------------------------- real audio, through the CLI


@pytest.fixture(scope="module")
def tiny_corpus(ravdess_root, tmp_path_factory) -> Path:
    """6 actors x 4 classes x both statements: 8 clips an actor, enough for own statistics."""
    root = tmp_path_factory.mktemp("probe") / "ravdess"
    for path in ravdess_files(ravdess_root) + ravdess_files(ravdess_root, statement="02"):
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        (root / path.parent.name / path.name).symlink_to(path)
    return root


def train(corpus: Path, out: Path, *overrides: str) -> Path:
    run_dir = out / "run"
    result = CliRunner().invoke(app, [
        "train", "configs/ravdess4/linear-probe-compare.yaml", f"data.path={corpus}",
        f"data.store={out.parent / 'store'}", "data.acoustic=fbank40", "protocol.k=3", "protocol.val_speakers=1",
        "fold=0", f"run_dir={run_dir}", "trainer.max_epochs=1", *overrides])
    assert result.exit_code == 0, f"{result.output[-2000:]}{result.exception!r}"
    assert "epoch" not in result.output and "val UA" in result.output  # a fitted fold's line names C
    exported = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(run_dir / "model")])
    assert exported.exit_code == 0, f"{exported.output[-2000:]}{exported.exception!r}"
    return run_dir


def predictions_csv(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "fold-0" / "predictions.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


@pytest.mark.data
def test_exported_probe_predicts_a_test_clip_as_the_run_did(tiny_corpus, tmp_path):
    from emofuse.inference.predictor import Predictor

    run_dir = train(tiny_corpus, tmp_path / "fold", "data.normalise=fold")  # a lone clip is z-scored as in training
    rows = predictions_csv(run_dir)
    uid, row = sorted(rows.items())[0]
    clip = next(tiny_corpus.rglob(f"{uid}.flac"))
    got = Predictor(run_dir / "model", warm=False).predict_file(clip)
    expected = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}
    assert got.probabilities == pytest.approx(expected, abs=1e-4)


@pytest.mark.data
def test_exported_speaker_probe_predicts_a_test_actor_together_as_the_run_did(tiny_corpus, tmp_path):
    from emofuse.inference.predictor import Predictor

    run_dir = train(tiny_corpus, tmp_path / "speaker")  # data.normalise: speaker, as shipped
    rows = predictions_csv(run_dir)
    actor = sorted({row["speaker"] for row in rows.values()})[0]
    mine = sorted(uid for uid, row in rows.items() if row["speaker"] == actor)
    clips = [next(tiny_corpus.rglob(f"{uid}.flac")) for uid in mine]
    assert len(clips) == 8 and all(uid.split("-")[2] in EMOTION_CODES for uid in mine)
    got = Predictor(run_dir / "model", warm=False).predict_speaker([(clip, None) for clip in clips])
    for uid, prediction in zip(mine, got):
        expected = {k[2:]: float(v) for k, v in rows[uid].items() if k.startswith("p_")}
        assert prediction.probabilities == pytest.approx(expected, abs=1e-4), uid
