"""A live stream's segment holds its place in the bounded queue (--max-queue) until its worker
job has ended: a client that sends a segment and disconnects, again and again, cannot put more
jobs on the workers than the queue allows, and every place and temporary file comes back."""

from __future__ import annotations

import tempfile
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from emofuse.errors import DataError
from emofuse.serving.app import ServeSettings, create_app
from emofuse.serving.stream import segment_message
from emofuse.align.segments import Segment
from helpers import CLASSES, joined_speech, ravdess_files, registry_model_dir

SR = 16000
pytestmark = [pytest.mark.data, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def utterance(ravdess_root):
    """One real utterance after half a second of silence, then a second of silence: one segment."""
    clips = ravdess_files(ravdess_root, actors=[1], statement="02")[:1]
    if not clips:
        pytest.skip(f"RAVDESS under {ravdess_root} lacks the statement-2 clips of actor 1")
    audio, _ = joined_speech(clips, [0.5])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return registry_model_dir(tmp_path_factory.mktemp("aco") / "model", "B-ACO-1+attn", words=None)


class JobsOnTheEngine:
    """Wraps the engine's submit: counts the jobs submitted and not yet ended, the most at once,
    and each time a job ends whether the queue still counted it (its place not yet given back)."""

    def __init__(self, engine, admission):
        self.submit_to, self.admission = engine.submit, admission
        self.now = self.most = self.submitted = 0
        self.uncounted: list[tuple[int, int]] = []  # (in the queue, on the engine) when fewer were counted
        self.lock = threading.Lock()

    def __call__(self, job):
        future = self.submit_to(job)
        with self.lock:
            self.now += 1
            self.submitted += 1
            self.most = max(self.most, self.now)
        future.add_done_callback(self.ended)  # runs before the stream's own callback gives the place back
        return future

    def ended(self, _future) -> None:
        with self.lock:
            if self.admission.in_system < self.now:
                self.uncounted.append((self.admission.in_system, self.now))
            self.now -= 1


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_clients_that_leave_mid_prediction_never_put_more_jobs_on_the_workers_than_the_queue_allows(
        model_dir, utterance, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the segments' temporary files land here
    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0, max_queue=0))  # one place: the in-process worker's job
    engine, admission = app.state.engine, app.state.admission
    jobs = JobsOnTheEngine(engine, admission)
    monkeypatch.setattr(engine, "submit", jobs)
    predictor, gate, entered = app.state.predictor, threading.Event(), threading.Event()
    predict_audio = predictor.predict_audio

    def held_prediction(*args, **kwargs):  # a slow prediction: held until the test lets it go
        entered.set()
        assert gate.wait(120)
        return predict_audio(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_audio", held_prediction)
    chunks = [utterance[i:i + 3200] for i in range(0, len(utterance), 3200)]
    try:
        with TestClient(app) as client:
            for attempt in range(4):
                handled = jobs.submitted + admission.refused
                # Leaving, the client cancels the handler if it is still unwinding (TestClient does, as a
                # server does on shutdown): that path must also give back nothing early and stop its thread.
                with client.websocket_connect("/stream?format=s16le") as ws:
                    for chunk in chunks:
                        ws.send_bytes(chunk)
                    wait_for(lambda: jobs.submitted + admission.refused > handled)  # submitted or refused
                    if attempt == 0:
                        wait_for(entered.is_set)  # the first job is on the worker: leave mid-prediction
                wait_for(lambda: app.state.open_streams == 0)  # the connection is gone
                assert jobs.most <= admission.workers + admission.max_queue, \
                    f"{jobs.most} jobs on the engine, the limit is {admission.workers + admission.max_queue}"
                assert admission.in_system >= jobs.now, "a place was given back before its job ended"
            assert admission.refused == 3, "the held job's place stays taken while it runs"
            gate.set()
            wait_for(lambda: jobs.now == 0 and admission.in_system == 0)
            assert jobs.uncounted == [] and jobs.most == 1
            with client.websocket_connect("/stream?format=s16le") as ws:  # the place is free again
                for chunk in chunks:
                    ws.send_bytes(chunk)
                ws.send_text("end")
                message = ws.receive_json()
                assert message["label"] in CLASSES, message
                assert ws.receive_json()["done"]
            wait_for(lambda: jobs.now == 0 and admission.in_system == 0 and app.state.open_streams == 0)
    finally:
        gate.set()
    # Stopped sessions' threads end once they have read up to their stop mark: allow them a few
    # seconds on a loaded machine (a thread left waiting on its queue would never end).
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "emofuse-stream" and t.is_alive()], 10.0)
    assert not list(tmp_path.glob("emofuse-stream-*")), "a segment's temporary file was left behind"


def test_a_failed_segment_is_named_by_its_time_span_never_by_the_servers_file(model_dir, utterance, monkeypatch):
    """The warning the client reads: `segment START-END s: why`, from a real app whose worker
    fails the segment (a simulated alignment failure), with no temporary path in it."""
    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0))
    predictor = app.state.predictor

    def failing(audio, transcript=None, label="<audio>", **kwargs):
        raise DataError(label, "no words could be aligned")

    monkeypatch.setattr(predictor, "predict_audio", failing)
    with TestClient(app) as client, client.websocket_connect("/stream?format=s16le") as ws:
        for i in range(0, len(utterance), 3200):
            ws.send_bytes(utterance[i:i + 3200])
        ws.send_text("end")
        message = ws.receive_json()
    assert message["label"] is None
    (warning,) = message["warnings"]
    assert warning == f"segment {message['start']:.2f}-{message['end']:.2f} s: no words could be aligned"


def test_a_workers_error_line_that_repeats_a_server_path_reaches_the_client_without_it():
    tmp = "/tmp/emofuse-stream-ab12cd.wav"
    answer = {"error": "JobFailed", "detail": f"segment 1.00-2.50 s: prediction failed (LibsndfileError: Error opening "
                                       f"'{tmp}': System error; model /srv/models/h-mm-4/model.json)"}
    message = segment_message(Segment(1.0, 2.5), answer, tmp)
    (warning,) = message["warnings"]
    assert "/tmp" not in warning and "/srv" not in warning and "emofuse-stream-" not in warning
    assert warning == ("segment 1.00-2.50 s: prediction failed (LibsndfileError: Error opening 'segment 1.00-2.50 s': "
                       "System error; model model.json)")


def test_a_segment_reaches_the_worker_as_its_samples_never_as_a_file(model_dir, utterance, tmp_path, monkeypatch):
    """The segment's float32 16 kHz samples go in the job: nothing is written for the worker to
    decode again, and the prediction is that of the same samples predicted directly."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0))
    engine, jobs = app.state.engine, []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda job: (jobs.append(job), submit(job))[1])
    with TestClient(app) as client, client.websocket_connect("/stream?format=s16le") as ws:
        ws.send_bytes(utterance)
        ws.send_text("end")
        message = ws.receive_json()
        assert ws.receive_json()["done"]
    (job,) = jobs
    assert job.path == "" and job.reader == "samples" and job.sample_rate == SR
    assert job.samples.dtype == np.float32 and job.samples.ndim == 1
    assert len(job.samples) == pytest.approx((message["end"] - message["start"]) * SR, abs=2)
    assert not list(tmp_path.iterdir()), "a file was written for the segment"
    alone = app.state.predictor.predict_audio(job.samples)
    assert message["label"] == alone.label


@pytest.mark.parametrize("failure, kept", [("WorkerCrashed", True), ("JobTimedOut", True), ("WorkersStopped", False)])
def test_a_segment_whose_job_failed_says_so_and_only_a_stopped_pool_ends_the_stream(model_dir, utterance, monkeypatch,
                                                                                   failure, kept):
    """The engine's futures raise `errors.JobFailed`'s kinds: a dead or silent worker fails its
    segment (the segment says why, the stream goes on); a stopped pool closes the stream 1011."""
    from concurrent.futures import Future

    from emofuse import errors

    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0))

    def fails(job):
        future = Future()
        future.set_exception(getattr(errors, failure)(job.name, "the prediction worker died on /srv/emofuse/w.bin"))
        return future

    monkeypatch.setattr(app.state.engine, "submit", fails)
    with TestClient(app) as client, client.websocket_connect("/stream?format=s16le") as ws:
        ws.send_bytes(utterance)
        ws.send_text("end")
        if kept:
            message = ws.receive_json()
            assert message["label"] is None and message["warnings"] == [
                f"segment {message['start']:.2f}-{message['end']:.2f} s: the prediction worker died on w.bin"]
            assert ws.receive_json()["done"]
        else:
            from starlette.websockets import WebSocketDisconnect

            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1011 and "the server needs a restart" in closed.value.reason
    assert app.state.admission.in_system == 0


def test_a_stream_whose_decoding_cannot_keep_up_is_closed_1013_not_queued_without_bound(model_dir, monkeypatch):
    """A live client is never held, so the messages waiting for its decoding thread are bounded
    by closing the stream instead (here the thread never starts: nothing is decoded)."""
    from starlette.websockets import WebSocketDisconnect

    from emofuse.serving import stream

    monkeypatch.setattr(stream.LiveSegments, "start", lambda self: None)
    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0))
    closed = []

    def client_side():
        with TestClient(app) as client, client.websocket_connect("/stream?format=s16le") as ws:
            try:
                for _ in range(stream.MAX_BACKLOG_CHUNKS + 1):  # 10 ms of audio each: far behind nothing
                    ws.send_bytes(b"\0\1" * 160)
                ws.receive_json()
            except WebSocketDisconnect as exc:
                closed.append(exc)

    runner = threading.Thread(target=client_side, daemon=True)
    runner.start()
    runner.join(30)  # before: every message queued and the stream waited on, never closed
    assert closed and closed[0].code == 1013 and "cannot decode this stream as fast" in closed[0].reason
