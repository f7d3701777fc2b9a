"""The HTTP service: one model directory, loaded once, behind a small JSON API and a web page.

    POST /predict   multipart: `file` (audio in any format soundfile or FFmpeg reads) and an
                    optional `transcript`; `?html=true` adds the explanation as an HTML block.
                    A text-only model (B-LEX) also answers a `transcript` without a `file`.
                    JSON out, the keys of `emofuse predict --json` (label, probabilities, words, ...).
    GET  /health    the model, its classes, what it needs, the limits, the workers and the queue;
                    answered on the event loop, so a busy server still answers at once.
    GET  /          a web page to upload or record audio and see the explanation.
    GET  /docs      OpenAPI documentation (FastAPI).

Settings (`serving.settings.ServeSettings`, the same for `emofuse serve` and `create_app`):
a request body over `max_upload_mb` is refused with 413 before it is parsed (the
body is counted as it arrives, so a missing or false Content-Length does not get past).
An upload is never decoded blind (a header can promise hours of audio): its header is read first, and a
declared duration over `max_seconds` is 413, a sample rate outside 4-192 kHz, more than 8
channels or a file that neither soundfile nor PyAV can read is 415; decoding then goes block
by block and stops (413) as soon as it passes the limit, whatever the header said. Audio that
decodes but cannot be used (empty, NaN, no words for a model that needs them) is 422, a
missing field too. Every error body is {"detail": "<one clear line>"}: a job's outcome names
an `emofuse.errors` type (`serving.jobs`), and HTTP_STATUS below is the one table from types
to statuses.

Recordings longer than `segment_over` seconds (WAV/FLAC/OGG, read in blocks) are predicted
per speech segment (`inference.long`) and answer with `segments` and a `summary`.

Concurrency (`serving.workers`): predictions run in `workers` processes, each with the model
loaded once (0: in this process, one at a time); decoding runs there too, so at most that many
decodes run at once. At most `max_queue` more requests wait; beyond that the answer is 503
with Retry-After. A request takes its place only once its body has arrived whole (UploadLimit):
bodies are read first, at most `max_readers` at once, at `body_rate_kb` on average once
`body_grace` has passed and within `body_seconds` (408 otherwise), so clients trickling bytes
(slowloris) hold connections, never queue places; request heads must arrive within
`header_seconds` and idle keep-alive connections close after `keep_alive_seconds`
(`serving.connections`, the protocol `emofuse serve` runs). Each request has its own temporary file and job, so answers never mix. A
worker that dies is restarted (its request answered 500); repeated crashes make the service 503.
A worker that goes `job_timeout` seconds without answering (or, per segment, without progress)
is killed and restarted, its request answered 504 (worker processes only: a thread cannot be
stopped). Workers build their Predictor with `predictor_options` (`verify=False`: --no-verify).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from emofuse.errors import (ConfigError, DataError, JobFailed, JobTimedOut, Refused, TooLong,
                            UnusableInput, Unsupported, WorkerCrashed, WorkersStopped)
from emofuse.serving.jobs import Job, Outcome, error_type, refusal_line, too_long_note
from emofuse.serving.settings import ServeSettings
from emofuse.serving.workers import Admission, InProcessEngine, ProcessEngine, Readers

STATIC = Path(__file__).parent / "static"
# Room for the multipart framing and the transcript field next to the file itself.
FORM_OVERHEAD = 64 * 1024
DEFAULT_QUEUE_PER_WORKER = 4  # --max-queue default: requests waiting per worker before 503
# The one place an outcome becomes an HTTP status; the most specific type listed wins.
HTTP_STATUS = {
    TooLong: 413,  # Payload Too Large
    Unsupported: 415,  # Unsupported Media Type
    UnusableInput: 422,  # Unprocessable Content
    Refused: 422,
    DataError: 422,
    JobFailed: 500,  # the prediction itself failed (a bug, not the input): the job's line says how
    WorkerCrashed: 500,
    WorkersStopped: 503,
    JobTimedOut: 504,
}


def http_status(exc: BaseException | type[BaseException]) -> int:
    """The status a client reads for `exc` (an error or its type): its nearest type in
    HTTP_STATUS, else 500."""
    for kind in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500


class UploadLimit:
    """ASGI middleware in front of POST `path`: the body is read whole, under its own limits, before
    the request takes a place in the bounded queue (`admission`), so that a client trickling
    its body holds a reader's place for a few seconds, never a worker's.

    - over `max_bytes` (declared, or counted as it arrives): 413 at once;
    - `max_readers` bodies are read at once (memory held by bodies being read is at most
      max_readers x max_bytes); one more is answered 503 at once;
    - after `body_grace` seconds a body must have arrived at `body_rate` bytes per second on
      average since its request began, and whole within `body_seconds`: else 408;
    - a complete body takes a queue place (503 with Retry-After when the queue is full; a
      request is also refused before its body is read while the queue is full).
    Answers sent before the body was read whole close the connection (`Connection: close`):
    the rest of a refused body is never read."""

    def __init__(self, app, max_bytes: int, limit_mb: float, path: str = "/predict",
                 admission: Admission | None = None, body_seconds: float = 60.0, body_grace: float = 5.0,
                 body_rate: float = 0.0, readers: Readers | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.limit_mb = limit_mb
        self.path = path
        self.admission = admission
        self.body_seconds = body_seconds
        self.body_grace = body_grace
        self.body_rate = body_rate
        self.readers = readers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if self.admission is not None and self.admission.refuse_if_full():  # no body read for what cannot wait
            await self._busy(send)
            return
        if self.readers is not None and not self.readers.start():
            await _closing(send, 503, f"the server is busy: {self.readers.reading} uploads are arriving (server "
                                      f"option --max-readers); retry in 1 s", {"Retry-After": "1"})
            return
        try:
            body = await self._read(scope, receive, send)
        finally:
            if self.readers is not None:
                self.readers.done()
        if body is None:  # answered (408, 413) or the client went away
            return
        if self.admission is not None and not self.admission.admit():
            await self._busy(send)
            return
        payload = bytes(body)
        del body  # one copy of an upload while it waits and is answered, not two
        try:
            await self.app(scope, _replay(payload, receive), send)
        finally:
            if self.admission is not None:
                self.admission.release()

    async def _read(self, scope, receive, send) -> bytearray | None:
        """The whole body, or None once it has been answered (413, 408) or the client left."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.body_seconds
        body = bytearray()
        more = True
        while more:
            # The rate is an average since the request began: it falls behind at `started + len(body) / rate`.
            behind = started + max(self.body_grace, len(body) / self.body_rate) if self.body_rate else deadline
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(deadline, behind) - loop.time()))
            except asyncio.TimeoutError:
                if behind < deadline:
                    detail = (f"the upload arrived too slowly: {len(body)} bytes in {loop.time() - started:.1f} s; "
                              f"at least {self.body_rate / 1000:g} kB/s is needed after {self.body_grace:g} s "
                              f"(server option --body-rate-kb)")
                else:
                    detail = f"the upload did not arrive within {self.body_seconds:g} s (server option --body-seconds)"
                await _closing(send, 408, detail)
                return None
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(send, None)
                return None
        return body

    async def _busy(self, send) -> None:
        a = self.admission
        retry = max(1, round(a.waiting / max(1, a.workers)))
        await _closing(send, 503, f"the server is busy ({a.workers} running, {a.max_queue} waiting; server options "
                                  f"--workers, --max-queue); retry in {retry} s", {"Retry-After": str(retry)})

    async def _reject(self, send, size: int | None) -> None:
        what = f"{size / 1e6:.1f} MB" if size is not None else f"more than {self.limit_mb:g} MB"
        await _closing(send, 413, f"upload too large: {what}; the limit is {self.limit_mb:g} MB "
                                  f"(server option --max-upload-mb)")


async def _closing(send, status: int, detail: str, headers: dict | None = None) -> None:
    """An error answered before the body was read whole: the connection closes after it."""
    response = JSONResponse(status_code=status, content={"detail": detail},
                            headers={**(headers or {}), "Connection": "close"})
    await response(scope={"type": "http"}, receive=None, send=send)


def _replay(body: bytes, receive):
    """An ASGI receive that gives the app the body already read, then the connection's own events."""
    delivered = False

    async def replay():
        nonlocal delivered, body
        if not delivered:
            delivered = True
            chunk, body = body, b""  # the app holds it now (the caller still does, until answered)
            return {"type": "http.request", "body": chunk, "more_body": False}
        return await receive()

    return replay


def probe_upload(path: str, name: str, max_seconds: float, whole_seconds: float | None):
    """The header of an uploaded file, checked before anything is decoded (a bomb is refused unread):
    HTTPException 415 for a rate, channel count or container that is not decoded, 413 for a
    declared duration over the limit. `whole_seconds`: the limit for files that cannot be read
    in blocks (`inference.long.can_segment`: only those are predicted per segment)."""
    from emofuse.features.audio import check_audio_header, probe_audio
    from emofuse.inference.long import can_segment

    limit = max_seconds
    try:
        header = probe_audio(path)
        limit = max_seconds if whole_seconds is None or can_segment(header) else min(max_seconds, whole_seconds)
        check_audio_header(path, header, limit)
    except DataError as exc:
        problem = refusal_line(exc, path, name, too_long_note(max_seconds, limit))
        raise HTTPException(status_code=http_status(exc), detail=f"{name}: {problem}") from None
    return header, limit


def outcome_status(outcome: Outcome) -> int:
    """The status a client reads for a job's outcome: 200, or its error's (HTTP_STATUS)."""
    return http_status(error_type(outcome)) if "error" in outcome else 200


def answer(outcome: Outcome) -> dict:
    """A job's outcome as the response body; HTTPException with its error's status otherwise."""
    if "error" in outcome:
        raise HTTPException(status_code=outcome_status(outcome), detail=outcome["detail"])
    return outcome["body"]


def job_failed(exc: JobFailed) -> HTTPException:
    """A job that never got its answer (its worker died or fell silent, the pool stopped): its
    status and its line after the file's name; 503 says when to retry."""
    status = http_status(exc)  # its message already starts with the job's label, the client's file name
    return HTTPException(status_code=status, detail=str(exc),
                         headers={"Retry-After": "30"} if status == 503 else None)


def _one_line(errors) -> str:
    """FastAPI's validation errors as one line: `file: field required; ...`."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "form"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def create_app(model_dir: str | Path, settings: ServeSettings | None = None, predictor=None,
               predictor_options: dict | None = None) -> FastAPI:
    """The service for one model directory; the model is loaded here, once per worker (module docstring).

    settings: limits, workers and queue (`serving.settings.ServeSettings`; its defaults are
    `emofuse serve`'s). With `settings.workers` 0 the model runs in this process, one prediction
    at a time (`predictor`: one already loaded, for tests); N >= 1 starts N worker processes.
    predictor_options: Predictor keyword arguments, in this process or in every worker
    (`{"verify": False}`)."""
    from emofuse import __version__

    settings = ServeSettings() if settings is None else settings
    workers, max_upload_mb, max_seconds = settings.workers, settings.max_upload_mb, settings.max_seconds
    segment_over = settings.segment_over
    if predictor is not None and workers:
        raise ConfigError("a loaded predictor runs in this process: give it with workers=0")
    started = time.perf_counter()
    engine = ProcessEngine(model_dir, workers, settings.threads, predictor_options, settings.job_timeout) if workers \
        else InProcessEngine(model_dir, settings.threads, predictor, predictor_options)
    load_seconds = time.perf_counter() - started
    max_queue = DEFAULT_QUEUE_PER_WORKER * engine.workers if settings.max_queue is None else settings.max_queue
    admission = Admission(engine.workers, max_queue)
    readers = Readers(settings.max_readers)
    from emofuse.inference.text import is_text_only
    from emofuse.models.modeldir import read_info

    text_only = is_text_only(read_info(model_dir))  # it may answer a transcript without a file

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(
        title="emofuse",
        version=__version__,
        description="Speech emotion recognition from how words are said and what is said, "
                    "with per-word explanations (acoustic share, attention).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.admission = admission
    app.state.readers = readers
    app.state.predictor = getattr(engine, "predictor", None)
    app.state.load_seconds = load_seconds
    app.state.limits = {"max_upload_mb": max_upload_mb, "max_seconds": max_seconds}
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1e6) + FORM_OVERHEAD, limit_mb=max_upload_mb,
                       admission=admission, body_seconds=settings.body_seconds, body_grace=settings.body_grace,
                       body_rate=settings.body_rate_kb * 1000, readers=readers)

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _one_line(exc.errors())})

    @app.get("/health")
    async def health():
        """Liveness and what the loaded model is; answered on the event loop, never behind a prediction.
        A dead worker is restarted and counted (`workers.restarts`), a silent one killed at the job
        limit too (also `workers.timeouts`); 503 "broken" only once the pool gave up after repeated
        crashes (pool.MAX_CRASHES), so that an orchestrator restarts the service."""
        restarts, timeouts = getattr(engine, "restarts", 0), engine.timeouts
        if getattr(engine, "broken", False):
            return JSONResponse(status_code=503, content={
                "status": "broken", "detail": engine.broken_reason,
                "workers": {"restarts": restarts, "timeouts": timeouts}})
        return {"status": "ok", **engine.description, "load_seconds": round(load_seconds, 3),
                "limits": app.state.limits,
                "workers": {"count": engine.workers, "mode": "processes" if workers else "in-process",
                            "pids": engine.pids, "busy": admission.running, "restarts": restarts,
                            "timeouts": timeouts, "job_timeout": engine.job_timeout},
                "queue": {"length": admission.waiting, "max": admission.max_queue, "refused": admission.refused},
                "uploads": {"arriving": readers.reading, "max": readers.max_readers, "refused": readers.refused}}

    @app.post("/predict")
    async def predict(
        file: UploadFile | None = File(None, description="Audio: WAV, FLAC, OGG, MP3, WebM, MP4, ... (a text-only "
                                                          "model takes a transcript alone)"),
        transcript: str | None = Form(None, description="What is said (forced alignment instead of ASR)."),
        html: bool = Query(False, description="Also return the explanation as an HTML block (key `html`)."),
    ) -> dict:
        """The emotion of one recording: label, class probabilities and per-word explanations;
        a recording longer than the server's segment length: one result per speech segment."""
        if file is None and not (text_only and (transcript or "").strip()):  # a text-only model may take a transcript alone
            raise HTTPException(status_code=422, detail="file: field required" + (
                " (or a transcript alone: the model reads only words)" if text_only else ""))
        name = "<text>" if file is None else Path(file.filename or "upload").name or "upload"
        tmp = None  # admitted to the bounded queue by UploadLimit, once the body was read whole
        try:
            if file is None:
                job = Job(path="", name=name, transcript=transcript.strip(), html=html, reader="text",
                          sample_rate=0, channels=0, duration=None, max_seconds=max_seconds, segment_over=None)
            else:
                tmp = await run_in_threadpool(_save_upload, file.file, name)
                header, limit = await run_in_threadpool(probe_upload, tmp, name, max_seconds, segment_over)
                job = Job(path=tmp, name=name, transcript=(transcript or "").strip() or None, html=html,
                          reader=header.reader, sample_rate=header.sample_rate, channels=header.channels,
                          duration=header.duration, max_seconds=limit, segment_over=segment_over,
                          too_long_note=too_long_note(max_seconds, limit))
            try:
                outcome = await asyncio.wrap_future(engine.submit(job))
            except JobFailed as exc:  # its worker died or fell silent, or the pool stopped: its line names no path
                raise job_failed(exc) from None
            except RuntimeError:  # the in-process engine, shut down
                raise job_failed(WorkersStopped(name, "the server is shutting down")) from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return answer(outcome)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    from emofuse.serving.stream import router as live_audio; app.include_router(live_audio)  # WS /stream
    return app


def _save_upload(source, name: str) -> str:
    """The upload in a temporary file (the decoders read files); HTTPException 422 when empty."""
    suffix = Path(name).suffix.lower()
    if not suffix or len(suffix) > 8 or not suffix[1:].isalnum():
        suffix = ".bin"
    fd, tmp = tempfile.mkstemp(prefix="emofuse-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out)
            size = out.tell()
    except BaseException:  # a full disk, a cancelled request: no file is left behind
        Path(tmp).unlink(missing_ok=True)
        raise
    if not size:
        Path(tmp).unlink(missing_ok=True)
        raise HTTPException(status_code=422, detail=f"{name}: the uploaded file is empty")
    return tmp
