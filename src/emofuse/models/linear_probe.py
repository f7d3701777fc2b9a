"""The linear probe: a logistic regression on the mean and standard deviation of frozen frames.

The baseline every self-supervised speech paper reports: the SUPERB benchmark (Yang et al.
2021, "SUPERB: Speech processing Universal PERformance Benchmark", §3) measures what a frozen
representation holds by what a linear model on its pooled frames can read from it, nothing
trained underneath. Here the frames are any feature of the store (`data.acoustic`:
compare_lld, fbank40, hf:PATH, ...), on their own hop and dimension.

1. Pooling (this module, `LinearProbe.forward`): each clip's real frames (the speech span
   when `data.trim` is set, cut by `features.spans.trim` before any model sees them) give
   [mean ; std] per dimension, (B, 2D); the population std (ddof 0). SUPERB pools the mean
   only (`model.std: false`); the std adds how much each dimension varies over the clip (the
   ComParE functionals, Schuller et al. 2016, summarise frames by both).
2. z-scoring of the pooled vectors, as `data.normalise` says: ``speaker`` z-scores every
   speaker's vectors with that speaker's own statistics over all of their utterances (no
   label read; the `speaker-lr` back-end), ``fold`` with the training part's (the `lr`
   back-end). Frames are not z-scored first: a per-dimension affine change of the frames
   moves each pooled dimension affinely, which the vectors' own z-scoring removes anyway, and
   a lone recording's speaker has no frame statistics at prediction time (its own would
   z-score its mean to 0 and its std to 1, erasing what the probe reads).
3. A class-balanced L2 logistic regression (scikit-learn, lbfgs), fitted on the training
   part's vectors for each C of `model.cs` (default 0.001 .. 10, half-decades); the C with the
   best UA on the validation speakers is kept, ties to the smaller C (stronger
   regularisation). The kept regression is the one fitted on the training part alone: the
   validation speakers chose C and are not refitted on, so the reported validation UA is the
   one the chosen model earned. The test part is never looked at for either choice.

Steps 2 and 3 are `training.refit_output.fit_backend` (the fold runner calls it from
`training.fold.fit_fold`); the fitted regression is a `models.refitted_output.Backend`, stored as JSON
in `fold-K/backend.json` and in an exported model directory's model.json, and prediction reads
it as it reads any back-end. The network itself has no weights: its logits are zeros, never
read, since a linear-probe model directory without its back-end is refused on loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, register

# Inverse L2 strengths tried; the validation speakers choose (module docstring, step 3).
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class LinearProbeConfig:
    std: bool = True  # pool the standard deviation of each dimension beside its mean
    cs: tuple[float, ...] = CS  # C grid of the logistic regression


def mean_std_pool(x: torch.Tensor, mask: torch.Tensor, std: bool = True) -> torch.Tensor:
    """[mean ; std] over the real frames of each clip: x (B, T, D), mask (B, T) -> (B, 2D)
    ((B, D) without `std`). Summed in float64, the std around the mean (not E[x^2] - E[x]^2),
    so that large offsets such as F0 in Hz keep their small spread; a clip without frames
    pools to 0."""
    w = mask.unsqueeze(-1).to(torch.float64)  # (B, T, 1)
    x = x.to(torch.float64) * w  # (B, T, D), padding zeroed
    count = w.sum(1).clamp(min=1.0)  # (B, 1)
    mean = x.sum(1) / count  # (B, D)
    if not std:
        return mean.float()
    spread = ((x - mean.unsqueeze(1)) * w).pow(2).sum(1) / count  # (B, D)
    return torch.cat([mean, spread.sqrt()], dim=-1).float()  # (B, 2D)


class LinearProbe(nn.Module):
    """Pooled frames as the utterance vector; the classifier is the fitted back-end."""

    def __init__(self, spec: InputSpec, cfg: LinearProbeConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = spec.num_classes

    def forward(self, batch: Batch) -> Output:
        u = mean_std_pool(batch.acoustic, batch.acoustic_mask, self.cfg.std)  # (B, 2D)
        logits = u.new_zeros(len(u), self.num_classes)  # (B, C): never read (module docstring)
        return Output(logits, u)


register("linear-probe", LinearProbeConfig, needs=("acoustic",), fitted=True,
         summary="SUPERB-style linear probe: mean+std-pooled frames, logistic regression (C on validation)")(LinearProbe)
