"""A live stream stays alive while the server is behind on its predictions (issue 27): the
server keeps reading the connection, so a client's keepalive ping gets its pong, and the
segments it cannot predict in time are answered as not predicted instead of the stream being
closed 1011 "keepalive ping timeout". Served by uvicorn with wsproto on a localhost port, as
`emofuse serve` serves it: the test client has no pings."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import numpy as np
import pytest

from emofuse.serving.app import ServeSettings, create_app
from emofuse.serving.stream import MAX_WAITING_SEGMENTS
from helpers import registry_model_dir, tone

SR = 16000
CHUNK = SR // 10  # 100 ms, sent in real time as a microphone's would be
BURST, PAUSE = 0.3, 0.6  # seconds: each burst of noise is one segment for the energy detector
pytestmark = [pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return registry_model_dir(tmp_path_factory.mktemp("aco") / "model", "B-ACO-1+attn", words=None)


@contextlib.contextmanager
def served(app):
    """uvicorn with wsproto in a thread on a free port; yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="wsproto"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def bursts(n: int) -> bytes:
    """n voiced bursts (noise alone is refused as no speech), each followed by a pause: n segments, as s16le."""
    one = np.concatenate([tone(BURST, SR), np.zeros(int(PAUSE * SR))])
    return (np.tile(one, n) * 32767).clip(-32768, 32767).astype("<i2").tobytes()


def pong_within(ws, seconds: float) -> bool:
    """Send a ping and read until its pong; False if none came within `seconds`."""
    from websocket import ABNF, WebSocketTimeoutException

    ws.ping(b"alive?")
    ws.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == ABNF.OPCODE_PONG and frame.data == b"alive?":
                return True
    except WebSocketTimeoutException:
        return False
    return False


def test_a_live_stream_answers_pings_and_keeps_its_answers_near_the_live_edge_while_predictions_lag(model_dir):
    import websocket

    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=60.0))
    predictor, gate = app.state.predictor, threading.Event()
    predict_audio = predictor.predict_audio

    def held_prediction(*args, **kwargs):  # a prediction far slower than the live audio
        assert gate.wait(60)
        return predict_audio(*args, **kwargs)

    predictor.predict_audio = held_prediction
    segments = MAX_WAITING_SEGMENTS + 3  # one on the held worker and more than may wait behind it
    pcm = bursts(segments)
    try:
        with served(app) as port:
            ws = websocket.create_connection(f"ws://127.0.0.1:{port}/stream?format=s16le&vad=energy", timeout=30)
            start = time.monotonic()
            for k, i in enumerate(range(0, len(pcm), 2 * CHUNK)):
                time.sleep(max(0.0, start + k * CHUNK / SR - time.monotonic()))
                ws.send_binary(pcm[i:i + 2 * CHUNK])
            time.sleep(PAUSE)  # the last segment closes
            # Before the fix, the server stopped reading once 8 segments waited: the ping sat
            # unread behind the audio until the predictions caught up (here: never).
            assert pong_within(ws, 5.0), "the server stopped reading the live stream: no pong"
            gate.set()
            ws.settimeout(60)
            ws.send("end")
            messages = []
            while not (messages and messages[-1].get("done")):
                messages.append(json.loads(ws.recv()))
            answered, done = messages[:-1], messages[-1]
            assert done["segments"] == len(answered) == segments
            skipped = [m for m in answered if m["label"] is None]
            assert skipped and all("the server is behind this live stream" in m["warnings"][0] for m in skipped)
            assert answered[-1]["label"] is not None, "the newest segment is predicted, the oldest waiting ones not"
            opcode, frame = ws.recv_data_frame(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE and frame.data[:2] == (1000).to_bytes(2, "big")
            ws.close()
    finally:
        gate.set()
