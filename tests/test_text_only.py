"""Text-only data (issue 19, item 2): manifest rows without audio train, export and predict a
lexical model (B-LEX) from `--text`, `--texts` and the service; a model that reads audio refuses
them before any work, with their count and the first of them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from emofuse.cli import app
from emofuse.corpora import load_corpus
from emofuse.errors import ConfigError, DataError
from emofuse.inference.text import read_texts, require_text_only
from emofuse.models.modeldir import ModelInfo
from helpers import tone

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = {
    "happy": ["what a lovely day", "i am so glad you came", "this is wonderful news", "we won the game",
              "i love this song", "great to see you again", "that was a fun party", "thank you so much",
              "the best gift ever"],
    "sad": ["i miss her so much", "nobody came to see me", "the dog died last night", "i lost my job today",
            "it is all over now", "i feel so alone", "we had to say goodbye", "the rain never stops",
            "i cried all night"],
    "angry": ["stop lying to me", "get out of my house", "you broke it again", "this is not fair",
              "i told you a hundred times", "leave me alone now", "who took my money", "shut that door",
              "you never listen to me"],
}
CLASSES = sorted(SENTENCES)


def text_manifest(folder: Path, audio_rows: int = 0) -> Path:
    """27 text-only rows (three speakers) and `audio_rows` rows with a short tone, as a CSV table."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, sentences in SENTENCES.items():
        for i, sentence in enumerate(sentences):
            rows.append({"path": "", "label": label, "speaker": f"s{i % 3}", "transcript": sentence})
    for i in range(audio_rows):
        sf.write(folder / f"tone{i}.wav", tone(0.5), 16000)
        rows.append({"path": f"tone{i}.wav", "label": CLASSES[i % 3], "speaker": f"s{i % 3}", "transcript": ""})
    table = folder / "mixed.csv" if audio_rows else folder / "texts.csv"
    with table.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["path", "label", "speaker", "transcript"])
        writer.writeheader()
        writer.writerows(rows)
    return table


def glove_file(folder: Path) -> Path:
    """Tiny word vectors for the sentences' words: the class a word appears in leans on one axis."""
    rng = np.random.default_rng(0)
    lines, seen = [], set()
    for k, label in enumerate(CLASSES):
        for word in " ".join(SENTENCES[label]).split():
            if word not in seen:
                seen.add(word)
                vector = rng.normal(0, 0.3, 8)
                vector[k] += 1.0
                lines.append(word + " " + " ".join(f"{x:.4f}" for x in vector))
    path = folder / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare(table: Path) -> Path:
    out = table.with_suffix(".jsonl")
    result = CliRunner().invoke(app, ["prepare", "manifest", str(table), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def config(tmp_path: Path, manifest: Path, model: str, **data) -> Path:
    path = tmp_path / f"{model.lower()}.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"manifest": str(manifest), "store": str(tmp_path / "store"), "acoustic": None,
                 "words": f"glove-file:{glove_file(tmp_path)}", "align": "written",
                 "label_set": "auto", "min_class_count": 2, **data},
        "model": {"name": model, "hidden": 8, "layers": 1},
        "optim": {"lr": 1e-2},
        "trainer": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "progress": False, "threads": 1},
        "protocol": {"name": "speaker-kfold", "k": 3, "val_speakers": 1},
        "run_dir": str(tmp_path / "run"), "fold": 0,
    }))
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """B-LEX trained one epoch on the text-only manifest, exported."""
    tmp_path = tmp_path_factory.mktemp("text_only")
    manifest = prepare(text_manifest(tmp_path / "corpus"))
    result = CliRunner().invoke(app, ["train", str(config(tmp_path, manifest, "B-LEX"))])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return tmp_path / "model"


def test_manifest_row_without_path_but_with_transcript_is_text_only(tmp_path):
    corpus = load_corpus("manifest", text_manifest(tmp_path, audio_rows=2), None)
    silent = [u for u in corpus if u.audio is None]
    assert len(corpus) == 29 and len(silent) == 27
    assert silent[0].transcript == "what a lovely day" and silent[0].id == "mixed-2"  # line 2 of the table


def test_manifest_row_without_path_or_transcript_is_skipped_naming_why(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,label,speaker,transcript\n,happy,a,so glad\n,sad,b,\n")
    corpus = load_corpus("manifest", table, None)
    assert [u.transcript for u in corpus] == ["so glad"]
    assert "empty path (and no transcript)" in corpus.skipped[0].reason
    bare = tmp_path / "bare.csv"
    bare.write_text("label,speaker\nhappy,a\n")
    with pytest.raises(DataError, match="missing required column.*path \\(or transcript"):
        load_corpus("manifest", bare, None)


def test_acoustic_model_refuses_text_only_rows_before_any_work(tmp_path):
    manifest = prepare(text_manifest(tmp_path / "corpus", audio_rows=3))
    cfg = config(tmp_path, manifest, "B-ACO-1", acoustic="fbank40", words=None, align="none")
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert isinstance(result.exception, DataError), result.output
    line = str(result.exception)
    assert "27 of 30 utterance(s) have no audio" in line and "first: mixed-2" in line and "mixed.jsonl" in line
    assert not (tmp_path / "store").exists()  # refused before any extraction


def test_text_only_model_predicts_from_text(text_model):
    result = CliRunner().invoke(app, ["predict", str(text_model), "--text", "What a lovely day!", "--json"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["label"] in CLASSES and set(record["probabilities"]) == set(CLASSES)
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert [w["text"] for w in record["words"]] == ["What", "a", "lovely", "day", "!"]  # as written, trained so
    assert all(w["start"] is None for w in record["words"])


def test_text_only_model_predicts_each_line_and_each_csv_row(text_model, tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("i cried all night\n\nget out of my house\n")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", str(text_model), "--texts", str(lines), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["texts.txt:1", "texts.txt:3"]
    assert rows[0]["words"] == "i cried all night" and all(r["label"] in CLASSES for r in rows)
    table = tmp_path / "texts.csv"
    table.write_text('id,transcript\na,"we won the game"\nb,\n')
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["predict", str(text_model), "--texts", str(table), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records[0]["file"] == "a" and records[0]["label"] in CLASSES
    assert records[1]["file"] == "b" and "no words" in records[1]["error"]


def test_texts_csv_needs_a_transcript_column(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,text\na,hello\n")
    with pytest.raises(DataError, match="no transcript column"):
        read_texts(table)


def test_acoustic_model_given_text_says_it_needs_audio(text_model, tmp_path):
    info = ModelInfo(name="B-ACO-1", settings={}, spec={}, needs=["acoustic"], classes=CLASSES)
    with pytest.raises(ConfigError, match="B-ACO-1 needs audio"):
        require_text_only(info)
    record = json.loads((text_model / "model.json").read_text())
    acoustic = tmp_path / "acoustic-model"
    acoustic.mkdir()
    (acoustic / "model.json").write_text(json.dumps({**record, "needs": ["acoustic", "words"]}))
    result = CliRunner().invoke(app, ["predict", str(acoustic), "--text", "hello there"])
    assert isinstance(result.exception, ConfigError) and "needs audio" in str(result.exception)


def test_service_answers_a_transcript_without_a_file(text_model):
    from fastapi.testclient import TestClient

    from emofuse.serving.app import ServeSettings, create_app

    with TestClient(create_app(text_model, ServeSettings(workers=0))) as client:
        answer = client.post("/predict", data={"transcript": "you never listen to me"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in CLASSES
        assert [w["text"] for w in answer.json()["words"]] == ["you", "never", "listen", "to", "me"]
        nothing = client.post("/predict", data={})
        assert nothing.status_code == 422 and "transcript alone" in nothing.json()["detail"]
