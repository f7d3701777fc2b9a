"""z-normalisation of frame features (or word vectors).

Three ways to choose the statistics (`data.normalise` of an experiment):

- ``fold`` (`Normaliser`, the papers' way): Aguilar et al. 2019 (seed 004, sec. 4)
  z-normalise the ComParE LLDs with the statistics of the training fold; fitting on all data
  would leak the test speakers into the model. Fit on the training utterances, apply
  everywhere, and store `to_dict()` with the trained model so inference normalises exactly
  as training did.
- ``speaker`` (`SpeakerNormaliser`): every speaker with the statistics of their own
  utterances in the experiment, test speakers included. No label is read, but a test
  speaker's unlabelled audio is: the classic speaker normalisation of speaker-independent
  emotion recognition, which removes each voice's pitch, loudness and timbre offsets. A new
  recording of an unknown speaker has no such statistics; inference then falls back to the
  recording's own (`utterance`) and says so.
- ``utterance`` (`UtteranceNormaliser`): every utterance with its own statistics; needs
  nothing from other recordings, so training and inference match exactly.
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

    mode = "fold"

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, record: dict) -> "Normaliser":
        try:
            return cls(np.array(record["mean"]), np.array(record["std"]), record.get("count", 0))
        except KeyError as exc:
            raise ConfigError(f"normaliser record lacks {exc}") from None


class UtteranceNormaliser:
    """Each (T, D) array z-normalised with its own per-dimension statistics."""

    mode = "utterance"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return Normaliser.fit([x])(x)

    def to_dict(self) -> dict:
        return {"mode": self.mode}


class SpeakerNormaliser:
    """Per-speaker `Normaliser`s; `for_index(i)` gives the one of item i's speaker."""

    mode = "speaker"

    def __init__(self, by_speaker: dict[str, Normaliser], speakers: list[str]):
        self.by_speaker = by_speaker
        self.speakers = speakers  # speaker of each item, by index

    @classmethod
    def fit_features(cls, items, speakers: list[str], field: str = "acoustic") -> "SpeakerNormaliser":
        """Fit one Normaliser per speaker on that speaker's items (all of them: no labels read)."""
        grouped: dict[str, list] = {}
        for it, speaker in zip(items, speakers):
            grouped.setdefault(speaker, []).append(getattr(it, field))
        return cls({s: Normaliser.fit(arrays) for s, arrays in grouped.items()}, list(speakers))

    def for_index(self, index: int) -> Normaliser:
        return self.by_speaker[self.speakers[index]]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "speakers": {s: n.to_dict() for s, n in sorted(self.by_speaker.items())}}


def normaliser_mode(record: dict | None) -> str:
    """The mode of a stored normaliser record (`to_dict()` output): fold, speaker, utterance or none."""
    if not record:
        return "none"
    return record.get("mode", "fold")
