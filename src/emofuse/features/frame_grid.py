"""Where a speech encoder's frames sit in the audio, and how long audio is cut on that grid.

`FrameGeometry` composes a conv stack's kernels, strides and paddings (``conv_kernel`` /
``conv_stride`` of a wav2vec2-family config; Whisper's two convs over its centred STFT) into
the hop and each frame's receptive field, so frame times come from the model, not assumed.
`chunk_plan` cuts a long utterance's frames into overlapping chunks, each frame taken from
the chunk in which it sits furthest from an edge. Used by `features.hf` and `features.whisper`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emofuse.errors import DataError

SAMPLE_RATE = 16000
# Whisper's encoder convs (kernel, stride, padding) in mel frames; checked against the loaded module.
_WHISPER_CONVS = ((3, 1, 1), (3, 2, 1))


@dataclass(frozen=True)
class FrameGeometry:
    """Where each output frame of a conv stack sits in the audio, in samples at `sr`.

    Frame t covers samples [first + t * hop, first + t * hop + width). Built by composing
    (kernel, stride, padding) layers over an input grid of `unit` samples whose element m
    covers [m * unit + unit_first, + unit_width) (raw samples: unit 1, first 0, width 1;
    Whisper's centred STFT: unit 160, first -200, width 400).
    """

    hop: int
    first: int
    width: int
    convs: tuple  # ((kernel, stride, padding), ...) in input-grid steps
    unit: int = 1
    sr: int = SAMPLE_RATE

    @classmethod
    def compose(cls, convs, unit: int = 1, unit_first: int = 0, unit_width: int = 1, sr: int = SAMPLE_RATE):
        jump, first, span = 1, 0, 1  # in input-grid steps
        for kernel, stride, padding in convs:
            first -= padding * jump
            span += (kernel - 1) * jump
            jump *= stride
        return cls(jump * unit, first * unit + unit_first, (span - 1) * unit + unit_width, tuple(convs), unit, sr)

    @property
    def hop_seconds(self) -> float:
        return self.hop / self.sr

    @property
    def receptive_field(self) -> float:
        return self.width / self.sr

    @property
    def centre_offset(self) -> float:
        """Seconds from the hop grid's frame centre ((t + 0.5) * hop) to the real one."""
        return (self.first + self.width / 2 - self.hop / 2) / self.sr

    def frame_times(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) in seconds of frames 0..n-1 (starts can be < 0 for padded convs)."""
        starts = (self.first + self.hop * np.arange(n, dtype=np.float64)) / self.sr
        return starts, starts + self.width / self.sr

    def num_frames(self, num_samples: int) -> int:
        """Output frames of the conv stack for `num_samples` samples (torch's Conv1d formula)."""
        length = num_samples // self.unit
        for kernel, stride, padding in self.convs:
            length = (length + 2 * padding - kernel) // stride + 1
        return max(1, length)


def speech_geometry(config: dict, unit: int = 160, unit_width: int = 400) -> FrameGeometry:
    """FrameGeometry of a speech encoder's config (wav2vec2 family) or Whisper's encoder."""
    if config["model_type"] == "whisper":
        return FrameGeometry.compose(_WHISPER_CONVS, unit=unit, unit_first=-(unit_width // 2), unit_width=unit_width)
    kernels, strides = config.get("conv_kernel"), config.get("conv_stride")
    if not kernels or not strides or len(kernels) != len(strides):
        raise DataError(None, f"config of model_type {config['model_type']!r} has no conv_kernel/conv_stride")
    return FrameGeometry.compose([(int(k), int(s), 0) for k, s in zip(kernels, strides)])


def chunk_plan(total: int, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """How `total` frames are cut into chunks of `size` frames overlapping by `overlap`: per
    chunk (first global frame, owned local frames [lo, hi)). Each frame is owned by the chunk
    in which it sits furthest from an edge (the overlap split in half); one chunk when it fits."""
    if total <= size:
        return [(0, 0, total)]
    step, chunks, first = size - overlap, [], 0
    while True:
        last = first + size >= total
        lo = 0 if first == 0 else overlap // 2
        hi = total - first if last else step + overlap // 2
        chunks.append((first, lo, hi))
        if last:
            return chunks
        first += step
