"""Checkpoints are read as tensors and plain values only: a crafted `.ckpt` in a run directory
is refused with one line naming it, and its payload never runs (issue 18, items 2 and 6)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emofuse.errors import DataError
from emofuse.training.checkpoints import SAFE_TYPES, read_checkpoint
from emofuse.training.run import run_folds
from helpers import folds_for, synthetic_data, tiny_config

SETTINGS = ("fold=0", "trainer.max_epochs=2", "trainer.patience=1")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Payload:
    """Unpickling this creates the marker file: what a real attack would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with weight averaging, early stopping and the progress bar: every
    callback that puts state into a checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    data = synthetic_data()
    cfg = tiny_config(root, *SETTINGS, "trainer.ema=0.7", "trainer.progress=true")
    run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    return root


def _copy(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run" / "fold-0"


def _plant_payload(checkpoint: Path, marker: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["callbacks"]["innocent-looking"] = Payload(marker)
    torch.save(state, checkpoint)


def _unfinish(fold: Path) -> None:
    """The fold as a run stopped mid-training leaves it: resume reads last.ckpt."""
    for name in ("trained.json", "metrics.json"):
        (fold / name).unlink()


def test_real_checkpoints_need_no_type_beyond_the_registered_ones(trained):
    checkpoints = sorted((trained / "run" / "fold-0" / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in checkpoints} >= {"last.ckpt"} and len(checkpoints) == 2
    registered = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_TYPES}
    for path in checkpoints:
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= registered, path
        checkpoint = read_checkpoint(path)
        assert "averaging_state" in checkpoint and checkpoint["state_dict"]


def test_a_payload_in_last_ckpt_is_refused_on_resume_and_never_runs(trained, tmp_path):
    fold = _copy(trained, tmp_path)
    _unfinish(fold)
    marker = tmp_path / "payload-ran"
    _plant_payload(fold / "checkpoints" / "last.ckpt", marker)
    data = synthetic_data()
    cfg = tiny_config(tmp_path, *SETTINGS, "trainer.ema=0.7", "trainer.progress=true")
    with pytest.raises(DataError, match=r"last\.ckpt: refused: the file asks to build \S*open") as caught:
        run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_last_ckpt_gives_one_line_on_resume(trained, tmp_path, damage):
    fold = _copy(trained, tmp_path)
    _unfinish(fold)
    last = fold / "checkpoints" / "last.ckpt"
    content = last.read_bytes()
    last.write_bytes({"truncated": content[: len(content) // 2], "garbage": b"not a checkpoint at all\n" * 20,
                      "empty": b""}[damage])
    data = synthetic_data()
    cfg = tiny_config(tmp_path, *SETTINGS, "trainer.ema=0.7", "trainer.progress=true")
    with pytest.raises(DataError, match=r"last\.ckpt: not a readable checkpoint") as caught:
        run_folds(cfg, data, folds_for(data, cfg), log=lambda s: None)
    assert "\n" not in str(caught.value)


def test_an_unfinished_run_resumes_from_a_real_checkpoint_with_weight_averaging(trained, tmp_path):
    fold = _copy(trained, tmp_path)
    _unfinish(fold)
    data = synthetic_data()
    cfg = tiny_config(tmp_path, *SETTINGS, "trainer.ema=0.7", "trainer.progress=true")
    messages: list[str] = []
    run_folds(cfg, data, folds_for(data, cfg), log=messages.append)
    assert any("resuming from" in m for m in messages)
    assert (fold / "metrics.json").is_file()


def _export(run: Path, out: Path) -> subprocess.CompletedProcess:
    script = "import sys; from emofuse.cli import main; sys.argv = ['emofuse', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", script, "export", str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_export_refuses_a_checkpoint_with_a_payload_in_one_line_and_never_runs_it(trained, tmp_path):
    fold = _copy(trained, tmp_path)
    marker = tmp_path / "payload-ran"
    best = fold / "checkpoints" / next(p.name for p in (fold / "checkpoints").glob("best-*.ckpt"))
    _plant_payload(best, marker)
    result = _export(fold.parent, tmp_path / "model")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert best.name in lines[0] and "refused" in lines[0]
    assert not marker.exists() and not (tmp_path / "model").exists()


def test_export_of_a_real_run_with_weight_averaging_reads_its_checkpoint(trained, tmp_path):
    _copy(trained, tmp_path)
    result = _export(tmp_path / "run", tmp_path / "model")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model" / "model.json").is_file()
    record = json.loads((tmp_path / "model" / "model.json").read_text())
    assert "checkpoint_read_with" not in record["source"]  # one way to read: no fallback left to record


def test_export_refuses_a_fold_that_has_not_finished_training(tmp_path):
    """An interrupted fold has a best-*.ckpt of some mid-training epoch: it is not a model to ship."""
    from emofuse.errors import DataError
    from emofuse.training.export import export_fold

    fold = tmp_path / "run" / "fold-0"
    (fold / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    (fold / "normaliser.json").write_text("{}\n")
    (fold / "checkpoints" / "best-epoch04.ckpt").write_bytes(b"")
    with pytest.raises(DataError, match="has not finished training"):
        export_fold(fold, tmp_path / "model")
