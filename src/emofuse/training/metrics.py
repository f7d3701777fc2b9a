"""The papers' metrics, computed with scikit-learn, per fold and as mean ± std over folds.

- WA, weighted accuracy: plain accuracy over utterances (the papers' name for it).
- UA, unweighted accuracy: the mean of per-class recalls over the classes present in the
  reference labels (= sklearn's balanced_accuracy_score).
- macro-F1 and weighted-F1 (weighted by class support), per-class precision / recall / F1,
  and the confusion matrix (rows = true class, columns = predicted, in label-set order).

`summarise` reports the mean and the SAMPLE standard deviation (ddof = 1) over folds, the
usual choice for k-fold results; with one fold the std is None.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

HEADLINE = ("wa", "ua", "macro_f1", "weighted_f1")
NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1"}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """All metrics of one test part. y_true, y_pred: class indices into `classes`."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-d arrays")
    if y_true.size == 0:
        raise ValueError("no utterances to score")
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    return {
        "n": int(y_true.size),
        "wa": float(accuracy_score(y_true, y_pred)),
        # Mean recall over the classes that occur, as balanced_accuracy_score defines UA.
        "ua": float(recall[present].mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def summarise(folds: Sequence[dict], keys: Sequence[str] = HEADLINE) -> dict:
    """Mean and sample std (ddof=1) of each metric over fold results; std None for one fold."""
    if not folds:
        raise ValueError("no fold results to summarise")
    out = {}
    for key in keys:
        values = np.array([float(f[key]) for f in folds])
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "n": int(len(values)),
        }
    classes = list(folds[0].get("per_class", {}))
    if classes:
        out["per_class"] = {
            c: {
                m: float(np.mean([f["per_class"][c][m] for f in folds]))
                for m in ("precision", "recall", "f1")
            }
            for c in classes
        }
    if all("confusion" in f for f in folds):
        out["confusion"] = np.sum([np.asarray(f["confusion"]) for f in folds], axis=0).tolist()
    return out


def mean_std(values: dict | Sequence[float], percent: bool = True, digits: int | None = None) -> str:
    """'71.2 ± 3.4' from a `summarise` entry or from per-fold values (sample std, ddof=1).

    percent: scaled by 100 with one decimal (`emofuse report`, the UA/WA columns of the
    benchmarks); else as they are with three decimals (gates, entropies, 0-1 scores), unless
    `digits` says otherwise. One value gives no '±'; no values give '-'.
    """
    if isinstance(values, dict):
        mean, std = values["mean"], values.get("std")
    else:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return "-"
        mean, std = float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None
    scale = 100.0 if percent else 1.0
    digits = (1 if percent else 3) if digits is None else digits
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
