"""Live audio over a WebSocket: `WS /stream` segments audio as it arrives and answers one JSON
message per closed speech segment, so a live client sees each answer as soon as it exists.

    client ──bytes──► decode (PCM or WebM/Opus) ──► Segmenter ──► closed segment ──► engine ──► JSON
                      └──────── one thread per connection ────────┘   (the service's workers, queue)

Audio: 16 kHz mono PCM, little-endian `s16le` (int16) or `f32le` (float32 in [-1, 1]), each
binary message holding whole samples; or `webm`, the WebM/Opus a browser's MediaRecorder
sends, decoded incrementally with PyAV. The format (and, for PCM, `rate` if not 16000, then
resampled with soxr's streaming resampler) is given as query parameters
(`/stream?format=s16le`) or in a first text message `{"format": "f32le", "rate": 48000}`; a
stream whose first bytes are WebM needs neither.

Each closed segment (`align.segments.Segmenter`, Silero VAD or the energy fallback: the
segment closes `min_pause` after speech stops) is predicted as a recording of its own through
the same engine and bounded queue as `POST /predict` (`serving.workers`), and sent with the
keys of a segment of long-recording prediction (`inference.long.SegmentPrediction`): start,
end, label, probabilities, words with their gates and attention (on the stream's clock) and
warnings. The client ends the stream with a text message `end` (or `{"end": true}`); the
server then flushes the last segment, sends `{"done": true, "duration", "segments",
"detector", "fallbacks"}` and closes with 1000.

Limits, each closing the connection with a code and a one-line reason:

    1001  no message for `idle_seconds`
    1003  an unknown format or rate, or a text message that is neither a format nor `end`
    1007  bytes that are not audio of the format said (odd PCM, non-finite floats, bad WebM)
    1008  more than `max_seconds` of audio (the server's --max-seconds): the segments so far
          are flushed and sent first
    1009  a message over `max_chunk_bytes`
    1011  the prediction worker stopped, or the server failed (its log has why)
    1013  more than `MAX_BACKLOG_CHUNKS` messages wait to be decoded: the server cannot decode
          this stream as fast as it arrives (memory stays bounded at that many x max_chunk_bytes)

Falling behind. A live client (one that has sent no more audio than time has passed since its
first message, give or take `LIVE_SLACK_SECONDS`) is read without pause whatever the load:
uvicorn answers a connection's pings only while its handler reads it, so holding a live client
while its segments waited let its keepalive (the `websockets` client pings every 20 s and gives
up 20 s later) close it 1011 "keepalive ping timeout". When the predictions fall
`MAX_WAITING_SEGMENTS` (8) segments behind a live stream, its oldest waiting segments are answered
at once, unpredicted ("the server is behind this live stream"), so its answers stay near the
live edge. A client ahead of real time (a file sent fast) is held back instead, so its audio
waits in TCP's buffers and its pings behind it: it should send in real time, or keep alive with
a ping timeout longer than the server takes to catch up (websockets: `ping_timeout=None`).

How many live streams a server handles: each closed segment takes a place in the bounded queue
(`--workers` running + `--max-queue` waiting, 1 + 4 by default), one per stream at a time, so up
to that many streams of live speech (5) have every segment predicted; beyond, a segment that
finds the queue full is answered "the server is busy" (label null), and the stream goes on.
Measured (`benchmarks.stream_latency`, 60 s of RAVDESS speech per stream in real time, random
weights, this project's loaded 2-core machine, the model in the server process): 5 streams had
every segment predicted, p95 0.71 s (B-ACO-1) and 1.92 s (H-MM-4 with pocketsphinx words); 8 had
26 % and 38 % of their segments answered busy; none was closed. With `--workers 0`, H-MM-4's
prediction (pocketsphinx words, MiniLM vectors) keeps Python's GIL for most of each segment,
and so the event loop (late by up to 1.3 s with 8 streams, against 0.03 s for B-ACO-1);
`--workers 1` (the default) runs it in a process of its own (at most 0.015 s late with 5).

A segment goes to the worker as its samples (`serving.jobs.Job.samples`), never through a
file. It holds its place in the bounded queue until its worker job has ended, even when the
client has left (the answer is then discarded); nothing the client reads names a file of the
server: a segment is named by its time span (`segment 3.20-5.10 s`), other paths by their
file name alone (`inference.long.without_paths`, applied to every line a segment carries).
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from emofuse.align.segments import SAMPLE_RATE, Segment
from emofuse.errors import ConfigError, EmofuseError, JobFailed, WorkersStopped
from emofuse.serving.live_audio import LiveSegments, StreamClosed  # noqa: F401 -- tests reach them here

router = APIRouter()
log = logging.getLogger(__name__)

FORMATS = ("s16le", "f32le", "webm")
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"  # the EBML header every WebM/Matroska stream starts with
MAX_QUEUED_CHUNKS = 32  # messages waiting for the decoding thread before a client ahead of real time is held
# Messages waiting for the decoding thread before any stream is closed 1013: a live client is
# never held (module docstring), so without this a stream whose decoding lags (a loaded machine,
# 192 kHz or WebM input) would queue without bound: 128 x 256 KB = 32 MB at most per stream.
MAX_BACKLOG_CHUNKS = 128
MAX_WAITING_SEGMENTS = 8  # closed segments waiting for prediction (module docstring, "Falling behind")
LIVE_SLACK_SECONDS = 2.0  # audio a live client may send ahead of the clock (a recorder's first buffer)


@dataclass(frozen=True)
class StreamLimits:
    """What one connection may send; `max_seconds` defaults to the server's --max-seconds."""

    max_seconds: float = 3600.0  # audio per connection
    max_chunk_bytes: int = 256 * 1024  # one message: 8 s of int16, 4 s of float32
    idle_seconds: float = 10.0  # the longest wait for the next message
    max_connections: int = 16  # open streams at once: each holds a thread and a VAD session


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455, 5.5)."""
    data = text.encode("utf-8")
    return text if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "..."


def segment_name(segment: Segment) -> str:
    """How a segment of the stream is named to its client: by its time span on the stream's clock."""
    return f"segment {segment.start:.2f}-{segment.end:.2f} s"


def segment_message(segment: Segment, outcome: dict, path: str | None = None) -> dict:
    """An engine's outcome for one segment (`serving.jobs.Outcome`) as a segment of
    long-recording prediction (its keys). Its error line reaches the client with no server
    path: `path` (a server file the line may repeat) written as the segment's name, any other
    path cut to its file name."""
    from emofuse.inference.long import segment_result, without_paths

    if "error" not in outcome:
        return segment_result(segment, outcome["body"]).to_json()
    return segment_result(segment, without_paths(outcome["detail"], path, segment_name(segment))).to_json()


def _submit_segment(engine, admission, segment: Segment, audio: np.ndarray) -> Future | None:
    """Run in a thread: take a place in the bounded queue and hand the segment's samples to the
    engine; None when the queue is full. The place is given back when the worker job has ended
    (or was cancelled before it ran), never earlier: a client that disconnects mid-prediction
    leaves its job's answer to be discarded, not a free place beside a job still on the workers.
    Everything is settled here, in one thread, so a cancellation of the connection's task at any
    await cannot lose the place."""
    from emofuse.serving.jobs import Job

    if not admission.admit():
        return None
    try:
        duration = len(audio) / SAMPLE_RATE
        job = Job(path="", name=segment_name(segment), transcript=None, html=False, reader="samples",
                  sample_rate=SAMPLE_RATE, channels=1, duration=duration, max_seconds=duration + 1.0,
                  segment_over=None, samples=np.ascontiguousarray(audio, dtype=np.float32))
        future = engine.submit(job)
    except BaseException:
        admission.release()
        raise
    future.add_done_callback(lambda _: admission.release())  # at once if it has already ended
    return future


async def predict_segment(app, segment: Segment, audio: np.ndarray) -> dict:
    """One segment through the service's engine and bounded queue, as `POST /predict` runs a file.

    Cancelled (the client left), the job is cancelled if it has not started; one already on
    a worker runs to its end and holds its queue place until then (`_submit_segment`)."""
    from emofuse.inference.long import segment_result
    from emofuse.serving.jobs import failed

    engine, admission = app.state.engine, app.state.admission
    try:
        future = await run_in_threadpool(_submit_segment, engine, admission, segment, audio)
        if future is None:
            return segment_result(segment, f"the server is busy ({admission.workers} running, {admission.max_queue} "
                                           "waiting): this segment was not predicted").to_json()
        outcome = await asyncio.wrap_future(future)  # cancelling this cancels a job that has not started
    except (WorkersStopped, RuntimeError) as exc:  # RuntimeError: the in-process engine, shut down
        raise StreamClosed(1011, f"the prediction worker stopped ({type(exc).__name__}); "
                                 "the server needs a restart") from None
    except JobFailed as exc:  # its worker died or fell silent on this segment: the segment says so
        outcome = failed(type(exc), exc.label, exc.problem)  # its label is the segment's name
    return segment_message(segment, outcome)


def _stream_format(fmt: str | None, rate: int | None) -> tuple[str, int]:
    if fmt not in FORMATS:
        raise StreamClosed(1003, f"unknown audio format {fmt!r}; send s16le, f32le or webm")
    rate = SAMPLE_RATE if rate is None else rate
    if not isinstance(rate, int) or not 8000 <= rate <= 192000:
        raise StreamClosed(1003, f"PCM rate must be a whole number of Hz in 8000-192000, not {rate!r}")
    return fmt, rate


def _text_message(text: str) -> dict:
    """A text message: `end`, or a JSON object with format/rate or end."""
    if text.strip() == "end":
        return {"end": True}
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict) or not ({"format", "rate", "end"} & set(message)):
        raise StreamClosed(1003, 'a text message must be "end" or {"format": "s16le|f32le|webm", "rate": HZ}')
    return message


@router.websocket("/stream")
async def stream(websocket: WebSocket, format: str | None = None, rate: int | None = None,
                 vad: str = "auto") -> None:
    """Live audio in, one JSON message per closed speech segment out (module docstring)."""
    app = websocket.app
    limits = getattr(app.state, "stream_limits", None) or StreamLimits(
        max_seconds=float(app.state.limits.get("max_seconds", StreamLimits.max_seconds)))
    await websocket.accept()
    open_streams = getattr(app.state, "open_streams", 0)
    if open_streams >= limits.max_connections:  # each stream holds a thread and a VAD session
        await websocket.close(1013, _reason(f"{open_streams} live streams are open, the limit; try again later"))
        return
    app.state.open_streams = open_streams + 1
    try:
        await _serve_stream(websocket, app, limits, format, rate, vad)
    finally:
        app.state.open_streams -= 1


async def _serve_stream(websocket: WebSocket, app, limits: StreamLimits, format: str | None, rate: int | None,
                        vad: str) -> None:
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()
    session: LiveSegments | None = None
    first_audio: float | None = None  # the loop's time when the first audio arrived

    def emit(segment, audio_or_error) -> None:  # from the session's thread
        loop.call_soon_threadsafe(out.put_nowait, (segment, audio_or_error))

    async def open_session(fmt, rate_hz) -> LiveSegments:
        fmt, rate_hz = _stream_format(fmt, rate_hz)
        try:
            live = await run_in_threadpool(LiveSegments, fmt, rate_hz, limits.max_seconds, emit, None, vad)
        except ConfigError as exc:  # the client's choice (`vad`): its line names no server file
            raise StreamClosed(1003, str(exc)) from None
        except EmofuseError:  # the server's own (the detector's model would not load): its line names files
            log.exception("the speech detector did not start")
            raise StreamClosed(1011, f"the speech detector {vad!r} did not start; the server log has the "
                                     "details") from None
        live.start()
        return live

    def ahead_of_real_time() -> bool:
        """The client has sent more audio than time has passed since its first (a file sent
        fast, not a microphone): holding it back costs it nothing but time."""
        return session.received_seconds > loop.time() - first_audio + LIVE_SLACK_SECONDS

    async def receive() -> None:
        nonlocal session, first_audio
        if format is not None:
            session = await open_session(format, rate)
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), limits.idle_seconds)
            except asyncio.TimeoutError:
                raise StreamClosed(1001, f"idle for {limits.idle_seconds:g} s: no audio") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > limits.max_chunk_bytes:
                    raise StreamClosed(1009, f"a message of {len(data)} bytes; the limit is "
                                             f"{limits.max_chunk_bytes} bytes per message")
                if session is None:
                    if not data.startswith(WEBM_MAGIC):
                        raise StreamClosed(1003, "say the audio format first: ?format=s16le|f32le|webm "
                                                 'or a text message {"format": ...}')
                    session = await open_session("webm", None)
                if data:
                    if first_audio is None:
                        first_audio = loop.time()
                    # Only a client ahead of real time is held back while decoding or prediction
                    # lags. A live client never is: uvicorn reads nothing more of a connection, its
                    # pings included, until this loop asks for the next message, so its keepalive
                    # closes it 1011 once a hold passes its ping timeout; holding it would not
                    # slow its audio either, only move the queue into TCP's buffers.
                    while ahead_of_real_time() and (session.chunks.qsize() > MAX_QUEUED_CHUNKS
                                                    or out.qsize() > MAX_WAITING_SEGMENTS):
                        await asyncio.sleep(0.01)
                    if session.chunks.qsize() >= MAX_BACKLOG_CHUNKS:  # decoding cannot keep up: bounded memory
                        raise StreamClosed(1013, f"{session.chunks.qsize()} messages wait to be decoded: the "
                                                 "server cannot decode this stream as fast as it arrives; "
                                                 "try again later, or send 16 kHz s16le")
                    session.feed(data)
            elif text is not None:
                request = _text_message(text)
                if request.get("end"):
                    if session is None:
                        session = await open_session("s16le", None)
                    session.end()
                    return
                if session is not None:
                    raise StreamClosed(1003, "the format is given once, before any audio")
                session = await open_session(request.get("format"), request.get("rate"))

    async def send() -> None:
        # without_paths: a fallback's reason may name the detector's file
        from emofuse.inference.long import segment_result, without_paths

        sent = 0
        while True:
            segment, item = await out.get()
            if segment is None:
                if item is not None:
                    raise item
                await websocket.send_json({"done": True, "duration": round(session.segmenter.duration, 3),
                                           "segments": sent, "detector": session.segmenter.detector_name,
                                           "fallbacks": [without_paths(f) for f in session.segmenter.fallbacks]})
                await websocket.close(1000)
                return
            waiting = out.qsize()
            if waiting >= MAX_WAITING_SEGMENTS and not ahead_of_real_time():
                # A live stream the predictions fell behind: answer its oldest segments at once,
                # unpredicted, so that the answers stay near the live edge instead of ever later.
                message = segment_result(segment, f"the server is behind this live stream ({waiting} "
                                                  "segments waiting): this segment was not predicted").to_json()
            else:
                message = await predict_segment(app, segment, item)
            await websocket.send_json(message)
            sent += 1

    receiver = asyncio.create_task(receive())
    sender = asyncio.create_task(send())
    try:
        pending = {receiver, sender}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            if sender in done:
                break
    except StreamClosed as exc:
        try:
            await websocket.close(exc.code, _reason(exc.reason))
        except RuntimeError:  # already closed by the client
            pass
    except WebSocketDisconnect:
        pass
    finally:
        for task in (receiver, sender):
            task.cancel()
        if session is not None:  # before any await: a cancelled handler must not leave the thread
            session.stop()       # waiting on its queue of audio for ever
        # Let both unwind, so none is left pending; a job already on a worker keeps its queue
        # place until it ends (`_submit_segment`), not until this connection does. asyncio.wait,
        # not gather: when this handler is itself cancelled (the client or the server left), the
        # caller gets its own plain cancellation (gather hands back a CancelledError of its own,
        # which anyio's cancel scopes -- the test client's too -- do not recognise as theirs).
        await asyncio.wait({receiver, sender})
        for task in (receiver, sender):  # read, so that no "exception never retrieved" is logged
            if not task.cancelled():
                task.exception()
