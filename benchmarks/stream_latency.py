"""Live-audio latency of `WS /stream`: from the end of a segment to its JSON message, p50 and
p95. Writes benchmarks/results/stream_latency.json.

    python -m benchmarks.stream_latency [--seconds 90] [--speed 1.0] [--models acoustic hmm4-asr]

The service (`create_app`, in-process model) runs under uvicorn on a free localhost port; a
client sends a joined recording of real RAVDESS speech with pauses (`benchmarks.long`'s
recording: utterances of all actors in turn, 0.6-2.0 s pauses, seed 0) as 100 ms s16le chunks
at `speed` times real time, and stamps each chunk as it leaves. A segment's latency is the
time its message arrives less the time the chunk holding its end was sent. It includes the
segmenter's wait for the pause that closes a segment (min_pause 0.5 s less the 0.1 s pad =
0.4 s at real time) and the prediction; the target (issue 20, item 3) is at most 1 s.

Models, paper-size networks with random weights (`benchmarks.long.build_model`): "acoustic"
(B-ACO-1 on ComParE LLDs) and "hmm4-asr" (H-MM-4 on ComParE LLDs + MiniLM, words from
pocketsphinx ASR per segment). The machine's load average and the commit are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model_dir: Path, audio: np.ndarray, speed: float) -> dict:
    import uvicorn
    import websocket

    from emofuse.serving.app import ServeSettings, create_app

    app = create_app(model_dir, ServeSettings(workers=0, max_seconds=len(audio) / SR + 60))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="wsproto"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    sent: list[float] = []  # wall time each chunk left
    messages: list[tuple[float, dict]] = []
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/stream?format=s16le", timeout=120)

    def receive():
        while True:
            message = json.loads(ws.recv())
            messages.append((time.perf_counter(), message))
            if message.get("done"):
                return

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        delay = start + k * CHUNK / SR / speed - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ws.send_binary(pcm[i:i + CHUNK].tobytes())
        sent.append(time.perf_counter())
    ws.send("end")
    receiver.join(timeout=300)
    ws.close()
    server.should_exit = True
    thread.join(timeout=10)
    segments = [(t, m) for t, m in messages if not m.get("done")]
    latencies = [t - sent[min(len(sent) - 1, int(m["end"] * SR) // CHUNK)] for t, m in segments]
    return {"audio_seconds": round(len(audio) / SR, 1), "speed": speed, "segments": len(segments),
            "failed_segments": sum(m["label"] is None for _, m in segments),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
            "latency_max_s": round(float(np.max(latencies)), 3),
            "within_target": bool(np.percentile(latencies, 95) <= TARGET_P95_S),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "commit": _commit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the streamed recording")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time the chunks are sent")
    parser.add_argument("--models", nargs="+", default=["acoustic", "hmm4-asr"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream_latency.json")
    args = parser.parse_args()
    from emofuse.io import write_json

    results = {"target_p95_s": TARGET_P95_S, "weights": "random", "chunk_s": CHUNK / SR, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="emofuse-stream-bench-") as tmp:
        work = Path(tmp)
        minutes = max(1, int(np.ceil(args.seconds / 60)))
        audio = sf.read(build_recordings(work, [minutes])[minutes], dtype="float32")[0][: int(args.seconds * SR)]
        for key in args.models:
            row = measure(build_model(work, key), audio, args.speed)
            results["runs"][key] = row
            print(f"{key:10s} {row['segments']:3d} segments  latency p50 {row['latency_p50_s']:.3f} s  "
                  f"p95 {row['latency_p95_s']:.3f} s  max {row['latency_max_s']:.3f} s  "
                  f"(load {row['load_average_1min'][0]})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
