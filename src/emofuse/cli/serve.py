"""`emofuse serve`: a thin wrapper over emofuse.serving (it never imports emofuse.training).
Its options are the fields of `serving.settings.ServeSettings`, with their defaults and bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from emofuse.cli.options import asr_option, consoles
from emofuse.errors import ConfigError
from emofuse.serving.settings import ServeSettings

DEFAULTS = ServeSettings()


def settings_from_options(**options) -> ServeSettings:
    """ServeSettings from the command's options; ConfigError naming the option for a value out of bounds."""
    from pydantic import ValidationError

    try:
        return ServeSettings(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        value = error.get("input")
        value = f"{value:g}" if isinstance(value, float) else str(value)
        why = error.get("msg", "invalid")
        raise ConfigError(f"--{str(error['loc'][0]).replace('_', '-')} {value}: {why[:1].lower()}{why[1:]}") from None


def serve(
    model_dir: Path = typer.Argument(..., help="Model directory to serve."),
    host: str = typer.Option(DEFAULTS.host, "--host", help="Interface to listen on."),
    port: int = typer.Option(DEFAULTS.port, "--port", help="TCP port."),
    max_upload_mb: float = typer.Option(DEFAULTS.max_upload_mb, "--max-upload-mb", help="Largest accepted upload (413 above)."),
    max_seconds: float = typer.Option(DEFAULTS.max_seconds, "--max-seconds", help="Longest accepted recording (413 above); recordings over --segment-over are predicted per speech segment."),
    segment_over: float = typer.Option(DEFAULTS.segment_over, "--segment-over", help="Recordings (WAV/FLAC/OGG) longer than this many seconds answer per speech segment; other containers are limited to this length."),
    threads: Optional[int] = typer.Option(DEFAULTS.threads, "--threads", help="Torch threads for the model (default 1: the alignment and openSMILE stages run single-threaded beside it; 2 can help long recordings on an idle machine)."),
    workers: int = typer.Option(DEFAULTS.workers, "--workers", help="Worker processes, each with the model loaded once (0: run the model in the server process)."),
    max_queue: Optional[int] = typer.Option(DEFAULTS.max_queue, "--max-queue", help="Requests that may wait beyond those running (default 4 per worker); more are answered 503 with Retry-After."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not check the weights against the sha256 in model.json (for weights edited on purpose); every worker process loads them so."),
    asr: Optional[str] = typer.Option(None, "--asr", help="Recogniser for files without a transcript: whisper (the packaged tiny.en), whisper:PATH (a CTranslate2 Whisper folder), sphinx (pocketsphinx). Default: the one the model was trained with, else whisper."),
    language: Optional[str] = typer.Option(None, "--language", help="Whisper's language (default: English for .en models)."),
    trust_transcript: bool = typer.Option(False, "--trust-transcript", help="Do not compare a given transcript with what the recogniser hears (by default a word error rate over 0.34 against it adds a warning)."),
    no_speech_check: bool = typer.Option(False, "--no-speech-check", help="Predict recordings in which the Silero voice activity detector finds no speech (by default they are refused, 422: any answer would be a guess on noise)."),
    job_timeout: float = typer.Option(DEFAULTS.job_timeout, "--job-timeout", help="Seconds a request may run in a worker without an answer (a recording predicted per segment: without finishing a batch of segments) before it is answered 504 and its worker killed and replaced, counted in /health workers.timeouts; 0: no limit. Needs --workers 1 or more (a thread of the server cannot be stopped)."),
    header_seconds: float = typer.Option(DEFAULTS.header_seconds, "--header-seconds", help="Seconds a connection may take to send a complete request head, from its opening or the previous response; then it is closed (408 if part of a head came)."),
    keep_alive_seconds: float = typer.Option(DEFAULTS.keep_alive_seconds, "--keep-alive-seconds", help="Seconds an idle keep-alive connection stays open after a response."),
    body_seconds: float = typer.Option(DEFAULTS.body_seconds, "--body-seconds", help="Seconds an upload may take to arrive whole (408 after)."),
    body_grace: float = typer.Option(DEFAULTS.body_grace, "--body-grace", help="Seconds an upload may arrive at any rate before --body-rate-kb applies."),
    body_rate_kb: float = typer.Option(DEFAULTS.body_rate_kb, "--body-rate-kb", help="Average kB per second an upload must have arrived at once --body-grace has passed (408 below; 0: no minimum)."),
    max_readers: int = typer.Option(DEFAULTS.max_readers, "--max-readers", help="Uploads read at once (503 beyond); memory held by bodies is at most (max-readers + workers + max-queue) x max-upload-mb."),
) -> None:
    """HTTP service: POST /predict (multipart `file`, optional `transcript`), GET /health, docs at /docs,
    and a web page at / to upload or record audio and see the explanation.

    Slow clients hold a connection, never a queue place: a request head must arrive within
    --header-seconds (10 s) and an idle keep-alive connection closes after --keep-alive-seconds (5 s);
    an upload is read whole before it queues, at most --max-readers (16) at once, at --body-rate-kb
    (8 kB/s on average) once --body-grace (5 s) has passed and within --body-seconds (60 s), else 408."""
    settings = settings_from_options(host=host, port=port, max_upload_mb=max_upload_mb, max_seconds=max_seconds,
                                     segment_over=segment_over, threads=threads, workers=workers,
                                     max_queue=max_queue, job_timeout=job_timeout, header_seconds=header_seconds,
                                     keep_alive_seconds=keep_alive_seconds, body_seconds=body_seconds,
                                     body_grace=body_grace, body_rate_kb=body_rate_kb, max_readers=max_readers)
    import uvicorn

    from emofuse.models.modeldir import read_info
    from emofuse.serving.app import create_app
    from emofuse.serving.connections import guarded_protocol

    _, err = consoles()
    if settings.job_timeout and not settings.workers:
        err.print("[yellow]note[/]: --job-timeout applies to worker processes; with --workers 0 a request has no limit")
    options = {**({"verify": False} if no_verify else {}), **({"check_transcript": False} if trust_transcript else {}),
               **({"speech_check": False} if no_speech_check else {}),
               **asr_option(asr, language, read_info(model_dir))}
    app = create_app(model_dir, settings, predictor_options=options or None)
    engine, admission = app.state.engine, app.state.admission
    err.print(f"model {escape(engine.description['model'])} loaded in {app.state.load_seconds:.1f} s "
              f"{f'by {settings.workers} worker process(es)' if settings.workers else 'in the server process'}, "
              f"{admission.max_queue} may wait; "
              f"serving on http://{settings.host}:{settings.port}/")
    # Graceful shutdown waits at most a few seconds for requests in flight; the lifespan then ends the workers.
    # The h11 protocol with a request-head timer and JSON 400s (serving.connections).
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5,
                http=guarded_protocol(settings.header_seconds), timeout_keep_alive=settings.keep_alive_seconds)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
