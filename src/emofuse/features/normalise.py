"""z-normalisation of frame features: one `Normalisation` decides it, everywhere.

`Normalisation` is the mode of `data.normalise` plus the statistics fitted for it. Training
fits it (`Normalisation.fit`, per fold) and saves `to_dict()` in `fold-K/normaliser.json`;
export, prediction, ONNX export and the report read it back with `Normalisation.from_dict` /
`Normalisation.mode_of` and never look at the mode string themselves. `Normaliser` is one
set of per-dimension statistics, its building block. The modes:

- ``fold`` (the papers' way): Aguilar et al. 2019 (sec. 4) z-normalise the ComParE LLDs
  with the statistics of the training fold; fitting on all data would leak the test speakers
  into the model. Fit on the training utterances, apply everywhere, and store the statistics
  with the trained model so inference normalises exactly as training did.
- ``speaker``: every speaker with the statistics of their own
  utterances in the experiment, test speakers included. No label is read, but a test
  speaker's unlabelled audio is: the classic speaker normalisation of speaker-independent
  emotion recognition, which removes each voice's pitch, loudness and timbre offsets. A new
  recording of an unknown speaker has no such statistics; inference then falls back to the
  recording's own (`utterance`) and says so.
- ``utterance``: every utterance with its own statistics; needs nothing from other
  recordings, so training and inference match exactly.
- ``none``: the frames as extracted.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from emofuse.errors import ConfigError, DataError


# bounds of a stored std (Normaliser.from_dict); ComParE's spectral variance (LLD 45) and its delta
# spread by 1.35e6 and 3.7e5 on the demo corpus's loud synthetic voices, so 1e6 refused a real fit
MIN_STD, MAX_STD = 1e-6, 1e9


class Normaliser:
    """Per-dimension mean/std: x' = (x - mean) / std; a constant dimension keeps std = 1."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, count: int = 0):
        self.mean = np.asarray(mean, dtype=np.float32)  # (D,)
        self.std = np.asarray(std, dtype=np.float32)  # (D,)
        self.count = int(count)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ConfigError(f"normaliser mean {self.mean.shape} and std {self.std.shape} must be equal 1-D shapes")

    @classmethod
    def fit(cls, arrays: Iterable[np.ndarray], min_std: float = MIN_STD, rel_std: float = 1e-5) -> "Normaliser":
        """Statistics over every row of every (T, D) array (float64 running sums). A dimension
        whose std is below `min_std`, or below `rel_std` x |mean| (a constant the running sums
        leave a rounding residue on), is constant: its std is floored to 1, so it maps to 0
        instead of to huge or NaN values."""
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
        std[(std < min_std) | (std < rel_std * np.abs(mean)) | ~np.isfinite(std)] = 1.0
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
        """Read back `to_dict()`; a std of 0, a negative one or a non-finite value is refused
        (it would turn every frame into NaN or infinity: `fit` never writes one)."""
        try:
            mean = np.array(record["mean"], dtype=np.float64)
            std = np.array(record["std"], dtype=np.float64)
        except KeyError as exc:
            raise ConfigError(f"normaliser record lacks {exc}") from None
        except (TypeError, ValueError):
            raise ConfigError("normaliser mean and std must be lists of numbers") from None
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise ConfigError("normaliser mean or std holds NaN or infinite values")
        if np.any(std <= 0):
            where = np.flatnonzero(std <= 0)
            raise ConfigError(f"normaliser std is zero or negative in {len(where)} dimension(s) "
                              f"(first: {int(where[0])}); a constant dimension's std is 1")
        # `fit` floors a std below MIN_STD to 1, and no frame feature here (log energies, LLDs,
        # encoder states) spreads by MAX_STD: beyond, every frame squashes to its mean (one
        # constant input, one confident answer) or overflows float32
        outside = np.flatnonzero((std < MIN_STD) | (std > MAX_STD))
        if outside.size:
            raise ConfigError(f"normaliser std is outside [{MIN_STD:g}, {MAX_STD:g}] in {outside.size} dimension(s) "
                              f"(first: {int(outside[0])}, std {std[outside[0]]:g}); fit never writes one")
        return cls(mean, std, record.get("count", 0))


MODES = ("fold", "speaker", "utterance", "none")  # data.normalise (true = fold, false = none)


class Normalisation:
    """How an experiment's acoustic frames are z-normalised: its mode and fitted statistics.

    `statistics`: the training part's (``fold``), or, for ``speaker`` at prediction time, the
    joint statistics of one speaker's recordings (`for_one_speaker`). `by_speaker` and
    `speakers` (``speaker``, training only): each corpus speaker's statistics and the speaker
    of each item by index. A model directory keeps `portable()`: no corpus speaker's statistics.
    """

    def __init__(self, mode: str, statistics: Normaliser | None = None,
                 by_speaker: dict[str, Normaliser] | None = None, speakers: Sequence[str] | None = None,
                 frames: bool = True):
        if mode not in MODES:
            raise ConfigError(f"normalisation mode {mode!r}; valid: {', '.join(MODES)}")
        self.mode = mode
        self.statistics = statistics
        self.by_speaker = dict(by_speaker or {})
        self.speakers = list(speakers) if speakers is not None else None
        self.frames = frames  # False: the items had no frames, nothing was fitted or is saved

    @staticmethod
    def mode_of(value: bool | str | None) -> str:
        """A data.normalise value as one of MODES (true = fold, false or null = none)."""
        if value is True:
            return "fold"
        if value is False or value is None:
            return "none"
        if value not in MODES:
            raise ConfigError(f"data.normalise={value!r}; valid: {', '.join(MODES)} (true = fold, false = none)")
        return value

    @classmethod
    def fit(cls, mode: bool | str | None, items: Sequence, speakers: Sequence[str],
            train_idx: Sequence[int]) -> "Normalisation":
        """Fit `mode` on `items` (`UtteranceFeatures`): ``fold`` on the training part
        (`train_idx`) only; ``speaker`` on every speaker's own items, test speakers' too (no
        label is read). Items without frames give a Normalisation that saves nothing."""
        mode = cls.mode_of(mode)
        if not len(items) or items[0].acoustic is None:
            return cls(mode, frames=False)
        if mode == "fold":
            return cls(mode, statistics=Normaliser.fit_features([items[int(i)] for i in train_idx]))
        if mode == "speaker":
            grouped: dict[str, list] = {}
            for it, speaker in zip(items, speakers):
                grouped.setdefault(speaker, []).append(it.acoustic)
            return cls(mode, by_speaker={s: Normaliser.fit(a) for s, a in grouped.items()}, speakers=speakers)
        return cls(mode)

    def fitted_on(self, training_part: str) -> str:
        """What the statistics were taken from, in words (normaliser.json's `fitted_on`)."""
        return {"fold": training_part, "speaker": "each speaker's own utterances (no labels)",
                "utterance": "each utterance itself", "none": "nothing"}[self.mode]

    def apply(self, x: np.ndarray, index: int | None = None) -> np.ndarray:
        """Frames (T, D) normalised; `index`: the item's index in training (its speaker's
        statistics). A recording whose speaker has no statistics is z-scored with its own."""
        if self.mode == "none":
            return x
        if self.mode == "speaker" and index is not None and self.speakers is not None:
            return self.by_speaker[self.speakers[index]](x)
        if self.statistics is not None:
            return self.statistics(x)
        if self.mode == "fold":
            raise ConfigError("a fold normalisation without statistics cannot normalise")
        return Normaliser.fit([x])(x)

    def check_dimensions(self, dim: int, source=None) -> None:
        """Stored statistics have the model's `dim` frame dimensions; otherwise a DataError
        naming `source` (a normaliser of another feature would shift every frame wrongly)."""
        for name, stats in [("", self.statistics), *((f" of speaker {s}", n) for s, n in self.by_speaker.items())]:
            if stats is not None and dim and len(stats.mean) != dim:
                raise DataError(source, f"normaliser{name} has {len(stats.mean)} dimensions; the model reads "
                                        f"frames of {dim}")

    @property
    def fixed(self) -> bool:
        """Whether every recording is normalised with the same stored statistics (or not at all):
        what a graph with the statistics inside (ONNX) can hold."""
        return self.mode in ("fold", "none")

    def for_one_speaker(self, arrays: Iterable[np.ndarray]) -> "Normalisation":
        """For ``speaker``: the normalisation of recordings that are all one speaker's, with
        their joint statistics, as in cross-validation. Other modes: unchanged."""
        if self.mode != "speaker":
            return self
        arrays = [a for a in arrays if a is not None]
        return Normalisation(self.mode, statistics=Normaliser.fit(arrays)) if arrays else self

    def portable(self) -> "Normalisation":
        """What a model directory keeps: no corpus speaker's statistics (they describe the
        training corpus's speakers, not a new one)."""
        if self.mode == "speaker":
            return Normalisation(self.mode, frames=self.frames)
        return self

    def to_dict(self) -> dict | None:
        """The saved record (normaliser.json, model.json): fold statistics as
        {"mean", "std", "count"}, {"mode": ...} otherwise, None for none or no frames."""
        if self.mode == "none" or not self.frames:
            return None
        if self.mode == "fold":
            return self.statistics.to_dict()
        if self.mode == "speaker" and self.by_speaker:
            return {"mode": self.mode, "speakers": {s: n.to_dict() for s, n in sorted(self.by_speaker.items())}}
        return {"mode": self.mode}

    @classmethod
    def from_dict(cls, record: dict | None, source=None) -> "Normalisation":
        """Read back a `to_dict()` record; a bad one is a DataError naming `source`."""
        if not record:
            return cls("none")
        if not isinstance(record, dict):
            raise DataError(source, f"normaliser record must be an object, not {type(record).__name__}")
        mode = record.get("mode", "fold")
        try:
            if mode == "fold":
                return cls(mode, statistics=Normaliser.from_dict(record))
            if mode == "speaker":
                by_speaker = {s: Normaliser.from_dict(r) for s, r in (record.get("speakers") or {}).items()}
                return cls(mode, by_speaker=by_speaker)
            return cls(mode)
        except ConfigError as exc:
            raise DataError(source, f"normaliser record: {exc}") from None
