"""Speech segments of a long recording: where each stretch of speech starts and ends.

One streaming object, `Segmenter`, serves a file read in blocks (`segment_file`) and live
audio alike: push 16 kHz mono float32 chunks of any size, get back each segment as soon as
it closes, `flush()` at the end. Chunk sizes never change the result: the detector scores
fixed frames, and the rules below read only those scores.

Detectors (`detector=`):

- ``silero``: the Silero VAD v6 network (Silero Team 2024), the ONNX file shipped inside the
  `silero-vad` wheel, run with onnxruntime on 32 ms frames (512 samples, with the 64
  samples before each frame as context, as the authors' own wrapper does). Nothing is
  downloaded.
- ``energy``: log energy on 10 ms frames (`align.vad`), scored against the loudest frame
  so far less `range_db` and an absolute floor, squashed to a pseudo-probability. A
  fallback for when onnxruntime cannot load the model.
- ``auto``: silero, else energy; the step taken is kept in `fallbacks`.

Rules (`SegmentSettings`): a segment opens at a frame scoring at least `threshold` and
stays open while frames score at least `threshold - hysteresis`; it closes after
`min_pause` seconds below that. Speech shorter than `min_segment` is dropped. A segment that
would grow past `max_segment` (padding included) is cut at its deepest pause: the frame with
the lowest score at least `min_segment` from both its edges; the two parts meet at the middle
of that frame, unpadded. Every other edge is padded by `pad` seconds, within the recording.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emofuse.align.vad import HOP, VAD_SETTINGS, WINDOW
from emofuse.errors import ConfigError, DataError, EmofuseError, Undecodable

SAMPLE_RATE = 16000
DETECTORS = ("auto", "silero", "energy")
# (package, resource) of the Silero VAD model inside the silero-vad wheel.
SILERO_MODEL = ("silero_vad", "data/silero_vad.onnx")
# A recording holds speech when any 32 ms frame reaches this Silero probability. Silero's own
# threshold (0.5) misses shouting: four shouted RAVDESS clips of actor 6 peak at 0.21-0.32,
# while random, u-law, white and brown noise peak at 0.01-0.04 (tests/test_whisper.py).
SILERO_FLOOR = 0.1


@dataclass(frozen=True)
class SegmentSettings:
    """How speech frames become segments (module docstring); times in seconds."""

    threshold: float = 0.5  # a frame scoring this much opens a segment (Silero's own default)
    hysteresis: float = 0.15  # an open segment continues while frames score >= threshold - this
    min_pause: float = 0.5  # a pause this long ends a segment; shorter ones (breaths, stops) do not
    min_segment: float = 0.25  # speech shorter than this is dropped (clicks, coughs)
    max_segment: float = 10.0  # longer segments are cut at their deepest pause; emotion models
    #                            are trained on utterances of a few seconds
    pad: float = 0.1  # added before and after each segment; at most min_pause / 2, so padded
    #                   neighbours never overlap

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"segment threshold must lie in (0, 1), got {self.threshold}")
        if not 0.0 <= self.hysteresis < self.threshold:
            raise ConfigError(f"segment hysteresis must lie in [0, threshold), got {self.hysteresis}")
        if self.min_pause <= 0 or self.min_segment < 0 or self.pad < 0:
            raise ConfigError("segment min_pause must be positive, min_segment and pad not negative")
        if self.pad > self.min_pause / 2:
            raise ConfigError(f"segment pad {self.pad} s exceeds min_pause / 2 = {self.min_pause / 2} s: "
                              "padded neighbours would overlap")
        if self.max_segment <= 2 * (self.min_segment + self.pad) + 0.1:
            raise ConfigError(f"max_segment {self.max_segment} s leaves no room to cut: it must exceed "
                              f"2 * (min_segment + pad) + 0.1 = {2 * (self.min_segment + self.pad) + 0.1:g} s")


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the recording
    end: float
    text: str | None = None  # the transcript of the segment when a timed transcript gave it

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Segmentation:
    """The segments of one recording and how they were found."""

    segments: list[Segment]
    detector: str  # "silero", "energy", or "transcript" when a timed transcript gave them
    duration: float  # seconds of audio read
    settings: SegmentSettings | None = None
    fallbacks: list[str] = field(default_factory=list)  # "silero->energy: why"

    def to_json(self) -> dict:
        return {
            "segments": [[s.start, s.end, s.text] for s in self.segments],
            "detector": self.detector,
            "duration": self.duration,
            "settings": None if self.settings is None else asdict(self.settings),
            "fallbacks": self.fallbacks,
        }


class SileroDetector:
    """Silero VAD speech probability per 32 ms frame, from the ONNX model in the silero-vad
    wheel; the recurrent state carries from frame to frame, so frames arrive in order."""

    name = "silero"
    frame_samples = 512
    context_samples = 64

    def __init__(self):
        import onnxruntime

        package, resource = SILERO_MODEL
        try:
            model = importlib.resources.files(package).joinpath(resource).read_bytes()
            options = onnxruntime.SessionOptions()
            # One thread: a frame is too small to share, and the service runs one detector per worker.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(model, sess_options=options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as err:  # a missing package, file or a model onnxruntime rejects
            raise EmofuseError(f"cannot load the Silero VAD model {package}/{resource}: {err}") from err
        self.sample_rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(self.context_samples, dtype=np.float32)
        self._recording: tuple | None = None  # (key of the samples, scores so far): `recording`

    def score(self, frames: np.ndarray) -> np.ndarray:
        """(N, 512) float32 frames -> (N,) speech probabilities."""
        probs = np.empty(len(frames), dtype=np.float32)
        for i, frame in enumerate(frames):
            x = np.concatenate([self.context, frame])[None, :]  # (1, 576)
            out, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": self.sample_rate})
            probs[i] = out[0, 0]
            self.context = frame[-self.context_samples:]
        return probs

    def recording(self, audio: np.ndarray, stop_at: float | None = None) -> np.ndarray:
        """(N,) speech probabilities of the whole 32 ms frames of one 16 kHz recording, scored
        from a fresh recurrent state, so they depend on that audio alone.

        stop_at: stop after the first frame scoring at least this (the scores so far are
        returned). The last recording's scores are kept and a later call for the same samples
        carries on from them: the predictor's speech check (which stops at the first speech
        frame) and the Whisper recogniser's speech span (which needs every frame) score a clip
        once between them. A detector that scores recordings must not also `score` a stream.
        """
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        key = (len(audio), hashlib.blake2b(audio.tobytes(), digest_size=16).digest())
        if self._recording is None or self._recording[0] != key:
            self.state[:] = 0.0
            self.context[:] = 0.0
            self._recording = (key, [])
        done = self._recording[1]
        n = len(audio) // self.frame_samples
        frames = audio[: n * self.frame_samples].reshape(n, self.frame_samples)  # (N, 512)
        while len(done) < n and not (stop_at is not None and done and done[-1] >= stop_at):
            done.append(float(self.score(frames[len(done)][None])[0]))
        return np.array(done, dtype=np.float32)


class EnergyDetector:
    """Pseudo-probability of speech per 10 ms frame from log energy (`align.vad`'s window,
    range and floor), causal: the reference is the loudest frame heard so far, so a stream
    and a whole file score alike. 0.5 sits at the energy threshold, 4 dB per e-fold."""

    name = "energy"
    frame_samples = int(round(HOP * SAMPLE_RATE))  # 160

    def __init__(self):
        self.window = int(round(WINDOW * SAMPLE_RATE))  # 400: each frame looks back over 25 ms
        self.history = np.zeros(self.window - self.frame_samples, dtype=np.float32)
        self.peak_db = -np.inf

    def score(self, frames: np.ndarray) -> np.ndarray:
        """(N, 160) float32 frames -> (N,) scores in (0, 1)."""
        n = len(frames)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        y = np.concatenate([self.history, frames.reshape(-1)])
        self.history = y[len(y) - len(self.history):]
        windows = np.lib.stride_tricks.sliding_window_view(y, self.window)[:: self.frame_samples][:n]  # (N, 400)
        energy_db = 10.0 * np.log10(np.mean(np.square(windows, dtype=np.float64), axis=1) + 1e-10)  # (N,)
        peak_db = np.maximum.accumulate(np.maximum(energy_db, self.peak_db))
        self.peak_db = float(peak_db[-1])
        threshold_db = np.maximum(peak_db - VAD_SETTINGS["range_db"], VAD_SETTINGS["floor_db"])
        return (1.0 / (1.0 + np.exp(-(energy_db - threshold_db) / 4.0))).astype(np.float32)


def make_detector(detector: str = "auto") -> tuple[SileroDetector | EnergyDetector, list[str]]:
    """The detector asked for, and the fallback taken ("silero->energy: why") under ``auto``.
    Raises ConfigError for an unknown name, EmofuseError when ``silero`` cannot load."""
    if detector not in DETECTORS:
        raise ConfigError(f"unknown speech detector {detector!r}; known: {', '.join(DETECTORS)}")
    if detector == "energy":
        return EnergyDetector(), []
    try:
        return SileroDetector(), []
    except EmofuseError as err:
        if detector == "silero":
            raise
        return EnergyDetector(), [f"silero->energy: {err}"]


class Segmenter:
    """Streaming segmentation (module docstring): `push` 16 kHz mono float32 chunks, receive
    the segments that closed; `flush` closes the last one. One object per recording."""

    def __init__(self, settings: SegmentSettings | None = None, detector: str = "auto"):
        self.settings = settings or SegmentSettings()
        self.detector, self.fallbacks = make_detector(detector)
        self.hop = self.detector.frame_samples / SAMPLE_RATE  # seconds per frame
        s = self.settings
        self._exit = s.threshold - s.hysteresis
        self._pause_frames = max(1, math.ceil(s.min_pause / self.hop - 1e-9))
        self._edge_frames = max(1, math.ceil(s.min_segment / self.hop - 1e-9))
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._frames = 0  # frames scored so far
        self._samples = 0  # samples pushed so far
        self._last_end = 0.0  # end of the last segment given out
        # The open segment: its first frame, its (padded) start in seconds, the scores since
        # its first frame, and one past its last frame at or above the exit threshold.
        self._open: int | None = None
        self._start = 0.0
        self._scores: list[float] = []
        self._speech_end = 0

    @property
    def detector_name(self) -> str:
        return self.detector.name

    @property
    def duration(self) -> float:
        return self._samples / SAMPLE_RATE

    def push(self, chunk: np.ndarray) -> list[Segment]:
        """Feed the next samples (1-D, 16 kHz, float in [-1, 1]); returns the segments that closed."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._samples += len(chunk)
        y = np.concatenate([self._pending, chunk]) if len(self._pending) else chunk
        whole = len(y) // self.detector.frame_samples * self.detector.frame_samples
        self._pending = y[whole:].copy()
        frames = y[:whole].reshape(-1, self.detector.frame_samples)  # (N, frame_samples)
        return self._step(self.detector.score(frames)) if len(frames) else []

    def flush(self) -> list[Segment]:
        """End of the recording: score the last partial frame (zero-padded) and close the open segment."""
        closed: list[Segment] = []
        if len(self._pending):
            frame = np.zeros((1, self.detector.frame_samples), dtype=np.float32)
            frame[0, : len(self._pending)] = self._pending
            self._pending = np.zeros(0, dtype=np.float32)
            closed += self._step(self.detector.score(frame))
        if self._open is not None:
            closed += self._close(self._speech_end)
        return closed

    def _step(self, scores: np.ndarray) -> list[Segment]:
        closed: list[Segment] = []
        s = self.settings
        for score in scores.tolist():
            t = self._frames
            self._frames += 1
            if self._open is None:
                if score >= s.threshold:
                    self._open, self._scores, self._speech_end = t, [score], t + 1
                    self._start = max(t * self.hop - s.pad, self._last_end, 0.0)
                continue
            self._scores.append(score)
            if score < self._exit:
                if t + 1 - self._speech_end >= self._pause_frames:
                    closed += self._close(self._speech_end)
                continue
            self._speech_end = t + 1
            if self._speech_end * self.hop + s.pad - self._start > s.max_segment:  # the end it would get now
                closed += self._cut()
        return closed

    def _close(self, end_frame: int) -> list[Segment]:
        """Give out the open segment as speech up to `end_frame`, padded; drop it when too short."""
        start_frame, self._open, self._scores = self._open, None, []
        if (end_frame - start_frame) * self.hop < self.settings.min_segment:
            return []
        end = min(end_frame * self.hop + self.settings.pad, self.duration)
        self._last_end = end
        return [Segment(float(self._start), float(end))]

    def _cut(self) -> list[Segment]:
        """Cut the open segment at its deepest pause: the part before closes, the rest stays open."""
        scores = np.asarray(self._scores)  # (frames since self._open,)
        k = self._edge_frames + int(np.argmin(scores[self._edge_frames: len(scores) - self._edge_frames]))
        cut = (self._open + k + 0.5) * self.hop  # the middle of the deepest frame
        first = Segment(float(self._start), float(cut))
        self._last_end = self._start = cut
        self._open += k + 1
        self._scores = self._scores[k + 1:]
        self._speech_end = max(self._speech_end, self._open)
        return [first]


def read_blocks(path: str | Path, block_seconds: float = 4.0):
    """Yield the audio of a file as 16 kHz mono float32 blocks of about `block_seconds`,
    reading one block at a time (channels averaged, resampled with soxr's streaming
    resampler), so memory stays flat whatever the length. DataError for unreadable audio."""
    import soundfile as sf
    import soxr

    try:
        audio = sf.SoundFile(str(path))
    except Exception as err:  # libsndfile's errors say what is wrong with the file
        raise DataError(path, f"cannot read audio: {err}") from err
    with audio:
        resampler = None if audio.samplerate == SAMPLE_RATE else soxr.ResampleStream(
            audio.samplerate, SAMPLE_RATE, 1, dtype="float32")
        block = max(1, int(block_seconds * audio.samplerate))
        while True:
            try:
                y = audio.read(block, dtype="float32", always_2d=True)  # (n, channels)
            except Exception as err:  # damaged audio once some decoded (422), not audio at all before (415)
                kind = DataError if audio.tell() > 0 else Undecodable
                raise kind(path, f"cannot decode audio at {audio.tell() / audio.samplerate:.2f} s: {err}") from err
            last = len(y) < block
            y = y.mean(axis=1) if y.shape[1] > 1 else y[:, 0]  # (n,)
            if resampler is not None:
                y = resampler.resample_chunk(y, last=last)
            if len(y):
                yield y
            if last:
                return


def segment_file(path: str | Path, settings: SegmentSettings | None = None, detector: str = "auto") -> Segmentation:
    """Speech segments of an audio file, read in blocks (`read_blocks`) through a `Segmenter`."""
    segmenter = Segmenter(settings, detector)
    segments: list[Segment] = []
    for block in read_blocks(path):
        segments += segmenter.push(block)
    segments += segmenter.flush()
    return Segmentation(segments, segmenter.detector_name, segmenter.duration, segmenter.settings,
                        list(segmenter.fallbacks))
