"""What prediction checks and draws of a recording's samples: mono float32 at 16 kHz, not
empty and finite (`checked_audio`), holding speech (`check_speech`), a warning when it is
clipped (over `CLIPPED_SHARE` of its samples at full scale), and its min/max envelope for the
pictures."""

from __future__ import annotations

import time

import numpy as np

from emofuse.errors import DataError, NoSpeech

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


def check_speech(audio: np.ndarray, label: str, silero=None, timings: dict | None = None) -> None:
    """NoSpeech unless the recording holds speech: silence by its energy (`align.vad`); noise when
    `silero` (a SileroDetector; None skips this part) finds no 32 ms frame reaching SILERO_FLOOR.
    Scoring stops at the first frame that does, and Whisper carries on from there for its speech
    span, so a clip is scored once. timings["vad"]: the Silero part's seconds."""
    from emofuse.align.segments import SILERO_FLOOR
    from emofuse.align.vad import energy_speech_mask, speech_span

    if speech_span(energy_speech_mask(audio, SAMPLE_RATE)) is None:
        raise NoSpeech(label, f"no speech in the audio ({len(audio) / SAMPLE_RATE:.1f} s of silence or "
                              "near-silence): there is nothing to recognise an emotion in")
    if silero is None:
        return
    t = time.perf_counter()
    peak = float(silero.recording(audio, stop_at=SILERO_FLOOR).max(initial=0.0))
    if timings is not None:
        timings["vad"] = time.perf_counter() - t
    if peak < SILERO_FLOOR:
        raise NoSpeech(label, f"no speech found by the voice activity detector (Silero peak {peak:.2f} < "
                              f"{SILERO_FLOOR}): noise or silence, nothing to recognise an emotion in "
                              "(--no-speech-check predicts it anyway)")
