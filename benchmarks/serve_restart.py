"""How long the service is without a worker after one dies: `kill -9` of the worker of a local
`emofuse serve --workers 1`, then the time until /health counts the restart and a request
(a real RAVDESS file with its transcript) is answered 200 by the replacement. Writes
benchmarks/results/serve_restart.json.

    python -m benchmarks.serve_restart --model-dir DIR [--kills 5] [--out FILE]

The figure is mostly the replacement loading the model (a fresh spawned process imports torch
and the predictor, and starts its openSMILE worker); the start of the server is recorded beside
it. The load average and the commit are recorded.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from benchmarks.serve_load import ROOT, Server, ravdess_jobs
from emofuse.io import write_json

POLL = 0.05


def restart_seconds(server: Server, client: httpx.Client, path: Path, transcript: str) -> float:
    """kill -9 the (one) worker; seconds until a replacement is counted and answers 200."""
    workers = client.get(server.url + "/health").json()["workers"]
    pid, restarts = workers["pids"][0], workers["restarts"]
    started = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        workers = client.get(server.url + "/health").json()["workers"]
        if workers["restarts"] > restarts and pid not in workers["pids"]:
            status, _, _ = server.post(client, path, transcript)
            if status == 200:
                return time.perf_counter() - started
        time.sleep(POLL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_restart.json")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    (path, transcript), = ravdess_jobs(1)
    results = {"model_dir": str(args.model_dir), "cpus": os.cpu_count(), "platform": platform.platform(),
               "commit": commit, "load_average_at_start": os.getloadavg()}
    server = Server(args.model_dir, workers=1, max_queue=4)
    try:
        with httpx.Client(timeout=600) as client:
            seconds = []
            for kill in range(args.kills):
                seconds.append(round(restart_seconds(server, client, path, transcript), 3))
                print(f"kill {kill + 1}: replaced and answering after {seconds[-1]:.2f} s", flush=True)
            health = client.get(server.url + "/health")
    finally:
        server.stop()
    results.update(server_start_s=server.start_seconds, restart_s=seconds,
                   restart_median_s=round(statistics.median(seconds), 3),
                   health_after=health.status_code, restarts_counted=health.json()["workers"]["restarts"],
                   load_average_at_end=os.getloadavg())
    print(f"server start {server.start_seconds:.2f} s; restart median {results['restart_median_s']:.2f} s "
          f"over {args.kills} kills; /health {health.status_code} with {results['restarts_counted']} restarts")
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
