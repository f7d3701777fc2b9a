"""The padded batch every model reads: the contract between features, training and models.

One acoustic stream per batch (the feature the model's config names: compare_lld, fbank40,
spectrogram8k or waveform) on its own frame grid of `acoustic_hop` seconds, plus word-level
inputs. Word times are kept in seconds and also given as frame spans on the acoustic grid,
so any model can build the words x frames alignment matrix with `alignment_matrix`; an
encoder whose frames are not centred on that grid says by how much (`acoustic_centre_offset`).
Every padded position is False in its mask.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class UtteranceFeatures:
    """What the feature store hands back for one utterance (numpy, unpadded)."""

    id: str
    acoustic: np.ndarray | None = None  # (T, D) float32
    acoustic_hop: float = 0.01  # seconds per frame of `acoustic`
    # Seconds from the hop grid's frame centre ((t + 0.5) * hop) to the frame's real one: an hf
    # encoder's conv stack (`FrameGeometry.centre_offset`, +2.5 ms wav2vec2, -10 ms Whisper).
    acoustic_centre_offset: float = 0.0
    speech_mask: np.ndarray | None = None  # (T,) bool on the acoustic grid
    words: list[str] | None = None  # the aligned words
    word_times: np.ndarray | None = None  # (W, 2) float seconds [start, end)
    word_vectors: np.ndarray | None = None  # (W, D_w) float32
    align_source: str | None = None  # "corpus", "forced", "asr", "proportional"; "text" (words, no times); "none"
    frame_offset: int = 0  # frames cut from the recording's start (data.trim); word_times count from there


@dataclass
class Batch:
    ids: list[str]
    labels: Tensor  # (B,) long, class indices
    acoustic: Tensor | None = None  # (B, T, D) float
    acoustic_mask: Tensor | None = None  # (B, T) bool, True on real frames
    acoustic_hop: float = 0.01  # seconds per acoustic frame
    acoustic_centre_offset: float = 0.0  # seconds from (t + 0.5) * hop to frame t's real centre
    speech_mask: Tensor | None = None  # (B, T) bool, True on frames inside words (or voiced)
    words: Tensor | None = None  # (B, W, D_w) float word vectors
    word_mask: Tensor | None = None  # (B, W) bool, True on real words
    word_times: Tensor | None = None  # (B, W, 2) float seconds [start, end)
    word_frames: Tensor | None = None  # (B, W, 2) long frames [start, end) on the acoustic grid
    token_ids: Tensor | None = None  # (B, W) long, 0 = padding, 1 = unknown
    word_strings: list[list[str]] | None = None  # the words themselves (models that encode text)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Batch":
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def select(self, index: list[int] | Tensor) -> "Batch":
        """The sub-batch of the given rows (used by samplers of negatives and by tests)."""
        index = torch.as_tensor(index, dtype=torch.long)
        picked = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        rows = index.tolist()
        strings = None if self.word_strings is None else [self.word_strings[i] for i in rows]
        return replace(self, ids=[self.ids[i] for i in rows], word_strings=strings, **picked)


def alignment_matrix(word_frames: Tensor, num_frames: int, word_mask: Tensor | None = None) -> Tensor:
    """Binary words x frames matrix A with A[b, w, t] = 1 when frame t lies in word w.

    word_frames: (B, W, 2) long [start, end); returns (B, W, T) float.
    """
    t = torch.arange(num_frames, device=word_frames.device)  # (T,)
    start = word_frames[..., 0:1]  # (B, W, 1)
    end = word_frames[..., 1:2]
    a = (t >= start) & (t < end)  # (B, W, T)
    if word_mask is not None:
        a = a & word_mask.unsqueeze(-1)
    return a.float()


def _pad(arrays: Sequence[np.ndarray], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Stack ragged (L_i, ...) arrays into (B, L_max, ...) with a (B, L_max) mask."""
    lengths = [len(a) for a in arrays]
    longest = max(lengths) if lengths else 0
    longest = max(longest, 1)  # keep one (masked) slot so shapes never hit zero
    trailing = arrays[0].shape[1:] if arrays else ()
    out = torch.zeros((len(arrays), longest, *trailing), dtype=dtype)
    mask = torch.zeros((len(arrays), longest), dtype=torch.bool)
    for i, a in enumerate(arrays):
        if len(a):
            out[i, : len(a)] = torch.as_tensor(np.asarray(a), dtype=dtype)
            mask[i, : len(a)] = True
    return out, mask


def collate(
    items: Sequence[UtteranceFeatures],
    labels: Sequence[int],
    token_ids: Sequence[Sequence[int]] | None = None,
) -> Batch:
    """Pad a list of utterances into a Batch; every padded slot is False in its mask."""
    batch = Batch(ids=[it.id for it in items], labels=torch.as_tensor(list(labels), dtype=torch.long))
    if items and items[0].acoustic is not None:
        batch.acoustic, batch.acoustic_mask = _pad([it.acoustic for it in items], torch.float32)
        batch.acoustic_hop = items[0].acoustic_hop
        batch.acoustic_centre_offset = items[0].acoustic_centre_offset
        if all(it.speech_mask is not None for it in items):
            batch.speech_mask, _ = _pad([it.speech_mask for it in items], torch.bool)
            batch.speech_mask &= batch.acoustic_mask
    if items and items[0].word_times is not None:
        times = [np.asarray(it.word_times, dtype=np.float32).reshape(-1, 2) for it in items]
        batch.word_times, batch.word_mask = _pad(times, torch.float32)
        hop = batch.acoustic_hop
        # Frame t covers [t * hop, (t + 1) * hop) + the centre offset (`align.word_frame_matrix`).
        # The epsilon keeps 0.02 s / 0.01 s from becoming 2.0000001 frames.
        on_grid = batch.word_times - batch.acoustic_centre_offset  # (B, W, 2)
        frames = torch.stack(
            [torch.floor(on_grid[..., 0] / hop + 1e-4), torch.ceil(on_grid[..., 1] / hop - 1e-4)],
            dim=-1,
        ).long()
        if batch.acoustic is not None:
            frames = frames.clamp(0, batch.acoustic.shape[1])
        # A word always owns at least one frame, so mean/max pooling over it is defined.
        frames[..., 1] = torch.maximum(frames[..., 1], frames[..., 0] + 1)
        if batch.acoustic is not None:
            frames[..., 0] = frames[..., 0].clamp(max=batch.acoustic.shape[1] - 1)
            frames[..., 1] = frames[..., 1].clamp(max=batch.acoustic.shape[1])
        batch.word_frames = frames * batch.word_mask.unsqueeze(-1)
    if items and all(it.words is not None for it in items):
        batch.word_strings = [list(it.words) for it in items]
    if items and items[0].word_vectors is not None:
        batch.words, mask = _pad([it.word_vectors for it in items], torch.float32)
        batch.word_mask = mask if batch.word_mask is None else batch.word_mask
    if token_ids is not None:
        ids, mask = _pad([np.asarray(t, dtype=np.int64) for t in token_ids], torch.long)
        batch.token_ids = ids
        batch.word_mask = mask if batch.word_mask is None else batch.word_mask
    return batch
