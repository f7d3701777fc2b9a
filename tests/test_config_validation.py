"""Invalid model settings stop at load time with one line, and a run directory left with only
its config.yaml by a failed start does not lock the folder (issue 18, item 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emofuse.errors import ConfigError
from emofuse.training.config import load_config, save_config
from helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def model_config(tmp_path: Path, model: str, *overrides: str):
    """A config for `model` with nothing but its name in the model section."""
    raw = {"name": "t", "data": {"manifest": "m.jsonl", "acoustic": "compare_lld", "words": "glove50"},
           "model": {"name": model}, "run_dir": str(tmp_path / "run")}
    return load_config(None, list(overrides), raw=raw)


@pytest.mark.parametrize("override, model", [
    ("model.dropout=1.5", "B-ACO-1"),
    ("model.dropout=-0.1", "B-ACO-1"),
    ("model.dropout=nan", "B-ACO-1"),
    ("model.hidden=0", "B-ACO-1"),
    ("model.layers=0", "B-ACO-1"),
    ("model.hidden=-4", "H-MM-4"),
    ("model.heads=0", "attnfusion"),
    ("model.conv_filters=[64,0,128]", "fgcme"),
    ("model.ctc_weight=-1", "fgcme"),
    ("model.contrastive_weight=inf", "MV-B-ACO-1+H-MM-4"),
])
def test_an_out_of_range_model_setting_is_refused_with_one_line_naming_it(tmp_path, override, model):
    with pytest.raises(ConfigError, match="out of range") as caught:
        model_config(tmp_path, model, override)
    message = str(caught.value)
    assert override.split("=")[0] in message and "\n" not in message


@pytest.mark.parametrize("override, model", [
    ("model.dropout=0.0", "B-ACO-1"), ("model.dropout=0.99", "B-ACO-1"), ("model.hidden=1", "B-ACO-1"),
])
def test_settings_at_the_edge_of_their_range_are_accepted(tmp_path, override, model):
    cfg = tiny_config(tmp_path, override, model=model)
    key, value = override.split("=")
    assert cfg.model[key.split(".")[1]] == yaml.safe_load(value)


def test_a_size_whose_zero_means_derived_may_be_zero(tmp_path):
    cfg = model_config(tmp_path, "H-MM-4", "model.gmu_size=0", "model.attention_size=0")
    assert cfg.model["gmu_size"] == 0 == cfg.model["attention_size"]


def test_every_shipped_config_is_within_range():
    configs = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("_"))  # not bases
    assert configs
    for path in configs:
        try:
            load_config(path, [])
        except ConfigError as exc:
            assert "out of range" not in str(exc), path


def test_train_refuses_an_invalid_setting_before_touching_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    script = "import sys; from emofuse.cli import main; sys.argv = ['emofuse', *sys.argv[1:]]; main()"
    result = subprocess.run(
        [sys.executable, "-c", script, "train", str(ROOT / "configs" / "ravdess4" / "b-aco-1.yaml"),
         "model.dropout=1.5", f"run_dir={run_dir}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.dropout=1.5" in lines[0], result.stderr
    assert not run_dir.exists()


def test_a_run_directory_holding_only_its_config_takes_a_corrected_config(tmp_path):
    failed = tiny_config(tmp_path, "model.hidden=8")
    run_dir = failed.resolved_run_dir()
    save_config(failed, run_dir)  # the start then failed: nothing else was written
    corrected = tiny_config(tmp_path, "model.hidden=16")
    save_config(corrected, run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["hidden"] == 16


def test_a_run_directory_with_results_still_refuses_a_different_config(tmp_path):
    first = tiny_config(tmp_path, "model.hidden=8")
    run_dir = first.resolved_run_dir()
    save_config(first, run_dir)
    (run_dir / "fold-0").mkdir()
    with pytest.raises(ConfigError, match="different config.*model.hidden"):
        save_config(tiny_config(tmp_path, "model.hidden=16"), run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["hidden"] == 8


# ------------------------------------------------------------------ a refused command changes nothing


def _started_run(tmp_path: Path):
    """A run directory as a first `emofuse train` leaves it: config.yaml and a fold folder."""
    cfg = tiny_config(tmp_path)
    run_dir = cfg.resolved_run_dir()
    save_config(cfg, run_dir)
    (run_dir / "fold-0").mkdir()
    return run_dir, (run_dir / "config.yaml").read_bytes()


def test_a_fold_outside_the_protocol_is_refused_without_writing_config_yaml(tmp_path):
    from emofuse.training.run import run_folds
    from helpers import folds_for, synthetic_data

    run_dir, before = _started_run(tmp_path)
    data = synthetic_data()
    resumed = load_config(run_dir / "config.yaml", ["fold=7"])
    with pytest.raises(ConfigError, match="fold=7: the protocol gives folds 0..3"):
        run_folds(resumed, data, folds_for(data, resumed), run_dir, log=lambda line: None)
    assert (run_dir / "config.yaml").read_bytes() == before
    assert load_config(run_dir / "config.yaml", []).fold is None  # a plain resume still runs every fold


@pytest.mark.parametrize("override, problem", [
    ("trainer.devices=-2", "trainer.devices=-2 must be >= 1"),
    ("trainer.devices=0", "trainer.devices=0 must be >= 1"),
    ("trainer.accelerator=tpuu", "trainer.accelerator='tpuu'"),
    ("trainer.precision=12-true", "trainer.precision='12-true'"),
])
def test_a_trainer_setting_lightning_would_refuse_is_refused_before_config_yaml_is_written(
        tmp_path, monkeypatch, capsys, override, problem):
    from emofuse.cli import main

    run_dir, before = _started_run(tmp_path)
    monkeypatch.setattr(sys, "argv", ["emofuse", "train", str(run_dir / "config.yaml"), override])
    with pytest.raises(SystemExit) as stop:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and problem in lines[0], lines
    assert (run_dir / "config.yaml").read_bytes() == before
    assert load_config(run_dir / "config.yaml", []).trainer.devices == 1
