"""Benchmark: does the recogniser matter end to end? The demo's H-MM-4 with gold, pocketsphinx and Whisper words.

The demo corpus (`emofuse.demo`, 288 synthetic clips, 8 voices) is where words matter: on its
'lexical' clips only the words carry the emotion. This trains the demo's H-MM-4
(`demo/configs/h-mm-4.yaml`, the config `emofuse demo` trains, pointed at OUT by
`demo.pipeline.demo_overrides`) on its speaker-kfold protocol with the words from:

  - gold: the corpus transcripts, forced-aligned (`data.align=forced`; Whisper where pocketsphinx
    cannot align), as the demo trains today;
  - pocketsphinx: `data.align=asr data.asr=sphinx`, the transcripts ignored;
  - whisper: `data.align=asr data.asr=whisper` (Whisper tiny.en), the transcripts ignored.

Training and testing read the same word source in each row: what a user without transcripts
gets. Every seed gives the same folds to all rows (the seed draws the folds), and seeds run in
order, all rows of one seed before the next seed.

    python -m benchmarks.demo_words [--seeds 0,1,2] [--rows gold,pocketsphinx,whisper] \\
        [--out /tmp/demo-words] [--results benchmarks/results/demo_words]

Reported per row and seed: test UA / WA mean ± sample std over folds, UA per demo kind (each
fold's test clips of that kind, mean ± std over folds), the mean GMU gate z over the test
words (`benchmarks.aguilar.explain_stats`: the acoustic share; do bad words push it up?), and
per row the mean ± std over seeds of the per-seed mean UA / WA. The word error rate of each
row's words on the whole corpus is read from the alignments in the feature store, against the
normalised transcript (`align.text.normalise_transcript`, edits by `align.text.word_edits`).

One feature store (OUT/features) holds every row's alignments: ComParE frames are extracted
once, MiniLM vectors once per word source. Run directories OUT/s<seed>/<row>/ are resumable
(a finished fold is read, not retrained). Results: RESULTS.json and RESULTS.md, rewritten after
every row.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.harness import DataCache, fold_values, row_arguments, row_table, run_row
from emofuse.io import atomic_write_text, write_json
from emofuse.training.metrics import classification_metrics, mean_std

ROWS = {  # row -> the word source's settings, over the demo config
    "gold": ["data.align=forced"],
    "pocketsphinx": ["data.align=asr", "data.asr=sphinx"],
    "whisper": ["data.align=asr", "data.asr=whisper"],
}
DESCRIBE = {
    "gold": "the corpus transcripts, forced-aligned",
    "pocketsphinx": "10k-word LM",
    "whisper": "tiny.en",
}
MODEL = "h-mm-4"


def kinds_of(data) -> dict[str, str]:
    return {u.id: u.meta.get("kind", "?") for u in data.corpus}


def after_fold(cfg, data, fold, fold_dir: Path, result: dict) -> dict:
    """UA / WA of the fold's test clips of each demo kind (from predictions.csv), and the
    GMU gate and attention statistics of `benchmarks.aguilar.explain_stats`."""
    import csv

    from benchmarks.aguilar import explain_stats

    kind = kinds_of(data)
    index = {c: i for i, c in enumerate(data.classes)}
    by_kind: dict[str, tuple[list[int], list[int]]] = {}
    with open(fold_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            true, pred = by_kind.setdefault(kind[row["id"]], ([], []))
            true.append(index[row["label"]])
            pred.append(index[row["prediction"]])
    stats = {k: classification_metrics(t, p, data.classes) for k, (t, p) in sorted(by_kind.items())}
    out = {f"ua_{k}": m["ua"] for k, m in stats.items()}
    out.update({f"wa_{k}": m["wa"] for k, m in stats.items()})
    out.update({f"n_{k}": m["n"] for k, m in stats.items()})
    stats = explain_stats(cfg, data, fold, fold_dir, result)
    out.update({k: stats[k] for k in ("gate_mean", "attention_entropy") if k in stats})
    return out


def word_error_rates(cfg, data) -> dict:
    """The row's words on every clip the run read, against the normalised transcript."""
    from emofuse.align.text import normalise_transcript, word_edits
    from emofuse.features.store import FeatureStore, align_mode_for, utterance_key
    from emofuse.features.store.layout import read_alignment

    store = FeatureStore(cfg.data.store, asr=cfg.data.asr)
    totals: dict[str, Counter] = {}
    sources, recognisers, empty, examples = Counter(), Counter(), 0, []
    for utt in data.corpus:
        mode = align_mode_for(utt, cfg.data.align, True)
        alignment = read_alignment(store.align_dir(mode) / f"{utterance_key(utt, True)}.json")
        reference, heard = normalise_transcript(utt.transcript), alignment.texts
        s, d, k = word_edits(reference, heard)
        for group in ("all", utt.meta.get("kind", "?")):
            c = totals.setdefault(group, Counter())
            c.update(clips=1, reference=len(reference), sub=s, dele=d, ins=k)
        sources[alignment.source] += 1
        recognisers[alignment.recogniser or "-"] += 1
        empty += not heard
        if s + d + k and len(examples) < 8:
            examples.append({"id": utt.id, "reference": " ".join(reference), "heard": " ".join(heard)})

    def wer(c: Counter) -> float:
        return (c["sub"] + c["dele"] + c["ins"]) / c["reference"]

    c = totals.pop("all")
    return {"clips": c["clips"], "reference_words": c["reference"], "wer": round(wer(c), 4),
            "substitutions": c["sub"], "deletions": c["dele"], "insertions": c["ins"], "empty": empty,
            "wer_by_kind": {k: round(wer(v), 4) for k, v in sorted(totals.items())},
            "align_sources": dict(sources), "recognisers": dict(recognisers), "examples": examples}


def seed_summary(row: dict, seed: int, kinds: list[str]) -> dict:
    out = {"row": row["row"], "seed": seed, "run_dir": row["run_dir"], "folds": len(row["folds"]),
           "ua": fold_values(row, "ua"), "wa": fold_values(row, "wa"), "gate_mean": fold_values(row, "gate_mean"),
           "best_epoch": [f["best_epoch"] for f in row["folds"]], "seconds": [f["seconds"] for f in row["folds"]]}
    out.update({f"ua_{k}": fold_values(row, f"ua_{k}") for k in kinds})
    return out


def over_seeds(result: dict) -> list[dict]:
    """Per row: each seed's mean over its folds of UA, WA, UA by kind and gate z."""
    keys = ("ua", "wa", "gate_mean", *[f"ua_{k}" for k in result["kinds"]])
    rows = dict.fromkeys(r["row"] for r in result["runs"])
    return [{"row": row, "seeds": [r["seed"] for r in result["runs"] if r["row"] == row],
             **{key: [float(np.mean(r[key])) for r in result["runs"] if r["row"] == row and r[key]] for key in keys}}
            for row in rows]


def same_folds(result: dict) -> dict[str, bool]:
    """seed -> whether every row of that seed was cut into the same folds (identical split.json
    files), read from the run directories."""
    def splits(run: dict) -> list[str]:
        return [p.read_text(encoding="utf-8") for p in sorted(Path(run["run_dir"]).glob("fold-*/split.json"))]

    seeds = dict.fromkeys(r["seed"] for r in result["runs"])
    return {str(seed): len({tuple(splits(r)) for r in result["runs"] if r["seed"] == seed}) == 1 for seed in seeds}


def markdown(result: dict) -> str:
    kinds = result["kinds"]
    wers = result["wer"]
    runs = result["runs"]
    balanced = all(np.allclose(r["ua"], r["wa"]) for r in runs)
    lines = [f"# {result['what']}", "", f"Command: `{result['command']}`", "",
             "The demo's H-MM-4 (`src/emofuse/demo/configs/h-mm-4.yaml`) on the demo corpus (288 clips, 8 voices), "
             "its 4-fold speaker-exclusive protocol; each row trains and tests on the same word source. "
             f"Overrides: {' '.join(result['overrides']) or '(none)'}. Test UA / WA: mean ± sample std over the folds of one seed; "
             "UA by kind: the fold's test clips of that kind (24 per fold), mean ± std over folds. Gate z: the GMU's "
             "acoustic share over the test words (1 = all acoustic). WER: the row's words on all 288 clips against "
             "the normalised transcripts. s / fold: training seconds per fold "
             "(a shared 2-CPU machine)." + (" WA equals UA in every fold: the demo's test parts hold every emotion "
                                          "equally often." if balanced else ""), "",
             "## Per seed", ""]
    header = ["words", "seed", "WER", "UA (%)", "WA (%)", *[f"UA {k} (%)" for k in kinds], "gate z", "s / fold",
              "folds"]
    lines.append(row_table(header, runs, lambda r: [
        r["row"], str(r["seed"]), f"{wers[r['row']]['wer']:.3f}" if r["row"] in wers else "-",
        mean_std(r["ua"]), mean_std(r["wa"]), *[mean_std(r[f"ua_{k}"]) for k in kinds],
        mean_std(r["gate_mean"], percent=False), f"{np.mean(r['seconds']):.0f}" if r["seconds"] else "-",
        str(r["folds"])], text_columns=2))
    over = over_seeds(result)
    if any(len(r["seeds"]) > 1 for r in over):
        lines += ["", "## Over seeds", "",
                  "Each seed's mean over its folds, then mean ± sample std over the seeds.", ""]
        header = ["words", "seeds", "UA (%)", "WA (%)", *[f"UA {k} (%)" for k in kinds], "gate z"]
        lines.append(row_table(header, over, lambda r: [
            r["row"], ",".join(map(str, r["seeds"])), mean_std(r["ua"]), mean_std(r["wa"]),
            *[mean_std(r[f"ua_{k}"]) for k in kinds], mean_std(r["gate_mean"], percent=False)], text_columns=2))
    lines += ["", "## Word error rate of each word source on the demo corpus", "",
              "| words | clips | reference words | WER | sub / del / ins | empty | "
              + " | ".join(f"WER {k}" for k in kinds) + " | word times from |",
              "|---|---:|---:|---:|---:|---:|" + "---:|" * len(kinds) + "---|"]
    for row, w in wers.items():
        lines.append(f"| {row} ({DESCRIBE[row]}) | {w['clips']} | {w['reference_words']} | {w['wer']:.3f} | "
                     f"{w['substitutions']} / {w['deletions']} / {w['insertions']} | {w['empty']} | "
                     + " | ".join(f"{w['wer_by_kind'].get(k, float('nan')):.3f}" for k in kinds) + " | "
                     + ", ".join(f"{s} {n}" for s, n in sorted(w["align_sources"].items())) + " |")
    same = result.get("same_folds", {})
    if same:
        lines += ["", "Same folds for every row of a seed (identical `split.json`): "
                  + ", ".join(f"seed {s} {'yes' if v else 'NO'}" for s, v in same.items()) + "."]
    if "gold" in wers:
        fallback = wers["gold"]["align_sources"].get("asr", 0)
        lines += ["", f"gold: the transcript's words on every clip; on {fallback} clips pocketsphinx could not align "
                  "the transcript and the word times are Whisper's (the forced → asr fallback)."]
    lines += ["", f"Wall time: {result['seconds']:.0f} s on {result['machine']}; per-fold numbers, misheard "
              "examples and run directories in demo_words.json.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os
    import platform

    import torch

    from emofuse.demo import KINDS, load_demo_corpus
    from emofuse.demo.pipeline import config_path, demo_overrides
    from emofuse.training.config import load_config
    from emofuse.training.run import quiet_lightning

    parser = row_arguments(__doc__.split("\n")[0], list(ROWS), "/tmp/demo-words")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; all rows of a seed run before the next seed")
    parser.add_argument("--results", default="benchmarks/results/demo_words", help="path without suffix (.json, .md)")
    parser.add_argument("--render", action="store_true", help="only write the markdown (and the same-folds check) again from RESULTS.json")
    args = parser.parse_args(argv)
    results = Path(args.results)
    if args.render:
        from emofuse.io import read_json

        result = read_json(results.with_suffix(".json"))
        result["same_folds"] = same_folds(result)
        text = markdown(result)
        write_json(results.with_suffix(".json"), result)
        atomic_write_text(results.with_suffix(".md"), text)
        print(text)
        return 0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    folds = None if args.folds is None else {int(x) for x in str(args.folds).split(",")}

    torch.set_num_threads(args.threads)
    quiet_lightning()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    out = Path(args.out).resolve()
    load_demo_corpus().write(out / "manifest.jsonl")
    config = config_path(MODEL)
    result = {"what": "Does the recogniser matter end to end? " + __doc__.split("\n")[0].split("? ", 1)[1],
              "command": "python -m benchmarks.demo_words " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
              "config": str(config.relative_to(Path(__file__).resolve().parents[1]))
              if config.is_relative_to(Path(__file__).resolve().parents[1]) else str(config),
              "rows": {r: {"describe": DESCRIBE[r], "overrides": ROWS[r]} for r in rows},
              "overrides": args.set, "kinds": list(KINDS), "wer": {}, "runs": [], "seconds": 0.0}
    cache = DataCache(log)
    for seed in seeds:
        for row in rows:
            t = time.perf_counter()
            overrides = [*demo_overrides(MODEL, out), *ROWS[row], *args.set, f"seed={seed}"]
            run_dir = out / f"s{seed}" / row
            log(f"== {row} seed {seed} -> {run_dir}")
            done = run_row(row, config, overrides, run_dir, cache, folds=folds, after_fold=after_fold, log=log)
            summary = seed_summary(done, seed, list(KINDS))
            summary["wall_s"] = round(time.perf_counter() - t, 1)
            result["runs"].append(summary)
            if row not in result["wer"]:
                cfg = load_config(config, overrides)
                result["wer"][row] = word_error_rates(cfg, cache.get(cfg))
            result["seconds"] = round(time.perf_counter() - started, 1)
            result["over_seeds"] = over_seeds(result)
            result["same_folds"] = same_folds(result)
            text = markdown(result)
            write_json(results.with_suffix(".json"), result)
            atomic_write_text(results.with_suffix(".md"), text)
            log(f"== {row} seed {seed}: UA {mean_std(summary['ua'])} ({summary['wall_s']:.0f} s)")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
