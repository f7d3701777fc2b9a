"""Blocks shared by the papers' models. Every block takes a mask and never lets padding leak.

Masks are bool tensors, True on real positions. Padding invariance (an utterance alone or
padded inside a batch gives the same output) is what each block here guarantees, and what
tests/test_layers.py checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

NEG_INF = -1e9


def masked_mean(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Mean over `dim` of the real positions only. x: (B, T, D), mask: (B, T) -> (B, D)."""
    weights = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    total = (x * weights).sum(dim)
    count = weights.sum(dim).clamp(min=1.0)
    return total / count


def masked_max(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Max over `dim` of the real positions only; all-padding rows give 0. (B, T, D) -> (B, D)."""
    filled = x.masked_fill(~mask.unsqueeze(-1), NEG_INF)
    out = filled.max(dim).values
    empty = ~mask.any(dim).unsqueeze(-1)  # (B, 1)
    return out.masked_fill(empty, 0.0)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax that gives exactly 0 to masked positions (and all-zero rows when nothing is real)."""
    scores = scores.masked_fill(~mask, NEG_INF)
    weights = torch.softmax(scores, dim=dim) * mask.to(scores.dtype)
    return weights / weights.sum(dim, keepdim=True).clamp(min=1e-12)


def compact(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move the real positions of each row to the front, dropping the rest.

    Used to drop silence frames before a recurrent layer (B-ACO-2, H-*): the layer then
    never sees them. x: (B, T, D), mask: (B, T) -> (B, T', D), (B, T') with T' = max kept.
    """
    lengths = mask.sum(1)  # (B,)
    longest = max(int(lengths.max().item()) if lengths.numel() else 0, 1)
    # Stable sort puts kept positions first in their original order.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :longest]  # (B, T')
    out = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    new_mask = torch.arange(longest, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return out * new_mask.unsqueeze(-1).to(x.dtype), new_mask


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first lengths[b] steps of each row; padding stays where it is. (B, T, D)."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
    flipped = lengths.unsqueeze(1) - 1 - t
    index = torch.where(flipped >= 0, flipped, t)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class BLSTM(nn.Module):
    """Stacked bidirectional LSTM whose real steps never see padding. (B, T, D_in) -> (B, T, 2H).

    On CPU the backward pass of packed sequences of unequal lengths is ~30x slower than the
    plain kernel (torch 2.13), so there each direction runs unpacked: the forward direction
    over the padded batch (padding comes after every real step), the backward direction over
    each row reversed within its own length, then reversed back. Both paths compute the same
    function with the same `nn.LSTM` parameters (tests/test_layers.py checks it). Padded
    steps are 0; dropout between layers as in nn.LSTM.
    """

    def __init__(self, input_size: int, hidden: int, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.hidden = hidden
        self.layers = layers
        self.lstm = nn.LSTM(
            input_size, hidden, num_layers=layers, batch_first=True, bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )

    @property
    def output_size(self) -> int:
        return 2 * self.hidden

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.device.type == "cpu":
            return self.forward_unpacked(x, mask)
        return self.forward_packed(x, mask)

    def forward_packed(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out * mask.unsqueeze(-1).to(out.dtype)

    def forward_unpacked(self, x: Tensor, mask: Tensor) -> Tensor:
        lstm = self.lstm
        lengths = mask.sum(1)  # (B,)
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        x = x * keep
        for k in range(self.layers):
            if k > 0:
                x = F.dropout(x, lstm.dropout, self.training)
            states = []
            for suffix in ("", "_reverse"):
                weights = [getattr(lstm, f"{n}_l{k}{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                inputs = x if not suffix else reverse_within(x, lengths)
                h0 = inputs.new_zeros(1, inputs.shape[0], self.hidden)
                out = torch._VF.lstm(inputs, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]
                states.append(out if not suffix else reverse_within(out, lengths))  # (B, T, H)
            x = torch.cat(states, dim=-1) * keep  # (B, T, 2H)
        return x


class ContextAttention(nn.Module):
    """Additive context attention (Aguilar et al. 2019, §3.3).

    e_i = v^T tanh(W_h h_i + b);  a = softmax(e) over real positions;  u = sum_i a_i h_i.
    (B, W, H), (B, W) -> u (B, H), a (B, W).
    """

    def __init__(self, size: int, attention_size: int | None = None):
        super().__init__()
        self.proj = nn.Linear(size, attention_size or size)
        self.v = nn.Linear(attention_size or size, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.v(torch.tanh(self.proj(h))).squeeze(-1)  # (B, W)
        weights = masked_softmax(scores, mask)
        return torch.einsum("bw,bwh->bh", weights, h), weights


class MaskedBatchNorm1d(nn.Module):
    """BatchNorm over the real positions of a (B, T, D) tensor; padding stays 0 and is not counted."""

    def __init__(self, size: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        real = x[mask]  # (N_real, D)
        if real.shape[0] > 1 or not self.training:
            out[mask] = self.norm(real)
        else:  # one position cannot give batch statistics: use the running ones
            self.norm.eval()
            out[mask] = self.norm(real)
            self.norm.train()
        return out


class GMU(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017), as used by Aguilar et al. 2019 Eq. 1.

    h_a = tanh(W_a x_a), h_l = tanh(W_l x_l), z = sigmoid(W_z [x_a; x_l]), h = z h_a + (1 - z) h_l,
    with batch normalisation of each modality's input. z is the acoustic share of each word.
    x_a: (B, W, D_a), x_l: (B, W, D_l) -> h (B, W, H), z (B, W, H).
    """

    def __init__(self, acoustic_size: int, lexical_size: int, size: int):
        super().__init__()
        self.norm_a = MaskedBatchNorm1d(acoustic_size)
        self.norm_l = MaskedBatchNorm1d(lexical_size)
        self.w_a = nn.Linear(acoustic_size, size, bias=False)
        self.w_l = nn.Linear(lexical_size, size, bias=False)
        self.w_z = nn.Linear(acoustic_size + lexical_size, size, bias=False)

    def forward(self, x_a: Tensor, x_l: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x_a = self.norm_a(x_a, mask)
        x_l = self.norm_l(x_l, mask)
        h_a = torch.tanh(self.w_a(x_a))
        h_l = torch.tanh(self.w_l(x_l))
        z = torch.sigmoid(self.w_z(torch.cat([x_a, x_l], dim=-1)))
        keep = mask.unsqueeze(-1).to(z.dtype)
        return (z * h_a + (1 - z) * h_l) * keep, z * keep


class Classifier(nn.Module):
    """Dropout then a linear softmax layer (the softmax lives in the loss)."""

    def __init__(self, size: int, num_classes: int, dropout: float = 0.0, hidden: tuple[int, ...] = ()):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for width in hidden:
            layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
            size = width
        layers.append(nn.Linear(size, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
