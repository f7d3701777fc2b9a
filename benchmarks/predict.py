"""Prediction benchmark: latency and real-time factor of `emofuse predict`, folder throughput,
model load time. Writes benchmarks/results/predict.json.

    python -m benchmarks.predict [--model-dir DIR ...] [--repeats 3] [--folder-files 16]

Recordings (real speech, RAVDESS from $EMOFUSE_DATA, default ../shared/data):
  - "3 s":  one RAVDESS utterance (~3.5 s), its statement as the transcript;
  - "30 s": RAVDESS utterances of one actor concatenated to >= 30 s, transcripts joined.
Each is predicted with its transcript (pocketsphinx forced alignment) and without (ASR: the
recogniser the model directory records, Whisper tiny.en for the Whisper row, pocketsphinx for
the ComParE row, as the models shipped before the Whisper front end read words).
RTF = wall-clock seconds of the whole prediction (decode, alignment, features, word vectors,
model) / seconds of audio, with the Predictor already loaded. Stage times are reported too.

Models: the model directories given with --model-dir; without any, H-MM-4 (ComParE LLD +
MiniLM, Aguilar et al. 2019 sizes: BLSTM 256 x 2, pocketsphinx ASR), H-MM-4 on Whisper tiny.en
frames + MiniLM with Whisper's words, and FG_CME (fbank40 + GloVe-50, Li et al. 2021 sizes)
are built from the registry with RANDOM weights and written as model
directories: latency depends on the architecture and inputs, not on the weights' values,
and the JSON says so ("weights": "random").

Folder throughput: `emofuse.inference.folder.predict_jobs` with 2 worker processes over
`--folder-files` RAVDESS files with transcripts, wall clock including the workers' start.
Load time: `Predictor(model_dir)` (weights, openSMILE, MiniLM/GloVe, pocketsphinx decoders)
in this process after the imports, and a cold start in a fresh process including imports.

Frame features (`--frame-files N`): extraction RTF of compare_lld, whisper (clip length) and
whisper#pad=30 on the same N RAVDESS files, one thread, medians over files.

Targets (2 cores): RTF <= 0.05 with a transcript, <= 0.25 with ASR, load <= 3 s; H-MM-4 on
Whisper frames + Whisper words <= 0.06 on 3 s and 30 s clips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
TARGETS = {"rtf_transcript": 0.05, "rtf_asr": 0.25, "load_seconds": 3.0, "rtf_whisper_hmm4": 0.06}


def data_root() -> Path:
    return Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data"))


def ravdess(actor: int = 1) -> list[Path]:
    folder = data_root() / "ravdess" / f"Actor_{actor:02d}"
    files = sorted(folder.glob("*.flac")) + sorted(folder.glob("*.wav"))
    if not files:
        sys.exit(f"benchmark needs RAVDESS under {data_root()} (set EMOFUSE_DATA)")
    return files


def transcript_of(path: Path) -> str:
    return STATEMENTS[path.stem.split("-")[4]]


def recordings(work: Path) -> dict[str, tuple[Path, str]]:
    from emofuse.features.audio import load_audio

    files = ravdess(1)
    short = files[0]
    pieces, texts, total = [], [], 0.0
    for f in files:
        y = load_audio(f, 16000)
        pieces.append(y)
        texts.append(transcript_of(f))
        total += len(y) / 16000
        if total >= 30.0:
            break
    long_path = work / "ravdess-30s.flac"
    sf.write(long_path, np.concatenate(pieces), 16000)
    return {"3s": (short, transcript_of(short)), "30s": (long_path, " ".join(texts))}


def random_model_dir(work: Path, name: str, acoustic: str, words: str | None, word_dim: int,
                     folder: str | None = None, asr: str | None = None) -> Path:
    """A model directory of `name` at paper size with random weights (seed 0), in
    WORK/<folder> (default model-<name>): the cost of prediction does not depend on what the
    weights learnt."""
    from emofuse.features.frames import get_frame_feature
    from emofuse.models.base import InputSpec, get_model
    from emofuse.models.modeldir import ModelInfo, write_model_dir

    entry = get_model(name)
    frame = get_frame_feature(acoustic)
    spec = {"num_classes": 4, "acoustic_dim": frame.dim, "word_dim": word_dim, "vocab_size": 0}
    torch.manual_seed(0)
    model = entry.build(InputSpec(**spec))
    info = ModelInfo(name=entry.name, settings={}, spec=spec, needs=list(entry.needs),
                     classes=["angry", "happy", "neutral", "sad"], label_set="ravdess4", acoustic=acoustic,
                     acoustic_settings=dict(frame.settings), words=words, align="auto" if words else "none",
                     asr=asr if words else None,
                     normaliser={"mean": [0.0] * frame.dim, "std": [1.0] * frame.dim},
                     source={"weights": "random (benchmark)"})
    return write_model_dir(work / (folder or f"model-{name}"), model, info)


def paper_size_model_dirs(work: Path) -> list[Path]:
    return [random_model_dir(work, *model) for model in (
        ("H-MM-4", "compare_lld", "minilm", 384, "model-H-MM-4", "sphinx"),
        ("H-MM-4", "whisper", "minilm", 384, "model-H-MM-4-whisper", "whisper"),
        ("fgcme", "fbank40", "glove50", 50, None, "sphinx"))]


def frame_rtf(files: list[Path]) -> dict:
    """Extraction RTF of each frame feature on the same files (median over files), one thread."""
    from emofuse.features.audio import load_audio
    from emofuse.features.frames import get_frame_feature

    audio = [load_audio(f, 16000) for f in files]
    out = {}
    for name in ("compare_lld", "whisper", "whisper#pad=30"):
        feature = get_frame_feature(name).warm()
        feature.extract(audio[0])
        rtfs = []
        for y in audio:
            start = time.perf_counter()
            feature.extract(y)
            rtfs.append((time.perf_counter() - start) / (len(y) / 16000))
        out[name] = {"rtf_median": round(float(np.median(rtfs)), 4), "files": len(files), "dim": feature.dim,
                     "hop": feature.hop}
        print(f"  frames {name}: {json.dumps(out[name])}", flush=True)
    return out


def time_prediction(predictor, path: Path, transcript: str | None, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = predictor.predict_file(path, transcript)
        runs.append((time.perf_counter() - start, result))
    seconds = [s for s, _ in runs]
    best = min(range(len(runs)), key=lambda i: seconds[i])
    result = runs[best][1]
    return {
        "audio_seconds": round(result.duration, 3),
        "latency_median_s": round(float(np.median(seconds)), 4),
        "latency_min_s": round(min(seconds), 4),
        "rtf": round(float(np.median(seconds)) / result.duration, 4),
        "repeats": repeats,
        "align_source": result.align_source,
        "words": len(result.words),
        "stages_s": {k: round(v, 4) for k, v in result.timings.items()},
    }


def cold_load(model_dir: Path) -> float:
    code = ("import time; t=time.perf_counter(); from emofuse.inference.predictor import Predictor; "
            f"Predictor({str(model_dir)!r}); print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def folder_throughput(model_dir: Path, files: list[Path], workers: int) -> dict:
    from emofuse.inference.folder import predict_jobs

    audio = sum(sf.info(str(f)).duration for f in files)
    start = time.perf_counter()
    first = None
    errors = 0
    for _, result in predict_jobs(model_dir, [(str(f), transcript_of(f)) for f in files], workers=workers, batch_size=2):
        first = first or time.perf_counter()
        errors += hasattr(result, "error")
    wall = time.perf_counter() - start
    after_first = time.perf_counter() - first
    return {"files": len(files), "workers": workers, "audio_seconds": round(audio, 2), "wall_s": round(wall, 2),
            "files_per_s": round(len(files) / wall, 3), "audio_seconds_per_s": round(audio / wall, 3),
            "wall_after_first_result_s": round(after_first, 2), "errors": errors,
            "note": "wall includes starting the worker processes and loading the model in each"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", action="append", type=Path, default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder-files", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frame-files", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.json")
    args = parser.parse_args()

    from emofuse.io import write_json
    from emofuse.models.modeldir import read_info
    from emofuse.inference.predictor import Predictor

    work = Path(tempfile.mkdtemp(prefix="emofuse-bench-"))
    load_before = os.getloadavg()
    model_dirs = args.model_dir or paper_size_model_dirs(work)
    clips = recordings(work)
    report = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_at_start": [round(x, 2) for x in load_before]},
        "targets": TARGETS,
        "models": {},
    }
    for model_dir in model_dirs:
        info = read_info(model_dir)
        print(f"== {info.name} ({info.acoustic} + {info.words}, asr {info.asr})", flush=True)
        start = time.perf_counter()
        predictor = Predictor(model_dir)
        load = time.perf_counter() - start
        report["machine"]["torch_threads"] = torch.get_num_threads()  # the Predictor's setting
        entry = {"weights": info.source.get("weights", "trained"), "acoustic": info.acoustic, "words": info.words,
                 "asr": predictor.asr,
                 "load_seconds_in_process": round(load, 3),
                 "load_stages_s": {k: round(v, 3) for k, v in predictor.load_timings.items()}, "cold_load_seconds_with_imports": round(cold_load(model_dir), 3),
                 "latency": {}}
        for clip, (path, text) in clips.items():
            for mode, transcript in (("transcript", text), ("asr", None)):
                repeats = args.repeats if not (clip == "30s" and mode == "asr") else 1
                key = f"{clip}_{mode}"
                entry["latency"][key] = time_prediction(predictor, path, transcript, repeats)
                print(f"  {key}: {json.dumps(entry['latency'][key])}", flush=True)
        report["models"][f"{info.name} ({info.acoustic})"] = entry
    if args.frame_files:
        report["frames"] = frame_rtf([f for actor in (4, 5) for f in ravdess(actor)][: args.frame_files])
    first = model_dirs[0]
    files = [f for actor in (2, 3) for f in ravdess(actor)][: args.folder_files]
    report["folder"] = {"model": read_info(first).name, **folder_throughput(first, files, args.workers)}
    print(f"folder: {json.dumps(report['folder'])}", flush=True)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
