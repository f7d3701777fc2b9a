"""A learned softmax-weighted sum over an encoder's layers (SUPERB, Yang et al. 2021, Sec. 3).

h = sum_l softmax(w)_l * x_l, with one learnable scalar w_l per hidden state. The weights
start equal (w = 0), stay positive and sum to 1, so `weights()` reads as each layer's share
and can be printed in a report. Used wherever the acoustic input carries a layer axis: an
`hf:PATH#layers=all` feature stores (T, L * D) frames, (T, L, D) in row-major order.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerWeightedSum(nn.Module):
    """(..., L, D) -> (..., D); or (..., L * D) -> (..., D) when `layer_dim` D is given."""

    def __init__(self, num_layers: int, layer_dim: int | None = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, not {num_layers}")
        self.num_layers = num_layers
        self.layer_dim = layer_dim
        self.logits = nn.Parameter(torch.zeros(num_layers))  # (L,)

    def weights(self) -> torch.Tensor:
        """(L,) the softmax-normalised layer weights: positive, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_dim is not None:
            x = x.unflatten(-1, (self.num_layers, self.layer_dim))  # (..., L * D) -> (..., L, D)
        if x.shape[-2] != self.num_layers:
            raise ValueError(f"expected {self.num_layers} layers on axis -2, got shape {tuple(x.shape)}")
        return torch.einsum("...ld,l->...d", x, self.weights())  # (..., D)
