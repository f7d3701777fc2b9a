"""Training-time frame masking (the config's `augment` section), SpecAugment-style.

Park et al. 2019 mask spans of time steps and bands of mel channels of the input; here the
same is done to whatever frame feature the model reads (ComParE LLDs, filterbanks), after
normalisation, so a masked value is 0, the (fold, speaker or utterance) mean. Only the
training batches are masked; validation, test and prediction see the frames unchanged.
Nothing moves in time, so word spans, speech masks and lengths stay valid.

Each utterance gets `time_masks` spans of 0..`time_width` frames (never more than a fifth
of its frames per span) and `feature_masks` bands of 0..`feature_width` dimensions, drawn
from a generator seeded with the run's seed, fold and rank (and DataLoader worker, so workers
never repeat each other's masks); a resumed run draws fresh masks.
"""

from __future__ import annotations

import numpy as np

from emofuse.training.config import AugmentConfig


class FrameMasking:
    """`masking(frames)` -> a masked copy of a (T, D) array (module docstring)."""

    def __init__(self, cfg: AugmentConfig, seed: int | list[int] = 0):
        self.cfg = cfg
        self.seed = [seed] if isinstance(seed, int) else list(seed)
        self._rngs: dict[int, np.random.Generator] = {}

    def _rng(self) -> np.random.Generator:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = -1 if info is None else info.id  # each loader worker process: its own stream
        if worker not in self._rngs:
            self._rngs[worker] = np.random.default_rng(self.seed if worker < 0 else [*self.seed, worker])
        return self._rngs[worker]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        c, rng = self.cfg, self._rng()
        out = np.array(frames, copy=True)
        num_frames, dim = out.shape
        widest = min(c.time_width, num_frames // 5)
        for _ in range(c.time_masks if widest > 0 else 0):
            width = int(rng.integers(0, widest + 1))
            start = int(rng.integers(0, num_frames - width + 1))
            out[start:start + width] = 0.0
        widest = min(c.feature_width, dim)
        for _ in range(c.feature_masks if widest > 0 else 0):
            width = int(rng.integers(0, widest + 1))
            start = int(rng.integers(0, dim - width + 1))
            out[:, start:start + width] = 0.0
        return out
