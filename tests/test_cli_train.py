"""`emofuse train` and `emofuse report` end to end: config errors before any work, and a short
real run (RAVDESS slice, fbank40 features extracted on the fly, one epoch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emofuse.cli import app

ROOT = Path(__file__).resolve().parents[1]


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`emofuse ARGS` through the real entry point (its one-line error handling included)."""
    from emofuse.cli import main

    monkeypatch.setattr(sys, "argv", ["emofuse", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code, capsys.readouterr().err


def test_an_unknown_key_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "train", str(ROOT / "configs" / "ravdess4" / "b-aco-1.yaml"),
                         "trainer.max_epoch=1", f"run_dir={tmp_path / 'run'}")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "trainer.max_epoch" in lines[0] and "max_epochs" in lines[0]
    assert not (tmp_path / "run").exists()


def test_an_unknown_model_lists_the_registered_ones(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "train", str(ROOT / "configs" / "meld" / "b-lex.yaml"), "model.name=BERT")
    assert code == 2 and "unknown model 'BERT'" in err and "B-LEX" in err


@pytest.mark.data
def test_train_one_epoch_on_a_real_ravdess_slice_then_report(ravdess_root, tmp_path):
    from emofuse.corpora import load_corpus

    corpus = load_corpus("ravdess", ravdess_root, "ravdess4")
    actors = {"Actor_01", "Actor_02", "Actor_03", "Actor_04"}
    corpus.subset([i for i, u in enumerate(corpus) if u.speaker in actors]).write(tmp_path / "slice.jsonl")
    config = tmp_path / "ravdess4" / "tiny.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({
        "data": {"manifest": str(tmp_path / "slice.jsonl"), "label_set": "ravdess4", "store": str(tmp_path / "store"),
                 "acoustic": "fbank40", "align": "none", "max_frames": 300},
        "model": {"name": "B-ACO-1", "hidden": 8, "layers": 1},
        "optim": {"lr": 1e-3},
        "trainer": {"max_epochs": 1, "batch_size": 32, "accelerator": "cpu", "progress": False, "threads": 1},
        "protocol": {"name": "speaker-kfold", "k": 2, "val_speakers": 1},
        "run_dir": str(tmp_path / "run"),
    }))
    result = CliRunner().invoke(app, ["train", str(config), "fold=0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "mean ± std" in result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds_done"] == 1 and metrics["folds_total"] == 2
    assert metrics["classes"] == ["angry", "happy", "neutral", "sad"]
    fold = metrics["folds"][0]
    assert fold["n_test"] == 56 and fold["test"]["n"] == 56  # two held-out actors x 28 utterances
    assert 0.0 <= fold["test"]["ua"] <= 1.0
    assert (run / "report.md").is_file() and (run / "confusion.png").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["fold"] == 0 and saved["data"]["acoustic"] == "fbank40"

    table = tmp_path / "table.md"
    result = CliRunner().invoke(app, ["report", str(run), str(run), "--out", str(table)])
    assert result.exit_code == 0, result.output
    assert table.read_text().count("| run | B-ACO-1 |") == 2

    # The manifest edited since (one utterance fewer): the resume is refused in one line before
    # anything is written, and config.yaml still names the manifest the finished fold came from.
    rows = (tmp_path / "slice.jsonl").read_text().splitlines()
    (tmp_path / "edited.jsonl").write_text("\n".join(rows[:-1]) + "\n")  # the first row is the header
    before = (run / "config.yaml").read_text()
    result = CliRunner().invoke(app, ["train", str(config), "fold=0", f"data.manifest={tmp_path / 'edited.jsonl'}"])
    assert result.exit_code != 0
    assert "split.json" in str(result.exception) and "differ from the current data" in str(result.exception)
    assert (run / "config.yaml").read_text() == before
