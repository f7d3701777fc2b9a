"""The HTTP service through httpx (FastAPI's TestClient): predictions, limits, clear errors,
concurrency, and the model loaded once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

import emofuse.inference.predictor as predictor_module
from emofuse.serving.app import ServeSettings, create_app
from helpers import CLASSES, STATEMENT_1, ravdess_files, registry_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return registry_model_dir(tmp_path_factory.mktemp("serve") / "hmm4", "H-MM-4", word_layers=1)


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(model_dir, ServeSettings(workers=0, max_upload_mb=1.0, max_seconds=5.0))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def files(ravdess_root):
    return ravdess_files(ravdess_root)[:4]


def _post(client, path, transcript=None, name=None, **params):
    data = {"transcript": transcript} if transcript else None
    with open(path, "rb") as f:
        return client.post("/predict", files={"file": (name or path.name, f.read())}, data=data, params=params)


def test_health_says_which_model_is_loaded(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"] == "H-MM-4" and body["classes"] == CLASSES
    assert body["limits"] == {"max_upload_mb": 1.0, "max_seconds": 5.0}
    assert {"fold", "val_score", "test", "cross_validation"} <= set(body["metrics"])  # untrained here


def test_predict_returns_label_probabilities_and_words(client, files):
    response = _post(client, files[0], STATEMENT_1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in CLASSES and set(body["probabilities"]) == set(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert [w["text"] for w in body["words"]] == ["kids", "are", "talking", "by", "the", "door"]
    assert body["align_source"] == "forced" and all({"start", "end", "gate", "attention"} <= set(w) for w in body["words"])
    assert "html" not in body
    with_html = _post(client, files[0], STATEMENT_1, html="true").json()
    assert 'class="emofuse-explanation"' in with_html["html"] and with_html["label"] == body["label"]


def test_recorded_webm_from_a_browser_is_decoded(client, files, tmp_path):
    """MediaRecorder uploads WebM/Opus: PyAV decodes what soundfile cannot."""
    import av

    audio, sr = sf.read(files[0], dtype="float32")
    path = tmp_path / "recording.webm"
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        resampled = np.interp(np.arange(0, len(audio), sr / 48000), np.arange(len(audio)), audio).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(resampled[None, :], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    response = _post(client, path, STATEMENT_1)
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(len(audio) / sr, abs=0.1)


def test_non_audio_upload_is_415_with_a_clear_message(client, tmp_path):
    for name, payload in (("notes.txt", b"just some text, not a recording\n"),
                          ("picture.png", b"\x89PNG\r\n\x1a\n" + bytes(200)),
                          ("fake.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")):
        response = client.post("/predict", files={"file": (name, payload)})
        assert response.status_code == 415, (name, response.text)
        assert response.json()["detail"].startswith(f"{name}: not an audio file")


def test_empty_upload_and_missing_file_are_422_with_one_line(client):
    empty = client.post("/predict", files={"file": ("empty.wav", b"")})
    assert empty.status_code == 422 and empty.json() == {"detail": "empty.wav: the uploaded file is empty"}
    response = client.post("/predict", data={"transcript": "hello"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.startswith("file: ")


def test_upload_over_the_size_limit_is_413(client):
    big = bytes(1_200_000)
    response = client.post("/predict", files={"file": ("big.wav", big)})
    assert response.status_code == 413
    assert "the limit is 1 MB" in response.json()["detail"]

    # Without a Content-Length (chunked), the body is counted as it arrives.
    def chunks():
        for _ in range(40):
            yield bytes(50_000)

    response = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413


def test_recording_over_the_duration_limit_is_413(client, tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, (0.01 * np.random.default_rng(0).standard_normal(16000 * 6)).astype(np.float32), 16000)
    response = _post(client, path)
    assert response.status_code == 413
    assert "6.0 s long; the limit is 5 s" in response.json()["detail"]


def test_concurrent_requests_never_mix_results(client, files):
    expected = {f.name: _post(client, f, STATEMENT_1).json() for f in files}
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda f: (f.name, _post(client, f, STATEMENT_1).json()), files * 2))
    for name, body in answers:
        assert body["file"] == name
        assert body["probabilities"] == pytest.approx(expected[name]["probabilities"], abs=1e-6)
        assert body["words"] == expected[name]["words"]


def test_the_model_is_loaded_once_not_per_request(model_dir, files, monkeypatch):
    calls = []
    original = predictor_module.load_model_dir

    def counting(path, *args, **kwargs):
        calls.append(threading.get_ident())
        return original(path, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "load_model_dir", counting)
    app = create_app(model_dir, ServeSettings(workers=0))
    with TestClient(app) as c:
        for f in files[:2]:
            assert _post(c, f, STATEMENT_1).status_code == 200
        assert c.get("/health").status_code == 200
    assert len(calls) == 1


def test_openapi_documents_the_endpoints_and_the_page_is_served(client):
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health"} <= set(schema["paths"])
    form = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "MediaRecorder" in page.text and 'type="file"' in page.text
    assert form


def test_health_reports_the_workers_and_the_queue(client):
    body = client.get("/health").json()
    assert body["workers"]["count"] == 1 and body["workers"]["mode"] == "in-process"
    assert body["queue"] == {"length": 0, "max": 4, "refused": body["queue"]["refused"]}


def test_a_full_queue_answers_503_with_retry_after_and_answers_never_mix(model_dir, ravdess_root):
    """Issue 18 item 4, in-process: 60 requests against a queue of 10. (Here pocketsphinx holds
    the GIL for a whole decode, so /health's latency is asserted against worker processes in
    tests/test_serve_processes.py.)"""
    sixty = ravdess_files(ravdess_root, actors=range(1, 25))[:60]
    assert len(sixty) == 60
    app = create_app(model_dir, ServeSettings(workers=0, max_queue=10))
    with TestClient(app) as c:
        start = threading.Event()

        def post(f):
            start.wait()
            return f.name, _post(c, f, STATEMENT_1)

        with ThreadPoolExecutor(max_workers=60) as pool:
            futures = [pool.submit(post, f) for f in sixty]
            start.set()
            answers = [f.result() for f in futures]
        ok = {name: r.json() for name, r in answers if r.status_code == 200}
        busy = [r for _, r in answers if r.status_code == 503]
        assert len(ok) + len(busy) == 60
        # 1 running + 10 waiting at least; the rest refused by the queue or while uploads arrive (max_readers)
        assert 11 <= len(ok) < 60 and app.state.admission.refused + app.state.readers.refused == len(busy)
        assert all(r.headers["Retry-After"].isdigit() and "server is busy" in r.json()["detail"] for r in busy)
        health = c.get("/health").json()
        assert health["queue"]["length"] == 0 and health["queue"]["refused"] + health["uploads"]["refused"] == len(busy)
        for f in sixty:
            if f.name in ok:
                expected = _post(c, f, STATEMENT_1).json()
                assert ok[f.name]["file"] == f.name
                assert ok[f.name]["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
                assert ok[f.name]["words"] == expected["words"]


def test_a_long_recording_answers_per_speech_segment(model_dir, ravdess_root, tmp_path):
    """Issue 20 item 3: past the segment length the answer holds the segments and a summary."""
    utterances = [sf.read(f, dtype="float32")[0] for f in ravdess_files(ravdess_root, actors=(1,))[:3]]
    pause = np.zeros(16000 * 2, np.float32)
    path = tmp_path / "call.flac"
    sf.write(path, np.concatenate([pause] + [x for u in utterances for x in (u, pause)]), 16000)
    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0, segment_over=5.0))
    with TestClient(app) as c:
        body = _post(c, path).json()
        assert body["file"] == "call.flac" and body["duration"] == pytest.approx(sf.info(path).duration, abs=0.01)
        assert len(body["segments"]) == 3, body["segments"]
        assert all(s["label"] in CLASSES and s["start"] < s["end"] for s in body["segments"])
        assert set(body["summary"]["share"]) == set(CLASSES)
        with_words = _post(c, path, STATEMENT_1)
        assert with_words.status_code == 422 and "send it without a transcript" in with_words.json()["detail"]


def test_a_trickled_upload_is_answered_408_and_gives_its_queue_place_back():
    """A client that sends its body too slowly must not hold an admitted queue place (issue 18)."""
    import asyncio

    from emofuse.serving.app import UploadLimit
    from emofuse.serving.workers import Admission

    admission = Admission(workers=1, max_queue=0)
    reached = []

    async def inner(scope, receive, send):  # the app behind the middleware: never reached here
        reached.append(scope)

    limit = UploadLimit(inner, max_bytes=10_000, limit_mb=0.01, admission=admission, body_seconds=0.3)
    sent = []

    async def receive():
        await asyncio.sleep(30)  # the rest of the body never comes

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", b"5000")]}
    asyncio.run(asyncio.wait_for(limit(scope, receive, send), 5))
    assert sent[0]["status"] == 408 and b"did not arrive within 0.3 s" in sent[1]["body"]
    assert not reached
    assert admission.admit(), "the trickled request kept its queue place"


def test_an_unexpected_model_error_is_a_500_with_one_line_not_a_dead_worker():
    """A failure inside one prediction (not a bad input) answers that request 500 in the usual
    {"detail": ...} form; it is not mistaken for a dead worker (503) and the worker lives on."""
    from emofuse.serving.app import outcome_status
    from emofuse.serving.jobs import Job, run_job

    class Failing:
        def predict_audio(self, *args, **kwargs):
            raise RuntimeError("shape mismatch in the model\nsecond line of a torch message")

    import os
    import tempfile

    import numpy as np
    import soundfile as sf

    path = os.path.join(tempfile.mkdtemp(), "clip.wav")
    sf.write(path, np.zeros(16000, np.float32), 16000)
    job = Job(path=path, name="clip.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
              channels=1, duration=1.0, max_seconds=60.0, segment_over=None)
    answer = run_job(Failing(), job)
    assert outcome_status(answer) == 500
    assert answer["detail"] == "clip.wav: prediction failed (RuntimeError: shape mismatch in the model)"


def test_a_500_or_422_line_never_shows_a_server_path(tmp_path):
    """An error raised inside a prediction names the server's temporary copy of the upload or a
    library file: the client reads its own file name and bare file names instead."""
    import numpy as np
    import soundfile as sf

    from emofuse.errors import DataError
    from emofuse.serving.app import outcome_status
    from emofuse.serving.jobs import Job, run_job

    path = tmp_path / "emofuse-upload-x1y2.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    job = Job(path=str(path), name="call.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
              channels=1, duration=1.0, max_seconds=60.0, segment_over=None)

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def predict_audio(self, *args, **kwargs):
            raise self.exc

    answer = run_job(Failing(OSError(f"cannot read {path} via /usr/lib/python3/site-packages/lib.so")), job)
    assert outcome_status(answer) == 500 and str(tmp_path) not in answer["detail"] and "/usr/lib" not in answer["detail"]
    assert "cannot read call.wav via lib.so" in answer["detail"]
    answer = run_job(Failing(DataError(path, f"the aligner could not read {path}")), job)
    assert outcome_status(answer) == 422 and answer["detail"] == "call.wav: the aligner could not read call.wav"


@pytest.mark.parametrize("failure, status", [("WorkerCrashed", 500), ("JobTimedOut", 504), ("WorkersStopped", 503)])
def test_a_job_that_got_no_answer_is_its_errors_status_with_the_files_name(model_dir, files, monkeypatch, failure,
                                                                        status):
    """The engine's futures raise `errors.JobFailed`'s kinds; the service answers each with its
    status from the one table (serving.app.HTTP_STATUS) and the line after the file's name."""
    from concurrent.futures import Future

    from emofuse import errors

    app = create_app(model_dir, ServeSettings(workers=0))

    def fails(job):
        future = Future()
        future.set_exception(getattr(errors, failure)(job.name, "what happened to the job"))
        return future

    monkeypatch.setattr(app.state.engine, "submit", fails)
    with TestClient(app) as c:
        response = _post(c, files[0], name="mine.wav")
    assert response.status_code == status, response.text
    assert response.json()["detail"] == "mine.wav: what happened to the job"
    assert ("Retry-After" in response.headers) == (status == 503)


def test_a_file_no_decoder_reads_is_undecodable_by_its_type(tmp_path):
    """Not audio is told apart by the error's type, never by its message's words."""
    from emofuse.errors import Undecodable
    from emofuse.features.audio import AudioHeader, decode_bounded, load_audio, probe_audio
    from emofuse.serving.app import http_status, outcome_status
    from emofuse.serving.jobs import NOT_AUDIO, Job, run_job

    notes = tmp_path / "notes.wav"
    notes.write_bytes(b"these are meeting notes, not a recording\n" * 40)
    for read in (probe_audio, lambda p: load_audio(p, 16000),
                 lambda p: decode_bounded(p, AudioHeader(16000, 1, 1.0, "pyav"), 60.0)):
        with pytest.raises(Undecodable) as caught:
            read(notes)
        assert http_status(caught.value) == 415
    job = Job(path=str(notes), name="notes.wav", transcript=None, html=False, reader="pyav", sample_rate=16000,
              channels=1, duration=1.0, max_seconds=60.0, segment_over=None)
    outcome = run_job(None, job)
    assert outcome == {"error": "Undecodable", "detail": f"notes.wav: {NOT_AUDIO}"} and outcome_status(outcome) == 415


def test_the_service_and_emofuse_serve_share_one_set_of_defaults():
    """create_app without settings and `emofuse serve` without options run the same service."""
    import inspect

    from emofuse.cli.serve import serve
    from emofuse.serving.app import ServeSettings

    defaults = ServeSettings()
    options = {name: p.default.default for name, p in inspect.signature(serve).parameters.items()
               if name in ServeSettings.model_fields}
    assert set(options) == set(ServeSettings.model_fields)
    assert options == {name: getattr(defaults, name) for name in options}
    assert defaults.max_seconds == 3600.0 and defaults.workers == 1


@pytest.mark.parametrize("field, value", [("max_upload_mb", -5), ("max_upload_mb", 0), ("port", 0), ("port", 65536),
                                          ("max_seconds", float("inf")), ("workers", -1), ("job_timeout", -1)])
def test_settings_out_of_bounds_are_refused_before_anything_loads(field, value):
    from pydantic import ValidationError

    from emofuse.serving.app import ServeSettings

    with pytest.raises(ValidationError, match=field):
        ServeSettings(**{field: value})
    assert ServeSettings(port=65535, max_upload_mb=0.5, segment_over=None, job_timeout=0).port == 65535
