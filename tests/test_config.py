"""Experiment configs: YAML + dotted overrides, checked before any work, saved with the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emofuse.errors import ConfigError
from emofuse.training.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


def write(tmp_path: Path, text: str, corpus: str = "ravdess4", name: str = "exp") -> Path:
    path = tmp_path / corpus / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASIC = """
data: {manifest: m.jsonl, label_set: ravdess4, acoustic: compare_lld}
model: {name: B-ACO-1, hidden: 32}
optim: {lr: 1e-4}
"""


def test_name_and_corpus_default_to_the_file_and_its_folder(tmp_path):
    cfg = load_config(write(tmp_path, BASIC))
    assert (cfg.name, cfg.corpus) == ("exp", "ravdess4")
    assert cfg.resolved_run_dir() == Path("runs/ravdess4/exp")


def test_yaml_scientific_notation_is_read_as_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as a string; the schema says float.
    assert load_config(write(tmp_path, BASIC)).optim.lr == pytest.approx(1e-4)


def test_dotted_overrides_are_coerced_to_the_schema_types(tmp_path):
    cfg = load_config(write(tmp_path, BASIC), [
        "trainer.max_epochs=1", "model.dropout=0.4", "run_dir=/tmp/x", "data.max_frames=700",
        "data.words=null", "trainer.devices=2", "optim.grad_clip=null", "data.normalise=false", "seed=7",
    ])
    assert cfg.trainer.max_epochs == 1 and isinstance(cfg.trainer.max_epochs, int)
    assert cfg.model == {"name": "B-ACO-1", "hidden": 32, "dropout": 0.4}
    assert cfg.run_dir == "/tmp/x" and cfg.resolved_run_dir() == Path("/tmp/x")
    assert cfg.data.max_frames == 700 and cfg.data.words is None
    assert cfg.trainer.devices == 2 and cfg.optim.grad_clip is None
    assert cfg.data.normalise is False and cfg.seed == 7
    assert load_config(write(tmp_path, BASIC), ["trainer.devices=auto"]).trainer.devices == "auto"


@pytest.mark.parametrize("override, listed", [
    ("trainer.max_epoch=1", "max_epochs"),
    ("optimiser.lr=1", "optim"),
    ("model.dropuot=0.4", "dropout"),
    ("protocol.folds=3", "val_speakers"),
])
def test_an_unknown_key_fails_listing_the_valid_ones(tmp_path, override, listed):
    with pytest.raises(ConfigError, match=listed):
        load_config(write(tmp_path, BASIC), [override])


def test_an_unknown_model_name_fails_listing_the_registered_models(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'B-ACO-9'.*B-ACO-1.*B-LEX"):
        load_config(write(tmp_path, BASIC), ["model.name=B-ACO-9"])


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=many", "expected an integer"),
    ("optim.lr=fast", "expected a number"),
    ("optim.name=rmsprop", "adam, adamw, sgd"),
    ("protocol.name=random", "speaker-kfold"),
    ("data.label_set=ravdess5", "ravdess4"),
    ("data.align=magic", "forced"),
    ("trainer.batch_size=0", "batch_size"),
    ("data.normalise=maybe", "valid: fold, speaker, utterance, none"),
    ("data.trim=-0.1", "data.trim=-0.1 must be seconds >= 0"),
    ("data.acoustic=null", "reads acoustic frames"),
    ("nokey", "key=value"),
])
def test_a_bad_value_fails_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASIC), [override])


def test_a_text_model_without_word_vectors_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="set data.words"):
        load_config(write(tmp_path, BASIC), ["model.name=B-LEX", "model.hidden=8"])


def test_missing_or_broken_files_give_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed"))
    with pytest.raises(ConfigError, match="needs a model section"):
        load_config(write(tmp_path, "data: {manifest: m.jsonl}"))


def test_environment_variables_in_paths_are_expanded(tmp_path, monkeypatch):
    text = BASIC.replace("manifest: m.jsonl", "corpus: ravdess, path: '${EMOFUSE_TEST_DATA:-../data}/ravdess'")
    monkeypatch.delenv("EMOFUSE_TEST_DATA", raising=False)
    assert load_config(write(tmp_path, text)).data.path == "../data/ravdess"
    monkeypatch.setenv("EMOFUSE_TEST_DATA", "/srv/d")
    assert load_config(write(tmp_path, text)).data.path == "/srv/d/ravdess"


def test_the_resolved_config_is_saved_and_a_different_experiment_is_refused(tmp_path):
    path = write(tmp_path, BASIC)
    run_dir = tmp_path / "run"
    cfg = load_config(path, ["model.dropout=0.3"])
    save_config(cfg, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["dropout"] == 0.3 and saved["optim"]["lr"] == pytest.approx(1e-4)
    assert load_config(None, raw=saved).to_dict() == cfg.to_dict()  # round trip
    save_config(load_config(path, ["model.dropout=0.3", "trainer.devices=2", "fold=1"]), run_dir)  # where/how: ok
    (run_dir / "fold-0").mkdir()  # a run with results (a folder holding only config.yaml takes a new one)
    with pytest.raises(ConfigError, match=r"different config \(model.dropout\)"):
        save_config(load_config(path, ["model.dropout=0.5"]), run_dir)


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.model["name"]
