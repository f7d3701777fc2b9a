"""Slow clients hold a connection, never a queue place (issue 27 item 4): a body trickled a byte
at a time is read before it queues and answered 408 once it falls behind the minimum rate; a
request head trickled a byte at a time is cut at the head timeout; a request h11 cannot parse
is answered 400 in the service's one JSON line."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf
from helpers import ServeProcess, registry_model_dir, tone

HEADER_SECONDS = 2.0
BODY_GRACE = 1.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slowloris-audio") / "tone.wav"
    sf.write(str(path), tone(1.0), 16000)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # acoustic only, fbank40: a worker loads in seconds; one worker and 4 waiting: 5 places, as many as tricklers
    model_dir = registry_model_dir(tmp_path_factory.mktemp("slowloris") / "baco", "B-ACO-1", acoustic="fbank40",
                                   words=None)
    with ServeProcess(model_dir, "--workers", "1", "--max-queue", "4", "--header-seconds", str(HEADER_SECONDS),
                      "--body-grace", str(BODY_GRACE)) as server:
        yield server


def _answer(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (or `seconds` pass)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def _status_and_json(answer: bytes) -> tuple[int, dict, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert body.count(b"\n") == 0, body  # one line
    return int(lines[0].split()[1]), headers, json.loads(body)


def _trickle_bodies(port: int, body: bytes, stop: threading.Event, answers: list) -> None:
    """A slowloris client: a POST whose multipart body comes a byte every 0.5 s, reconnecting as
    soon as it is answered or cut off; each answer's status line (or b"" when cut) in `answers`."""
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=AAA\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            sock.settimeout(0.5)
            started, answer = time.monotonic(), b""
            for byte in body:
                if stop.is_set():
                    break
                try:
                    sock.send(bytes([byte]))
                    answer = sock.recv(4096)
                    break  # answered, or closed (b"")
                except socket.timeout:
                    continue
                except OSError:
                    break
            if not stop.is_set():
                answers.append((round(time.monotonic() - started, 1), answer.split(b"\r\n", 1)[0]))


def test_five_trickling_bodies_leave_every_legitimate_request_its_answer(server, clip):
    body = (b'--AAA\r\nContent-Disposition: form-data; name="file"; filename="s.wav"\r\n\r\n'
            + clip.read_bytes() + b"\r\n--AAA--\r\n")
    stop, trickled = threading.Event(), []
    tricklers = [threading.Thread(target=_trickle_bodies, args=(server.port, body, stop, trickled)) for _ in range(5)]
    for t in tricklers:
        t.start()
    try:
        time.sleep(0.5)  # every trickler has sent its head (and, before the fix, held a place)
        with ThreadPoolExecutor(max_workers=3) as pool:  # 3 at a time: the queue alone never refuses them
            statuses = list(pool.map(lambda _: server.post(clip, timeout=60).status_code, range(12)))
        time.sleep(BODY_GRACE + 1.0)  # each trickler has been cut off at least once
    finally:
        stop.set()
        for t in tricklers:
            t.join(timeout=10)
    assert statuses == [200] * 12, statuses
    assert len(trickled) >= 5 and all(line.startswith(b"HTTP/1.1 408") for _, line in trickled), trickled
    assert all(seconds < BODY_GRACE + 2.0 for seconds, _ in trickled), trickled  # cut when behind the rate
    health = server.get_health().json()
    assert health["queue"]["length"] == 0 and health["queue"]["refused"] == 0 and health["workers"]["busy"] == 0
    assert health["uploads"]["refused"] == 0 and health["uploads"]["max"] == 16


def test_slow_request_heads_are_closed_at_the_header_timeout(server):
    def trickle_head() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            head = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
            sock.settimeout(0.3)
            started = time.monotonic()
            for byte in head:
                if time.monotonic() - started > HEADER_SECONDS + 5.0:  # still open: give up
                    return time.monotonic() - started, b""
                try:
                    sock.send(bytes([byte]))
                    answer = sock.recv(4096)
                except socket.timeout:
                    continue
                except OSError:  # reset: closed
                    answer = b""
                return time.monotonic() - started, answer + _answer(sock, 1.0)
        raise AssertionError("a 10 kB head sent whole")

    def idle() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            started = time.monotonic()
            answer = _answer(sock, 3 * HEADER_SECONDS + 5)
            return time.monotonic() - started, answer

    with ThreadPoolExecutor(max_workers=4) as pool:
        slow = [pool.submit(trickle_head) for _ in range(3)]
        silent = pool.submit(idle)
        results = [f.result() for f in slow]
        silent_seconds, silent_answer = silent.result()
    for seconds, answer in results:
        assert HEADER_SECONDS - 0.5 < seconds < HEADER_SECONDS + 3.0, results
        status, headers, body = _status_and_json(answer)
        assert status == 408 and headers["connection"] == "close"
        assert body == {"detail": f"the request head did not arrive within {HEADER_SECONDS:g} s"}
    assert HEADER_SECONDS - 0.5 < silent_seconds < HEADER_SECONDS + 3.0 and silent_answer == b""
    assert server.get_health().status_code == 200  # a connection that sends its head at once is served


@pytest.mark.parametrize("lengths, why", [((b"-1",), "bad Content-Length"),
                                          ((b"5", b"6"), "conflicting Content-Length headers")])
def test_a_negative_or_conflicting_content_length_is_a_400_in_one_json_line(server, lengths, why):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n" + b"".join(b"Content-Length: %s\r\n" % n for n in lengths)
                     + b"\r\nhello")
        status, headers, body = _status_and_json(_answer(sock, 10))
    assert status == 400 and headers["content-type"] == "application/json"
    assert body == {"detail": f"invalid HTTP request: {why}"}


# ------------------------------------------------------------------ the middleware alone
def _run_upload_limit(chunks: list[tuple[float, bytes]], **limits):
    """UploadLimit in front of an app that records what reached it; the body arrives as
    (pause before, bytes) chunks. Returns (what was sent back, bodies that reached the app,
    the admission's places taken while the body was still arriving)."""
    from emofuse.serving.app import UploadLimit
    from emofuse.serving.workers import Admission

    admission = Admission(workers=1, max_queue=0)
    reached, held = [], []

    async def inner(scope, receive, send):
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = UploadLimit(inner, max_bytes=10_000, limit_mb=0.01, admission=admission, **limits)
    remaining = list(chunks)

    async def receive():
        pause, data = remaining.pop(0)
        await asyncio.sleep(pause)
        held.append(admission.in_system)
        return {"type": "http.request", "body": data, "more_body": bool(remaining)}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(asyncio.wait_for(limit(scope, receive, send), 10))
    assert admission.in_system == 0  # every place taken was given back
    return sent, reached, held


def test_a_body_takes_a_queue_place_only_once_it_has_arrived_whole():
    sent, reached, held = _run_upload_limit([(0.05, b"a" * 100)] * 4, body_seconds=5.0)
    assert sent[0]["status"] == 200 and reached == [b"a" * 400]
    assert held == [0, 0, 0, 0]  # no place while it was being read


def test_a_body_behind_the_minimum_rate_after_the_grace_is_answered_408_and_closed():
    sent, reached, _ = _run_upload_limit([(0.0, b"a")] + [(10.0, b"a")], body_seconds=30.0, body_grace=0.3,
                                         body_rate=1000.0)
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"] and not reached
    assert b"arrived too slowly: 1 bytes in" in sent[1]["body"] and b"--body-rate-kb" in sent[1]["body"]
    fast, reached, _ = _run_upload_limit([(0.2, b"a" * 1000)] * 3, body_seconds=30.0, body_grace=0.3,
                                         body_rate=1000.0)  # 5 kB/s: above the rate
    assert fast[0]["status"] == 200 and reached == [b"a" * 3000]


def test_uploads_past_the_readers_cap_are_answered_503_at_once():
    from emofuse.serving.app import UploadLimit
    from emofuse.serving.workers import Readers

    async def inner(scope, receive, send):
        raise AssertionError("never reached")

    readers = Readers(max_readers=2)
    assert readers.start() and readers.start()  # two bodies are arriving
    limit = UploadLimit(inner, max_bytes=10_000, limit_mb=0.01, readers=readers)
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(limit(scope, None, send))
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    assert b"server is busy" in sent[1]["body"] and b"--max-readers" in sent[1]["body"]
    assert readers.refused == 1 and readers.reading == 2


def test_a_live_stream_outlives_the_header_timeout(server):
    """The head timer stops at the WebSocket upgrade: `WS /stream` has its own idle limit."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        sock.settimeout(HEADER_SECONDS + 1.0)
        with pytest.raises(socket.timeout):  # neither a close frame nor the end of the connection
            sock.recv(4096)
