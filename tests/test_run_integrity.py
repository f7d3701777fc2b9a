"""Run directories read back: resume, the after_fold cache, export and teacher folds refuse what
no longer belongs to the run (other data, another checkpoint, a damaged or hand-edited file) in
one line naming the file, instead of mixing results or ending in a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from emofuse.corpora.base import Corpus
from emofuse.errors import DataError
from emofuse.training.data import LabelledData
from emofuse.training.fold import load_fold_model
from emofuse.training.run import run_folds
from helpers import folds_for, synthetic_data, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Fold 0 of a tiny synthetic run, trained once; each test works on its own copy."""
    root = tmp_path_factory.mktemp("trained")
    data = synthetic_data(speakers=4, per_class=2)
    cfg = tiny_config(root, "fold=0", "trainer.max_epochs=1")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    return root / "run"


@pytest.fixture
def run(trained, tmp_path):
    """(config, data, folds, run_dir): a copy of the trained run to change."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    data = synthetic_data(speakers=4, per_class=2)
    cfg = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=1")
    return cfg, data, folds_for(data, cfg), run_dir


def without(data: LabelledData, drop: set[str]) -> LabelledData:
    """`data` less the utterances in `drop` (a manifest edited since the run trained)."""
    keep = [i for i, u in enumerate(data.corpus) if u.id not in drop]
    return LabelledData(Corpus([data.corpus[i] for i in keep], name=data.corpus.name), [data.items[i] for i in keep],
                        data.labels[keep], data.classes)


def first_class_renamed(data: LabelledData) -> LabelledData:
    """`data` with its first class renamed (a label set changed since the run trained)."""
    return LabelledData(data.corpus, data.items, data.labels, ("anger", *data.classes[1:]))


def counting_measure():
    """An after_fold measurement that records each call: (calls, measure)."""
    calls = []

    def measure(fold_cfg, fold_data, fold, fold_dir, result):
        calls.append(fold.index)
        return {"measured": len(calls)}

    return calls, measure


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- resume compares the data


def test_resume_refuses_a_finished_fold_cut_from_other_utterances(run):
    cfg, data, folds, run_dir = run
    gone = data.corpus[int(folds[0].test[0])].id
    changed = without(data, {gone})
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(DataError) as exc:
        run_folds(cfg, changed, folds_for(changed, cfg), run_dir, log=lambda s: None)
    message = one_line(exc)
    assert message.startswith(f"{run_dir / 'fold-0' / 'split.json'}: ")
    assert "test utterances differ from the current data (first: " in message
    assert message.endswith("start a new run_dir or delete fold-0")
    # refused before anything was written: the run's own files are as they were
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_resume_refuses_a_fold_trained_on_other_classes(run):
    cfg, data, folds, run_dir = run
    renamed = first_class_renamed(data)
    with pytest.raises(DataError, match=r"fold-0/split.json: classes \['angry', .*\] differ from the current "
                                        r"\['anger', .*\]; start a new run_dir or delete fold-0") as exc:
        run_folds(cfg, renamed, folds, run_dir, log=lambda s: None)
    one_line(exc)


def test_an_older_split_without_classes_is_compared_on_what_it_holds(run):
    cfg, data, folds, run_dir = run
    split = run_dir / "fold-0" / "split.json"
    stored = json.loads(split.read_text())
    split.write_text(json.dumps({k: stored[k] for k in ("index", "name", "train", "val", "test")}))
    lines = []
    run_folds(cfg, data, folds, run_dir, log=lines.append)  # consistent: read back, not refused
    assert any("done before, skipped" in line for line in lines)
    renamed = first_class_renamed(data)
    with pytest.raises(DataError, match=r"fold-0/normaliser.json: classes .* differ from the current"):
        run_folds(cfg, renamed, folds, run_dir, log=lambda s: None)


# ---------------------------------------------------------------- the after_fold cache


def test_after_fold_is_measured_again_when_the_fold_has_a_new_checkpoint(run):
    cfg, data, folds, run_dir = run
    calls, measure = counting_measure()
    run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    assert calls == [0]  # the cache holds while the checkpoint is the one measured
    # The fold trained again: its tested checkpoint now holds other weights.
    fold_dir = run_dir / "fold-0"
    best = fold_dir / json.loads((fold_dir / "metrics.json").read_text())["best_checkpoint"]
    checkpoint = torch.load(best, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("model."))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] + 1.0
    torch.save(checkpoint, best)
    again = run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    assert calls == [0, 0]
    assert again["selected"][0]["explain"] == {"measured": 2}
    assert json.loads((fold_dir / "explain.json").read_text()) == {"measured": 2}


def test_a_cache_whose_checkpoint_was_pruned_or_that_predates_the_record_is_read_as_it_is(run):
    """Old benchmark runs: checkpoints deleted to save space, or explain.json written before
    explain.checkpoint.json existed. The cache is all there is, so it is read, not refused."""
    cfg, data, folds, run_dir = run
    calls, measure = counting_measure()
    run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    fold_dir = run_dir / "fold-0"
    (fold_dir / "explain.checkpoint.json").unlink()  # a cache from before the record
    again = run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    assert calls == [0] and again["selected"][0]["explain"] == {"measured": 1}
    run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    shutil.rmtree(fold_dir / "checkpoints")  # pruned
    again = run_folds(cfg, data, folds, run_dir, log=lambda s: None, after_fold=measure)
    assert calls == [0] and again["selected"][0]["explain"] == {"measured": 1}


# ---------------------------------------------------------------- damaged or hand-edited files


@pytest.mark.parametrize("marker", [{}, [], {"best_checkpoint": 3}, {"best_checkpoint": ""}])
def test_resume_with_a_damaged_trained_marker_is_one_line(run, marker):
    cfg, data, folds, run_dir = run
    (run_dir / "fold-0" / "metrics.json").unlink()  # the fold reads its trained.json again
    (run_dir / "fold-0" / "trained.json").write_text(json.dumps(marker))
    with pytest.raises(DataError, match=r"fold-0/trained.json: \"best_checkpoint\" must name") as exc:
        run_folds(cfg, data, folds, run_dir, log=lambda s: None)
    one_line(exc)


def test_load_fold_model_with_a_damaged_metrics_file_is_one_line(run):
    cfg, data, folds, run_dir = run
    metrics = run_dir / "fold-0" / "metrics.json"
    record = json.loads(metrics.read_text())
    del record["best_checkpoint"]
    metrics.write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"fold-0/metrics.json: \"best_checkpoint\" must name") as exc:
        load_fold_model(cfg, data, folds[0], run_dir / "fold-0")
    one_line(exc)


def test_load_fold_model_refuses_a_checkpoint_of_another_shape_in_one_line(run, tmp_path):
    _, data, folds, run_dir = run
    wider = tiny_config(tmp_path, "fold=0", "trainer.max_epochs=1", "model.hidden=16")
    with pytest.raises(DataError, match=r"\.ckpt: does not fit model 'B-ACO-1' built from the config: "
                                        r"\d+ tensor\(s\) of another shape \(first: .* in the file, .* in the model\)"
                       ) as exc:
        load_fold_model(wider, data, folds[0], run_dir / "fold-0")
    one_line(exc)


@pytest.mark.parametrize("marker", [[], 3])  # JSON, but not an object
def test_export_with_a_damaged_trained_marker_is_one_line(run, tmp_path, marker):
    from emofuse.training.export import export_fold

    _, _, _, run_dir = run
    (run_dir / "fold-0" / "trained.json").write_text(json.dumps(marker))
    with pytest.raises(DataError, match=r"fold-0/trained.json: \"best_checkpoint\" must name") as exc:
        export_fold(run_dir / "fold-0", tmp_path / "model")
    one_line(exc)


@pytest.mark.parametrize("marker", ["[1, 2]", '{"best_checkpoint": 3}'])
def test_a_teacher_fold_with_a_damaged_trained_marker_is_one_line(tmp_path, marker):
    from emofuse.models.multiview import load_view_state

    fold = tmp_path / "fold-0"
    fold.mkdir()
    (fold / "trained.json").write_text(marker)
    with pytest.raises(DataError, match=r"fold-0/trained.json: \"best_checkpoint\" must name") as exc:
        load_view_state(fold)
    one_line(exc)
