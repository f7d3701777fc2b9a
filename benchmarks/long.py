"""Long-recording benchmark: real-time factor and peak memory of per-segment prediction
(`emofuse.inference.long.predict_long`) at 10, 30 and 60 minutes. Writes benchmarks/results/long.json.

    python -m benchmarks.long [--minutes 10 30 60] [--models acoustic hmm4-asr] [--out FILE]

Recording: real RAVDESS speech (from $EMOFUSE_DATA, default ../shared/data), utterances of
all actors in turn, each followed by a pause drawn from 0.6-2.0 s (seed 0), written block by
block as 16 kHz FLAC in a temporary folder (never committed); the 10- and 30-minute files are
the first minutes of the same sequence.

Models, paper-size networks with RANDOM weights (speed and memory depend on the architecture
and inputs, not on the weights' values; the JSON says "weights": "random"):
  - "acoustic": B-ACO-1 on ComParE 2016 LLDs (Aguilar et al. 2019 sizes), no words;
  - "hmm4-asr": H-MM-4 on ComParE LLDs + MiniLM, no transcript: every segment's words come
    from pocketsphinx ASR (the models shipped before the Whisper front end);
  - "hmm4-whisper": H-MM-4 on Whisper tiny.en frames + MiniLM, every segment's words from
    Whisper tiny.en (the default front end).
Each (model, length) runs in a fresh process, so its peak RSS (ru_maxrss, which includes the
loaded model and tools) is its own. RTF = wall-clock seconds of `predict_long` (reading,
segmenting, features, ASR, model) / seconds of audio, Predictor already loaded. The size and
rendering time of the `--html` timeline page are recorded too (it must stay usable at an hour).

Targets (2 cores): acoustic RTF <= 0.05, H-MM-4 with ASR <= 0.25 (either recogniser), peak RSS <= 1.5 GB and flat
across lengths. The machine's load average and the commit are recorded per run: other jobs on
the cores slow every stage. A run of some models or lengths updates those rows of the results
file and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
TARGETS = {"rtf_acoustic": 0.05, "rtf_hmm4_asr": 0.25, "peak_rss_gb": 1.5}
MODELS = {  # name -> (registry model, acoustic feature, word encoder, word dim, recogniser)
    "acoustic": ("B-ACO-1", "compare_lld", None, 0, None),
    "hmm4-asr": ("H-MM-4", "compare_lld", "minilm", 384, "sphinx"),
    "hmm4-whisper": ("H-MM-4", "whisper", "minilm", 384, "whisper"),
}


def data_root() -> Path:
    return Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data"))


def build_recordings(work: Path, minutes: list[int]) -> dict[int, Path]:
    """One joined recording per length, written block by block (memory flat here too)."""
    files = sorted((data_root() / "ravdess").glob("Actor_*/*.flac"))
    if not files:
        sys.exit(f"benchmark needs RAVDESS under {data_root()} (set EMOFUSE_DATA)")
    files = sorted(files, key=lambda f: (f.stem.split("-")[2:6], f.parent.name))  # actors in turn
    out = {}
    for m in sorted(minutes):
        rng = np.random.default_rng(0)
        path = work / f"ravdess-{m}min.flac"
        total, target, i = 0, m * 60 * SR, 0
        with sf.SoundFile(path, "w", samplerate=SR, channels=1, format="FLAC") as f:
            while total < target:
                y, sr = sf.read(files[i % len(files)], dtype="float32")
                assert sr == SR, files[i % len(files)]
                pause = np.zeros(int(rng.uniform(0.6, 2.0) * SR), np.float32)
                piece = np.concatenate([y, pause])[: target - total]
                f.write(piece)
                total += len(piece)
                i += 1
        out[m] = path
    return out


def build_model(work: Path, key: str) -> Path:
    from benchmarks.predict import random_model_dir

    name, acoustic, words, dim, asr = MODELS[key]
    return random_model_dir(work, name, acoustic, words, dim, folder=f"model-{key}", asr=asr)


def measure(model_dir: str, path: str) -> dict:
    """In a fresh process: predict `path` per segment; RTF and peak RSS."""
    import resource
    import time

    from emofuse.inference.long import predict_long
    from emofuse.inference.predictor import Predictor
    from emofuse.inference.timeline import render_timeline_html

    predictor = Predictor(model_dir)
    load_before = os.getloadavg()[0]
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GB (ru_maxrss is KiB)
    start = time.perf_counter()
    result = predict_long(predictor, path)
    wall = time.perf_counter() - start
    summary = result.summary()
    start = time.perf_counter()
    page = render_timeline_html([result])
    html_seconds = time.perf_counter() - start
    return {"audio_seconds": round(result.duration, 1), "wall_s": round(wall, 1), "rtf": round(wall / result.duration, 4),
            "segments": len(result.segments), "failed_segments": summary["failed_segments"],
            "words": sum(len(s.words) for s in result.segments), "detector": result.detector,
            "timeline_html_mb": round(len(page.encode()) / 2**20, 2), "timeline_html_s": round(html_seconds, 2),
            "peak_rss_gb_after_load": round(rss_loaded, 3),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "commit": _commit()}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src/emofuse/inference", "src/emofuse/align"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return done.stdout.strip() + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 30, 60])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "long.json")
    parser.add_argument("--measure", nargs=2, metavar=("MODEL_DIR", "AUDIO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return

    import torch

    from emofuse.io import write_json

    work = Path(tempfile.mkdtemp(prefix="emofuse-bench-long-"))
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
              "targets": TARGETS, "recording": "RAVDESS utterances joined with 0.6-2.0 s pauses", "runs": {}}
    if args.out.is_file():  # a run of some models or lengths updates those, keeping the others
        from emofuse.io import read_json

        report["runs"] = read_json(args.out).get("runs", {})
    recordings = build_recordings(work, args.minutes)
    for key in args.models:
        model_dir = build_model(work, key)
        name, acoustic, words, _, asr = MODELS[key]
        previous = report["runs"].get(key, {}).get("by_minutes", {})
        report["runs"][key] = {"model": name, "acoustic": acoustic, "words": words, "asr": asr, "weights": "random",
                               "transcript": None, "by_minutes": previous}
        for m, path in recordings.items():
            done = subprocess.run([sys.executable, "-m", "benchmarks.long", "--measure", str(model_dir), str(path)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"{key} at {m} min failed:\n{done.stderr[-2000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            report["runs"][key]["by_minutes"][str(m)] = figures
            print(f"{key} {m} min: {json.dumps(figures)}", flush=True)
            report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            write_json(args.out, report)  # after every run: a long benchmark interrupted keeps what it measured
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
