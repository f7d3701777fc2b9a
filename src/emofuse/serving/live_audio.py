"""One live stream's audio path, off the event loop: bytes in (PCM or WebM/Opus), decoded and
resampled in the connection's own thread, cut into speech segments, each closed segment out
with its samples (`LiveSegments`). `serving.stream` runs the WebSocket around it."""

from __future__ import annotations

import io
import logging
import queue
import threading

import numpy as np

from emofuse.align.segments import SAMPLE_RATE, Segment, SegmentSettings, Segmenter

log = logging.getLogger(__name__)
MAX_FLOAT = 8.0  # float32 PCM beyond this is not audio in [-1, 1] (a little clipping overshoot is)


class StreamClosed(Exception):
    """Close the connection with this WebSocket code and reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason



class _ByteFeed(io.RawIOBase):
    """A blocking, unseekable file over the bytes of a connection, for PyAV's demuxer."""

    def __init__(self, chunks: queue.Queue):
        self._chunks = chunks
        self._buffer = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and not self._eof:
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
            else:
                self._buffer = chunk
        size = len(self._buffer) if size is None or size < 0 else size
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class LiveSegments:
    """One connection's audio path, run in its own thread: bytes in (`feed`, `end`), each
    closed segment with its audio out through `emit(segment, audio)`; `emit(None, StreamClosed)`
    for audio that cannot be read or is too long; `emit(None, None)` at the end."""

    def __init__(self, fmt: str, rate: int, max_seconds: float, emit, settings: SegmentSettings | None = None,
                 detector: str = "auto"):
        from emofuse.inference.long import AudioRing

        self.format, self.rate, self.max_seconds, self.emit = fmt, rate, max_seconds, emit
        self.segmenter = Segmenter(settings, detector)
        self.ring = AudioRing()
        s = self.segmenter.settings
        # An open segment starts at most max_segment + min_pause + pad (+ a second) before the newest sample.
        self.keep = int((s.max_segment + s.min_pause + s.pad + 1.0) * SAMPLE_RATE)
        self.resampler = None
        if fmt != "webm" and rate != SAMPLE_RATE:
            import soxr

            self.resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        self.chunks: queue.Queue = queue.Queue()
        self.received_bytes = 0
        self.segments = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="emofuse-stream", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def feed(self, data: bytes) -> None:
        self.received_bytes += len(data)
        self.chunks.put(data)

    @property
    def received_seconds(self) -> float:
        """Seconds of audio received so far: counted from the bytes for PCM, whether decoded yet
        or not; for WebM (compressed) what has been decoded."""
        if self.format == "webm":
            return self.segmenter.duration
        return self.received_bytes / ((2 if self.format == "s16le" else 4) * self.rate)

    def end(self) -> None:
        self.chunks.put(None)

    def stop(self) -> None:
        """The connection is gone: finish without flushing or emitting anything more."""
        self._stop.set()
        self.chunks.put(None)

    def _pcm(self):
        width = 2 if self.format == "s16le" else 4
        while (data := self.chunks.get()) is not None:
            if len(data) % width:
                raise StreamClosed(1007, f"a {self.format} message of {len(data)} bytes is not whole "
                                         f"{width}-byte samples")
            if self.format == "s16le":
                y = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
            else:
                y = np.frombuffer(data, dtype="<f4").astype(np.float32)
                if len(y) and not (np.all(np.isfinite(y)) and np.abs(y).max() <= MAX_FLOAT):
                    raise StreamClosed(1007, "f32le samples are not audio: non-finite or far outside [-1, 1]")
            if self.resampler is not None:
                y = self.resampler.resample_chunk(y)
            yield y
        if self.resampler is not None:
            yield self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    def _webm(self):
        import av

        from emofuse.features.audio import Refused, open_untrusted

        try:  # decoded frames bounded as an upload's are (features.audio.guard_decoder)
            container = open_untrusted(_ByteFeed(self.chunks), format="matroska",
                                       options={"probesize": "4096", "analyzeduration": "0"})
        except Refused as err:
            raise StreamClosed(1007, err.problem) from None
        except Exception as err:  # PyAV's errors say what the demuxer found
            raise StreamClosed(1007, f"not WebM/Opus audio: {err}") from None
        with container:
            if not container.streams.audio:
                raise StreamClosed(1007, "the WebM stream holds no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            try:
                for frame in container.decode(container.streams.audio[0]):
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(-1)  # (n,) float32 at 16 kHz
                for out in resampler.resample(None):
                    yield out.to_ndarray().reshape(-1)
            except av.error.FFmpegError as err:
                raise StreamClosed(1007, f"cannot decode the WebM/Opus stream: {err}") from None

    def _closed(self, segments: list[Segment]) -> None:
        for segment in segments:
            self.segments += 1
            self.emit(segment, self.ring.cut(segment.start, segment.end))

    def _run(self) -> None:
        error = None
        try:
            for block in self._webm() if self.format == "webm" else self._pcm():
                if self._stop.is_set():
                    return
                if self.ring.end + len(block) > self.max_seconds * SAMPLE_RATE:  # keep what fits, then stop
                    block = block[: max(0, int(self.max_seconds * SAMPLE_RATE) - self.ring.end)]
                    error = StreamClosed(1008, f"the stream passed {self.max_seconds:g} s of audio "
                                               "(server option --max-seconds)")
                self.ring.push(block)
                self._closed(self.segmenter.push(block))
                self.ring.forget_before(self.ring.end - self.keep)
                if error is not None:
                    break
        except StreamClosed as exc:
            self.emit(None, exc)
            return
        except Exception as exc:  # noqa: BLE001 - any failure ends this connection, not the server
            # The message may name server files (a library's paths): the log has it, the client the kind.
            log.exception("live audio failed")
            self.emit(None, StreamClosed(1011, f"live audio failed ({type(exc).__name__}); the server log has "
                                               "the details"))
            return
        if self._stop.is_set():
            return
        self._closed(self.segmenter.flush())
        self.emit(None, error)
