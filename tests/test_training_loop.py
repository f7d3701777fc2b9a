"""The experiment engine on a tiny synthetic corpus: folds, model selection, resume, reports."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from emofuse.errors import ConfigError, EmofuseError
from emofuse.training.data import LabelledData
from emofuse.training.fold import AtomicCheckpointIO
from emofuse.training.run import fold_config, run_folds
from helpers import CLASSES, folds_for, synthetic_data, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_one_fold_writes_the_run_directory_and_learns_the_synthetic_task(tmp_path):
    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0")
    run = run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    run_dir = tmp_path / "run"
    fold = run_dir / "fold-0"
    for path in ("config.yaml", "metrics.json", "report.md", "confusion.png"):
        assert (run_dir / path).is_file(), path
    for path in ("metrics.json", "predictions.csv", "normaliser.json", "split.json", "checkpoints/last.ckpt"):
        assert (fold / path).is_file(), path
    assert list((fold / "checkpoints").glob("best-*.ckpt"))
    assert (fold / "logs" / "csv").is_dir() and (fold / "logs" / "tensorboard").is_dir()
    metrics = json.loads((fold / "metrics.json").read_text())
    # Chance is 0.25: a working loop learns this separable task in 4 epochs.
    assert metrics["test"]["ua"] > 0.6
    assert run["folds_done"] == 1 and run["folds_total"] == 4
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 4
    lines = (fold / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("id,speaker,label,prediction,p_angry")
    assert len(lines) - 1 == metrics["n_test"]


def test_test_speakers_are_never_in_training_or_validation(tmp_path):
    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=1", "trainer.max_epochs=1")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    split = json.loads((tmp_path / "run" / "fold-1" / "split.json").read_text())
    speaker = {u.id: u.speaker for u in data.corpus}
    parts = {k: {speaker[i] for i in split[k]} for k in ("train", "val", "test")}
    assert parts["test"] and parts["val"]
    assert not parts["test"] & (parts["train"] | parts["val"])
    assert not parts["val"] & parts["train"]


def test_normaliser_is_fitted_on_the_training_part_only(tmp_path):
    data = synthetic_data()
    # Shift every test utterance: statistics fitted on them would move the mean.
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=1")
    folds = folds_for(data, cfg)
    for i in folds[0].test:
        data.items[i].acoustic = data.items[i].acoustic + 100.0
    run_folds(cfg, data, folds, log=lambda s: None)
    saved = json.loads((tmp_path / "run" / "fold-0" / "normaliser.json").read_text())
    train_frames = np.concatenate([data.items[i].acoustic for i in folds[0].train])
    np.testing.assert_allclose(saved["normaliser"]["mean"], train_frames.mean(0), rtol=1e-4)
    assert saved["classes"] == list(CLASSES) and saved["features"]["acoustic"] == "compare_lld"


def test_best_checkpoint_is_chosen_on_validation_not_test(tmp_path):
    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=3")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    fold = tmp_path / "run" / "fold-0"
    metrics = json.loads((fold / "metrics.json").read_text())
    rows = [r for r in _csv(fold / "logs" / "csv" / "version_0" / "metrics.csv") if r.get("val_ua")]
    val_ua = [float(r["val_ua"]) for r in rows]
    assert metrics["best_epoch"] == int(np.argmax(val_ua))  # first epoch with the highest val UA
    assert metrics["monitor"] == "val_ua" and metrics["val_score"] == pytest.approx(max(val_ua), abs=1e-6)


def test_finished_folds_are_skipped_and_an_unfinished_fold_resumes_from_last_checkpoint(tmp_path):
    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=2", "trainer.patience=null")
    folds = folds_for(data, cfg)
    run_folds(cfg, data, folds, log=lambda s: None)
    fold = tmp_path / "run" / "fold-0"
    first = (fold / "metrics.json").read_text()
    # Done folds are not trained again.
    messages = []
    run_folds(cfg, data, folds, log=messages.append)
    assert any("skipped" in m for m in messages)
    assert (fold / "metrics.json").read_text() == first
    # A run stopped (Ctrl-C) after 2 of 3 epochs resumes at the third epoch.
    fold.joinpath("metrics.json").unlink()
    cfg3 = tiny_config(tmp_path / "b", "fold=0", "trainer.max_epochs=3", "trainer.patience=null")
    with pytest.raises(KeyboardInterrupt):
        run_folds(cfg3, data, folds, log=lambda s: None, extra_callbacks=(StopAt(epoch=2),))
    fold = tmp_path / "b" / "run" / "fold-0"
    assert not (fold / "metrics.json").exists()
    assert torch.load(fold / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    messages = []
    run_folds(cfg3, data, folds, log=messages.append)
    assert any("resuming from" in m and "2 epoch(s) done" in m for m in messages)
    resumed = [r for r in _csv(fold / "logs" / "csv" / "version_1" / "metrics.csv") if r.get("val_ua")]
    assert [int(r["epoch"]) for r in resumed] == [2]  # only the missing epoch was trained
    assert json.loads((fold / "metrics.json").read_text())["epochs_run"] == 3
    # The run directory refuses a config that computes something else.
    longer = tiny_config(tmp_path / "b", "fold=0", "trainer.max_epochs=4", "trainer.patience=null")
    with pytest.raises(EmofuseError, match="different config.*trainer.max_epochs"):
        run_folds(longer, data, folds, log=lambda s: None)


class StopAt(L.Callback):
    """Raises KeyboardInterrupt at the start of an epoch, as Ctrl-C during it would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_nan_loss_stops_the_fold_with_a_clear_message(tmp_path):
    data = synthetic_data()
    data.items[0].acoustic[:] = np.nan
    cfg = tiny_config(tmp_path, "trainer.max_epochs=1", "data.normalise=false")
    folds = folds_for(data, cfg)
    index = next(f.index for f in folds if 0 in set(f.train.tolist()))
    cfg = tiny_config(tmp_path, f"fold={index}", "trainer.max_epochs=1", "data.normalise=false")
    with pytest.raises(EmofuseError, match=r"training loss is nan at epoch 0.*fold was stopped"):
        run_folds(cfg, data, folds, log=lambda s: None)
    assert not (tmp_path / "run" / f"fold-{index}" / "metrics.json").exists()


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no stray temporary file either


def test_class_weights_follow_training_class_frequencies(tmp_path):
    data = synthetic_data()
    keep = [i for i in range(len(data)) if not (data.labels[i] == 0 and i % 3)]  # fewer 'angry'
    data = LabelledData(data.corpus.subset(keep), [data.items[i] for i in keep], data.labels[keep], data.classes)
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=1", "optim.class_weights=true")
    folds = folds_for(data, cfg)
    run_folds(cfg, data, folds, log=lambda s: None)
    state = torch.load(tmp_path / "run" / "fold-0" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    weights = state["class_weights"].numpy()
    counts = np.bincount(data.labels[folds[0].train], minlength=4)
    np.testing.assert_allclose(weights, counts.sum() / (4 * counts), rtol=1e-5)
    assert weights[0] > weights[1]


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def test_load_fold_model_gives_back_the_tested_network(tmp_path):
    from emofuse.training.fold import eval_loader, load_fold_model
    from emofuse.training.module import predict

    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=1", "trainer.max_epochs=2")
    folds = folds_for(data, cfg)
    fold_dir = tmp_path / "run" / "fold-1"
    with pytest.raises(EmofuseError, match="metrics.json"):
        load_fold_model(cfg, data, folds[1], fold_dir)
    run_folds(cfg, data, folds, log=lambda s: None)
    model, collator = load_fold_model(cfg, data, folds[1], fold_dir)
    assert not model.training
    ids, _, probs = predict(model, eval_loader(cfg, collator, folds[1].test))
    saved = {r["id"]: [float(r[f"p_{c}"]) for c in CLASSES] for r in _csv(fold_dir / "predictions.csv")}
    np.testing.assert_allclose(probs, [saved[i] for i in ids], atol=2e-6)


def test_refit_trains_on_training_and_validation_speakers_for_the_selected_epochs(tmp_path):
    from emofuse.training.fold import eval_loader, load_fold_model
    from emofuse.training.module import predict

    class Record(L.Callback):
        def __init__(self):
            self.runs = []

        def on_train_start(self, trainer, module):
            self.runs.append({"ids": set(), "epochs": 0, "validated": 0})

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.runs[-1]["ids"].update(batch.ids)

        def on_train_epoch_end(self, trainer, module):
            self.runs[-1]["epochs"] += 1

        def on_validation_end(self, trainer, module):
            self.runs[-1]["validated"] += 1

    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=4", "protocol.refit=true")
    folds = folds_for(data, cfg)
    fold, fold_dir = folds[0], tmp_path / "run" / "fold-0"
    record = Record()
    run_folds(cfg, data, folds, log=lambda s: None, extra_callbacks=(record,))
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    selected = torch.load(next((fold_dir / "selection" / "checkpoints").glob("best-*.ckpt")), weights_only=False)
    epochs = selected["epoch"] + 1
    assert metrics["refit"]["epochs"] == epochs and metrics["best_epoch"] == epochs - 1
    ids = {data.items[i].id for i in fold.train}
    val_ids = {data.items[i].id for i in fold.val}
    # First the selection run on the training part, validated every epoch; then the refit on
    # training + validation speakers, never validated, for exactly the selected epochs.
    assert [r["ids"] for r in record.runs] == [ids, ids | val_ids]
    assert record.runs[0]["validated"] >= epochs and record.runs[1]["validated"] == 0
    assert record.runs[1]["epochs"] == epochs
    assert metrics["val_score"] == pytest.approx(json.loads((fold_dir / "selection" / "trained.json").read_text())["best_score"])
    # The refit's normaliser saw the validation speakers' frames too (fold mode).
    saved = json.loads((fold_dir / "normaliser.json").read_text())
    frames = np.concatenate([data.items[i].acoustic for i in [*fold.train, *fold.val]])
    np.testing.assert_allclose(saved["normaliser"]["mean"], frames.mean(0), rtol=1e-4)
    assert "refit" in saved["fitted_on"]
    # The tested network is the one load_fold_model (and export) reopen.
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    test_ids, _, probs = predict(model, eval_loader(cfg, collator, fold.test))
    rows = {r["id"]: [float(r[f"p_{c}"]) for c in CLASSES] for r in _csv(fold_dir / "predictions.csv")}
    np.testing.assert_allclose(probs, [rows[i] for i in test_ids], atol=2e-6)
    assert "Refit" in (tmp_path / "run" / "report.md").read_text()


def test_the_same_seed_gives_the_same_predictions(tmp_path):
    data = synthetic_data()
    outputs = []
    for name in ("a", "b"):
        cfg = tiny_config(tmp_path / name, "fold=2", "trainer.max_epochs=2", "model.dropout=0.3")
        run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
        outputs.append((tmp_path / name / "run" / "fold-2" / "predictions.csv").read_text())
    assert outputs[0] == outputs[1]


def test_speaker_normalisation_uses_each_speakers_own_frames_and_no_labels(tmp_path):
    from emofuse.features.normalise import Normalisation
    from emofuse.training.data import Collator

    data = synthetic_data()
    for u, it in zip(data.corpus, data.items):  # a per-speaker offset, as voices have
        it.acoustic = it.acoustic + 3.0 * int(u.speaker[3:])
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=1", "data.normalise=speaker")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    stored = json.loads((tmp_path / "run" / "fold-0" / "normaliser.json").read_text())
    assert stored["normaliser"]["mode"] == "speaker"
    assert set(stored["normaliser"]["speakers"]) == {u.speaker for u in data.corpus}  # test speakers too
    norm = Normalisation.fit("speaker", data.items, [u.speaker for u in data.corpus], [])
    collator = Collator(data, norm)
    for speaker in ("spk0", "spk5"):
        indices = [i for i, u in enumerate(data.corpus) if u.speaker == speaker]
        frames = np.concatenate([collator.item(i).acoustic for i in indices])
        np.testing.assert_allclose(frames.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(frames.std(0), 1.0, atol=1e-3)
    shuffled = LabelledData(data.corpus, data.items, np.roll(data.labels, 5), data.classes)
    again = Normalisation.fit("speaker", shuffled.items, [u.speaker for u in shuffled.corpus], [])
    assert again.to_dict() == norm.to_dict()  # labels play no part


def test_utterance_normalisation_scores_each_utterance_on_its_own(tmp_path):
    from emofuse.features.normalise import Normalisation
    from emofuse.training.data import Collator

    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=1", "data.normalise=utterance")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    stored = json.loads((tmp_path / "run" / "fold-0" / "normaliser.json").read_text())
    assert stored["normaliser"] == {"mode": "utterance"}
    item = Collator(data, Normalisation("utterance")).item(3).acoustic
    np.testing.assert_allclose(item.mean(0), 0.0, atol=1e-4)


def test_speaker_backend_replaces_the_networks_predictions_and_keeps_its_metrics(tmp_path):
    from emofuse.models.refitted_output import Backend
    from emofuse.training.refit_output import utterance_vectors
    from emofuse.training.fold import eval_loader, load_fold_model
    from emofuse.training.module import predict

    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=3", "protocol.backend=speaker-lr")
    folds = folds_for(data, cfg)
    fold, fold_dir = folds[0], tmp_path / "run" / "fold-0"
    run_folds(cfg, data, folds, log=lambda s: None)
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    backend = Backend.from_dict(json.loads((fold_dir / "backend.json").read_text()))
    assert metrics["backend"]["kind"] == "speaker-lr" and metrics["backend"]["C"] == backend.C
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    # The network's own test metrics are kept beside the back-end's ...
    test_ids, labels, network_probs = predict(model, eval_loader(cfg, collator, fold.test))
    assert metrics["network_test"]["ua"] == pytest.approx(
        float(np.mean([(network_probs.argmax(1)[labels == c] == c).mean() for c in np.unique(labels)])))
    # ... and predictions.csv holds the back-end's: the reopened network's vectors, each speaker
    # z-scored with all of that speaker's utterances in the experiment.
    everything = np.concatenate([fold.train, fold.val, fold.test])
    ids, vectors = utterance_vectors(model, eval_loader(cfg, collator, everything))
    speaker = {u.id: u.speaker for u in data.corpus}
    probs = dict(zip(ids, backend.probabilities(vectors, [speaker[i] for i in ids])))
    rows = {r["id"]: [float(r[f"p_{c}"]) for c in CLASSES] for r in _csv(fold_dir / "predictions.csv")}
    np.testing.assert_allclose([probs[i] for i in test_ids], [rows[i] for i in test_ids], atol=2e-6)
    assert not np.allclose(network_probs, [rows[i] for i in test_ids], atol=1e-3)
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "network_summary" in run
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Back-end `speaker-lr`" in report and "its own classifier" in report
    from emofuse.training.report import compare_runs

    assert compare_runs([tmp_path / "run"])[0][0]["Model"] == "B-ACO-1 + speaker-lr"


def test_a_backend_travels_into_the_model_directory_and_keeps_it_out_of_onnx(tmp_path):
    from emofuse.errors import ConfigError
    from emofuse.models.modeldir import read_info
    from emofuse.training.export import export_run
    from emofuse.inference.onnx_export import export_onnx

    data = synthetic_data()
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=2", "protocol.backend=lr")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    model_dir = export_run(tmp_path / "run", tmp_path / "model")
    info = read_info(model_dir)
    assert info.backend == json.loads((tmp_path / "run" / "fold-0" / "backend.json").read_text())
    assert info.metrics["monitor"] == "backend_val_ua" and info.metrics["val_ua"] == pytest.approx(
        info.backend["val_ua"], abs=1e-4)
    with pytest.raises(ConfigError, match="protocol.backend=lr"):
        export_onnx(model_dir, tmp_path / "m.onnx")
    # metrics that describe a back-end are never exported with the bare network
    (tmp_path / "run" / "fold-0" / "backend.json").unlink()
    with pytest.raises(EmofuseError, match=r"backend\.json: missing"):
        export_run(tmp_path / "run", tmp_path / "model2")


def test_weight_averaging_is_the_network_validated_checkpointed_and_tested(tmp_path):
    from emofuse.training.fold import eval_loader, load_fold_model
    from emofuse.training.module import predict

    class RawWeights(L.Callback):
        """The network's own weights after every optimiser step."""

        def __init__(self):
            self.steps = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})

    data = synthetic_data()
    decay = 0.6
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=3", "trainer.patience=null", f"trainer.ema={decay}")
    folds = folds_for(data, cfg)
    fold, fold_dir = folds[0], tmp_path / "run" / "fold-0"
    raw = RawWeights()
    run_folds(cfg, data, folds, log=lambda s: None, extra_callbacks=(raw,))
    # The average by hand: the first step's weights, then avg <- decay * avg + (1 - decay) * w.
    average = dict(raw.steps[0])
    for step in raw.steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * step[k] for k in average}
    last = torch.load(fold_dir / "checkpoints" / "last.ckpt", weights_only=False)
    for key, value in average.items():
        torch.testing.assert_close(last["state_dict"][f"model.{key}"], value, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(last["current_model_state"][f"model.{key}"], raw.steps[-1][key])
    assert any(not torch.allclose(average[k].float(), raw.steps[-1][k].float(), atol=1e-4) for k in average)
    # Validation scored the averaged weights: the last epoch's logged loss is theirs.
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    model.load_state_dict(average)
    _, labels, probs = predict(model, eval_loader(cfg, collator, fold.val))
    logged = [r for r in _csv(fold_dir / "logs" / "csv" / "version_0" / "metrics.csv") if r.get("val_loss")]
    assert int(logged[-1]["epoch"]) == 2
    assert float(logged[-1]["val_loss"]) == pytest.approx(-np.log(probs[np.arange(len(labels)), labels]).mean(), abs=1e-5)
    # The tested network (and what export reads) is the best checkpoint's average, not its raw weights.
    best = torch.load(fold_dir / json.loads((fold_dir / "metrics.json").read_text())["best_checkpoint"], weights_only=False)
    assert any(not torch.equal(best["state_dict"][k], best["current_model_state"][k]) for k in best["state_dict"])
    model, collator = load_fold_model(cfg, data, fold, fold_dir)
    test_ids, _, probs = predict(model, eval_loader(cfg, collator, fold.test))
    rows = {r["id"]: [float(r[f"p_{c}"]) for c in CLASSES] for r in _csv(fold_dir / "predictions.csv")}
    np.testing.assert_allclose(probs, [rows[i] for i in test_ids], atol=2e-6)
    assert "EMA, decay 0.6" in (tmp_path / "run" / "report.md").read_text()
    from emofuse.models.modeldir import load_model_dir
    from emofuse.training.export import export_run

    exported = load_model_dir(export_run(tmp_path / "run", tmp_path / "model")).model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(exported[key], value)


def test_an_interrupted_run_with_weight_averaging_resumes_to_the_same_network(tmp_path):
    data = synthetic_data()
    settings = ("fold=0", "trainer.max_epochs=3", "trainer.patience=null", "trainer.ema=0.7")
    whole = tiny_config(tmp_path / "whole", *settings)
    folds = folds_for(data, whole)
    run_folds(whole, data, folds, log=lambda s: None)
    cut = tiny_config(tmp_path / "cut", *settings)
    with pytest.raises(KeyboardInterrupt):
        run_folds(cut, data, folds, log=lambda s: None, extra_callbacks=(StopAt(epoch=2),))
    run_folds(cut, data, folds, log=lambda s: None)
    # The average (and the raw weights under it) came back from last.ckpt, not from scratch.
    a = torch.load(tmp_path / "whole" / "run" / "fold-0" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "run" / "fold-0" / "checkpoints" / "last.ckpt", weights_only=False)
    for key in ("state_dict", "current_model_state"):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value)
    predictions = [(tmp_path / d / "run" / "fold-0" / "predictions.csv").read_text() for d in ("whole", "cut")]
    assert predictions[0] == predictions[1]


def test_weight_averaging_decay_must_be_between_zero_and_one(tmp_path):
    from emofuse.errors import ConfigError

    for bad in ("0", "1", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="trainer.ema"):
            tiny_config(tmp_path, f"trainer.ema={bad}")


def test_after_fold_runs_once_per_fold_and_is_cached_and_merged(tmp_path):
    data = synthetic_data(speakers=4, per_class=2)
    cfg = tiny_config(tmp_path, "trainer.max_epochs=1")
    folds = folds_for(data, cfg)
    calls = []

    def measure(fold_cfg, fold_data, fold, fold_dir, result):
        calls.append(fold.index)
        assert fold_data is data and result["fold"] == fold.index and fold_dir.name == f"fold-{fold.index}"
        return {"test_ua_seen": result["test"]["ua"], "fold": fold.index}

    run = run_folds(cfg, data, folds, log=lambda s: None, only={1, 2}, after_fold=measure)
    assert calls == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run").glob("fold-*")) == ["fold-1", "fold-2"]
    for result in run["selected"]:
        cached = json.loads((tmp_path / "run" / f"fold-{result['fold']}" / "explain.json").read_text())
        assert result["explain"] == cached == {"test_ua_seen": result["test"]["ua"], "fold": result["fold"]}
    assert [f["explain"]["fold"] for f in json.loads((tmp_path / "run" / "metrics.json").read_text())["folds"]] == [1, 2]

    def must_not_run(*args):
        raise AssertionError("a cached fold was measured again")

    trained = (tmp_path / "run" / "fold-1" / "metrics.json").stat().st_mtime_ns
    lines = []
    again = run_folds(cfg, data, folds, log=lines.append, only={1, 2}, after_fold=must_not_run, quiet=True)
    assert lines == []  # quiet, and nothing trained: both folds are read back
    assert (tmp_path / "run" / "fold-1" / "metrics.json").stat().st_mtime_ns == trained
    assert [f["explain"] for f in again["selected"]] == [f["explain"] for f in run["selected"]]
    with pytest.raises(ConfigError, match="folds \\[7\\]"):
        run_folds(cfg, data, folds, log=lambda s: None, only={7})


def test_fold_config_fills_in_the_fold_index_in_model_paths(tmp_path):
    cfg = tiny_config(tmp_path, "data.words=minilm", "data.align=auto",
                      "model.teacher_checkpoint=runs/h-mm-4/fold-{fold}", model="teacher-student")
    filled = fold_config(cfg, 3)
    assert filled.model["teacher_checkpoint"] == "runs/h-mm-4/fold-3"
    assert cfg.model["teacher_checkpoint"] == "runs/h-mm-4/fold-{fold}"  # the run's config keeps the pattern


def with_words(data: LabelledData) -> LabelledData:
    """The same utterances with three words each whose vectors also carry the class."""
    rng = np.random.default_rng(1)
    items = []
    for item, label in zip(data.items, data.labels):
        vectors = rng.normal(0.0, 1.0, (3, 5)).astype(np.float32)
        vectors[:, int(label)] += 2.0
        items.append(dataclasses.replace(item, words=["a", "b", "c"], word_vectors=vectors,
                                         word_times=np.array([[0.0, 0.04], [0.04, 0.08], [0.08, 0.11]])))
    return LabelledData(data.corpus, items, data.labels, data.classes)


def test_teacher_checkpoint_of_fold_k_is_fold_k_of_the_teacher_run(tmp_path):
    data = with_words(synthetic_data(speakers=6, per_class=2))
    words = ["data.words=minilm", "data.align=auto", "trainer.max_epochs=1", "protocol.k=3"]
    teacher = tiny_config(tmp_path, *words, f"run_dir={tmp_path / 'h-mm-4'}", "model.word_layers=1", model="H-MM-4")
    folds = folds_for(data, teacher)
    run_folds(teacher, data, folds, log=lambda s: None, only={0, 1})
    student = tiny_config(tmp_path, *words, f"run_dir={tmp_path / 'ts'}", "model.view_m_settings={word_layers: 1}",
                          f"model.teacher_checkpoint={tmp_path / 'h-mm-4'}/fold-{{fold}}", model="teacher-student")
    run_folds(student, data, folds, log=lambda s: None, only={0, 1})

    def best(fold_dir: Path) -> dict:
        name = json.loads((fold_dir / "trained.json").read_text())["best_checkpoint"]
        return torch.load(fold_dir / name, map_location="cpu", weights_only=True)["state_dict"]

    for k in (0, 1):
        teacher_state, other = best(tmp_path / "h-mm-4" / f"fold-{k}"), best(tmp_path / "h-mm-4" / f"fold-{1 - k}")
        frozen = {n[len("model.view_m."):]: v for n, v in best(tmp_path / "ts" / f"fold-{k}").items()
                  if n.startswith("model.view_m.")}
        assert frozen and all(torch.equal(v, teacher_state["model." + n]) for n, v in frozen.items())
        assert not all(torch.equal(v, other["model." + n]) for n, v in frozen.items())


def test_a_teacher_trained_on_other_folds_is_refused_before_training(tmp_path):
    """A teacher run cut with another seed has trained on some of the student's test speakers."""
    data = with_words(synthetic_data(speakers=6, per_class=2))
    words = ["data.words=minilm", "data.align=auto", "trainer.max_epochs=1", "protocol.k=3"]
    teacher = tiny_config(tmp_path, *words, f"run_dir={tmp_path / 'h-mm-4'}", "model.word_layers=1", "seed=1",
                          model="H-MM-4")
    run_folds(teacher, data, folds_for(data, teacher), log=lambda s: None, only={0})
    student = tiny_config(tmp_path, *words, f"run_dir={tmp_path / 'ts'}", "model.view_m_settings={word_layers: 1}",
                          f"model.teacher_checkpoint={tmp_path / 'h-mm-4'}/fold-{{fold}}", model="teacher-student")
    folds = folds_for(data, student)
    teacher_split = json.loads((tmp_path / "h-mm-4" / "fold-0" / "split.json").read_text())
    student_test = {data.corpus[int(i)].id for i in folds[0].test}
    assert set(teacher_split["train"]) & student_test  # the two seeds cut different folds
    with pytest.raises(ConfigError, match=r"the teacher of fold 0 trained on \d+ of this fold's test utterances"):
        run_folds(student, data, folds, log=lambda s: None, only={0})
    assert not (tmp_path / "ts" / "fold-0" / "checkpoints").exists()
