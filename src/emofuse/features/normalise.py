"""z-normalisation of frame features (or word vectors) with training-fold statistics only.

Aguilar et al. 2019 (seed 004, sec. 4) z-normalise the ComParE LLDs with the statistics of
the training fold; fitting on all data would leak the test speakers into the model. Fit on
the training utterances, apply everywhere, and store `to_dict()` with the trained model so
inference normalises exactly as training did.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from emofuse.errors import ConfigError


class Normaliser:
    """Per-dimension mean/std: x' = (x - mean) / std; a constant dimension keeps std = 1."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, count: int = 0):
        self.mean = np.asarray(mean, dtype=np.float32)  # (D,)
        self.std = np.asarray(std, dtype=np.float32)  # (D,)
        self.count = int(count)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ConfigError(f"normaliser mean {self.mean.shape} and std {self.std.shape} must be equal 1-D shapes")

    @classmethod
    def fit(cls, arrays: Iterable[np.ndarray], min_std: float = 1e-6) -> "Normaliser":
        """Statistics over every row of every (T, D) array (float64 running sums)."""
        total = total_sq = None
        count = 0
        for a in arrays:
            if a is None or len(a) == 0:
                continue
            a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
            total = a.sum(0) if total is None else total + a.sum(0)
            total_sq = (a * a).sum(0) if total_sq is None else total_sq + (a * a).sum(0)
            count += len(a)
        if count == 0:
            raise ConfigError("cannot fit a normaliser on no frames (empty training set?)")
        mean = total / count
        var = np.maximum(total_sq / count - mean * mean, 0.0)
        std = np.sqrt(var)
        std[std < min_std] = 1.0
        return cls(mean, std, count)

    @classmethod
    def fit_features(cls, items, field: str = "acoustic", speech_only: bool = False) -> "Normaliser":
        """Fit on a field of `UtteranceFeatures` (training items only!); `speech_only` uses
        only frames of the speech mask (for models that drop silence)."""
        def rows():
            for it in items:
                a = getattr(it, field)
                if a is None:
                    continue
                if speech_only and field == "acoustic" and it.speech_mask is not None:
                    a = a[np.asarray(it.speech_mask, dtype=bool)]
                yield a
        return cls.fit(rows())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    apply = __call__

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, record: dict) -> "Normaliser":
        try:
            return cls(np.array(record["mean"]), np.array(record["std"]), record.get("count", 0))
        except KeyError as exc:
            raise ConfigError(f"normaliser record lacks {exc}") from None
