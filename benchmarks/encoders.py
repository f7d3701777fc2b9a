"""Benchmark (not a CI test): extraction speed of hf: speech encoders against ComParE.

Real-time factor (extraction seconds per second of audio; below 1 is faster than real time)
of `emofuse extract` into a fresh store, on the same RAVDESS files, for:
  - a tiny encoder (wav2vec2 architecture, 2 layers, hidden 32: the tests' size);
  - wav2vec2-base's shape (12 layers, hidden 768, 95 M parameters; `Wav2Vec2Config()` with
    random weights, built here from the config: nothing is downloaded);
  - compare_lld (openSMILE ComParE 2016 LLD + deltas), the built-in acoustic feature;
each on 1 and 2 worker processes and on the Ray engine with 2 CPUs (when `ray` is installed),
and each encoder's ratio to ComParE on the same engine and workers. Times include each
worker's start and its model load (what a user waits for), on this machine's CPUs; accuracy
is not measured (random weights).

    python -m benchmarks.encoders                  # 16 files
    python -m benchmarks.encoders --limit 8        # a quicker look

Prints a table and writes benchmarks/results/encoders.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data"))


def save_encoder(folder: Path, size: str) -> Path:
    """A random-weight wav2vec2 saved with save_pretrained: "tiny" or "base" (wav2vec2-base's config)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if size == "tiny":
        config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                                             num_conv_pos_embedding_groups=2, vocab_size=8,
                                             feat_extract_norm="layer", do_stable_layer_norm=True)
    else:
        config = transformers.Wav2Vec2Config()  # the defaults are wav2vec2-base's architecture
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=config.feat_extract_norm == "layer").save_pretrained(folder)
    return folder


def run_one(corpus, feature: str, engine: str, workers: int, work: Path) -> float:
    """Wall seconds of one cold extraction of `feature` into a fresh store."""
    from emofuse.features.store import FeatureStore

    store = work / f"store-{engine}-{workers}"
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    report = FeatureStore(store).extract(corpus, [feature], align=None, workers=workers, progress=False, engine=engine)
    seconds = time.perf_counter() - started
    if report.failures:
        raise SystemExit(f"{feature}: {len(report.failures)} failures, first {report.failures[0]}")
    shutil.rmtree(store, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data_root() / "ravdess")
    parser.add_argument("--limit", type=int, default=16, help="RAVDESS files (the first N of Actor_01, Actor_02, ...)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "encoders.json")
    args = parser.parse_args()

    import importlib.util

    import soundfile

    from emofuse.corpora.registry import load_corpus
    from emofuse.io import write_json

    if not args.data.is_dir():
        raise SystemExit(f"RAVDESS not found at {args.data} (set EMOFUSE_DATA)")
    corpus = load_corpus("ravdess", args.data, "ravdess4")
    corpus = corpus.subset(list(range(min(args.limit, len(corpus)))))
    audio_seconds = sum(soundfile.info(u.audio).duration for u in corpus)
    settings = [("process", 1), ("process", 2)]
    notes = []
    if importlib.util.find_spec("ray") is not None:
        settings.append(("ray", 2))
    else:
        notes.append("ray not installed: no Ray row (pip install 'emofuse[cluster]')")

    work = Path(tempfile.mkdtemp(prefix="emofuse-bench-encoders-"))
    rows = []
    try:
        features = {"compare_lld": "compare_lld",
                    "tiny wav2vec2 (2 x 32)": f"hf:{save_encoder(work / 'tiny', 'tiny')}",
                    "wav2vec2-base shape (12 x 768)": f"hf:{save_encoder(work / 'base', 'base')}"}
        compare = {}
        for label, feature in features.items():
            for engine, workers in settings:
                seconds = run_one(corpus, feature, engine, workers, work)
                rtf = seconds / audio_seconds
                if feature == "compare_lld":
                    compare[(engine, workers)] = rtf
                row = {"feature": label, "engine": engine, "workers": workers, "seconds": round(seconds, 2),
                       "rtf": round(rtf, 4), "vs_compare": round(rtf / compare[(engine, workers)], 2)}
                rows.append(row)
                print(f"{label:32s} {engine:8s} {workers} workers  {seconds:7.1f} s  RTF {rtf:.4f}  "
                      f"x{row['vs_compare']:.2f} ComParE's time", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for note in notes:
        print(note)
    write_json(args.results, {
        "files": len(corpus), "audio_seconds": round(audio_seconds, 2), "rows": rows, "notes": notes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "measured": time.strftime("%Y-%m-%d"),
        "what": "cold extraction into a fresh store (worker start and model load included), random weights",
    })
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
