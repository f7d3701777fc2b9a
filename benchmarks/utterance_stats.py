"""Benchmark: how much do utterance statistics of the frames carry? A linear reference for RAVDESS4.

Each utterance becomes the mean, standard deviation and 10th / 90th percentiles of its frames
(ComParE LLD + deltas: 4 x 130 values; fbank40: 4 x 40). The statistics are z-scored either
with the training part's statistics only (`fold`) or per speaker over that speaker's own
utterances, labels unused (`speaker`). `frames` instead z-scores each speaker's frames (what
`data.normalise=speaker` feeds the networks) and then takes the statistics. A class-balanced
logistic regression or RBF SVM is trained per fold; the model and C are chosen on the
validation actors (never the test fold), on the same actor-exclusive folds as the neural runs
(5 folds, 4 validation actors). `ua_refit`: the chosen model and C fitted again on training +
validation actors (what `protocol.refit` does for the networks).

    python -m benchmarks.utterance_stats --set data.manifest=M --set data.store=S

Results: printed and written to benchmarks/results/utterance_stats.json (or --results).
With `--set data.trim=0.1` the frames are first cut to the speech span (`data.trim`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from emofuse.models.refitted_output import zscore_by_speaker
from emofuse.training.metrics import mean_std, summarise

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "utterance_stats.json"


def statistics(frames: np.ndarray) -> np.ndarray:
    a = np.asarray(frames, dtype=np.float64)
    return np.concatenate([a.mean(0), a.std(0), np.percentile(a, 10, 0), np.percentile(a, 90, 0)])


def run(feature: str, normalise: str, overrides: list[str], val_speakers: int) -> dict:
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, accuracy_score
    from sklearn.svm import SVC

    from emofuse.training.config import load_config
    from emofuse.training.corpus import load_labelled
    from emofuse.training.splits import make_folds

    cfg = load_config(ROOT / "configs/ravdess4/b-aco-1.yaml", [*overrides, f"data.acoustic={feature}"])
    data = load_labelled(cfg, log=lambda m: None, progress=False)
    y = np.asarray(data.labels)
    speakers = np.array([u.speaker for u in data.corpus])
    if normalise == "frames":
        frames = [np.asarray(it.acoustic, dtype=np.float64) for it in data.items]
        for s in np.unique(speakers):
            rows = np.flatnonzero(speakers == s)
            own = np.concatenate([frames[i] for i in rows])
            for i in rows:
                frames[i] = (frames[i] - own.mean(0)) / (own.std(0) + 1e-8)
        x = np.stack([statistics(a) for a in frames])
    else:
        x = np.stack([statistics(it.acoustic) for it in data.items])
    if normalise == "speaker":
        x = zscore_by_speaker(x, speakers)
    folds = make_folds(data.corpus, "speaker-kfold", k=5, seed=cfg.seed, val_speakers=val_speakers)
    per_fold = []
    for fold in folds:
        tr, va, te = (np.asarray(i) for i in (fold.train, fold.val, fold.test))
        mean, std = x[tr].mean(0), x[tr].std(0) + 1e-8
        z = (x - mean) / std
        best = None
        for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
            for kind in ("logistic", "svm"):
                clf = (LogisticRegression(C=c, max_iter=2000, class_weight="balanced") if kind == "logistic"
                       else SVC(C=100 * c, class_weight="balanced"))
                clf.fit(z[tr], y[tr])
                score = balanced_accuracy_score(y[va], clf.predict(z[va]))
                if best is None or score > best[0]:
                    best = (score, kind, c, clf)
        predicted = best[3].predict(z[te])
        both = np.concatenate([tr, va])  # refit: the chosen classifier and C on training + validation actors
        z = (x - x[both].mean(0)) / (x[both].std(0) + 1e-8)
        refit = clone(best[3]).fit(z[both], y[both]).predict(z[te])
        per_fold.append({"fold": fold.index, "classifier": best[1], "C": best[2] * (100 if best[1] == "svm" else 1),
                         "val_ua": round(best[0], 4), "ua": round(balanced_accuracy_score(y[te], predicted), 4),
                         "wa": round(accuracy_score(y[te], predicted), 4),
                         "ua_refit": round(balanced_accuracy_score(y[te], refit), 4)})

    summary = summarise(per_fold, ("ua", "wa", "ua_refit"))
    return {"feature": feature, "normalise": normalise, "val_speakers": val_speakers,
            **{k: {"mean": round(v["mean"], 4), "std": round(v["std"], 4)} for k, v in summary.items()},
            "folds": per_fold}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    parser.add_argument("--features", default="compare_lld,fbank40")
    parser.add_argument("--val-speakers", type=int, default=4)
    parser.add_argument("--results", default=str(RESULTS), help="JSON file to write")
    args = parser.parse_args(argv)
    results = []
    for feature in args.features.split(","):
        for normalise in ("fold", "frames", "speaker"):
            started = time.time()
            r = run(feature, normalise, args.set, args.val_speakers)
            r["seconds"] = round(time.time() - started, 1)
            results.append(r)
            print(f"{feature:12s} {normalise:8s} UA {mean_std(r['ua'], percent=False)}  "
                  f"WA {r['wa']['mean']:.3f}  refit UA {mean_std(r['ua_refit'], percent=False)}  "
                  f"({r['seconds']} s)", flush=True)
    from emofuse.io import atomic_write_text

    atomic_write_text(Path(args.results), json.dumps({"what": __doc__.split("\n")[0], "std": "sample (ddof=1)",
                                           "overrides": args.set, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
