"""Benchmark (not a CI test): extract RAVDESS into the feature store and measure it.

All 1440 RAVDESS speech utterances with compare_lld + fbank40 + minilm and forced alignment on
2 worker processes. Prints and saves (benchmarks/results/extract.json) the real-time factor
(processing seconds per second of audio) per stage and in total, the peak memory, the time of a
cached re-run (target <= 10 s) and of loading the stored features, and the alignment quality:
the RAVDESS statements are known, so we count the utterances whose six words all came from
forced alignment (no fallback) and report the median word duration.

    python -m benchmarks.extract                      # full run into /tmp/emofuse-features/ravdess
    python -m benchmarks.extract --limit 48 --fresh   # a quick look

The store it leaves at OUT/ravdess (manifest OUT/ravdess.jsonl) is meant for reuse by the
training benchmarks.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATEMENT_WORDS = 6


def data_root() -> Path:
    return Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data_root() / "ravdess")
    parser.add_argument("--out", type=Path, default=Path("/tmp/emofuse-features"))
    parser.add_argument("--features", default="compare_lld,fbank40,minilm")
    parser.add_argument("--align", default="forced")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N utterances (a quick look)")
    parser.add_argument("--fresh", action="store_true", help="delete the store first, so the run is cold")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "extract.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from emofuse.corpora.base import Corpus
    from emofuse.corpora.registry import load_corpus
    from emofuse.features.store import FeatureStore
    from emofuse.io import write_json

    console = Console()
    if not args.data.is_dir():
        sys.exit(f"RAVDESS not found at {args.data} (set EMOFUSE_DATA)")
    corpus = load_corpus("ravdess", args.data)
    if args.limit:
        corpus = Corpus(corpus.utterances[: args.limit], name=corpus.name)
    manifest = Corpus(corpus.utterances, name="ravdess").write(args.out / "ravdess.jsonl")
    store_dir = args.out / "ravdess"
    if args.fresh and store_dir.exists():
        shutil.rmtree(store_dir)
    features = [f for f in args.features.split(",") if f]
    store = FeatureStore(store_dir)
    load_before = os.getloadavg()

    console.print(f"[bold]extract[/] {len(corpus)} utterances -> {store_dir} ({', '.join(features)}, "
                  f"align {args.align}, {args.workers} workers)")
    cold = store.extract(corpus, features, align=args.align, workers=args.workers, progress=True)
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    load_after = os.getloadavg()

    started = time.perf_counter()
    warm = store.extract(corpus, features, align=args.align, workers=args.workers, progress=False)
    rerun_seconds = time.perf_counter() - started

    started = time.perf_counter()
    import emofuse.features.batch  # noqa: F401 - torch; timed apart from the load itself

    import_seconds = time.perf_counter() - started
    acoustic = [f for f in features if f in ("compare_lld", "fbank40", "spectrogram8k", "waveform")]
    words = next((f for f in features if f not in acoustic), None)
    started = time.perf_counter()
    items = store.load(corpus, acoustic=acoustic[0] if acoustic else None, words=words, align=args.align,
                       missing="skip")
    load_seconds = time.perf_counter() - started

    sources: dict[str, int] = {}
    for it in items:
        sources[it.align_source] = sources.get(it.align_source, 0) + 1
    forced_all = sum(it.align_source == "forced" and len(it.words) == STATEMENT_WORDS for it in items)
    durations = np.concatenate([np.diff(it.word_times, axis=1).ravel() for it in items if it.align_source == "forced"]
                               or [np.zeros(0)])
    audio_total = sum(len(it.acoustic) * it.acoustic_hop for it in items if it.acoustic is not None)

    results = {
        "what": "RAVDESS speech, all utterances, into the feature store",
        "utterances": len(corpus),
        "audio_hours": round(audio_total / 3600, 3),
        "features": features,
        "align": args.align,
        "workers": args.workers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": load_after,
                    "note": "wall-clock figures depend on other jobs sharing the cores: see the load averages"},
        "cold": {
            "wall_seconds": round(cold.wall_seconds, 1),
            "audio_seconds": round(cold.audio_seconds, 1),
            "rtf_wall_total": round(cold.rtf().get("total_wall", float("nan")), 4),
            "rtf_cpu_total": round(cold.rtf().get("total_cpu", float("nan")), 4),
            "rtf_per_stage": {k: round(v, 4) for k, v in cold.rtf().items() if not k.startswith("total")},
            "peak_rss_mb": round(max(cold.peak_rss_mb, children_rss), 0),
            "failures": [f.__dict__ for f in cold.failures],
            "fallbacks": dict(cold.fallbacks),
            "pronunciations": dict(cold.pronunciations),
            "computed": cold.computed,
            "cached": cold.cached,
        },
        "rerun": {"wall_seconds": round(rerun_seconds, 2), "computed": warm.computed, "target_seconds": 10},
        "load": {"seconds": round(load_seconds, 2), "torch_import_seconds": round(import_seconds, 2), "items": len(items), "acoustic": acoustic[0] if acoustic else None,
                 "words": words},
        "alignment": {
            "sources": sources,
            "forced_all_six_words": forced_all,
            "forced_all_six_words_share": round(forced_all / max(len(items), 1), 4),
            "median_word_seconds": round(float(np.median(durations)), 3) if durations.size else None,
            "word_seconds_p10_p90": [round(float(np.percentile(durations, q)), 3) for q in (10, 90)] if durations.size else None,
        },
        "target_rtf_wall_total": 0.03,
    }
    write_json(args.results, results)

    table = Table(title=f"extract: {len(corpus)} RAVDESS utterances, {audio_total / 3600:.2f} h, {args.workers} workers")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for stage, value in results["cold"]["rtf_per_stage"].items():
        table.add_row(f"RTF {stage} (per worker)", f"{value:.4f}")
    table.add_row("RTF total, wall clock", f"{results['cold']['rtf_wall_total']:.4f} (target 0.03)")
    table.add_row("RTF total, CPU seconds", f"{results['cold']['rtf_cpu_total']:.4f}")
    table.add_row("cold run wall", f"{cold.wall_seconds:.1f} s")
    table.add_row("peak memory (largest process)", f"{results['cold']['peak_rss_mb']:.0f} MB")
    table.add_row("cached re-run", f"{rerun_seconds:.2f} s (target 10 s)")
    table.add_row("load for collate", f"{load_seconds:.2f} s")
    table.add_row("failures", str(len(cold.failures)))
    table.add_row("alignment sources", ", ".join(f"{k} {v}" for k, v in sources.items()))
    table.add_row("all 6 words by forced alignment", f"{forced_all} of {len(items)}")
    table.add_row("median word duration", f"{results['alignment']['median_word_seconds']} s")
    table.add_row("load average before / after", f"{load_before[0]:.1f} / {load_after[0]:.1f}")
    console.print(table)
    console.print(f"saved {args.results}; manifest {manifest}")


if __name__ == "__main__":
    main()
