"""Service load benchmark: bounded load on a local `emofuse serve`, with `--workers 1` and
`--workers 2` in the same run. Writes benchmarks/results/serve_load.json.

    python -m benchmarks.serve_load --model-dir DIR [--workers 1 2] [--max-queue 50] [--out FILE]

Requests: each a different real RAVDESS file (from $EMOFUSE_DATA, default ../shared/data)
with its statement as the transcript: 50 files sent at concurrency 50, then 200 other files
at concurrency 20. Every answer is compared with a sequential run of the same files (one
request at a time, against the first server): a mismatch is a different label, probabilities
further apart than 1e-5, or different words.

Per server and scenario: successes, 503s (queue full), other errors, mismatches, p50 and p95
latency (send to answer, at the client), throughput (successes per wall-clock second of the
scenario), the worst `/health` latency (polled every 0.2 s during the load) and the RSS of
the server and all its processes before and after. Throughput ratio = workers 2 / workers 1
over the 200-request scenario (issue 20 target: >= 1.7 on an idle 2-core machine).

The client runs on the same cores as the server (threads of httpx): on a 2-core machine it
takes a share of them, and other jobs on the cores slow every figure; the load average and
the commit are recorded.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from emofuse.io import write_json

ROOT = Path(__file__).resolve().parents[1]
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
SCENARIOS = [("50 at concurrency 50", 50, 50), ("200 at concurrency 20", 200, 20)]
START_TIMEOUT = 600.0
HEALTH_EVERY = 0.2


def ravdess_jobs(count: int) -> list[tuple[Path, str]]:
    """`count` different speech files, actors in turn, with their statements as transcripts."""
    root = Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data")) / "ravdess"
    per_actor = [sorted(a.glob("03-01-*.flac")) for a in sorted(root.glob("Actor_*"))]
    files = [f for group in zip(*per_actor) for f in group][:count]
    if len(files) < count:
        sys.exit(f"{root}: {len(files)} RAVDESS speech files found, {count} needed")
    return [(f, STATEMENTS[f.name.split("-")[4]]) for f in files]


def _descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB."""
    total = 0
    for p in {pid, *_descendants(pid)}:
        try:
            for line in (Path("/proc") / str(p) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


class Server:
    def __init__(self, model_dir: Path, workers: int, max_queue: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from emofuse.cli import main; main()", "serve", str(model_dir),
             "--port", str(self.port), "--workers", str(workers), "--max-queue", str(max_queue)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"emofuse serve exited {self.proc.returncode}")
            try:
                httpx.get(self.url + "/health", timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.perf_counter() - started > START_TIMEOUT:
                    self.stop()
                    sys.exit("emofuse serve did not answer /health in time")
                time.sleep(0.5)
        self.start_seconds = round(time.perf_counter() - started, 2)

    def post(self, client: httpx.Client, path: Path, transcript: str) -> tuple[int, dict, float]:
        t = time.perf_counter()
        response = client.post(self.url + "/predict", files={"file": (path.name, path.read_bytes())},
                               data={"transcript": transcript}, timeout=600)
        return response.status_code, response.json(), time.perf_counter() - t

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def same(a: dict, b: dict) -> bool:
    return (a.get("label") == b.get("label") and set(a["probabilities"]) == set(b["probabilities"])
            and all(abs(a["probabilities"][k] - b["probabilities"][k]) <= 1e-5 for k in a["probabilities"])
            and [w["text"] for w in a.get("words", [])] == [w["text"] for w in b.get("words", [])])


def run_scenario(server: Server, jobs, concurrency: int, reference: dict) -> dict:
    health: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                t = time.perf_counter()
                client.get(server.url + "/health", timeout=120).raise_for_status()
                health.append(time.perf_counter() - t)
                stop.wait(HEALTH_EVERY)

    rss_before = rss_mb(server.proc.pid)
    prober = threading.Thread(target=poll, daemon=True)
    prober.start()
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    with httpx.Client(limits=limits) as client, ThreadPoolExecutor(max_workers=concurrency) as pool:
        t = time.perf_counter()
        answers = list(pool.map(lambda job: (job[0].name, *server.post(client, *job)), jobs))
        wall = time.perf_counter() - t
    stop.set()
    prober.join()
    ok = [(name, body, seconds) for name, status, body, seconds in answers if status == 200]
    latencies = sorted(seconds for _, _, seconds in ok)
    return {
        "requests": len(jobs), "concurrency": concurrency, "successes": len(ok),
        "busy_503": sum(status == 503 for _, status, _, _ in answers),
        "other_errors": sorted({f"{status}: {body.get('detail')}" for _, status, body, _ in answers
                                if status not in (200, 503)}),
        "mismatches": sum(not same(body, reference[name]) or body.get("file") != name for name, body, _ in ok),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3) if latencies else None,
        "throughput_rps": round(len(ok) / wall, 3), "wall_s": round(wall, 2),
        "health_worst_s": round(max(health), 4) if health else None, "health_polls": len(health),
        "rss_mb_before": rss_before, "rss_mb_after": rss_mb(server.proc.pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-queue", type=int, default=50, help="the servers' --max-queue")
    parser.add_argument("--scale", type=float, default=1.0, help="request counts times this (a quick check: 0.1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()

    scenarios = [(f"{max(1, round(n * args.scale))} at concurrency {c}", max(1, round(n * args.scale)), c)
                 for _, n, c in SCENARIOS]
    jobs = ravdess_jobs(sum(n for _, n, _ in scenarios))
    results: dict = {
        "model_dir": str(args.model_dir), "max_queue": args.max_queue, "scale": args.scale, "cpus": os.cpu_count(),
        "platform": platform.platform(), "load_average_at_start": os.getloadavg(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "servers": {},
    }
    reference: dict[str, dict] = {}
    for workers in args.workers:
        server = Server(args.model_dir, workers, args.max_queue)
        try:
            row = {"start_s": server.start_seconds, "rss_mb_idle": rss_mb(server.proc.pid), "scenarios": {}}
            if not reference:  # the sequential run, once, against the first server
                t = time.perf_counter()
                with httpx.Client() as client:
                    for path, transcript in jobs:
                        status, body, _ = server.post(client, path, transcript)
                        if status != 200:
                            sys.exit(f"{path}: sequential request answered {status}: {body}")
                        reference[path.name] = body
                results["sequential_rps"] = round(len(jobs) / (time.perf_counter() - t), 3)
                print(f"sequential: {len(jobs)} files, {results['sequential_rps']} requests/s", flush=True)
            offset = 0
            for name, count, concurrency in scenarios:
                row["scenarios"][name] = figures = run_scenario(server, jobs[offset:offset + count], concurrency,
                                                                reference)
                offset += count
                print(f"workers {workers}, {name}: {figures['successes']} ok, {figures['busy_503']} 503, "
                      f"{len(figures['other_errors'])} other errors, {figures['mismatches']} mismatches, "
                      f"p50 {figures['latency_p50_s']} s, p95 {figures['latency_p95_s']} s, "
                      f"{figures['throughput_rps']} requests/s, /health worst {figures['health_worst_s']} s, "
                      f"RSS {figures['rss_mb_before']} -> {figures['rss_mb_after']} MB", flush=True)
            results["servers"][f"workers={workers}"] = row
        finally:
            server.stop()
        write_json(args.out, results)
    rps = {w: results["servers"].get(f"workers={w}", {}).get("scenarios", {}).get(scenarios[1][0], {})
           .get("throughput_rps") for w in (1, 2)}
    if rps[1] and rps[2]:
        results["throughput_ratio_workers_2_to_1"] = round(rps[2] / rps[1], 3)
        print(f"throughput ratio, workers 2 / workers 1: {results['throughput_ratio_workers_2_to_1']}")
    results["load_average_at_end"] = os.getloadavg()
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
