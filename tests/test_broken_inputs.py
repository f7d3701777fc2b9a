"""Broken inputs give an error or a plain warning, never a silent confident answer (issue 18,
items 3 and 6; issue 27 item 2): silence, noise, a transcript nobody said, clipped audio, a model directory whose
class list, needs, field types, normaliser or weights do not fit, a stored feature entry of
the wrong shape, and a folder or CSV given where a manifest belongs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from emofuse.corpora.base import Corpus
from emofuse.errors import DataError
from emofuse.features.normalise import Normalisation, Normaliser
from emofuse.models.modeldir import load_model_dir
from emofuse.serving.app import http_status
from helpers import CLASSES, STATEMENT_1, make_corpus, ravdess_files, registry_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

UNRELATED = "the quarterly revenue forecast exceeded every analyst expectation considerably"


def _edit_json(model_dir: Path, **changes) -> None:
    path = model_dir / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def words_model(tmp_path_factory) -> Path:
    return registry_model_dir(tmp_path_factory.mktemp("hmm4") / "model", "H-MM-4", "fbank40", "glove50")


@pytest.fixture(scope="module")
def words_predictor(words_model):
    from emofuse.inference.predictor import Predictor

    return Predictor(words_model, frames_process=False)


@pytest.fixture
def acoustic_model(tmp_path) -> Path:
    return registry_model_dir(tmp_path / "model", "B-ACO-1", "fbank40", None)


@pytest.fixture(scope="module")
def speech(ravdess_root) -> tuple[Path, np.ndarray]:
    from emofuse.features.audio import load_audio

    path = ravdess_files(ravdess_root, actors=[1])[0]  # says STATEMENT_1
    return path, load_audio(path, 16000)


# ------------------------------------------------------------------ recordings and transcripts

def test_silence_with_a_transcript_is_no_speech_not_an_emotion(words_predictor):
    from emofuse.inference.predictor import NoSpeech

    with pytest.raises(NoSpeech, match="no speech in the audio") as exc:
        words_predictor.predict_audio(np.zeros(16000 * 60, np.float32), STATEMENT_1, label="silence.wav")
    assert http_status(exc.value) == 422 and "silence.wav" in str(exc.value)


def test_an_acoustic_model_refuses_silence_too(acoustic_model):
    from emofuse.inference.predictor import NoSpeech, Predictor

    quiet = (np.random.default_rng(0).standard_normal(16000 * 3) * 1e-5).astype(np.float32)
    with pytest.raises(NoSpeech):
        Predictor(acoustic_model, warm=False).predict_audio(quiet)


def test_a_transcript_that_cannot_be_aligned_is_refused(words_predictor, speech):
    from emofuse.inference.predictor import TranscriptMismatch

    path, audio = speech
    with pytest.raises(TranscriptMismatch, match="could not be aligned.*--force-transcript") as exc:
        words_predictor.predict_audio(audio, UNRELATED, label=str(path))
    assert http_status(exc.value) == 422


def test_a_forced_transcript_is_used_with_a_warning(words_predictor, speech):
    path, audio = speech
    result = words_predictor.predict_audio(audio, UNRELATED, label=str(path), force_transcript=True)
    assert [w.text for w in result.words][:3] == ["the", "quarterly", "revenue"]
    assert any("could not be aligned" in w for w in result.to_json()["warnings"])


def test_the_right_transcript_gives_no_warnings(words_predictor, speech):
    path, audio = speech
    record = words_predictor.predict_audio(audio, STATEMENT_1, label=str(path)).to_json()
    assert record["warnings"] == [] and record["align_source"] == "forced"
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_clipped_audio_is_predicted_with_a_warning(words_predictor, speech):
    path, audio = speech
    clipped = np.clip(audio * 30, -1.0, 1.0)
    record = words_predictor.predict_audio(clipped, STATEMENT_1, label=str(path)).to_json()
    assert len(record["warnings"]) == 1 and record["warnings"][0].startswith("clipped audio")


def test_predict_cli_refuses_an_unrelated_transcript_and_forces_it_on_request(words_model, speech):
    from emofuse.cli import app

    path, _ = speech
    refused = CliRunner().invoke(app, ["predict", str(words_model), str(path), "-t", UNRELATED, "--json"])
    assert refused.exit_code == 1 and "could not be aligned" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not refused.stdout.strip()
    forced = CliRunner().invoke(app, ["predict", str(words_model), str(path), "-t", UNRELATED, "--json",
                                      "--force-transcript"])
    assert forced.exit_code == 0, forced.output
    record = json.loads(next(line for line in forced.stdout.splitlines() if line.startswith("{")))
    assert record["warnings"] and "NaN" not in forced.stdout


# ------------------------------------------------------------------ noise (the Silero speech check)

# Shouted clips of actor 6 on which Silero peaks lowest in all of RAVDESS (0.21-0.32, under its
# usual 0.5; align.segments.SILERO_FLOOR is 0.1): still speech.
SHOUTED = ["Actor_06/03-01-06-02-02-01-06.flac", "Actor_06/03-01-03-02-02-02-06.flac",
           "Actor_06/03-01-06-02-02-02-06.flac", "Actor_06/03-01-05-02-02-01-06.flac"]


@pytest.fixture
def ulaw_noise(tmp_path) -> Path:
    """Six seconds of random samples stored as u-law: an acoustic model called it "angry 0.997"."""
    path = tmp_path / "noise.wav"
    noise = np.random.default_rng(0).uniform(-0.9, 0.9, 6 * 16000).astype(np.float32)
    sf.write(path, noise, 16000, subtype="ULAW")
    return path


def test_an_acoustic_model_refuses_random_u_law_noise(acoustic_model, ulaw_noise):
    from emofuse.inference.predictor import NoSpeech, Predictor

    with pytest.raises(NoSpeech, match=r"no speech found by the voice activity detector \(Silero peak 0\.0\d < 0\.1\)") as exc:
        Predictor(acoustic_model, warm=False).predict_file(ulaw_noise)
    assert http_status(exc.value) == 422 and str(ulaw_noise) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.data
def test_an_acoustic_model_still_predicts_speech_and_shouting(acoustic_model, speech, ravdess_root):
    from emofuse.inference.predictor import Predictor

    predictor = Predictor(acoustic_model, warm=False)
    for path in [speech[0], *(ravdess_root / name for name in SHOUTED)]:
        prediction = predictor.predict_file(path)
        assert prediction.label in CLASSES and prediction.warnings == [], path
        assert prediction.timings["vad"] < 1.0  # stops at the first speech frame


def test_the_speech_check_can_be_turned_off(acoustic_model, ulaw_noise):
    from emofuse.inference.predictor import Predictor

    predictor = Predictor(acoustic_model, warm=False, speech_check=False)
    assert predictor.silero is None and predictor.predict_file(ulaw_noise).label in CLASSES


def test_predict_cli_refuses_noise_in_one_line_unless_told_not_to_check(acoustic_model, ulaw_noise):
    from emofuse.cli import app

    refused = CliRunner().invoke(app, ["predict", str(acoustic_model), str(ulaw_noise), "--json"])
    assert refused.exit_code == 1 and "no speech found by the voice activity detector" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not refused.stdout.strip()
    forced = CliRunner().invoke(app, ["predict", str(acoustic_model), str(ulaw_noise), "--json", "--no-speech-check"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout.strip().splitlines()[-1])["label"] in CLASSES


def test_a_folder_run_refuses_the_noise_and_predicts_the_speech(acoustic_model, ulaw_noise, speech):
    from emofuse.inference.folder import predict_jobs
    from emofuse.inference.predictor import Prediction, PredictionError

    results = dict(predict_jobs(acoustic_model, [(str(ulaw_noise), None), (str(speech[0]), None)]))
    assert isinstance(results[0], PredictionError) and "no speech found" in results[0].error
    assert isinstance(results[1], Prediction)


def test_the_service_answers_422_for_noise(acoustic_model, ulaw_noise):
    from fastapi.testclient import TestClient

    from emofuse.serving.app import ServeSettings, create_app

    with TestClient(create_app(acoustic_model, ServeSettings(workers=0))) as client:
        answer = client.post("/predict", files={"file": ("noise.wav", ulaw_noise.read_bytes(), "audio/wav")})
    assert answer.status_code == 422 and "no speech found by the voice activity detector" in answer.json()["detail"]


def test_whisper_and_the_speech_check_score_a_clip_once(words_predictor, speech, monkeypatch):
    """The check stops at the first speech frame; Whisper's speech span (for the words without
    a transcript, or to compare a given transcript with) carries on from there."""
    detector = words_predictor.silero
    scored = []
    score = detector.score
    monkeypatch.setattr(detector, "score", lambda frames: scored.append(len(frames)) or score(frames))
    for audio, transcript in ((speech[1] * 0.5, None), (speech[1] * 0.7, STATEMENT_1)):
        scored.clear()
        words_predictor.predict_audio(audio, transcript)
        assert sum(scored) == len(audio) // detector.frame_samples


def test_predict_cli_says_no_speech_in_one_line(words_model, tmp_path):
    from emofuse.cli import app

    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(16000 * 10, np.float32), 16000)
    result = CliRunner().invoke(app, ["predict", str(words_model), str(silent), "-t", STATEMENT_1])
    assert result.exit_code == 1 and "no speech in the audio" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout.strip()


# ------------------------------------------------------------------ the model directory

def test_a_class_list_that_does_not_fit_the_output_layer_is_refused(acoustic_model):
    _edit_json(acoustic_model, classes=CLASSES[:3])
    with pytest.raises(DataError, match="3 class names .* output layer of 4"):
        load_model_dir(acoustic_model)


def test_a_wrong_needs_list_is_refused(acoustic_model):
    _edit_json(acoustic_model, needs=["acoustic", "words"])
    with pytest.raises(DataError, match=r"needs \['acoustic', 'words'\] but model B-ACO-1 reads \['acoustic'\]"):
        load_model_dir(acoustic_model)
    _edit_json(acoustic_model, needs=["audio"])
    with pytest.raises(DataError, match="needs .*must be one of"):
        load_model_dir(acoustic_model)


@pytest.mark.parametrize("key, value", [("settings", "hidden=8"), ("max_frames", "300"), ("classes", "angry"),
                                        ("hop", None), ("needs", "acoustic")])
def test_a_field_of_the_wrong_type_is_one_line(acoustic_model, key, value):
    _edit_json(acoustic_model, **{key: value})
    with pytest.raises(DataError, match=f"model.json: {key} must be"):
        load_model_dir(acoustic_model)


def test_a_setting_of_the_wrong_type_is_one_line(acoustic_model):
    record = json.loads((acoustic_model / "model.json").read_text())
    _edit_json(acoustic_model, settings={**record["settings"], "hidden": "eight"})
    with pytest.raises(DataError, match="model.json: cannot rebuild model 'B-ACO-1'"):
        load_model_dir(acoustic_model)


def test_classes_reordered_in_model_json_are_refused(acoustic_model):
    # the weights' sha256 still matches: only their header knows the output layer's order
    _edit_json(acoustic_model, classes=["happy", "angry", "neutral", "sad"])
    with pytest.raises(DataError, match=r"model.json: classes \['happy', 'angry'.* are not the output layer's "
                                        r"classes \['angry', 'happy'.* weights were trained with"):
        load_model_dir(acoustic_model)


@pytest.mark.parametrize("normaliser, problem", [
    (None, "normaliser is null .*, but the weights were trained on frames normalised with mode 'fold'"),
    ({"mode": "utterance"}, "normaliser is mode 'utterance', but .* mode 'fold'"),
    ({"mean": [0.0] * 40, "std": [1e30] * 40}, r"normaliser std is outside \[1e-06, 1e\+09\] in 40"),
    ({"mean": [0.0] * 40, "std": [1e-9] * 40}, r"normaliser std is outside"),
])
def test_a_normaliser_the_weights_were_not_trained_with_is_refused(acoustic_model, normaliser, problem):
    _edit_json(acoustic_model, normaliser=normaliser)
    with pytest.raises(DataError, match=f"model.json: .*{problem}"):
        load_model_dir(acoustic_model)


def test_weights_exported_before_the_binding_load_with_a_note_every_answer_carries(acoustic_model, speech):
    from safetensors.torch import load_file, save_file

    from emofuse.models.modeldir import weights_sha256

    weights = acoustic_model / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "emofuse-model", "model": "B-ACO-1"})
    record = json.loads((acoustic_model / "model.json").read_text())
    _edit_json(acoustic_model, weights={**record["weights"], "sha256": weights_sha256(weights)})
    loaded = load_model_dir(acoustic_model)
    assert len(loaded.notes) == 1 and "taken on trust" in loaded.notes[0]
    assert str(acoustic_model) not in loaded.notes[0]  # a client of the service reads it: no server path
    from emofuse.inference.predictor import Predictor

    prediction = Predictor(acoustic_model, warm=False).predict_audio(speech[1], None, label="clip.wav")
    assert any("taken on trust" in w for w in prediction.warnings)  # the answer says what was not checked
    assert load_model_dir(registry_model_dir(acoustic_model.parent / "new", "B-ACO-1", "fbank40", None)).notes == []


def test_changed_weights_are_refused_unless_not_verified(acoustic_model):
    from safetensors.torch import load_file, save_file

    weights = acoustic_model / "model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1.0
    save_file(state, str(weights))
    with pytest.raises(DataError, match="weights do not match model.json.*--no-verify"):
        load_model_dir(acoustic_model)
    loaded = load_model_dir(acoustic_model, verify=False)
    assert float(loaded.model.state_dict()[name].flatten()[0]) == pytest.approx(float(state[name].flatten()[0]))


def test_predict_cli_no_verify_skips_the_weights_check(acoustic_model, speech):
    from safetensors.torch import load_file, save_file

    from emofuse.cli import app

    from safetensors import safe_open

    weights = acoustic_model / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()  # kept: only the numbers change, as a fine-tune written over it would
    save_file({k: v * 0.5 for k, v in load_file(str(weights)).items()}, str(weights), metadata=metadata)
    path, _ = speech
    refused = CliRunner().invoke(app, ["predict", str(acoustic_model), str(path), "--json"])
    assert refused.exit_code != 0 and "weights do not match model.json" in str(refused.exception)
    accepted = CliRunner().invoke(app, ["predict", str(acoustic_model), str(path), "--json", "--no-verify"])
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout.strip().splitlines()[-1])["warnings"] == []


# ------------------------------------------------------------------ the normaliser

def test_a_stored_zero_std_is_refused_at_load_time(acoustic_model):
    from emofuse.inference.predictor import Predictor

    record = json.loads((acoustic_model / "model.json").read_text())
    std = record["normaliser"]["std"]
    _edit_json(acoustic_model, normaliser={**record["normaliser"], "std": [0.0] + std[1:]})
    with pytest.raises(DataError, match="model.json: normaliser record: normaliser std is zero"):
        Predictor(acoustic_model, warm=False)


def test_a_normaliser_of_the_wrong_length_is_refused_at_load_time(acoustic_model):
    from emofuse.inference.predictor import Predictor

    _edit_json(acoustic_model, normaliser={"mean": [0.0] * 13, "std": [1.0] * 13})
    with pytest.raises(DataError, match="normaliser has 13 dimensions; the model reads frames of 40"):
        Predictor(acoustic_model, warm=False)


def test_fitting_floors_the_std_of_a_dimension_constant_up_to_rounding():
    rng = np.random.default_rng(0)
    # 1234.567 and its float32 neighbour: constant but for the last bit, which z-scoring
    # would blow up to +-1 (the old absolute floor of 1e-6 let it through)
    level = np.float32(1234.567)
    wobble = np.nextafter(level, np.float32(2000))
    frames = [np.column_stack([rng.normal(size=50), rng.choice([level, wobble], 50)]).astype(np.float32)
              for _ in range(7)]
    normaliser = Normaliser.fit(frames)
    assert normaliser.std[1] == 1.0 and normaliser.std[0] != 1.0
    out = normaliser(frames[0])
    assert np.all(np.isfinite(out)) and np.allclose(out[:, 1], 0.0, atol=1e-3)
    assert Normalisation.from_dict(normaliser.to_dict()).apply(frames[0]).shape == (50, 2)


def test_non_finite_probabilities_are_an_error_never_nan(acoustic_model, speech):
    from emofuse.inference.predictor import Predictor, UnusableInput

    _edit_json(acoustic_model, normaliser={"mean": [3e38] * 40, "std": [1e-5] * 40})  # finite, but overflows
    path, audio = speech
    with pytest.raises(UnusableInput, match="non-finite probabilities"):
        Predictor(acoustic_model, warm=False).predict_audio(audio, label=str(path))


# ------------------------------------------------------------------ the feature store and manifests

def test_a_stored_entry_of_the_wrong_shape_is_one_line(tmp_path):
    from safetensors.numpy import save_file

    from emofuse.features.store import FeatureStore

    corpus = make_corpus(tmp_path, n=2)
    store = FeatureStore(tmp_path / "store")
    store.extract(corpus, ["fbank40"], align=None, progress=False)
    entry = next(store.frames_dir("fbank40").glob("u1-*.safetensors"))
    save_file({"features": np.zeros((40, 100, 1), np.float32)}, str(entry))
    with pytest.raises(DataError, match=r"stored frames have shape \(40, 100, 1\)") as exc:
        store.load(corpus, acoustic="fbank40", align=None)
    assert entry.name in str(exc.value)
    save_file({"features": np.zeros((100, 13), np.float32)}, str(entry))
    with pytest.raises(DataError, match="stored frames have 13 dimensions where the feature has 40"):
        store.load(corpus, acoustic="fbank40", align=None)
    save_file({"features": np.full((100, 40), np.nan, np.float32)}, str(entry))
    with pytest.raises(DataError, match="NaN"):
        store.load(corpus, acoustic="fbank40", align=None)


def test_a_folder_given_as_a_manifest_says_so(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a manifest: run `emofuse prepare"):
        Corpus.read(tmp_path)


def test_a_csv_given_as_a_manifest_says_so(tmp_path):
    table = tmp_path / "corpus.csv"
    table.write_text("path,label,speaker\na.wav,happy,s1\n")
    with pytest.raises(DataError, match="is a CSV table, not a manifest: run `emofuse prepare manifest corpus.csv"):
        Corpus.read(table)
    renamed = tmp_path / "corpus.jsonl"
    renamed.write_text(table.read_text())
    with pytest.raises(DataError, match="looks like a CSV table"):
        Corpus.read(renamed)


def test_extract_given_a_folder_says_so(tmp_path):
    from emofuse.cli import app

    result = CliRunner().invoke(app, ["extract", str(tmp_path), "--features", "fbank40"])
    assert result.exit_code != 0 and "is a folder, not a manifest" in str(result.exception)


def test_the_service_answers_422_for_silence_and_an_unrelated_transcript(words_model, speech, tmp_path):
    import io

    from fastapi.testclient import TestClient

    from emofuse.serving.app import ServeSettings, create_app

    path, _ = speech
    silent = io.BytesIO()
    sf.write(silent, np.zeros(16000 * 5, np.float32), 16000, format="WAV")
    with TestClient(create_app(words_model, ServeSettings(workers=0))) as client:
        quiet = client.post("/predict", files={"file": ("silence.wav", silent.getvalue(), "audio/wav")},
                            data={"transcript": STATEMENT_1})
        unrelated = client.post("/predict", files={"file": (path.name, path.read_bytes(), "audio/flac")},
                                data={"transcript": UNRELATED})
        right = client.post("/predict", files={"file": (path.name, path.read_bytes(), "audio/flac")},
                            data={"transcript": STATEMENT_1})
    assert quiet.status_code == 422 and "no speech in the audio" in quiet.json()["detail"]
    assert unrelated.status_code == 422 and "could not be aligned" in unrelated.json()["detail"]
    assert right.status_code == 200 and right.json()["warnings"] == []
