"""Energy-based speech detection: which 10 ms frames hold speech when no word times exist.

A frame is speech when its log energy (25 ms window) lies within `range_db` of the loudest
frame of the utterance and above an absolute floor `floor_db` (dBFS), so digital silence
and faint room noise are never speech, however quiet the whole file is. Pauses shorter
than `min_gap` inside speech are closed (stops, short breaths) and islands shorter than
`min_speech` dropped (clicks).
"""

from __future__ import annotations

import numpy as np

HOP = 0.01
WINDOW = 0.025
# The defaults of energy_speech_mask; the feature store keys speech masks and alignments by them.
# floor_db -70 dBFS: quiet RAVDESS takes peak near -54 dBFS with a room floor near -85 dBFS.
VAD_SETTINGS = {"method": "energy", "window": WINDOW, "range_db": 35.0, "floor_db": -70.0,
                "min_gap": 0.15, "min_speech": 0.05}


def frame_signal(y: np.ndarray, win: int, hop: int, num_frames: int | None = None) -> np.ndarray:
    """(T, win) frames with frame t centred on sample (t + 0.5) * hop; T = max(1, len // hop).

    The signal is padded by (win - hop) / 2 on the left (reflected when long enough, else
    zeros) and as needed on the right, so every frame exists and frame t summarises the
    stretch [t * hop, (t + 1) * hop) of the original signal.
    """
    if num_frames is None:
        num_frames = max(1, len(y) // hop)
    left = (win - hop) // 2
    needed = (num_frames - 1) * hop + win
    right = needed - left - len(y)
    mode = "reflect" if len(y) > max(left, right, 1) else "constant"
    y = np.pad(y, (left, max(right, 0)), mode=mode)[:needed]
    strides = (y.strides[0] * hop, y.strides[0])
    return np.lib.stride_tricks.as_strided(y, shape=(num_frames, win), strides=strides, writeable=False)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs where mask is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def energy_speech_mask(
    y: np.ndarray,
    sr: int,
    hop: float = HOP,
    num_frames: int | None = None,
    range_db: float | None = None,
    floor_db: float | None = None,
    min_gap: float | None = None,
    min_speech: float | None = None,
) -> np.ndarray:
    """(T,) bool: True on frames that hold speech by energy (module docstring); parameters
    left as None take their value from VAD_SETTINGS at call time."""
    range_db = VAD_SETTINGS["range_db"] if range_db is None else range_db
    floor_db = VAD_SETTINGS["floor_db"] if floor_db is None else floor_db
    min_gap = VAD_SETTINGS["min_gap"] if min_gap is None else min_gap
    min_speech = VAD_SETTINGS["min_speech"] if min_speech is None else min_speech
    hop_n = max(1, int(round(hop * sr)))
    frames = frame_signal(np.asarray(y, dtype=np.float32), max(hop_n, int(round(WINDOW * sr))), hop_n, num_frames)
    energy_db = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-10)  # (T,)
    threshold = max(float(energy_db.max()) - range_db, floor_db)
    mask = energy_db > threshold
    runs = _runs(mask)
    for (_, end), (start, _) in zip(runs, runs[1:]):
        if (start - end) * hop < min_gap:
            mask[end:start] = True
    for start, end in _runs(mask):
        if (end - start) * hop < min_speech:
            mask[start:end] = False
    return mask


def speech_span(mask: np.ndarray, hop: float = HOP) -> tuple[float, float] | None:
    """(first, last) second of speech in a frame mask, or None when it holds no speech."""
    voiced = np.flatnonzero(mask)
    if voiced.size == 0:
        return None
    return float(voiced[0] * hop), float((voiced[-1] + 1) * hop)
