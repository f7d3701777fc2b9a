"""A linear back-end refitted on a trained network's utterance vectors (`protocol.backend`).

After a fold's network is trained, its classifier can be replaced by a class-balanced logistic
regression (scikit-learn) on the vector the classifier reads (`Output.utterance_vector`,
dropout off):

- ``lr``: the vectors z-scored with the statistics of the training part. A control: a
  re-estimated output layer, nothing else changes.
- ``speaker-lr``: every speaker's vectors z-scored with that speaker's own statistics, over all
  of the speaker's utterances in the experiment, test speakers' too. No label is read: the
  transductive speaker normalisation of `data.normalise=speaker`, applied to the utterance
  representation instead of the frames. A per-utterance network cannot learn this itself: it
  never sees the other utterances of its speaker.

C is chosen from `CS` on the UA of the validation speakers (never the test part); the tested
network must therefore not have seen them, so a back-end cannot be combined with
`protocol.refit`. The back-end's test predictions replace the network's in `metrics.json` and
`predictions.csv`; the network's own test metrics stay in `metrics.json` under `network_test`.

At prediction time a recording's speaker has no statistics of their own unless several of
their recordings are given together (`Backend.probabilities(vectors, own_statistics=True)`);
one recording alone is z-scored with `reference`: the mean of the training speakers' own
means and standard deviations (for ``lr``, the training part's statistics). So is any speaker
with fewer than `MIN_UTTERANCES` utterances, in training too. A speaker's statistics assume
their utterances span their range of emotions, as a corpus speaker's do: a set of one
speaker's recordings that are all angry is centred on anger.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emofuse.errors import DataError, EmofuseError
from emofuse.training.config import BACKENDS as KINDS
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # inverse L2 strength, chosen on validation UA
MIN_UTTERANCES = 5  # fewer utterances of a speaker: the reference statistics stand in for theirs
EPS = 1e-6


@dataclass
class Backend:
    kind: str  # lr or speaker-lr
    classes: list[str]
    C: float
    coef: np.ndarray  # (C, H); a binary problem is stored as two rows, (-w/2, w/2)
    intercept: np.ndarray  # (C,)
    reference_mean: np.ndarray  # (H,) z-scoring of a vector whose speaker has no statistics
    reference_std: np.ndarray  # (H,)
    val_ua: float

    def probabilities(self, vectors: np.ndarray, speakers: list[str] | None = None,
                      own_statistics: bool = False) -> np.ndarray:
        """Class probabilities (N, C) of utterance vectors (N, H).

        `speakers` (speaker-lr): z-score each speaker's vectors with their own statistics, as in
        training. `own_statistics`: the vectors are all one speaker's. Neither: `reference`."""
        z = self.normalise(np.asarray(vectors, dtype=np.float64), speakers, own_statistics)
        scores = z @ self.coef.T + self.intercept
        scores -= scores.max(1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(1, keepdims=True)

    def normalise(self, x: np.ndarray, speakers: list[str] | None = None, own_statistics: bool = False) -> np.ndarray:
        reference = (self.reference_mean, self.reference_std)
        if self.kind == "speaker-lr" and speakers is not None:
            return zscore_by_speaker(x, speakers, reference)
        if self.kind == "speaker-lr" and own_statistics:
            return zscore_by_speaker(x, [""] * len(x), reference)
        return (x - self.reference_mean) / (self.reference_std + EPS)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "classes": list(self.classes), "C": self.C, "val_ua": self.val_ua,
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "reference_mean": self.reference_mean.tolist(), "reference_std": self.reference_std.tolist()}

    @classmethod
    def from_dict(cls, record: dict, source="backend") -> "Backend":
        try:
            backend = cls(kind=record["kind"], classes=list(record["classes"]), C=float(record["C"]),
                          coef=np.asarray(record["coef"], dtype=np.float64),
                          intercept=np.asarray(record["intercept"], dtype=np.float64),
                          reference_mean=np.asarray(record["reference_mean"], dtype=np.float64),
                          reference_std=np.asarray(record["reference_std"], dtype=np.float64),
                          val_ua=float(record.get("val_ua", float("nan"))))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(source, f"not a back-end record ({type(exc).__name__}: {exc})") from None
        n, h = len(backend.classes), backend.reference_mean.shape[0] if backend.reference_mean.ndim == 1 else -1
        if backend.kind not in KINDS or backend.coef.shape != (n, h) or backend.intercept.shape != (n,) \
                or backend.reference_std.shape != (h,):
            raise DataError(source, f"inconsistent back-end record (kind {backend.kind!r}, coef {backend.coef.shape}, "
                                    f"{n} classes, {h}-d vectors)")
        return backend


def zscore_by_speaker(x: np.ndarray, speakers, reference: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Each speaker's rows z-scored with that speaker's mean and standard deviation. A speaker with
    fewer than MIN_UTTERANCES rows has no usable statistics (one row z-scores to 0): `reference`
    (mean, std) stands in when given."""
    speakers = np.asarray(speakers)
    out = np.empty_like(x, dtype=np.float64)
    for s in np.unique(speakers):
        rows = speakers == s
        if reference is not None and rows.sum() < MIN_UTTERANCES:
            out[rows] = (x[rows] - reference[0]) / (reference[1] + EPS)
        else:
            out[rows] = (x[rows] - x[rows].mean(0)) / (x[rows].std(0) + EPS)
    return out


@torch.no_grad()
def utterance_vectors(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> tuple[list[str], np.ndarray]:
    """(ids, vectors (N, H)): the vector each utterance's classifier reads, dropout off."""
    was_training = model.training
    model.eval()
    ids, vectors = [], []
    for batch in loader:
        batch = batch.to(device)
        ids += batch.ids
        vectors.append(model(batch).utterance_vector.float().cpu())
    model.train(was_training)
    return ids, torch.cat(vectors).numpy().astype(np.float64)


def fit_backend(kind: str, x: np.ndarray, y: np.ndarray, speakers: list[str], train_idx, val_idx,
                classes: list[str]) -> Backend:
    """Fit on `train_idx`, choose C on the UA of `val_idx` (rows of x, y and speakers)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    if kind not in KINDS:
        raise ValueError(f"back-end {kind!r}; valid: {', '.join(KINDS)}")
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    speakers = np.asarray(speakers)
    if len(np.unique(y[train_idx])) < 2:
        raise EmofuseError(f"back-end {kind!r}: the training part holds a single class; nothing to separate")
    if kind == "speaker-lr":
        train_speakers = [s for s in np.unique(speakers[train_idx]) if (speakers == s).sum() >= MIN_UTTERANCES]
        if not train_speakers:
            raise EmofuseError(f"back-end {kind!r}: no training speaker has {MIN_UTTERANCES} or more utterances "
                               "to take statistics from; use protocol.backend=lr")
        reference_mean = np.mean([x[speakers == s].mean(0) for s in train_speakers], axis=0)
        reference_std = np.mean([x[speakers == s].std(0) for s in train_speakers], axis=0)
        z = zscore_by_speaker(x, speakers, (reference_mean, reference_std))
    else:
        reference_mean, reference_std = x[train_idx].mean(0), x[train_idx].std(0)
        z = (x - reference_mean) / (reference_std + EPS)
    best = None
    for c in CS:
        clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(z[train_idx], y[train_idx])
        score = float(balanced_accuracy_score(y[val_idx], clf.predict(z[val_idx])))
        if best is None or score > best[0]:  # first of equals: the strongest regularisation
            best = (score, c, clf)
    score, c, clf = best
    coef, intercept = clf.coef_, clf.intercept_
    full = np.zeros((len(classes), x.shape[1]))
    bias = np.full(len(classes), -1e4)  # a class absent from the training part is never predicted
    rows = [int(k) for k in clf.classes_]
    if len(rows) == 2:  # scikit-learn keeps one row for a binary problem: p(second) = sigmoid(w.x + b)
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    full[rows], bias[rows] = coef, intercept
    return Backend(kind, list(classes), float(c), full, bias, reference_mean, reference_std, score)
