"""Experiment configs: YAML + dotted overrides, checked before any work, saved with the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emofuse.errors import ConfigError
from emofuse.training.config import load_config, main, save_config
from emofuse.training.schema import update_readme

ROOT = Path(__file__).resolve().parents[1]
# a file whose name starts with "_" is a base other configs name in `defaults:`, not an experiment
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*/*.yaml") if not p.name.startswith("_"))


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


# ---------------------------------------------------------------------------------------
# Base files (`defaults:`), where a refusal comes from, and the README's key tables

BASE = """
data: {manifest: m.jsonl, label_set: ravdess4, acoustic: compare_lld, max_frames: 700}
protocol: {k: 4, val_speakers: 2}
"""


def test_a_config_is_merged_over_its_defaults_relative_to_itself(tmp_path):
    write(tmp_path, BASE, name="_base")
    path = write(tmp_path, "defaults: [_base.yaml]\ndata: {max_frames: 350}\nmodel: {name: B-ACO-1}\n")
    cfg = load_config(path)
    assert (cfg.data.manifest, cfg.data.max_frames, cfg.data.acoustic) == ("m.jsonl", 350, "compare_lld")
    assert (cfg.protocol.k, cfg.protocol.val_speakers) == (4, 2)
    assert (cfg.name, cfg.corpus) == ("exp", "ravdess4")  # from the config's own file, not the base's


def test_defaults_merge_in_order_each_over_its_own_defaults(tmp_path):
    write(tmp_path, BASE, corpus="shared", name="corpus")
    write(tmp_path, "defaults: ../shared/corpus.yaml\nprotocol: {k: 6}\n", name="_folds")
    write(tmp_path, "protocol: {k: 3, val_speakers: 1}\n", name="_small")
    path = write(tmp_path, "defaults: [_folds.yaml, _small.yaml]\nmodel: {name: B-ACO-1}\n")
    cfg = load_config(path, ["protocol.k=5"])
    assert (cfg.protocol.k, cfg.protocol.val_speakers, cfg.data.max_frames) == (5, 1, 700)
    assert load_config(path).protocol.k == 3  # the later base wins over the earlier one


def test_defaults_that_are_missing_or_lead_back_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"_gone.yaml: config file not found \(a default of .*exp.yaml\)"):
        load_config(write(tmp_path, "defaults: [_gone.yaml]\nmodel: {name: B-ACO-1}\n"))
    write(tmp_path, "defaults: [exp.yaml]\n", name="_loop")
    with pytest.raises(ConfigError, match="defaults lead back to it") as caught:
        load_config(write(tmp_path, "defaults: [_loop.yaml]\nmodel: {name: B-ACO-1}\n"))
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="defaults=3"):
        load_config(write(tmp_path, "defaults: 3\nmodel: {name: B-ACO-1}\n"))


def test_a_refused_key_names_the_file_that_set_it(tmp_path):
    base = write(tmp_path, BASE.replace("k: 4", "folds: 4"), name="_base")
    path = write(tmp_path, "defaults: [_base.yaml]\nmodel: {name: B-ACO-1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{base}: unknown config key 'protocol.folds'; valid protocol keys: name, k")
    write(tmp_path, BASE, name="_base")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["trainer.max_epochs=many"])
    assert str(caught.value) == f"{path}, on the command line: trainer.max_epochs='many': expected an integer"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, BASIC.replace("hidden: 32", "hidden: wide")))
    assert str(caught.value) == f"{tmp_path / 'ravdess4' / 'exp.yaml'}: model.hidden='wide': expected an integer"


def test_an_override_keeps_braces_and_text_where_the_key_holds_a_string(tmp_path):
    text = BASIC.replace("B-ACO-1, hidden: 32", "teacher-student").replace("compare_lld", "compare_lld, words: minilm")
    path = write(tmp_path, text, name="ts")
    cfg = load_config(path, ["seed=1", "trainer.threads=1", "model.teacher_checkpoint=DIR/fold-{fold}", "name=007"])
    assert cfg.model["teacher_checkpoint"] == "DIR/fold-{fold}" and (cfg.seed, cfg.trainer.threads) == (1, 1)
    assert cfg.name == "007"
    assert load_config(path, ["model.teacher_checkpoint={fold}"]).model["teacher_checkpoint"] == "{fold}"


def test_an_override_of_a_mapping_setting_is_read_as_a_mapping(tmp_path):
    """A setting typed dict[str, ...] holds str among its type arguments, but is no string."""
    path = write(tmp_path, BASIC.replace("B-ACO-1, hidden: 32", "MV-B-ACO-1+H-MM-4").replace("compare_lld", "compare_lld, words: minilm"), name="mv")
    cfg = load_config(path, ["model.view_m_settings={word_layers: 1}"])
    assert cfg.model["view_m_settings"] == {"word_layers": 1}


def test_the_saved_config_is_flat_and_reruns_without_its_base_files(tmp_path):
    base = write(tmp_path, BASE, name="_base")
    cfg = load_config(write(tmp_path, "defaults: [_base.yaml]\nmodel: {name: B-ACO-1}\n"))
    run_dir = tmp_path / "run"
    save_config(cfg, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "defaults" not in saved and saved["protocol"]["k"] == 4
    base.unlink()
    assert load_config(run_dir / "config.yaml").to_dict() == cfg.to_dict()


def test_every_ravdess_and_iemocap_config_starts_from_its_folder_base():
    for folder in ("ravdess4", "ravdess8", "iemocap4"):
        base = ROOT / "configs" / folder / "_base.yaml"
        shared = yaml.safe_load(base.read_text())["data"]
        for path in sorted((ROOT / "configs" / folder).rglob("*.yaml")):
            if path != base:
                own = yaml.safe_load(path.read_text())
                assert (path.parent / own["defaults"][0]).resolve() == base.resolve(), path
                assert not set(own.get("data", {})) & {"corpus", "path", "store"}, f"{path} repeats its base"
                cfg = load_config(path)
                assert (cfg.data.corpus, cfg.data.store) == (shared["corpus"], shared["store"]), path


def test_the_readme_key_tables_are_generated_from_the_schema():
    readme = (ROOT / "configs" / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- keys: ") == 6  # top level, data, optim, trainer, augment, protocol
    assert update_readme(readme) == readme, "run: python -m emofuse.training.config --readme"
    assert "| `device` | `auto` |" in readme and "| `lr` | `1e-4` |" in readme


def test_the_readme_command_rewrites_a_stale_table(tmp_path, capsys):
    readme = (ROOT / "configs" / "README.md").read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(readme.replace("| `seed` | `0` |", "| `seed` | `7` |"))
    main(["--readme", str(stale)])
    assert stale.read_text() == readme and "tables regenerated" in capsys.readouterr().out
