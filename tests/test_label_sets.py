"""Label sets without code (issue 19, item 1): a built-in name, `auto`, a YAML file, or inline
classes with a map, each end to end from a manifest with made-up classes to a prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emofuse.cli import app
from emofuse.corpora import load_corpus
from emofuse.corpora.labels import auto_label_set, custom_label_set, get_label_set, read_label_set
from emofuse.errors import ConfigError, DataError, LabelError
from emofuse.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# RAVDESS emotions renamed into made-up classes (and made-up original labels)
MADE_UP = {"angry": "gr", "happy": "yay", "sad": "meh"}


def made_up_manifest(ravdess_root: Path, path: Path, actors=("Actor_01", "Actor_02", "Actor_03", "Actor_04"),
                     extra: dict | None = None) -> Path:
    """12 utterances per actor: angry/happy/sad relabelled gr/yay/meh (+ `extra` {label: count} of actor 1's)."""
    corpus = load_corpus("ravdess", ravdess_root, "ravdess8")
    rows, seen = [], {}
    for u in corpus:
        if u.speaker not in actors or u.label not in MADE_UP:
            continue
        key = (u.speaker, u.label)
        if seen.get(key, 0) >= 4:
            continue
        seen[key] = seen.get(key, 0) + 1
        u.label = u.original_label = MADE_UP[u.label]
        rows.append(u)
    for label, count in (extra or {}).items():
        for u in [u for u in corpus if u.speaker == actors[0] and u.label == "neutral"][:count]:
            u.label = u.original_label = label
            rows.append(u)
    from emofuse.corpora.base import Corpus

    return Corpus(rows, name="madeup").write(path)


def train_config(tmp_path: Path, manifest: Path, **data) -> Path:
    config = tmp_path / "madeup" / "tiny.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump({
        "data": {"manifest": str(manifest), "store": str(tmp_path / "store"), "acoustic": "fbank40", "align": "none",
                 "max_frames": 200, **data},
        "model": {"name": "B-ACO-1", "hidden": 8, "layers": 1},
        "optim": {"lr": 1e-3},
        "trainer": {"max_epochs": 1, "batch_size": 16, "accelerator": "cpu", "progress": False, "threads": 1},
        "protocol": {"name": "speaker-kfold", "k": 2, "val_speakers": 1},
        "run_dir": str(tmp_path / "run"), "fold": 0,
    }))
    return config


def train_export_predict(tmp_path: Path, config: Path, audio: str) -> tuple[dict, dict, str]:
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = tmp_path / "run"
    from emofuse.inference.predictor import Predictor
    from emofuse.training.export import export_run

    export_run(run, run / "model")

    model = json.loads((run / "model" / "model.json").read_text())
    label = Predictor(run / "model", warm=False).predict_file(audio).label
    return json.loads((run / "data.json").read_text()), model, label


def first_audio(manifest: Path) -> str:
    from emofuse.corpora.base import Corpus

    return Corpus.read(manifest)[0].audio


@pytest.mark.data
def test_auto_label_set_trains_exports_and_predicts_the_made_up_classes(ravdess_root, tmp_path):
    manifest = made_up_manifest(ravdess_root, tmp_path / "m.jsonl", extra={"rare": 3})
    checks, model, label = train_export_predict(
        tmp_path, train_config(tmp_path, manifest, label_set="auto", min_class_count=10), first_audio(manifest))
    assert model["classes"] == ["gr", "meh", "yay"]  # sorted; 'rare' has 3 < 10 utterances
    assert checks["label_set"]["classes"] == ["gr", "meh", "yay"] and checks["label_set"]["map"] == {"rare": None}
    assert any("rare (3)" in w for w in checks["warnings"])
    assert "rare (3)" in (tmp_path / "run" / "report.md").read_text()
    assert label in model["classes"]


@pytest.mark.data
def test_label_set_file_trains_exports_and_predicts(ravdess_root, tmp_path):
    manifest = made_up_manifest(ravdess_root, tmp_path / "m.jsonl")
    sets = tmp_path / "moods.yaml"
    sets.write_text(yaml.safe_dump({"name": "moods", "classes": ["cross", "glad"], "map": {"gr": "cross", "yay": "glad", "meh": None}}))
    checks, model, label = train_export_predict(tmp_path, train_config(tmp_path, manifest, label_set=str(sets)),
                                                first_audio(manifest))
    assert model["classes"] == ["cross", "glad"]
    assert checks["label_set"] == {"name": "moods", "classes": ["cross", "glad"],
                                   "map": {"gr": "cross", "meh": None, "yay": "glad"}}
    assert model["label_set"] == "moods"  # the mapping travels with the exported classes
    assert model["label_map"] == {"gr": "cross", "meh": None, "yay": "glad"}
    assert label in ("cross", "glad")


@pytest.mark.data
def test_inline_classes_with_a_map_train_export_and_predict(ravdess_root, tmp_path):
    manifest = made_up_manifest(ravdess_root, tmp_path / "m.jsonl")
    checks, model, label = train_export_predict(
        tmp_path, train_config(tmp_path, manifest, classes=["yay", "low"], label_map={"meh": "low", "gr": None}),
        first_audio(manifest))
    assert model["classes"] == ["yay", "low"]  # the config's order
    assert checks["label_set"]["map"] == {"gr": None, "meh": "low"}
    assert label in ("yay", "low")


@pytest.mark.data
def test_an_unknown_label_names_the_label_the_manifest_and_the_known_labels(ravdess_root, tmp_path):
    from emofuse.training.corpus import load_labelled

    manifest = made_up_manifest(ravdess_root, tmp_path / "m.jsonl")
    cfg = load_config(train_config(tmp_path, manifest, label_set=None, classes=["yay", "meh"]))
    with pytest.raises(DataError) as caught:
        load_labelled(cfg, log=lambda m: None, progress=False)
    message = str(caught.value)
    assert str(manifest) in message and "'gr'" in message and "known labels: meh, yay" in message


def test_a_label_set_file_mapping_to_an_unknown_class_names_file_label_and_classes(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nclasses: [calm, tense]\nmap: {angry: furious}\n")
    with pytest.raises(LabelError) as caught:
        read_label_set(path)
    message = str(caught.value)
    assert str(path) in message and "'angry'" in message and "'furious'" in message and "calm, tense" in message


def test_config_errors_name_the_label_set_and_list_the_choices(tmp_path):
    base = ROOT / "configs" / "ravdess4" / "b-aco-1.yaml"
    with pytest.raises(ConfigError, match="unknown label set 'sevens'.*ravdess4.*auto.*YAML"):
        load_config(base, ["data.label_set=sevens"])
    with pytest.raises(ConfigError, match="label-set file not found"):
        load_config(base, [f"data.label_set={tmp_path / 'missing.yaml'}"])
    with pytest.raises(ConfigError, match="both define the classes"):
        load_config(base, ["data.classes=[a, b]"])
    with pytest.raises(ConfigError, match="maps to 'c', which is not a class"):
        load_config(base, ["data.label_set=null", "data.classes=[a, b]", "data.label_map={x: c}"])
    with pytest.raises(ConfigError, match="data.label_set is null"):
        load_config(base, ["data.label_set=null"])


def test_auto_keeps_classes_with_enough_utterances_sorted_and_reports_the_rest():
    auto = auto_label_set(["b"] * 10 + ["a"] * 12 + ["c"] * 2, min_count=10)
    assert auto.label_set.classes == ("a", "b") and auto.dropped == {"c": 2}
    assert auto.label_set.map("c") is None


def test_built_in_sets_still_resolve_by_name():
    assert get_label_set("ravdess4").classes == ("angry", "happy", "neutral", "sad")
    assert custom_label_set("x", ["A", "b"]).classes == ("a", "b")


def test_prepare_accepts_auto_and_a_label_set_file(tmp_path):
    csv = tmp_path / "corpus.csv"
    import numpy as np
    import soundfile as sf

    lines = ["path,label,speaker"]
    for i, lab in enumerate(["x"] * 10 + ["y"] * 3):
        sf.write(tmp_path / f"a{i}.wav", np.random.default_rng(i).normal(0, 0.1, 1600).astype(np.float32), 16000)
        lines.append(f"{tmp_path / f'a{i}.wav'},{lab},s{i % 2}")
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "auto.jsonl"
    result = CliRunner().invoke(app, ["prepare", "manifest", str(csv), "--out", str(out), "--label-set", "auto"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    from emofuse.corpora.base import Corpus

    assert set(Corpus.read(out).labels) == {"x"}
    sets = tmp_path / "set.yaml"
    sets.write_text("name: xy\nclasses: [ex]\nmap: {x: ex, y: null}\n")
    result = CliRunner().invoke(app, ["prepare", "manifest", str(csv), "--out", str(out), "--label-set", str(sets)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert set(Corpus.read(out).labels) == {"ex"}


def test_a_label_map_applies_to_the_original_label_even_when_the_label_is_already_a_class():
    """A prepared iemocap4 manifest calls excited speech `happy` (original `exc`): a map that
    leaves `exc` out must leave those utterances out, as data.json says it does."""
    from emofuse.corpora.base import Corpus, Utterance
    from emofuse.corpora.labels import custom_label_set
    from emofuse.training.data import map_labels

    corpus = Corpus([Utterance("a", None, "s1", "happy", "exc"), Utterance("b", None, "s1", "happy", "hap"),
                     Utterance("c", None, "s1", "sad", "sad")], name="prepared")
    label_set = custom_label_set("mine", ["happy", "sad"], {"hap": "happy", "exc": None})
    kept, labels = map_labels(corpus, label_set, "prepared.jsonl")
    assert [u.id for u in kept] == ["b", "c"] and labels.tolist() == [0, 1]
