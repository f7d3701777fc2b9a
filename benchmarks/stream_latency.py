"""Live-audio latency of `WS /stream` with one or several streams at once: from the end of a
segment to its JSON message (p50, p95, max), the streams the server or the client's keepalive
closed, and how late the server's event loop ran. Writes benchmarks/results/stream_latency.json.

    python -m benchmarks.stream_latency [--seconds 90] [--speed 1.0] [--streams 1] [--workers 0]
                                        [--models acoustic hmm4-asr]

The service (`create_app`, the model in the server process unless `--workers`) runs under uvicorn with wsproto (as `emofuse serve`
runs it) on a free localhost port; each of `--streams` clients sends a joined recording of real
RAVDESS speech with pauses (`benchmarks.long`'s recording: utterances of all actors in turn,
0.6-2.0 s pauses, seed 0) as 100 ms s16le chunks at `speed` times real time, starting 100 ms /
streams apart, and stamps each chunk as it leaves. A segment's latency is the time its message
arrives less the time the chunk holding its end was sent. It includes the segmenter's wait for
the pause that closes a segment (min_pause 0.5 s less the 0.1 s pad = 0.4 s at real time) and
the prediction; the target (issue 20, item 3) is at most 1 s.

Each client keeps the connection alive as the `websockets` client does by default (issue 27's
probe): a ping every 20 s, and the connection closed with 1011 "keepalive ping timeout" when its
pong is not back within 20 s. A stream counts as closed abnormally for any close but 1000 after
its `done` message (the server's own keepalive closes with the same 1011). The event loop's lag
is how late a task on the server's loop that sleeps 100 ms wakes: while the loop is held by
work run on it, pings, /health and every other stream wait that long.

Models, paper-size networks with random weights (`benchmarks.long.build_model`): "acoustic"
(B-ACO-1 on ComParE LLDs) and "hmm4-asr" (H-MM-4 on ComParE LLDs + MiniLM, words from
pocketsphinx ASR per segment). The machine's load average and the commit are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from benchmarks.long import _commit, build_model, build_recordings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CHUNK = SR // 10  # 100 ms
TARGET_P95_S = 1.0
PING_INTERVAL_S = PING_TIMEOUT_S = 20.0  # the `websockets` client's defaults
LAG_TICK_S = 0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveClient:
    """One stream over websocket-client, kept alive as the `websockets` client keeps its own:
    a ping every PING_INTERVAL_S; no pong within PING_TIMEOUT_S closes it 1011."""

    def __init__(self, url: str, pcm: np.ndarray, speed: float, delay: float):
        import websocket

        self.pcm, self.speed, self.delay = pcm, speed, delay
        self.ws = websocket.create_connection(url, timeout=None)
        self.sent: list[float] = []  # wall time each chunk left
        self.messages: list[tuple[float, dict]] = []
        self.close: tuple[int, str] | None = None  # (code, reason), the server's or our keepalive's
        self.closed_at: float | None = None
        self._pong = threading.Event()
        self._payload = b""
        self._finished = threading.Event()

    def run(self, start: float) -> None:
        receiver = threading.Thread(target=self._receive, daemon=True)
        keepalive = threading.Thread(target=self._keepalive, daemon=True)
        receiver.start()
        keepalive.start()
        start += self.delay
        try:
            for k, i in enumerate(range(0, len(self.pcm), CHUNK)):
                delay = start + k * CHUNK / SR / self.speed - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if self._finished.is_set():
                    break
                self.ws.send_binary(self.pcm[i:i + CHUNK].tobytes())
                self.sent.append(time.perf_counter())
            else:
                self.ws.send("end")
        except OSError:  # closed under us: by the server, or by our keepalive
            pass
        receiver.join(timeout=600)
        self._finished.set()
        keepalive.join(timeout=5)
        self.ws.shutdown()

    def _receive(self) -> None:
        from websocket import ABNF

        try:
            while True:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)  # answers the server's pings
                if opcode == ABNF.OPCODE_PONG:
                    if frame.data == self._payload:
                        self._pong.set()
                elif opcode == ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
                    self._closed(code, frame.data[2:].decode("utf-8", "replace"))
                    return
                elif opcode == ABNF.OPCODE_TEXT:
                    self.messages.append((time.perf_counter(), json.loads(frame.data)))
        except Exception:  # noqa: BLE001 - the socket was shut: by our keepalive, or lost
            self._closed(1006, "connection lost")
        finally:
            self._finished.set()

    def _keepalive(self) -> None:
        while not self._finished.wait(PING_INTERVAL_S):
            self._payload = os.urandom(4)
            self._pong.clear()
            # Sent from a thread of its own: a send blocked on a server that stopped reading
            # holds the socket's lock, and the pong's deadline runs from now all the same.
            threading.Thread(target=self._ping, args=(self._payload,), daemon=True).start()
            if not self._pong.wait(PING_TIMEOUT_S) and not self._finished.is_set():
                self._closed(1011, "keepalive ping timeout")
                self._finished.set()
                self.ws.abort()
                return

    def _ping(self, payload: bytes) -> None:
        try:
            self.ws.ping(payload)
        except Exception:  # noqa: BLE001 - closed meanwhile
            pass

    def _closed(self, code: int, reason: str) -> None:
        if self.close is None:
            self.close, self.closed_at = (code, reason), time.perf_counter()


async def _loop_lag(lags: list[float]) -> None:
    """How late a 100 ms sleep wakes on the server's loop, again and again."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(LAG_TICK_S)
        lags.append(loop.time() - t - LAG_TICK_S)


def measure(model_dir: Path, audio: np.ndarray, speed: float, streams: int = 1, workers: int = 0) -> dict:
    import uvicorn

    from emofuse.serving.app import ServeSettings, create_app

    app = create_app(model_dir, ServeSettings(workers=workers, max_seconds=len(audio) / SR + 60))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="wsproto"))
    lags: list[float] = []

    async def serve() -> None:
        probe = asyncio.create_task(_loop_lag(lags))
        try:
            await server.serve()
        finally:
            probe.cancel()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    clients = [LiveClient(f"ws://127.0.0.1:{port}/stream?format=s16le", pcm, speed, k * CHUNK / SR / streams)
               for k in range(streams)]
    load_before = os.getloadavg()[0]
    lags.clear()
    start = time.perf_counter()
    senders = [threading.Thread(target=c.run, args=(start,), daemon=True) for c in clients]
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    server.should_exit = True
    thread.join(timeout=10)
    latencies, segments, failed = [], 0, 0
    for c in clients:
        for t, m in c.messages:
            if m.get("done") or "end" not in m:
                continue
            segments += 1
            failed += m["label"] is None
            chunk = min(len(c.sent) - 1, int(m["end"] * SR) // CHUNK)
            if 0 <= chunk:
                latencies.append(t - c.sent[chunk])
    abnormal = [c for c in clients if c.close != (1000, "") or not any(m.get("done") for _, m in c.messages)]
    closes: dict[str, int] = {}
    for c in abnormal:
        key = f"{c.close[0]} {c.close[1]}".strip() if c.close else "open"
        closes[key] = closes.get(key, 0) + 1
    pct = (lambda q: round(float(np.percentile(latencies, q)), 3)) if latencies else (lambda q: None)
    return {"audio_seconds": round(len(audio) / SR, 1), "speed": speed, "streams": streams, "workers": workers,
            "segments": segments,
            "failed_segments": failed, "latency_p50_s": pct(50), "latency_p95_s": pct(95),
            "latency_max_s": pct(100), "within_target": bool(latencies) and pct(95) <= TARGET_P95_S,
            "streams_closed_abnormally": len(abnormal),
            "streams_closed_by_keepalive": sum(c.close is not None and c.close[0] == 1011
                                               and "keepalive" in c.close[1] for c in clients),
            "abnormal_closes": closes,
            "abnormal_close_after_s": sorted(round(c.closed_at - start, 1) for c in abnormal if c.closed_at),
            "loop_lag_median_s": round(float(np.median(lags)), 4) if lags else None,
            "loop_lag_max_s": round(float(np.max(lags)), 3) if lags else None,
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "commit": _commit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the streamed recording")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time the chunks are sent")
    parser.add_argument("--streams", type=int, default=1, help="streams sent at once, each the whole recording")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes (0: the model in the server process, as the earlier rows ran)")
    parser.add_argument("--models", nargs="+", default=["acoustic", "hmm4-asr"])
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/stream_latency.json for one stream, "
                                                 "stream_latency_N_streams.json for N")
    args = parser.parse_args()
    args.out = args.out or ROOT / "benchmarks" / "results" / (
        "stream_latency.json" if args.streams == 1 else f"stream_latency_{args.streams}_streams.json")
    from emofuse.io import write_json

    results = {"target_p95_s": TARGET_P95_S, "weights": "random", "chunk_s": CHUNK / SR,
               "client_keepalive_s": {"ping_interval": PING_INTERVAL_S, "ping_timeout": PING_TIMEOUT_S}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="emofuse-stream-bench-") as tmp:
        work = Path(tmp)
        minutes = max(1, int(np.ceil(args.seconds / 60)))
        audio = sf.read(build_recordings(work, [minutes])[minutes], dtype="float32")[0][: int(args.seconds * SR)]
        for key in args.models:
            row = measure(build_model(work, key), audio, args.speed, args.streams, args.workers)
            results["runs"][key] = row
            latency = ("no segments" if row["latency_p50_s"] is None else
                       f"latency p50 {row['latency_p50_s']:.3f} s  p95 {row['latency_p95_s']:.3f} s  "
                       f"max {row['latency_max_s']:.3f} s")
            print(f"{key:10s} {row['streams']} stream(s) {row['segments']:4d} segments ({row['failed_segments']} "
                  f"failed)  {latency}  closed abnormally {row['streams_closed_abnormally']} "
                  f"(keepalive {row['streams_closed_by_keepalive']}) {row['abnormal_closes'] or ''}  "
                  f"loop lag median {row['loop_lag_median_s']} s  max {row['loop_lag_max_s']} s  "
                  f"(load {row['load_average_1min'][0]})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
