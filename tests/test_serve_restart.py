"""A crashed service worker is restarted: the request it was on gets one clear line, the next
request is answered, /health counts the restart, and only repeated crashes make the service
give up (503 "broken"), so that an orchestrator restarts it."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from helpers import ServeProcess, alive, exited_child, hanging_answer, reaped, registry_model_dir, tone, until


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


def _hanging_copy(clip: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The same audio under a name that makes `helpers.hanging_answer` sleep on it, and the file
    that says the job has reached its worker."""
    hang = tmp_path / f"hangs-{os.getpid()}-{time.monotonic_ns()}.wav"
    hang.write_bytes(clip.read_bytes())
    return hang, Path(tempfile.gettempdir()) / f"{hang.name}.reached"


def test_a_worker_killed_mid_request_is_restarted_and_its_request_answered_in_one_line(model_dir, clip, tmp_path):
    hang, reached = _hanging_copy(clip, tmp_path)
    with ServeProcess(model_dir, "--workers", "1", handle="hanging_answer") as server:
        first = server.health["workers"]
        assert first["restarts"] == 0 and len(first["pids"]) == 1
        assert server.post(clip).status_code == 200
        dead = first["pids"][0]
        answers = []
        caller = threading.Thread(target=lambda: answers.append(server.post(hang)))
        caller.start()
        # killed only once the job is on the worker (it says so from inside), however slow the machine
        assert until(reached.exists, 120)
        reached.unlink()
        os.kill(dead, signal.SIGKILL)  # as the OOM killer would
        caller.join(timeout=120)
        died = answers[0]
        assert died.status_code == 500
        detail = died.json()["detail"]
        assert detail.startswith(f"{hang.name}: the prediction worker died while on this job")
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
        assert until(lambda: server.get_health().json()["workers"]["restarts"] == 2, 120)
        assert server.post(clip).status_code == 200
        restarted = server.get_health().json()["workers"]["pids"]
        assert restarted != [idle]
        server.proc.send_signal(signal.SIGTERM)  # the restarted worker ends with the server, as the first did
        server.proc.wait(timeout=30)
        assert until(lambda: not any(alive(p) for p in restarted), 10)


def test_the_service_gives_up_only_after_more_crashes_than_allowed_within_the_window(model_dir, clip, monkeypatch):
    from fastapi.testclient import TestClient

    from emofuse import pool
    from emofuse.serving.app import ServeSettings, create_app

    monkeypatch.setattr(pool, "MAX_CRASHES", 1)  # the real pool, with a smaller allowance: two loads, not six
    app = create_app(model_dir, ServeSettings(workers=1))
    engine = app.state.engine

    def post():
        return client.post("/predict", files={"file": (clip.name, clip.read_bytes())})

    def crash() -> None:  # a worker dead before the next request arrives (a request on it gets 500 instead)
        pid = engine.pids[0]
        os.kill(pid, signal.SIGKILL)
        assert until(lambda: exited_child(pid), 10)

    with TestClient(app) as client:
        assert post().status_code == 200
        crash()
        assert post().status_code == 200  # one crash: restarted
        assert client.get("/health").json()["workers"]["restarts"] == 1
        crash()  # two crashes within the window: more than allowed
        assert until(lambda: client.get("/health").status_code == 503, 30)
        health = client.get("/health").json()
        assert health["status"] == "broken" and "2 worker crashes within 60 s" in health["detail"]
        refused = post()
        assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
        detail = refused.json()["detail"]
        assert detail.startswith("tone.wav: the prediction workers stopped") and "the server needs a restart" in detail
        assert "died" not in health["detail"] + detail and "/" not in health["detail"] + detail  # no file, no path


def test_a_worker_that_never_answers_is_killed_at_the_job_limit_and_its_request_answered_504(model_dir, clip,
                                                                                             tmp_path):
    hang, reached = _hanging_copy(clip, tmp_path)
    with ServeProcess(model_dir, "--workers", "1", "--job-timeout", "2", handle="hanging_answer") as server:
        first = server.health["workers"]
        assert first["job_timeout"] == 2 and first["timeouts"] == 0
        stuck = first["pids"][0]
        started = time.monotonic()
        answer = server.post(hang)
        waited = time.monotonic() - started
        assert answer.status_code == 504, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith(f"{hang.name}: no answer within the limit of 2 s (server option --job-timeout)")
        assert "\n" not in detail
        assert 2 <= waited < 120  # the limit, not the worker's sleep of a day (slack for a slow CI machine)
        reached.unlink()
        # reaped, not left a zombie until the server exits (as it was before the pool joined it)
        assert until(lambda: reaped(stuck), 10)
        again = server.post(clip)  # the replacement answers
        assert again.status_code == 200, again.text
        workers = server.get_health().json()["workers"]
        assert workers["timeouts"] == 1 and workers["restarts"] == 1 and workers["pids"] != [stuck]


def test_a_timeout_is_not_a_crash_toward_giving_up(model_dir, clip, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from emofuse import pool
    from emofuse.serving.app import ServeSettings, create_app
    from emofuse.serving.workers import ProcessEngine

    hang, reached = _hanging_copy(clip, tmp_path)
    monkeypatch.setattr(ProcessEngine, "handle", staticmethod(hanging_answer))
    monkeypatch.setattr(pool, "MAX_CRASHES", 0)  # any crash would break the pool at once
    app = create_app(model_dir, ServeSettings(workers=1, job_timeout=1))
    with TestClient(app) as client:
        assert client.post("/predict", files={"file": (hang.name, hang.read_bytes())}).status_code == 504
        assert client.post("/predict", files={"file": (clip.name, clip.read_bytes())}).status_code == 200
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["workers"]["timeouts"] == 1
    reached.unlink(missing_ok=True)


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


# ------------------------------------------------ a worker's answers (the pool's races: tests/test_pool.py)


def test_an_answer_that_cannot_be_written_out_or_sent_is_a_500_line_not_the_workers_end(tmp_path):
    from emofuse.serving.app import outcome_status
    from emofuse.serving.jobs import Job
    from emofuse.serving.workers import answer_job

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

    job = Job(path=str(clip), name="client.wav", transcript=None, html=False, reader="soundfile", sample_rate=16000,
              channels=1, duration=0.5, max_seconds=60.0, segment_over=None)
    answers = [answer_job(Predictor(), job, progress=None) for _ in range(3)]
    assert [outcome_status(a) for a in answers] == [500, 500, 200]
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
