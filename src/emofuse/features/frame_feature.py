"""The frame feature type every extractor is: `extract(y16k) -> (T, dim)` float32 frames on a
`hop` grid, with the `settings` the feature store keys its entries by. The built-in features
and the name registry are `features.frames`; the pretrained encoders (`features.hf`,
`features.whisper`) subclass it here, so neither imports the registry that imports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from emofuse.features.audio import resample

SAMPLE_RATE = 16000


@dataclass
class FrameFeature:
    """A frame-level feature: `extract(y16k) -> (T, dim)` float32 with T = max(1, N // 160)."""

    name: str
    dim: int
    hop: float
    settings: dict
    compute: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    prepare: Callable[[], object] | None = field(default=None, repr=False)  # load heavy parts now

    def warm(self) -> "FrameFeature":
        if self.prepare is not None:
            self.prepare()
        return self

    def num_frames(self, num_samples: int) -> int:
        return max(1, num_samples // int(round(self.hop * SAMPLE_RATE)))

    def extract(self, y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
        y = resample(y, sr, SAMPLE_RATE)
        out = np.asarray(self.compute(y), dtype=np.float32)
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise AssertionError(f"{self.name} gave shape {out.shape}, expected (T, {self.dim})")
        # Log-domain features of digital silence can come out as -inf; openSMILE can give NaN.
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
