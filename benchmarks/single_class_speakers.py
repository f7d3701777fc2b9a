"""Benchmark: per-speaker normalisation when speakers are heard in one emotion only (issue 19, item 4).

Per-speaker z-scoring (`data.normalise: speaker`, `protocol.backend: speaker-lr`) assumes every
speaker shows several emotions. Here RAVDESS4 (24 actors x 4 classes) is cut so that a share of
the actors keep a single emotion: actor k (1-based, in name order) among the first `n_single`
keeps only class (k - 1) mod 4 (angry, happy, neutral, sad in turn), so every class stays
present; the other actors keep all four classes. Deterministic: no sampling. `n_single` sweeps
0, 4, 8, 12, 16, 18, 20, 24 actors (0% to 100%); 18 of 24 (75%) is "the skewed subset" of the
issue and of tests/test_single_class_warning.py.

Each utterance becomes the mean, std and 10th / 90th percentiles of its frames
(`benchmarks.utterance_stats.statistics`), normalised three ways:
  - fold: z-scored with the training part's statistics (the papers');
  - speaker: each speaker's rows z-scored with that speaker's own rows (what speaker-lr and,
    on frames, data.normalise=speaker do), then the training part's statistics;
  - utterance: each utterance's frames z-scored with its own mean and std before the statistics
    (data.normalise=utterance), then the training part's statistics.
A class-balanced logistic regression (C = 0.1) is trained on 6 actor-exclusive folds of 4 actors
(scikit-learn StratifiedGroupKFold through `make_folds`, seed 0) and tested on the held-out actors;
UA and WA are mean ± std over folds.

The warning threshold (training.checks.SINGLE_CLASS_LIMIT) is the largest single-class share at
which speaker normalisation still scores at least fold normalisation's UA minus one fold std:
above it, per-speaker statistics cost accuracy.

    python -m benchmarks.single_class_speakers [--feature fbank40] [--set data.store=...]

Results: printed and written to benchmarks/results/single_class_speakers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "single_class_speakers"
SWEEP = (0, 4, 8, 12, 16, 18, 20, 24)
NORMALISATIONS = ("fold", "speaker", "utterance")


def skewed_indices(speakers, labels, n_single: int, classes: int = 4) -> np.ndarray:
    """Rows kept when the first `n_single` speakers (sorted by name) keep one class each, in turn."""
    speakers, labels = np.asarray(speakers), np.asarray(labels)
    order = sorted(set(speakers.tolist()))
    single = {s: k % classes for k, s in enumerate(order[:n_single])}
    keep = [i for i, (s, y) in enumerate(zip(speakers, labels)) if s not in single or y == single[s]]
    return np.asarray(keep, dtype=np.int64)


def evaluate(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, corpus, normalise: str, c: float = 0.1) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from emofuse.models.refitted_output import zscore_by_speaker
    from emofuse.training.metrics import summarise
    from emofuse.training.splits import make_folds

    if normalise == "speaker":
        x = zscore_by_speaker(x, speakers)
    per_fold = []
    for fold in make_folds(corpus, "speaker-kfold", k=6, seed=0, val_fraction=None):
        tr, te = np.asarray(fold.train), np.asarray(fold.test)
        z = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-8)
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(z[tr], y[tr])
        predicted = clf.predict(z[te])
        per_fold.append({"ua": balanced_accuracy_score(y[te], predicted), "wa": accuracy_score(y[te], predicted)})
    summary = summarise(per_fold, ("ua", "wa"))
    return {k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)} for k, v in summary.items()}


def statistics_of(data, normalise: str) -> np.ndarray:
    from benchmarks.utterance_stats import statistics

    frames = [np.asarray(it.acoustic, dtype=np.float64) for it in data.items]
    if normalise == "utterance":
        frames = [(a - a.mean(0)) / (a.std(0) + 1e-8) for a in frames]
    return np.stack([statistics(a) for a in frames])


def threshold(rows: list[dict]) -> float:
    """The largest share where speaker UA >= fold UA - fold std (shares in increasing order)."""
    safe = 0.0
    for row in rows:
        fold, speaker = row["fold"]["ua"], row["speaker"]["ua"]
        if speaker["mean"] >= fold["mean"] - fold["std"]:
            safe = row["share"]
        else:
            break
    return safe


def markdown(result: dict) -> str:
    lines = [f"# {result['what']}", "", f"Command: `{result['command']}`", "",
             "UA / WA mean ± std over 6 actor-exclusive folds (4 test actors each); logistic regression on "
             f"utterance statistics of `{result['feature']}` frames. See the docstring of "
             "benchmarks/single_class_speakers.py for the subset and the protocol.", "",
             "| single-class actors | share | utterances | UA fold | UA speaker | UA utterance | WA fold | WA speaker | WA utterance |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        cell = lambda n, k: f"{r[n][k]['mean']:.3f} ± {r[n][k]['std']:.3f}"  # noqa: E731
        lines.append(f"| {r['single_actors']} | {r['share']:.2f} | {r['n']} | " + " | ".join(
            cell(n, "ua") for n in NORMALISATIONS) + " | " + " | ".join(cell(n, "wa") for n in NORMALISATIONS) + " |")
    lines += ["", f"Threshold: speaker normalisation stays within one fold std of fold normalisation's UA up to a "
              f"single-class share of {result['threshold']:.2f}; `training.checks.SINGLE_CLASS_LIMIT` warns above it.",
              f"Chance UA is 0.25. {result['seconds']:.0f} s in all.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from emofuse.io import atomic_write_text
    from emofuse.training.config import load_config
    from emofuse.training.corpus import load_labelled

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--feature", default="fbank40")
    parser.add_argument("--results", default=str(RESULTS), help="results path without suffix (.json and .md)")
    args = parser.parse_args(argv)
    started = time.time()
    cfg = load_config(ROOT / "configs/ravdess4/b-aco-1.yaml", [f"data.acoustic={args.feature}", *args.set])
    data = load_labelled(cfg, log=lambda m: None, progress=False)
    y_all = np.asarray(data.labels)
    speakers_all = np.array([u.speaker for u in data.corpus])
    stats = {n: statistics_of(data, n) for n in ("fold", "utterance")}
    stats["speaker"] = stats["fold"]
    rows = []
    for n_single in SWEEP:
        keep = skewed_indices(speakers_all, y_all, n_single)
        corpus = data.corpus.subset(keep.tolist())
        row = {"single_actors": n_single, "share": round(n_single / len(set(speakers_all.tolist())), 4), "n": int(len(keep))}
        for normalise in NORMALISATIONS:
            row[normalise] = evaluate(stats[normalise][keep], y_all[keep], speakers_all[keep], corpus, normalise)
        rows.append(row)
        print(f"{n_single:2d} single-class actors ({row['n']} utt): UA fold {row['fold']['ua']['mean']:.3f}  "
              f"speaker {row['speaker']['ua']['mean']:.3f}  utterance {row['utterance']['ua']['mean']:.3f}", flush=True)
    result = {"what": __doc__.split("\n")[0], "command": "python -m benchmarks.single_class_speakers "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "feature": args.feature, "std": "sample (ddof=1)", "rows": rows, "threshold": threshold(rows),
              "seconds": round(time.time() - started, 1)}
    atomic_write_text(Path(args.results).with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(args.results).with_suffix(".md"), markdown(result))
    print(f"threshold: {result['threshold']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
