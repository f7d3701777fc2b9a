"""The HTTP service: one model directory, loaded once, behind a small JSON API and a web page.

    POST /predict   multipart: `file` (audio in any format soundfile or FFmpeg reads) and an
                    optional `transcript`; `?html=true` adds the explanation as an HTML block.
                    JSON out, the keys of `emofuse predict --json` (label, probabilities, words, ...).
    GET  /health    the model, its classes, what it needs, the limits.
    GET  /          a web page to upload or record audio and see the explanation.
    GET  /docs      OpenAPI documentation (FastAPI).

Limits: a request body over `max_upload_mb` is refused with 413 before it is parsed (the
body is counted as it arrives, so a missing or false Content-Length does not get past);
a recording longer than `max_seconds` is 413 too. A file that neither soundfile nor PyAV
can decode as audio is 415; audio that decodes but cannot be used (empty, NaN, no words
for a model that needs them) is 422. Every error body is {"detail": "<one clear line>"}.

Concurrency: the endpoint runs in FastAPI's thread pool; each request decodes its own
temporary file, and the shared `Predictor` runs one request at a time under its lock, so
concurrent requests never mix results.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from emofuse.errors import DataError
from emofuse.inference.predictor import SAMPLE_RATE, Predictor

STATIC = Path(__file__).parent / "static"
# Room for the multipart framing and the transcript field next to the file itself.
FORM_OVERHEAD = 64 * 1024
UNDECODABLE = ("cannot decode audio", "holds no audio stream")


class UploadLimit:
    """ASGI middleware: read POST bodies to `path` up to `max_bytes`; beyond, answer 413 at once."""

    def __init__(self, app, max_bytes: int, limit_mb: float, path: str = "/predict"):
        self.app = app
        self.max_bytes = max_bytes
        self.limit_mb = limit_mb
        self.path = path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(send, None)
                return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send, size: int | None) -> None:
        what = f"{size / 1e6:.1f} MB" if size is not None else f"more than {self.limit_mb:g} MB"
        response = JSONResponse(status_code=413, content={
            "detail": f"upload too large: {what}; the limit is {self.limit_mb:g} MB (server option --max-upload-mb)"})
        await response(scope={"type": "http"}, receive=None, send=send)


def decode_upload(data: bytes, filename: str):
    """float32 mono 16 kHz samples of an uploaded file; HTTPException 415/422 when unusable."""
    from emofuse.features.audio import load_audio

    suffix = Path(filename).suffix.lower()
    if not suffix or len(suffix) > 8 or not suffix[1:].isalnum():
        suffix = ".bin"
    fd, tmp = tempfile.mkstemp(prefix="emofuse-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            return load_audio(tmp, SAMPLE_RATE)
        except DataError as exc:
            problem = exc.problem
            status = 415 if any(problem.startswith(p) or p in problem for p in UNDECODABLE) else 422
            if status == 415:
                problem = "not an audio file that soundfile or FFmpeg can decode (send WAV, FLAC, OGG, MP3, WebM, MP4 ...)"
            raise HTTPException(status_code=status, detail=f"{filename}: {problem}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def create_app(model_dir: str | Path, max_upload_mb: float = 20.0, max_seconds: float = 120.0,
               predictor: Predictor | None = None, threads: int | None = None) -> FastAPI:
    """The service for one model directory; the model is loaded here, once (module docstring)."""
    from emofuse import __version__
    from emofuse.inference.explain import render_fragment

    started = time.perf_counter()
    predictor = predictor or Predictor(model_dir, warm=True, threads=threads)
    load_seconds = time.perf_counter() - started
    app = FastAPI(
        title="emofuse",
        version=__version__,
        description="Speech emotion recognition from how words are said and what is said, "
                    "with per-word explanations (acoustic share, attention).",
    )
    app.state.predictor = predictor
    app.state.load_seconds = load_seconds
    app.state.limits = {"max_upload_mb": max_upload_mb, "max_seconds": max_seconds}
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1e6) + FORM_OVERHEAD, limit_mb=max_upload_mb)

    @app.get("/health")
    def health() -> dict:
        """Liveness and what the loaded model is."""
        return {"status": "ok", **predictor.describe(), "load_seconds": round(load_seconds, 3),
                "limits": app.state.limits}

    @app.post("/predict")
    def predict(
        file: UploadFile = File(..., description="Audio: WAV, FLAC, OGG, MP3, WebM, MP4, ..."),
        transcript: str | None = Form(None, description="What is said (forced alignment instead of ASR)."),
        html: bool = Query(False, description="Also return the explanation as an HTML block (key `html`)."),
    ) -> dict:
        """The emotion of one recording: label, class probabilities and per-word explanations."""
        name = Path(file.filename or "upload").name or "upload"
        data = file.file.read()
        if not data:
            raise HTTPException(status_code=422, detail=f"{name}: the uploaded file is empty")
        audio = decode_upload(data, name)
        seconds = len(audio) / SAMPLE_RATE
        if seconds > max_seconds:
            raise HTTPException(status_code=413, detail=f"{name}: recording is {seconds:.1f} s long; the limit is "
                                                        f"{max_seconds:g} s (server option --max-seconds)")
        transcript = (transcript or "").strip() or None
        try:
            prediction = predictor.predict_audio(audio, transcript, label=name)
        except DataError as exc:
            raise HTTPException(status_code=422, detail=f"{name}: {exc.problem}") from None
        record = prediction.to_json()
        record["timings"] = {k: round(v, 4) for k, v in prediction.timings.items()}
        if html:
            record["html"] = render_fragment(prediction)
        return record

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
