"""The fitted linear back-end of `protocol.backend`: a logistic regression on a trained
network's utterance vector that replaces the network's classifier (fitted by
`emofuse.training.refit_output.fit_backend`; stored in a model directory's model.json).

- ``lr``: the vectors z-scored with the statistics of the training part.
- ``speaker-lr``: every speaker's vectors z-scored with that speaker's own statistics.

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

from emofuse.errors import DataError

KINDS = ("lr", "speaker-lr")  # protocol.backend
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
