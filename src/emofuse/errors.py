"""Errors a user can act on: each names the file (when there is one) and the problem.

Every layer raises these types and nothing else for the outcomes a caller must tell apart;
no layer below `emofuse.serving` knows HTTP. The service maps each type to its status code in
one table (`emofuse.serving.app.HTTP_STATUS`); the CLI prints any of them as one line.

    EmofuseError
    ├── DataError             a file that cannot be used as it is (names it)
    │   └── Refused           input refused before or while it is used: the request's own fault
    │       ├── TooLong       longer than the caller's limit
    │       ├── Unsupported   not audio we decode: a sample rate, channel count or codec outside the bounds
    │       │   └── Undecodable   neither soundfile nor FFmpeg reads it: not audio, or damaged
    │       └── UnusableInput decodes, but gives no answer worth trusting
    │           ├── NoSpeech            the speech detector finds no speech
    │           ├── TranscriptMismatch  the transcript cannot be aligned to the recording
    │           └── TranscriptTooLong   more words, or longer ones, than the recording could hold
    ├── LabelError, ConfigError
    └── JobFailed             a job that never got its answer, for a reason outside its input
        ├── JobTimedOut       no progress within the per-job limit; its worker was replaced
        ├── WorkerCrashed     its worker process died on it; a new worker was started
        └── WorkersStopped    the pool gave up (too many crashes) or is shutting down
"""

from __future__ import annotations

from pathlib import Path


class EmofuseError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class DataError(EmofuseError):
    """A corpus file, manifest or audio file that cannot be used as it is."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # rebuilt from its fields, so a worker process can send it back as itself
        return type(self), (self.path, self.problem)


class Refused(DataError):
    """Input refused before (or while) it is decoded or used: sending it again cannot help."""


class TooLong(Refused):
    """Audio longer than the caller's limit (or than a bounded decoder may produce)."""


class Unsupported(Refused):
    """A sample rate, channel count, codec or container outside what is decoded; no audio stream;
    not audio at all."""


class Undecodable(Unsupported):
    """Neither soundfile nor FFmpeg can read it (no audio stream, a header or stream they cannot
    parse): not audio, or damaged. Its problem carries the decoders' own words, which may name
    files; a service's client reads a fixed line instead (`serving.jobs.NOT_AUDIO`)."""


class UnusableInput(Refused):
    """A recording (and transcript) that decodes but cannot give an answer worth trusting."""


class NoSpeech(UnusableInput):
    """The recording holds no speech: any emotion would be a guess on silence or noise."""


class TranscriptMismatch(UnusableInput):
    """The transcript cannot be aligned to the recording: it is likely not what was said."""


class TranscriptTooLong(UnusableInput):
    """The transcript holds more words, or longer ones, than the recording could."""


class LabelError(EmofuseError):
    """A label that the chosen label set does not know."""


class ConfigError(EmofuseError):
    """An experiment config key or value that is not valid."""


class JobFailed(EmofuseError):
    """A job that got no answer for a reason outside its own input. The message is the line a
    client may read, "label: problem": it names no server path, pid or other client's file."""

    def __init__(self, label: str, problem: str):
        self.label = label
        self.problem = problem
        super().__init__(f"{label}: {problem}")

    def __reduce__(self):
        return type(self), (self.label, self.problem)


class JobTimedOut(JobFailed):
    """The job made no progress within the per-job limit; its worker was killed and replaced."""


class WorkerCrashed(JobFailed):
    """The worker process died while on the job (the OOM killer, a crash in a native library)."""


class WorkersStopped(JobFailed):
    """The pool takes no more jobs: it gave up after too many crashes, or it is shutting down."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An unexpected exception in one line: its type and the first line of its message, cut to
    `limit` characters (a log has the rest)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:limit]}"
