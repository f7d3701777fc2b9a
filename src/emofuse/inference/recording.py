"""What prediction checks and draws of a recording's samples: mono float32 at 16 kHz, not
empty and finite (`checked_audio`), a warning when it is clipped (over `CLIPPED_SHARE` of its
samples at full scale), and its min/max envelope for the pictures."""

from __future__ import annotations

import numpy as np

from emofuse.errors import DataError

SAMPLE_RATE = 16000
CLIPPED_SHARE = 0.01  # more than this share of samples at full scale: a clipping warning
FULL_SCALE = 0.99  # |sample| at or above this counts as full scale (resampling rings around 1.0)


def clipping_warning(audio: np.ndarray) -> str | None:
    """A warning when more than CLIPPED_SHARE of the samples sit at full scale."""
    if audio.size == 0:
        return None
    share = float(np.mean(np.abs(audio) >= FULL_SCALE))
    if share <= CLIPPED_SHARE:
        return None
    return (f"clipped audio: {100 * share:.1f}% of samples at full scale; the acoustic features are "
            "distorted (record at a lower gain)")


def envelope(audio: np.ndarray, sr: int = SAMPLE_RATE, hop: float = 0.01) -> np.ndarray:
    """(N, 2) float32 min and max of each `hop` of audio: enough to draw the waveform."""
    step = max(1, int(round(hop * sr)))
    n = max(1, int(np.ceil(len(audio) / step)))
    padded = np.pad(np.asarray(audio, dtype=np.float32), (0, n * step - len(audio)))
    blocks = padded.reshape(n, step)
    return np.stack([blocks.min(1), blocks.max(1)], axis=1).astype(np.float32)


def checked_audio(audio: np.ndarray, sr: int, label: str) -> np.ndarray:
    """Mono float32 samples at 16 kHz; empty or non-finite audio is a DataError naming `label`."""
    from emofuse.features.audio import resample

    audio = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sr, SAMPLE_RATE)
    if audio.size == 0:
        raise DataError(label, "audio is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise DataError(label, "audio holds NaN or infinite samples")
    return audio
