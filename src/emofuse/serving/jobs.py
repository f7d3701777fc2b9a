"""One prediction job of the service and its outcome, run wherever the engine runs it (this
process or a worker process: `serving.workers`).

A job is an upload's temporary file whose header the server has already checked, a live
stream's segment as samples, or a transcript alone (a text-only model); `run_job` decodes
(bounded, `features.audio.decode_bounded`), predicts and returns an `Outcome`: plain data
that crosses a pipe from a worker (pickled) and names no server path:

    {"body": prediction JSON}                       the answer
    {"error": "TooLong", "detail": "a.wav: ..."}    why there is none: an `emofuse.errors` class
                                                    name and one line naming the client's file

Which HTTP status an error is, is decided in one place: `serving.app.HTTP_STATUS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, Union

from emofuse import errors

if TYPE_CHECKING:
    import numpy as np

NOT_AUDIO = "not an audio file that soundfile or FFmpeg can decode (send WAV, FLAC, OGG, MP3, WebM, MP4 ...)"


@dataclass(frozen=True)
class Job:
    """One recording to predict: an upload's temporary file (the server owns and deletes it), a
    live stream's segment (`samples`), or a transcript alone (`reader` "text")."""

    path: str  # the temporary file; "" for samples or text
    name: str  # the client's file name (or a segment's time span), used in answers and error lines
    transcript: str | None
    html: bool
    reader: str  # "soundfile" or "pyav", from the header probe; "samples": `samples`; "text": a transcript alone
    sample_rate: int
    channels: int
    duration: float | None
    max_seconds: float
    segment_over: float | None  # longer recordings are predicted per segment; None: never
    too_long_note: str = " (server option --max-seconds)"  # which option set max_seconds, after a TooLong line
    samples: np.ndarray | None = None  # (N,) float32 mono at `sample_rate`, decoded already (reader "samples")


class Answered(TypedDict):
    body: dict  # the prediction's JSON: the keys of `emofuse predict --json`


class Failed(TypedDict):
    error: str  # the `emofuse.errors` class it failed with: "TooLong", "Undecodable", "NoSpeech", "JobFailed", ...
    detail: str  # one line for the client: its file's name, then the problem; no server path


Outcome = Union[Answered, Failed]


def failed(kind: str | type[errors.EmofuseError], name: str, problem: str) -> Failed:
    """The outcome of a job that got no answer: `kind`, an `emofuse.errors` class or its name (a
    subclass defined elsewhere is named by the errors class it refines), and one line."""
    if not isinstance(kind, str):
        kind = next(k for k in kind.__mro__ if k.__module__ == errors.__name__).__name__
    if not isinstance(getattr(errors, kind, None), type):
        raise ValueError(f"{kind!r} is not a class of emofuse.errors")
    return {"error": kind, "detail": f"{name}: {problem}"}


def error_type(outcome: Failed) -> type[errors.EmofuseError]:
    """The `emofuse.errors` class a failed outcome names."""
    return getattr(errors, outcome["error"])


def too_long_note(max_seconds: float, limit: float) -> str:
    """What a TooLong line adds to name the option whose limit applied: `--max-seconds`, or, for
    a container that cannot be read in blocks (so is never predicted per segment), `--segment-over`."""
    if limit >= max_seconds:
        return " (server option --max-seconds)"
    return f" for this container (server option --segment-over); WAV, FLAC or OGG may run to {max_seconds:g} s"


def refusal_line(exc: errors.DataError, path: str | None, name: str, too_long_note: str = "") -> str:
    """What a client reads after its file's name for a refused file: the server's temporary `path`
    as the client's `name` and other paths cut to file names; for a file no decoder reads, what
    to send instead (the decoders' own words may name files); `too_long_note` after a TooLong."""
    from emofuse.inference.long import without_paths

    if isinstance(exc, errors.Undecodable):
        return NOT_AUDIO
    return without_paths(exc.problem, path, name) + (too_long_note if isinstance(exc, errors.TooLong) else "")


def run_job(predictor, job: Job, progress=None) -> Outcome:
    """The job's `Outcome` (module docstring). progress(seconds_done, seconds_total): called after
    each batch of a recording predicted per segment."""
    from emofuse.features.audio import AudioHeader, decode_bounded, resample
    from emofuse.inference.long import is_long
    from emofuse.inference.predictor import SAMPLE_RATE

    header = AudioHeader(job.sample_rate, job.channels, job.duration, job.reader)
    try:
        if job.reader in ("soundfile", "pyav") and is_long(header, job.segment_over):
            from emofuse.inference.long import predict_long  # read in blocks: memory stays flat

            if job.transcript is not None:
                return failed(errors.Refused, job.name,
                              f"the recording is {job.duration:.1f} s long: over {job.segment_over:g} s it is "
                              "predicted per speech segment with each segment's recognised words, so send it "
                              "without a transcript")
            result = predict_long(predictor, job.path, name=job.name, progress=progress)  # no temp path in it
            record = result.to_json()
            record["file"] = job.name
            return {"body": record}
        if job.reader == "text":  # a transcript without audio, for a text-only model
            from emofuse.inference.text import predict_texts

            prediction = predict_texts(predictor, [(job.name, job.transcript)], strict=True)[0]
        else:
            if job.reader == "samples":  # a live stream's segment: decoded and checked by the stream
                audio = resample(job.samples, job.sample_rate, SAMPLE_RATE)
            else:
                audio = resample(decode_bounded(job.path, header, job.max_seconds), job.sample_rate, SAMPLE_RATE)
            prediction = predictor.predict_audio(audio, job.transcript, label=job.name)
    except errors.DataError as exc:
        return failed(type(exc), job.name, refusal_line(exc, job.path or None, job.name, job.too_long_note))
    except Exception as exc:  # noqa: BLE001 -- one request's failure is its answer, never the worker's end
        return failed(errors.JobFailed, job.name, f"prediction failed ({one_line(exc, job)})")
    try:
        record = prediction.to_json()
        record["timings"] = {k: round(v, 4) for k, v in prediction.timings.items()}
        if job.html:
            from emofuse.inference.explain import render_fragment

            record["html"] = render_fragment(prediction)
    except Exception as exc:  # noqa: BLE001 -- as above: this request's answer, never the worker's end
        return failed(errors.JobFailed, job.name, f"the prediction could not be written out ({one_line(exc, job)})")
    return {"body": record}


def one_line(exc: BaseException, job: Job) -> str:
    """An exception as its type and first line, with no server path in it: sanitised, then cut
    (cutting first could leave half a path that `without_paths` no longer recognises)."""
    from emofuse.inference.long import without_paths

    reason = without_paths((str(exc).strip().splitlines() or [""])[0], job.path or None, job.name)
    return f"{type(exc).__name__}: {reason[:200]}"
