"""Whisper as the front end, end to end: `emofuse train` of H-MM-4 (one epoch) on Whisper encoder
frames and the words Whisper hears in 16 RAVDESS clips, then `emofuse export`, `emofuse predict`
of a clip without a transcript and `POST /predict` to the service: every step reads the same
Whisper model, and every answer names the recogniser its words came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from emofuse.cli import app
from helpers import EMOTION_CODES, STATEMENT_1, STATEMENT_2, ravdess_files

runner = CliRunner()
pytestmark = [pytest.mark.data, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def whisper_run(ravdess_root, tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, model directory) of H-MM-4 on Whisper frames and words, fold 0 only."""
    work = tmp_path_factory.mktemp("whisper-e2e")
    rows = []
    for path in ravdess_files(ravdess_root, actors=range(1, 5)):
        code = path.stem.split("-")
        rows.append({"id": path.stem, "audio": str(path), "speaker": f"Actor_{code[6]}",
                     "label": EMOTION_CODES[code[2]], "original_label": EMOTION_CODES[code[2]]})
    if len(rows) < 16:
        pytest.skip(f"RAVDESS under {ravdess_root} lacks the clips of actors 1-4")
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {
        "name": "whisper-h-mm-4", "corpus": "ravdess-tiny", "seed": 0, "fold": 0,
        "data": {"manifest": str(manifest), "label_set": "ravdess4", "store": str(work / "store"),
                 "acoustic": "whisper", "words": "glove50", "align": "asr", "asr": "whisper"},
        "model": {"name": "H-MM-4", "hidden": 8, "layers": 1, "word_layers": 1, "dropout": 0.0},
        "optim": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
        "trainer": {"max_epochs": 1, "batch_size": 8, "patience": None, "progress": False, "threads": 1},
        "protocol": {"name": "speaker-kfold", "k": 4, "val_speakers": 1},
        "run_dir": str(work / "run"),
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = runner.invoke(app, ["train", str(work / "config.yaml")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(work / "run"), "--out", str(work / "model")])
    assert result.exit_code == 0, result.output
    return work / "run", work / "model"


def test_training_read_whisper_frames_and_the_words_whisper_heard(whisper_run):
    run_dir, _ = whisper_run
    store = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["store"])
    (align_dir,) = (store / "align").iterdir()
    entries = [json.loads(p.read_text()) for p in align_dir.glob("*.json") if p.name != "settings.json"]
    assert len(entries) == 16 and all(e["recogniser"] == "whisper tiny.en" for e in entries)
    heard = [" ".join(w[0] for w in e["words"]) for e in entries]
    expected = {" ".join(s.lower().split()) for s in (STATEMENT_1, STATEMENT_2)}
    assert sum(h in expected for h in heard) >= 14, heard  # Whisper tiny.en: WER ~0.03 on RAVDESS
    (frames_dir,) = (store / "frames").iterdir()
    assert frames_dir.name.startswith("whisper-")
    assert json.loads((frames_dir / "settings.json").read_text())["hop"] == 0.02


def test_the_exported_model_records_its_whisper_weights(whisper_run):
    from emofuse.align.whisper import PACKAGED_SHA256

    _, model_dir = whisper_run
    info = json.loads((model_dir / "model.json").read_text())
    assert info["acoustic"] == "whisper" and info["asr"] == "whisper" and info["hop"] == 0.02
    assert info["encoders"]["acoustic"]["weights_sha256"] == PACKAGED_SHA256
    assert info["encoders"]["asr"]["weights_sha256"] == PACKAGED_SHA256


def test_predict_without_a_transcript_reads_whisper_words(whisper_run, ravdess_root):
    _, model_dir = whisper_run
    clip = ravdess_files(ravdess_root, actors=[5], statement="02")[0]
    result = runner.invoke(app, ["predict", str(model_dir), str(clip), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["recogniser"] == "whisper tiny.en" and answer["align_source"] == "asr"
    assert [w["text"] for w in answer["words"]] == STATEMENT_2.lower().split()
    assert answer["warnings"] == []


def test_predict_with_sphinx_names_pocketsphinx(whisper_run, ravdess_root):
    _, model_dir = whisper_run
    clip = ravdess_files(ravdess_root, actors=[5], statement="02")[0]
    result = runner.invoke(app, ["predict", str(model_dir), str(clip), "--json", "--asr", "sphinx"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recogniser"] == "pocketsphinx en-us"


def test_the_service_answers_with_whisper_words(whisper_run, ravdess_root):
    from emofuse.serving.app import create_app

    _, model_dir = whisper_run
    clip = ravdess_files(ravdess_root, actors=[6], statement="01")[0]
    service = create_app(model_dir, workers=0, max_seconds=60.0)
    with TestClient(service) as client:
        response = client.post("/predict", files={"file": (clip.name, clip.read_bytes(), "audio/flac")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recogniser"] == "whisper tiny.en"
    assert [w["text"] for w in body["words"]] == STATEMENT_1.lower().split()
