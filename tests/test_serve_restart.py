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
from helpers import ServeProcess, alive, registry_model_dir, tone


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


def test_a_worker_killed_mid_request_is_restarted_and_its_request_answered_in_one_line(model_dir, clip):
    with ServeProcess(model_dir, "--workers", "1") as server:
        first = server.health["workers"]
        assert first["restarts"] == 0 and len(first["pids"]) == 1
        assert server.post(clip).status_code == 200
        dead = first["pids"][0]
        os.kill(dead, signal.SIGSTOP)  # the next request reaches the worker and stays there
        answers = []
        caller = threading.Thread(target=lambda: answers.append(server.post(clip)))
        caller.start()
        assert _until(lambda: server.get_health().json()["workers"]["busy"] == 1, 30)
        time.sleep(1.0)  # the server's probe of the upload takes milliseconds; then the job is on the worker
        os.kill(dead, signal.SIGKILL)  # as the OOM killer would
        caller.join(timeout=120)
        died = answers[0]
        assert died.status_code == 500
        detail = died.json()["detail"]
        assert detail.startswith("tone.wav: the prediction worker died while on this request")
        assert "SIGKILL" in detail and "\n" not in detail
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
    from emofuse.serving.app import create_app

    monkeypatch.setattr(workers, "MAX_CRASHES", 1)  # the real pool, with a smaller allowance: two loads, not six
    app = create_app(model_dir, workers=1)
    engine = app.state.engine

    def post():
        return client.post("/predict", files={"file": (clip.name, clip.read_bytes())})

    def crash() -> None:  # a worker dead before the next request arrives (a request on it gets 500 instead)
        pid = engine.pids[0]
        os.kill(pid, signal.SIGKILL)
        assert _until(lambda: not alive(pid), 10)

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
        assert "the server needs a restart" in refused.json()["detail"]
