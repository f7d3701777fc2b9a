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
    from emofuse.serving.app import ServeSettings, create_app

    _, model_dir = whisper_run
    clip = ravdess_files(ravdess_root, actors=[6], statement="01")[0]
    service = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0))
    with TestClient(service) as client:
        response = client.post("/predict", files={"file": (clip.name, clip.read_bytes(), "audio/flac")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recogniser"] == "whisper tiny.en"
    assert [w["text"] for w in body["words"]] == STATEMENT_1.lower().split()


def _acoustic_models() -> list[str]:
    from emofuse.models.base import get_model, model_names

    return [n for n in model_names() if "acoustic" in get_model(n).needs
            and not get_model(n).fitted  # the linear probe: a logistic back-end, no network to train
            and n not in ("MV-frozen", "teacher-student", "teacher-student+attn")]  # these three need a teacher


@pytest.fixture(scope="module")
def whisper_batch(ravdess_root):
    """Two RAVDESS clips as the models read them: Whisper frames (384-d, 20 ms, centred 10 ms
    before the grid), Whisper's words and their times, random 32-d word vectors."""
    import numpy as np

    from emofuse.align import make_recogniser
    from emofuse.features.audio import load_audio
    from emofuse.features.batch import UtteranceFeatures, collate
    from emofuse.features.frames import get_frame_feature

    frame, asr = get_frame_feature("whisper"), make_recogniser("whisper")
    rng = np.random.default_rng(0)
    items = []
    for i, path in enumerate(ravdess_files(ravdess_root, actors=[7])[:2]):
        audio = load_audio(path, 16000)
        words = asr.transcribe(audio).words
        items.append(UtteranceFeatures(
            id=str(i), acoustic=frame.extract(audio), acoustic_hop=frame.hop, acoustic_centre_offset=frame.centre_offset,
            words=[w.text for w in words], word_times=np.array([[w.start, w.end] for w in words], np.float32),
            word_vectors=rng.standard_normal((len(words), 32)).astype(np.float32)))
        items[-1].speech_mask = np.ones(len(items[-1].acoustic), bool)
    return collate(items, [0, 1], token_ids=[list(range(1, len(it.words) + 1)) for it in items])


@pytest.mark.parametrize("name", _acoustic_models())
def test_every_acoustic_model_trains_on_whisper_frames_and_words(name, whisper_batch):
    import torch

    from emofuse.models.base import InputSpec, get_model

    settings = {"freq_bins": 384} if name.lower().startswith("can") else {}  # CAN: Whisper's 384 dims as its "bins"
    if name.lower().startswith("nmt"):
        settings = {"frontend": "frames"}  # frames in place of the waveform CNN
    torch.manual_seed(0)
    model = get_model(name).build(InputSpec(num_classes=4, acoustic_dim=384, word_dim=32, vocab_size=10), **settings)
    out = model(whisper_batch)
    assert out.logits.shape == (2, 4) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
