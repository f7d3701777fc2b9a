"""Model directories and the Predictor: export from real trained runs, loading without the
training data, prediction equal to the engine's, word-level explanations, clear errors.

Tiny RAVDESS runs trained through the real engine and registry-built model directories come
from tests/helpers.py, shared with the predict, serving and export tests.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emofuse.errors import DataError
from emofuse.inference.predictor import Prediction, PredictionError, Predictor
from emofuse.models.modeldir import MANIFEST, WEIGHTS, load_model_dir, read_info
from emofuse.training.export import best_fold, export_run
from helpers import CLASSES, STATEMENT_1, STATEMENT_2, ravdess_files, registry_model_dir, trained_runs


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def runs(ravdess_root):
    return trained_runs(str(ravdess_root))


@pytest.fixture(scope="module")
def hmm4_dir(runs, tmp_path_factory):
    return export_run(runs["H-MM-4"], tmp_path_factory.mktemp("model") / "hmm4")


@pytest.fixture(scope="module")
def hmm4(hmm4_dir):
    return Predictor(hmm4_dir)


# ---------------------------------------------------------------------------------------------
# Export and loading


def _set_scores(run: Path, fold: int, val: float, test: float | None = None) -> None:
    path = run / f"fold-{fold}" / "metrics.json"
    metrics = json.loads(path.read_text())
    assert metrics["monitor"] == "val_ua"  # the engine records its validation monitor's best score
    metrics["val_score"] = val
    if test is not None:
        metrics["test"]["ua"] = test
    path.write_text(json.dumps(metrics))


def test_export_picks_the_fold_with_the_best_validation_ua_not_test(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["H-MM-4"], run)
    _set_scores(run, 0, val=0.25, test=0.99)
    _set_scores(run, 1, val=0.75, test=0.10)
    assert best_fold(run).name == "fold-1"
    info = read_info(export_run(run, tmp_path / "m1"))
    assert info.metrics["fold"] == 1 and info.metrics["val_ua"] == 0.75
    # Swap: the choice follows validation UA, whatever the test UA says.
    _set_scores(run, 0, val=0.9)
    _set_scores(run, 1, val=0.1)
    assert read_info(export_run(run, tmp_path / "m0")).metrics["fold"] == 0
    assert read_info(export_run(run, tmp_path / "m-fold1", fold=1)).metrics["fold"] == 1


def test_model_directory_holds_weights_config_statistics_and_metrics(hmm4_dir, runs):
    files = sorted(p.name for p in hmm4_dir.iterdir())
    assert files == ["config.yaml", MANIFEST, WEIGHTS]
    record = json.loads((hmm4_dir / MANIFEST).read_text())
    assert record["name"] == "H-MM-4" and record["classes"] == CLASSES and record["label_set"] == "ravdess4"
    assert record["acoustic"] == "fbank40" and record["words"] == "glove50" and record["align"] == "auto"
    assert len(record["normaliser"]["mean"]) == 40 == record["spec"]["acoustic_dim"]
    assert record["metrics"]["val_ua"] is not None and "ua" in record["metrics"]["test"]
    assert record["config"]["model"]["name"] == "H-MM-4" and record["emofuse_version"]
    assert record["weights"]["sha256"] and "checkpoint_read_with" not in record["source"]
    fitted = json.loads((runs["H-MM-4"] / f"fold-{record['metrics']['fold']}" / "normaliser.json").read_text())
    assert record["normaliser"] == fitted["normaliser"]


def test_the_predictor_says_what_the_model_earned(hmm4):
    metrics = hmm4.describe()["metrics"]  # GET /health shows this to whoever deploys the model
    assert metrics["monitor"] == "val_ua" and metrics["val_score"] is not None and metrics["fold"] is not None
    assert set(metrics["test"]) == {"ua", "wa", "macro_f1", "weighted_f1"}
    assert 0.0 <= metrics["test"]["ua"] <= 1.0 and "ua" in metrics["cross_validation"]


def test_loaded_weights_equal_the_best_checkpoint(hmm4_dir, runs):
    info = read_info(hmm4_dir)
    fold = runs["H-MM-4"] / f"fold-{info.metrics['fold']}"
    checkpoint = torch.load(fold / info.source["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    loaded = load_model_dir(hmm4_dir).model.state_dict()
    assert set(loaded) == {k[len("model."):] for k in checkpoint if k.startswith("model.")}
    for key, value in loaded.items():
        assert torch.equal(value, checkpoint[f"model.{key}"]), key


def test_prediction_reproduces_the_engine_on_its_test_utterances(hmm4_dir, hmm4, runs, ravdess_root):
    """Same audio, same transcript: the Predictor's features, normalisation and model give the
    probabilities the engine wrote for the fold's test part."""
    fold = runs["H-MM-4"] / f"fold-{read_info(hmm4_dir).metrics['fold']}"
    rows = list(csv.DictReader((fold / "predictions.csv").open()))
    assert rows
    for row in rows[:3]:
        path = next(p for p in ravdess_files(ravdess_root) if p.stem == row["id"])
        transcript = STATEMENT_1 if path.stem.split("-")[4] == "01" else STATEMENT_2
        got = hmm4.predict_file(path, transcript)
        want = [float(row[f"p_{c}"]) for c in CLASSES]
        np.testing.assert_allclose([got.probabilities[c] for c in CLASSES], want, atol=1e-4)
        assert got.label == row["prediction"] and got.align_source == "forced"


def test_model_directory_loads_without_the_run_or_its_data(hmm4_dir, tmp_path, ravdess_root):
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(hmm4_dir, moved)
    record = json.loads((moved / MANIFEST).read_text())
    record["source"]["run_dir"] = "/nonexistent/run"
    (moved / MANIFEST).write_text(json.dumps(record))
    result = Predictor(moved, warm=False).predict_file(ravdess_files(ravdess_root)[0], STATEMENT_1)
    assert result.label in CLASSES


def test_word_explanations_give_spans_acoustic_share_and_attention(hmm4, ravdess_root):
    result = hmm4.predict_file(ravdess_files(ravdess_root)[1], STATEMENT_1)
    assert [w.text for w in result.words] == ["kids", "are", "talking", "by", "the", "door"]
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and all(w.end > w.start for w in result.words)
    assert all(0.0 <= w.values["gate"] <= 1.0 for w in result.words)
    assert sum(w.values["attention"] for w in result.words) == pytest.approx(1.0, abs=1e-5)
    record = result.to_json()
    assert set(record) >= {"label", "probabilities", "words"}
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert set(record["words"][0]) >= {"text", "start", "end", "gate", "attention"}


def test_without_a_transcript_the_words_come_from_speech_recognition(hmm4, ravdess_root):
    result = hmm4.predict_file(ravdess_files(ravdess_root)[2])
    assert result.align_source == "asr"
    assert result.words and all(0.0 <= w.values["gate"] <= 1.0 for w in result.words)


def test_multiview_run_exports_its_acoustic_view_alone(runs, tmp_path, ravdess_root):
    model_dir = export_run(runs["MV"], tmp_path / "mv")
    info = read_info(model_dir)
    assert info.name == "B-ACO-1" and info.needs == ["acoustic"] and info.acoustic_only
    assert info.align == "none" and info.words is None and info.source["trained_model"] == "MV-B-ACO-1+H-MM-4"
    checkpoint_dir = runs["MV"] / "fold-0"
    state = torch.load(checkpoint_dir / info.source["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for key, value in load_model_dir(model_dir).model.state_dict().items():
        assert torch.equal(value, state[f"model.view_a.{key}"]), key
    result = Predictor(model_dir, warm=False).predict_file(ravdess_files(ravdess_root)[0], transcript=STATEMENT_1)
    assert result.words == [] and result.align_source == "none" and result.label in CLASSES


def test_a_folder_batch_gives_the_same_results_as_one_file_at_a_time(hmm4, ravdess_root):
    files = ravdess_files(ravdess_root)[:3]
    jobs = [(f, STATEMENT_1) for f in files]
    together = hmm4.predict_files(jobs)
    for job, batched in zip(jobs, together):
        alone = hmm4.predict_file(*job)
        assert batched.label == alone.label
        np.testing.assert_allclose(list(batched.probabilities.values()), list(alone.probabilities.values()), atol=1e-5)
        np.testing.assert_allclose([w.values["attention"] for w in batched.words],
                                   [w.values["attention"] for w in alone.words], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Clear errors


def test_a_folder_that_is_not_a_model_directory_is_a_clear_error(tmp_path, runs):
    with pytest.raises(DataError, match="not a model directory"):
        load_model_dir(tmp_path)
    with pytest.raises(DataError, match="run directory"):
        load_model_dir(runs["H-MM-4"])


def test_damaged_weights_are_a_clear_error_naming_the_file(tmp_path):
    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None)
    (model_dir / WEIGHTS).write_bytes((model_dir / WEIGHTS).read_bytes()[:100])
    with pytest.raises(DataError, match=r"model\.safetensors: unreadable weights"):
        load_model_dir(model_dir)


def test_weights_that_do_not_fit_the_described_model_are_a_clear_error(tmp_path):
    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None)
    record = json.loads((model_dir / MANIFEST).read_text())
    record["settings"]["hidden"] = 16
    (model_dir / MANIFEST).write_text(json.dumps(record))
    with pytest.raises(DataError, match="do not fit model 'B-ACO-1'"):
        load_model_dir(model_dir)


def test_a_file_that_is_not_audio_is_a_clear_error(tmp_path):
    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n")
    predictor = Predictor(model_dir, warm=False)
    with pytest.raises(DataError, match=r"notes\.wav: cannot decode audio"):
        predictor.predict_file(text)
    results = predictor.predict_files([(text, None)])
    assert isinstance(results[0], PredictionError) and "cannot decode" in results[0].error


def test_acoustic_only_model_predicts_a_tone_and_shows_no_words(tmp_path):
    from helpers import tone

    import soundfile as sf

    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1+attn", words=None)
    path = tmp_path / "tone.wav"
    sf.write(path, tone(1.0), 16000)
    result = Predictor(model_dir, warm=False).predict_file(path)
    assert isinstance(result, Prediction) and result.words == []
    assert len(result.frame_maps["frame_attention"]) == 100
    assert sum(result.frame_maps["frame_attention"]) == pytest.approx(1.0, abs=1e-4)


def test_a_model_trained_on_trimmed_speech_trims_and_maps_frames_back(tmp_path):
    import json

    from helpers import tone

    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1+attn", words=None)
    record = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**record, "trim": 0.1}))
    predictor = Predictor(model_dir, warm=False)
    quiet = np.zeros(8000, np.float32)
    audio = np.concatenate([quiet, tone(1.0), quiet])  # 0.5 s silence, 1 s tone, 0.5 s silence
    item, _, _ = predictor.features(audio)
    assert 35 <= item.frame_offset <= 45 and 110 <= len(item.acoustic) <= 130
    result = predictor.predict_audio(audio)
    attention = result.frame_maps["frame_attention"]
    # Back on the recording's 10 ms grid: frame i of the map is 10 i ms into the recording
    # (the trimmed tail is left off, as max_frames leaves off what it cuts).
    assert len(attention) == item.frame_offset + len(item.acoustic) <= 200
    assert not any(attention[:item.frame_offset]) and sum(attention) == pytest.approx(1.0, abs=1e-4)


def test_a_model_with_a_refitted_output_layer_answers_through_it_and_says_so(tmp_path, ravdess_root):
    import json

    from emofuse.features.audio import load_audio
    from emofuse.features.batch import collate
    from emofuse.models.refitted_output import Backend

    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None)
    predictor = Predictor(model_dir, warm=False)
    audio = load_audio(ravdess_files(ravdess_root)[0], 16000)
    item, _, _ = predictor.features(audio)
    with torch.no_grad():
        vector = predictor.model(collate([item], [0])).utterance_vector.numpy()  # (1, H)
    rng = np.random.default_rng(0)
    h = vector.shape[1]
    backend = Backend("speaker-lr", CLASSES, 0.1, rng.normal(0, 1, (4, h)), np.array([0.0, 0.0, 0.0, 3.0]),
                      rng.normal(0, 1, h), 1 + rng.random(h), 0.5)
    record = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**record, "backend": backend.to_dict()}))
    predictor = Predictor(model_dir, warm=False)
    result = predictor.predict_audio(audio)
    # one recording alone: the training speakers' mean statistics stand in for its speaker's
    expected = backend.probabilities(vector)[0]
    assert [result.probabilities[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "per speaker" in predictor.describe()["output_layer"]


def test_one_speakers_recordings_are_normalised_together_as_in_cross_validation(tmp_path, ravdess_root):
    import json
    from dataclasses import replace

    from emofuse.features.audio import load_audio
    from emofuse.features.batch import collate
    from emofuse.features.normalise import Normaliser
    from emofuse.models.refitted_output import Backend

    model_dir = registry_model_dir(tmp_path / "m", "B-ACO-1", words=None, normaliser={"mode": "speaker"})
    predictor = Predictor(model_dir, warm=False)
    files = (ravdess_files(ravdess_root, actors=[1]) + ravdess_files(ravdess_root, actors=[1], statement="02"))[:6]
    raw = [predictor.features(load_audio(f, 16000), None, str(f), normalise=False)[0] for f in files]
    speaker = Normaliser.fit([it.acoustic for it in raw])
    items = [replace(it, acoustic=speaker(it.acoustic)) for it in raw]
    with torch.no_grad():
        vectors = predictor.model(collate(items, [0] * len(items))).utterance_vector.numpy()  # (6, H)
    rng = np.random.default_rng(1)
    h = vectors.shape[1]
    backend = Backend("speaker-lr", CLASSES, 0.1, rng.normal(0, 3, (4, h)), np.zeros(4), rng.normal(0, 1, h),
                      1 + rng.random(h), 0.5)
    record = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**record, "backend": backend.to_dict()}))
    predictor = Predictor(model_dir, warm=False)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEnot really")
    jobs = [(files[0], None), (broken, None), *[(f, None) for f in files[1:]]]
    together = predictor.predict_speaker(jobs, batch_size=4)  # chunks of 4 and 2
    assert isinstance(together[1], PredictionError) and "cannot decode" in together[1].error
    expected = backend.probabilities(vectors, own_statistics=True)
    got = [[r.probabilities[c] for c in CLASSES] for r in [together[0], *together[2:]]]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [r.file for r in [together[0], *together[2:]]] == [str(f) for f in files]
    alone = predictor.predict_files([(f, None) for f in files])  # each with stand-in statistics
    assert not np.allclose([[r.probabilities[c] for c in CLASSES] for r in alone], expected, atol=1e-3)
    with pytest.raises(DataError, match="none of the 1 recording"):
        predictor.predict_speaker([(broken, None)])


def test_a_model_with_fixed_statistics_predicts_a_speakers_folder_as_file_by_file(hmm4, ravdess_root):
    files = ravdess_files(ravdess_root, actors=[2])[:3]
    jobs = [(f, STATEMENT_1 if f.stem.split("-")[4] == "01" else STATEMENT_2) for f in files]
    together = hmm4.predict_speaker(jobs, batch_size=2)
    alone = hmm4.predict_files(jobs)
    for a, b in zip(together, alone):
        assert a.file == b.file and a.label == b.label
        assert [a.probabilities[c] for c in CLASSES] == pytest.approx([b.probabilities[c] for c in CLASSES], abs=1e-5)
        assert [w.values for w in a.words] == [pytest.approx(w.values, abs=1e-5) for w in b.words]


def test_html_explanation_is_self_contained_and_escapes_words(tmp_path, hmm4, ravdess_root):
    from emofuse.inference.explain import render_html, render_png

    result = hmm4.predict_file(ravdess_files(ravdess_root)[0], STATEMENT_1)
    result.words[0].text = "<script>alert(1)</script>"
    page = render_html(result)
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert page.count('class="ef-chip') == len(result.words) and 'class="ef-ac"' in page
    png = render_png(result, tmp_path / "x.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["speaker", "utterance"])
def test_models_trained_without_fixed_statistics_normalise_each_recording_and_say_so(tmp_path, ravdess_root, mode):
    from emofuse.errors import ConfigError
    from emofuse.features.audio import load_audio
    from emofuse.inference.onnx_export import export_onnx

    model_dir = registry_model_dir(tmp_path / mode, "B-ACO-1", words=None, normaliser={"mode": mode})
    predictor = Predictor(model_dir, warm=False)
    note = predictor.describe()["normalisation"]
    assert "recording's own statistics" in note and (("per-speaker" in note) == (mode == "speaker"))
    audio = load_audio(ravdess_files(ravdess_root)[0], 16000)
    item, _, _ = predictor.features(audio)
    np.testing.assert_allclose(item.acoustic.mean(0), 0.0, atol=1e-3)
    assert predictor.predict_audio(audio).label in CLASSES
    with pytest.raises(ConfigError, match=f"data.normalise={mode}"):
        export_onnx(model_dir, tmp_path / "m.onnx")


def test_frames_from_the_worker_process_equal_frames_computed_in_process(tmp_path, ravdess_root):
    model_dir = registry_model_dir(tmp_path / "hmm4", "H-MM-4", acoustic="compare_lld", words="glove50")
    path = ravdess_files(ravdess_root)[0]
    transcript = STATEMENT_1 if path.stem.split("-")[4] == "01" else STATEMENT_2
    with_process = Predictor(model_dir, frames_process=True)
    here = Predictor(model_dir, frames_process=False)
    assert with_process._frames_proc is not None and here._frames_proc is None
    a, b = with_process.predict_file(path, transcript), here.predict_file(path, transcript)
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6) and a.label == b.label
    with_process._frames_proc.close()  # a dead worker: the next call computes here
    assert with_process.predict_file(path, transcript).probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_words_without_times_serialise_as_null_and_render():
    """A text-only model reading the written transcript has words without times."""
    from emofuse.inference.explain import render_fragment, render_png
    from emofuse.inference.predictor import Prediction, WordExplanation

    words = [WordExplanation("What", float("nan"), float("nan")), WordExplanation("?", float("nan"), float("nan"))]
    p = Prediction(file="x.wav", label="surprise", probabilities={"surprise": 0.9, "neutral": 0.1}, words=words,
                   duration=1.0, align_source="written", envelope=np.zeros((100, 2), dtype=np.float32))
    row = json.loads(json.dumps(p.to_json(), allow_nan=False))  # strict JSON: no NaN
    assert row["words"][0] == {"text": "What", "start": None, "end": None}
    assert words[0].span() == "-" and not words[0].timed
    assert "What" in render_fragment(p) and "nan" not in render_fragment(p)
    with tempfile.TemporaryDirectory() as folder:
        assert render_png(p, Path(folder) / "p.png").stat().st_size > 0
