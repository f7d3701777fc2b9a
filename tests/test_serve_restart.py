"""A crashed service worker is restarted: the request it was on gets one clear line, the next
request is answered, /health counts the restart, and only repeated crashes make the service
give up (503 "broken"), so that an orchestrator restarts it."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from helpers import ServeProcess, alive, exited_child, registry_model_dir, tone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # acoustic only, fbank40: a worker loads in seconds, no openSMILE worker, no words
    return registry_model_dir(tmp_path_factory.mktemp("serve-restart") / "baco", "B-ACO-1", acoustic="fbank40",
                              words=None)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-restart-audio") / "tone.wav"
    sf.write(str(path), tone(1.0), 16000)
    return path


def _until(condition, seconds: float, step: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def test_a_worker_killed_mid_request_is_restarted_and_its_request_answered_in_one_line(model_dir, clip, tmp_path,
                                                                                       monkeypatch):
    from emofuse.serving.workers import HANG_FOR_TESTS, HANG_MARK_FOR_TESTS

    hang = tmp_path / "hangs.wav"  # the same audio: only its name makes the worker hang (tests only)
    hang.write_bytes(clip.read_bytes())
    reached = tmp_path / "job-reached-the-worker"
    monkeypatch.setenv(HANG_FOR_TESTS, hang.name)
    monkeypatch.setenv(HANG_MARK_FOR_TESTS, str(reached))
    with ServeProcess(model_dir, "--workers", "1") as server:
        first = server.health["workers"]
        assert first["restarts"] == 0 and len(first["pids"]) == 1
        assert server.post(clip).status_code == 200
        dead = first["pids"][0]
        answers = []
        caller = threading.Thread(target=lambda: answers.append(server.post(hang)))
        caller.start()
        # killed only once the job is on the worker (it says so from inside), however slow the machine
        assert _until(reached.exists, 120)
        os.kill(dead, signal.SIGKILL)  # as the OOM killer would
        caller.join(timeout=120)
        died = answers[0]
        assert died.status_code == 500
        detail = died.json()["detail"]
        assert detail.startswith("hangs.wav: the prediction worker died while on this request")
        assert "SIGKILL" in detail and "\n" not in detail
        assert str(dead) not in detail  # no pid of the server's for clients
        again = server.post(clip)  # waits for the fresh worker's model to load
        assert again.status_code == 200, again.text
        assert again.json()["probabilities"].keys() == {"angry", "happy", "neutral", "sad"}
        health = server.get_health()
        workers = health.json()["workers"]
        assert health.status_code == 200 and workers["restarts"] == 1
        assert workers["pids"] != [dead] and all(alive(p) for p in workers["pids"]) and not alive(dead)

        idle = workers["pids"][0]  # a worker that dies between requests is replaced without waiting for one
        os.kill(idle, signal.SIGKILL)
        assert _until(lambda: server.get_health().json()["workers"]["restarts"] == 2, 120)
        assert server.post(clip).status_code == 200
        restarted = server.get_health().json()["workers"]["pids"]
        assert restarted != [idle]
        server.proc.send_signal(signal.SIGTERM)  # the restarted worker ends with the server, as the first did
        server.proc.wait(timeout=30)
        assert _until(lambda: not any(alive(p) for p in restarted), 10)


def test_the_service_gives_up_only_after_more_crashes_than_allowed_within_the_window(model_dir, clip, monkeypatch):
    from fastapi.testclient import TestClient

    from emofuse.serving import workers
    from emofuse.serving.app import ServeSettings, create_app

    monkeypatch.setattr(workers, "MAX_CRASHES", 1)  # the real pool, with a smaller allowance: two loads, not six
    app = create_app(model_dir, ServeSettings(workers=1))
    engine = app.state.engine

    def post():
        return client.post("/predict", files={"file": (clip.name, clip.read_bytes())})

    def crash() -> None:  # a worker dead before the next request arrives (a request on it gets 500 instead)
        pid = engine.pids[0]
        os.kill(pid, signal.SIGKILL)
        assert _until(lambda: exited_child(pid), 10)

    with TestClient(app) as client:
        assert post().status_code == 200
        crash()
        assert post().status_code == 200  # one crash: restarted
        assert client.get("/health").json()["workers"]["restarts"] == 1
        crash()  # two crashes within the window: more than allowed
        assert _until(lambda: client.get("/health").status_code == 503, 30)
        health = client.get("/health").json()
        assert health["status"] == "broken" and "2 worker crashes within 60 s" in health["detail"]
        refused = post()
        assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
        detail = refused.json()["detail"]
        assert detail.startswith("tone.wav: the prediction workers stopped") and "the server needs a restart" in detail
        assert "died" not in health["detail"] + detail and "/" not in health["detail"] + detail  # no file, no path


def test_a_worker_that_never_answers_is_killed_at_the_job_limit_and_its_request_answered_504(model_dir, clip,
                                                                                             tmp_path, monkeypatch):
    from emofuse.serving.workers import HANG_FOR_TESTS

    hang = tmp_path / "hangs.wav"  # the same audio: only its name makes the worker hang (tests only)
    hang.write_bytes(clip.read_bytes())
    monkeypatch.setenv(HANG_FOR_TESTS, hang.name)
    with ServeProcess(model_dir, "--workers", "1", "--job-timeout", "2") as server:
        first = server.health["workers"]
        assert first["job_timeout"] == 2 and first["timeouts"] == 0
        stuck = first["pids"][0]
        started = time.monotonic()
        answer = server.post(hang)
        waited = time.monotonic() - started
        assert answer.status_code == 504, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith("hangs.wav: no answer within the limit of 2 s (server option --job-timeout)")
        assert "\n" not in detail
        assert 2 <= waited < 120  # the limit, not the worker's sleep of a day (slack for a slow CI machine)
        assert _until(lambda: not alive(stuck), 10)
        again = server.post(clip)  # the replacement answers
        assert again.status_code == 200, again.text
        workers = server.get_health().json()["workers"]
        assert workers["timeouts"] == 1 and workers["restarts"] == 1 and workers["pids"] != [stuck]


def test_a_timeout_is_not_a_crash_toward_giving_up(model_dir, clip, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from emofuse.serving import workers
    from emofuse.serving.app import ServeSettings, create_app

    hang = tmp_path / "hangs.wav"
    hang.write_bytes(clip.read_bytes())
    monkeypatch.setenv(workers.HANG_FOR_TESTS, hang.name)
    monkeypatch.setattr(workers, "MAX_CRASHES", 0)  # any crash would break the pool at once
    app = create_app(model_dir, ServeSettings(workers=1, job_timeout=1))
    with TestClient(app) as client:
        assert client.post("/predict", files={"file": (hang.name, hang.read_bytes())}).status_code == 504
        assert client.post("/predict", files={"file": (clip.name, clip.read_bytes())}).status_code == 200
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["workers"]["timeouts"] == 1


def test_no_verify_reaches_the_worker_processes(model_dir, clip, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    edited = tmp_path / "edited"
    shutil.copytree(model_dir, edited)
    weights = edited / "model.safetensors"
    save_file({k: v * 0.5 for k, v in load_file(str(weights)).items()}, str(weights))
    with pytest.raises(AssertionError, match="weights do not match model.json"):
        ServeProcess(edited, "--workers", "1")
    with ServeProcess(edited, "--workers", "1", "--no-verify") as server:
        workers = server.health["workers"]
        assert workers["mode"] == "processes" and workers["count"] == 1 and workers["pids"] != [server.proc.pid]
        answer = server.post(clip)
        assert answer.status_code == 200, answer.text


# ------------------------------------------------ the pool's races, each forced without a clock


class _Ended:
    """What `_how_it_ended` reads of a fake worker's process."""

    exitcode = -9

    def join(self, timeout=None) -> None:
        pass


class _FakeWorker:
    """A stand-in for `workers._Worker` where a real process cannot be made to die at one exact
    instant: records its starts; `ready` decides what its wait_ready does."""

    started: list = []
    ready = staticmethod(lambda worker: {"frames_pid": None})

    def __init__(self, *_args):
        self.pid = 4_000_000 + len(_FakeWorker.started)  # above any pid_max: nothing real is signalled
        self.frames_pid = None
        self.conn = self
        self.sent: list = []
        self.process = _Ended()
        _FakeWorker.started.append(self)

    def wait_ready(self, _timeout):
        return type(self).ready(self)

    def alive(self) -> bool:
        return True

    def pids(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


def _bare_engine(monkeypatch, slots: int = 1):
    """A ProcessEngine whose workers are `_FakeWorker`s and which has no serving threads."""
    import queue

    from emofuse.serving import workers

    monkeypatch.setattr(workers, "_Worker", _FakeWorker)
    monkeypatch.setattr(_FakeWorker, "started", [])
    engine = workers.ProcessEngine.__new__(workers.ProcessEngine)
    engine._context, engine._model_dir, engine._threads, engine._options = None, "", None, {}
    engine.workers, engine.job_timeout, engine.restarts, engine.timeouts = slots, None, 0, 0
    engine.broken_reason, engine._crashes, engine._closing = None, [], False
    engine._lock, engine._jobs = threading.Lock(), queue.Queue()
    engine._slots = [_FakeWorker() for _ in range(slots)]
    return engine


def test_close_during_a_restart_starts_no_more_workers(monkeypatch):
    engine = _bare_engine(monkeypatch)
    closed = threading.Event()

    def killed_by_close(_worker):  # a replacement loading its model when close() kills it
        closed.wait(30)
        raise RuntimeError("worker died while loading the model (killed by SIGTERM)")

    monkeypatch.setattr(_FakeWorker, "ready", staticmethod(killed_by_close))
    replaced = []
    restart = threading.Thread(target=lambda: replaced.append(engine._replace(0, "worker 1 died")))
    restart.start()
    assert _until(lambda: len(_FakeWorker.started) == 2, 10)  # the first fake and its replacement
    engine.close()
    closed.set()
    restart.join(10)
    assert replaced == [False] and len(_FakeWorker.started) == 2 and engine.restarts == 0


def test_a_job_submitted_as_the_pool_breaks_is_answered(monkeypatch):
    import queue

    from emofuse.serving.workers import Job, WorkersBroken

    engine = _bare_engine(monkeypatch)

    class BreaksBeforePut(queue.Queue):  # the pool gives up between submit's check and its put
        def put(self, item, *args, **kwargs):
            engine.broken_reason = "6 worker crashes within 60 s"
            engine._fail_waiting()  # what the last serving thread does as it leaves
            super().put(item, *args, **kwargs)

    engine._jobs = BreaksBeforePut()
    job = Job(path="", name="a.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
              channels=1, duration=1.0, max_seconds=60.0, segment_over=None)
    future = engine.submit(job)
    assert future.done()  # before: waiting for a serving thread that had already left
    with pytest.raises(WorkersBroken, match="the prediction workers stopped .*; the server needs a restart"):
        future.result(0)


def test_a_job_whose_worker_died_before_it_was_sent_goes_to_the_replacement(monkeypatch):
    from concurrent.futures import Future

    from emofuse.serving.workers import Job

    engine = _bare_engine(monkeypatch)
    dead = engine._slots[0]
    dead.alive = lambda: False  # died after its thread's last look: the pipe refuses the job

    def refuse(_job):
        dead.alive = lambda: False
        raise BrokenPipeError(32, "Broken pipe")

    dead.alive = lambda: True  # it still looks alive when its thread looks
    dead.send = refuse
    answered = {"status": 200, "body": {"label": "neutral"}}
    monkeypatch.setattr(_FakeWorker, "send", lambda self, job: self.sent.append(job), raising=False)
    monkeypatch.setattr(_FakeWorker, "answer", lambda self, _timeout: answered, raising=False)
    job = Job(path="", name="a.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
              channels=1, duration=1.0, max_seconds=60.0, segment_over=None)
    future = Future()
    future.set_running_or_notify_cancel()
    assert engine._on_a_live_worker(0, job, future) == answered  # not a 500 "died while on this request"
    assert engine._slots[0] is not dead and engine._slots[0].sent == [job] and engine.restarts == 1


def test_a_worker_whose_pipe_a_grandchild_still_holds_is_seen_dead():
    import multiprocessing

    from emofuse.serving.workers import _Worker

    context = multiprocessing.get_context("spawn")
    server_end, worker_end = context.Pipe()  # worker_end stays open here, as in a forked grandchild
    worker = _Worker.__new__(_Worker)
    worker.conn, worker.frames_pid = server_end, None
    worker.process = context.Process(target=time.sleep, args=(0,))
    worker.process.start()
    worker.pid = worker.process.pid
    started = time.monotonic()
    with pytest.raises(EOFError):
        worker.answer(60)  # before: no EOF while worker_end is open, so None after the whole minute
    with pytest.raises(RuntimeError, match="died while loading the model"):
        worker.wait_ready(60)
    assert time.monotonic() - started < 30 and not worker.alive() and worker.pids() == []
    worker_end.close()


def test_an_answer_that_cannot_be_written_out_or_sent_leaves_the_worker_serving(tmp_path, monkeypatch):
    import multiprocessing

    from emofuse.serving.app import outcome_status
    from emofuse.serving.workers import Job, _answer_jobs

    clip = tmp_path / "a.wav"
    sf.write(str(clip), tone(0.5), 16000)

    class Unrenderable:
        timings: dict = {}

        def to_json(self):
            raise ValueError("cannot serialise /srv/emofuse/models/secret-model/model.json")

    class Unpicklable:
        timings: dict = {}

        def to_json(self):
            return {"label": lambda: None}

    class Fine:
        timings = {"total": 0.1}

        def to_json(self):
            return {"label": "neutral"}

    results = iter([Unrenderable(), Unpicklable(), Fine()])

    class Predictor:
        def predict_audio(self, audio, transcript, label):
            return next(results)

    server_end, worker_end = multiprocessing.Pipe()
    loop = threading.Thread(target=_answer_jobs, args=(worker_end, Predictor()), daemon=True)
    loop.start()
    answers = []
    for _ in range(3):
        server_end.send(Job(path=str(clip), name="client.wav", transcript=None, html=False, reader="soundfile",
                            sample_rate=16000, channels=1, duration=0.5, max_seconds=60.0, segment_over=None))
        assert server_end.poll(60)
        answers.append(server_end.recv())
    server_end.send(None)
    loop.join(10)
    assert [outcome_status(a) for a in answers] == [500, 500, 200] and not loop.is_alive()
    assert answers[0]["detail"].startswith("client.wav: the prediction could not be written out (ValueError: ")
    assert "/srv" not in answers[0]["detail"] and "model.json" in answers[0]["detail"]
    assert answers[1]["detail"].startswith("client.wav: the prediction could not be sent back (")


def test_a_failure_line_is_cleaned_of_server_paths_before_it_is_cut(tmp_path):
    from emofuse.serving.app import outcome_status
    from emofuse.serving.jobs import Job, run_job

    clip = tmp_path / "a.wav"
    sf.write(str(clip), tone(0.5), 16000)

    class Predictor:
        def predict_audio(self, audio, transcript, label):
            raise RuntimeError("x" * 195 + " /srv/emofuse/models/a.bin")  # the cut at 200 falls inside the path

    job = Job(path=str(clip), name="client.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
              channels=1, duration=0.5, max_seconds=60.0, segment_over=None)
    answer = run_job(Predictor(), job)
    assert outcome_status(answer) == 500 and "srv" not in answer["detail"]  # before: cut to " /srv", then kept whole


def test_a_model_that_no_longer_loads_breaks_the_pool_without_naming_its_path(monkeypatch):
    from emofuse.errors import DataError

    engine = _bare_engine(monkeypatch)

    def cannot_load(_worker):
        raise DataError("/srv/emofuse/models/secret-model", "model.json is missing")

    monkeypatch.setattr(_FakeWorker, "ready", staticmethod(cannot_load))
    assert engine._replace(0, "worker 1 died on other-client.wav (killed by SIGKILL)") is False
    assert engine.broken and "/srv" not in engine.broken_reason and "secret-model" not in engine.broken_reason
    assert "other-client.wav" not in engine._closed_or_broken()


def test_shutdown_during_a_restart_tells_the_waiting_job_so_in_words(monkeypatch):
    from concurrent.futures import Future

    from emofuse.serving.workers import Job, WorkersBroken

    engine = _bare_engine(monkeypatch)
    engine._slots[0].alive = lambda: False  # its thread finds it dead as it takes the job

    def loads_as_the_server_closes(_worker):
        engine._closing = True
        return {"frames_pid": None}

    monkeypatch.setattr(_FakeWorker, "ready", staticmethod(loads_as_the_server_closes))
    waiting = Future()
    engine._jobs.put((Job(path="", name="a.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
                          channels=1, duration=1.0, max_seconds=60.0, segment_over=None), waiting))
    engine._serve(0)
    with pytest.raises(WorkersBroken, match="^the server is shutting down$"):  # before: "None"
        waiting.result(0)
