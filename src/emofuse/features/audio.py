"""Audio input: any file soundfile (libsndfile) or PyAV (FFmpeg) reads, as float32 mono.

`load_audio(utt, sr)` honours the utterance's start/end offsets (seconds), downmixes by
averaging the channels and resamples with a polyphase filter (scipy `resample_poly`).
soundfile is tried first (it seeks, so a 3 s cut of a 1 h file reads 3 s); containers it
cannot open (mp4, m4a, webm, ...) go through PyAV. Every failure is a `DataError` naming
the file and the problem.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from emofuse.corpora.base import Utterance
from emofuse.errors import DataError


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal; float32 out."""
    if sr_in == sr_out:
        return np.asarray(y, dtype=np.float32)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(np.asarray(y, dtype=np.float32), sr_out // g, sr_in // g).astype(np.float32)


def _check_span(path: Path, start: float | None, end: float | None, duration: float) -> tuple[float, float]:
    start = 0.0 if start is None else float(start)
    end = duration if end is None else float(end)
    if start < 0:
        raise DataError(path, f"utterance start {start:.3f}s is negative")
    if start >= duration:
        raise DataError(path, f"utterance start {start:.3f}s is beyond the end of the audio ({duration:.3f}s)")
    if end <= start:
        raise DataError(path, f"utterance end {end:.3f}s is not after its start {start:.3f}s")
    return start, min(end, duration)


def _read_soundfile(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        if f.frames == 0:
            raise DataError(path, "audio is empty (0 samples)")
        start_s, end_s = _check_span(path, start, end, f.frames / sr)
        first = int(round(start_s * sr))
        count = max(1, int(round(end_s * sr)) - first)
        f.seek(first)
        y = f.read(count, dtype="float32", always_2d=True)  # (N, C)
    return (y[:, 0] if y.shape[1] == 1 else y.mean(axis=1)), sr


def _read_av(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        streams = container.streams.audio
        if not streams:
            raise DataError(path, "the file holds no audio stream")
        stream = streams[0]
        sr = stream.codec_context.sample_rate or stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    y = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if y.size == 0:
        raise DataError(path, "audio is empty (0 samples)")
    start_s, end_s = _check_span(path, start, end, y.size / sr)
    return y[int(round(start_s * sr)) : max(int(round(end_s * sr)), int(round(start_s * sr)) + 1)], sr


def load_audio(
    source: Utterance | str | Path,
    sr: int = 16000,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """float32 mono samples at `sr` Hz of an utterance (its start/end) or of a file.

    Raises DataError for a missing, unreadable, empty or non-finite file, or offsets outside it.
    """
    if isinstance(source, Utterance):
        if not source.audio:
            raise DataError(None, f"utterance {source.id!r} has no audio file")
        path, start, end = Path(source.audio), source.start, source.end
    else:
        path = Path(source)
    if not path.is_file():
        raise DataError(path, "audio file not found")
    try:
        y, native = _read_soundfile(path, start, end)
    except DataError:
        raise
    except Exception as sf_exc:  # libsndfile cannot open this container: try FFmpeg
        try:
            y, native = _read_av(path, start, end)
        except DataError:
            raise
        except Exception as av_exc:
            raise DataError(path, f"cannot decode audio (soundfile: {sf_exc}; PyAV: {av_exc})") from av_exc
    if not np.all(np.isfinite(y)):
        raise DataError(path, "audio holds NaN or infinite samples")
    return resample(y, native, sr)
