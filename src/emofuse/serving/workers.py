"""Where the service's predictions run: in the server process, or in N worker processes that
each load the model once; and the bounded queue in front of them.

    request ──► Admission (workers running + max_queue waiting, else 503) ──► Engine.submit(job)
                                                                     │
                  InProcessEngine: one thread, the server's own Predictor
                  ProcessEngine:   N 'spawn' processes, each with its own Predictor (and its own
                                   openSMILE worker, forked by the Predictor)

A job is a temporary file whose header the server has already checked, plus its name and
transcript; `run_job` decodes it (bounded, `features.audio.decode_bounded`), predicts and
returns plain JSON-able data, so a worker never sends Python objects back. Decoding happens
inside the engine, so at most `workers` decodes run at once, whatever the number of requests.

No process outlives the server: on shutdown `close()` ends every worker (SIGTERM, then
SIGKILL) and the Predictor's openSMILE worker; after `kill -9` of the server each worker is
killed by the kernel (prctl PR_SET_PDEATHSIG, with a parent-pid watchdog), and each openSMILE
worker by the same signal armed against its own parent (issue 18, item 5).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

WORKER_START_TIMEOUT = 600.0  # seconds for every worker to load its model
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a worker at shutdown
UNDECODABLE = ("cannot decode audio", "holds no audio stream", "cannot read the audio header")
NOT_AUDIO = "not an audio file that soundfile or FFmpeg can decode (send WAV, FLAC, OGG, MP3, WebM, MP4 ...)"


@dataclass(frozen=True)
class Job:
    """One upload to predict: a temporary file the server owns and deletes afterwards."""

    path: str
    name: str  # the client's file name, used in answers and error lines
    transcript: str | None
    html: bool
    reader: str  # "soundfile" or "pyav", from the header probe; "text": a transcript alone, no file
    sample_rate: int
    channels: int
    duration: float | None
    max_seconds: float
    segment_over: float | None  # longer recordings are predicted per segment; None: never


def _error(status: int, name: str, problem: str) -> dict:
    return {"status": status, "detail": f"{name}: {problem}"}


def run_job(predictor, job: Job) -> dict:
    """{"status": 200, "body": prediction JSON} or {"status": 4xx, "detail": one line}."""
    from emofuse.errors import DataError
    from emofuse.features.audio import AudioHeader, AudioRefused, decode_bounded, resample
    from emofuse.inference.predictor import SAMPLE_RATE

    header = AudioHeader(job.sample_rate, job.channels, job.duration, job.reader)
    try:
        if job.segment_over is not None and job.reader == "soundfile" and job.duration is not None \
                and job.duration > job.segment_over:
            from emofuse.inference.long import predict_long  # read in blocks: memory stays flat

            if job.transcript is not None:
                return _error(422, job.name, f"the recording is {job.duration:.1f} s long: over {job.segment_over:g} s "
                                             "it is predicted per speech segment with each segment's recognised "
                                             "words, so send it without a transcript")
            result = predict_long(predictor, job.path)
            record = result.to_json()
            record["file"] = job.name
            return {"status": 200, "body": record}
        if job.reader == "text":  # a transcript without audio, for a text-only model
            from emofuse.inference.text import predict_texts

            prediction = predict_texts(predictor, [(job.name, job.transcript)], strict=True)[0]
        else:
            audio = resample(decode_bounded(job.path, header, job.max_seconds), job.sample_rate, SAMPLE_RATE)
            prediction = predictor.predict_audio(audio, job.transcript, label=job.name)
    except AudioRefused as exc:
        suffix = " (server option --max-seconds)" if exc.status == 413 else ""
        return _error(exc.status, job.name, exc.problem + suffix)
    except DataError as exc:
        if any(p in exc.problem for p in UNDECODABLE):
            return _error(415, job.name, NOT_AUDIO)
        return _error(422, job.name, exc.problem)
    except Exception as exc:  # noqa: BLE001 -- one request's failure is its answer, never the worker's end
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        return _error(500, job.name, f"prediction failed ({type(exc).__name__}: {reason})")
    record = prediction.to_json()
    record["timings"] = {k: round(v, 4) for k, v in prediction.timings.items()}
    if job.html:
        from emofuse.inference.explain import render_fragment

        record["html"] = render_fragment(prediction)
    return {"status": 200, "body": record}


def _arm_frames_worker(predictor) -> int | None:
    """The pid of the Predictor's openSMILE worker, made to die with this process; None if none."""
    frames = getattr(predictor, "_frames_proc", None)
    if frames is None:
        return None
    from emofuse.processes import exit_with_parent

    try:
        frames.submit(exit_with_parent, os.getpid()).result(timeout=60)
        return frames.submit(os.getpid).result(timeout=60)
    except Exception:  # noqa: BLE001 - the Predictor computes frames itself when its worker is gone
        return None


def _stop(pids: list[int], grace: float = STOP_GRACE) -> None:
    """SIGTERM each pid, then SIGKILL whatever is still there after `grace` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie of ours is reaped and counts as gone)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:  # not our child (a grandchild): ask the kernel
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


class InProcessEngine:
    """The model in the server process, one prediction at a time (`--workers 0`, and tests)."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, predictor=None):
        from emofuse.inference.predictor import Predictor

        self.predictor = predictor or Predictor(model_dir, warm=True, threads=threads)
        self.workers = 1
        self.description = self.predictor.describe()
        self.load_seconds = getattr(self.predictor, "load_seconds", 0.0)
        self._frames_pid = _arm_frames_worker(self.predictor)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emofuse-predict")
        self.pids = [os.getpid()]

    def submit(self, job: Job) -> Future:
        return self._pool.submit(run_job, self.predictor, job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        frames = getattr(self.predictor, "_frames_proc", None)
        if frames is not None:
            frames.shutdown(wait=False, cancel_futures=True)
        if self._frames_pid is not None:
            _stop([self._frames_pid])


# ------------------------------------------------------------------ worker processes
_PREDICTOR = None
_BARRIER = None
_LOAD_ERROR: str | None = None  # an EmofuseError does not cross the process boundary as itself


def _worker_init(model_dir: str, threads: int | None, parent_pid: int, barrier) -> None:
    global _PREDICTOR, _BARRIER, _LOAD_ERROR
    from emofuse.processes import exit_with_parent

    exit_with_parent(parent_pid)  # armed before the model loads: a dead server loads nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server decides
    from emofuse.errors import EmofuseError
    from emofuse.inference.predictor import Predictor

    _BARRIER = barrier
    try:
        _PREDICTOR = Predictor(model_dir, warm=True, threads=threads)
    except EmofuseError as exc:
        _LOAD_ERROR = str(exc)


def _worker_ready() -> dict:
    """Held until every worker has loaded its model, so each of the N calls lands on its own worker."""
    if _LOAD_ERROR is not None:
        from emofuse.errors import ConfigError

        _BARRIER.abort()  # the other workers stop waiting
        raise ConfigError(_LOAD_ERROR)
    _BARRIER.wait(timeout=WORKER_START_TIMEOUT)
    return {"pid": os.getpid(), "frames_pid": _arm_frames_worker(_PREDICTOR),
            "describe": _PREDICTOR.describe(), "load_seconds": _PREDICTOR.load_seconds}


def _worker_run(job: Job) -> dict:
    return run_job(_PREDICTOR, job)


class ProcessEngine:
    """N spawned worker processes, each with the model loaded once (`--workers N`)."""

    def __init__(self, model_dir: str | Path, workers: int, threads: int | None = None):
        context = get_context("spawn")  # a fresh interpreter: no server threads or locks copied
        self.workers = workers
        barrier = context.Barrier(workers)
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                         initargs=(str(model_dir), threads, os.getpid(), barrier))
        self.pids: list[int] = []
        self._frames_pids: list[int] = []
        try:
            ready = [self._pool.submit(_worker_ready) for _ in range(workers)]  # spawns all N now
            answers = [f.result(timeout=WORKER_START_TIMEOUT) for f in ready]
        except Exception as exc:
            self.close()
            from emofuse.errors import EmofuseError

            for f in ready:  # the worker's own line (a bad model directory), not the others' broken barrier
                if f.done() and isinstance(f.exception(), EmofuseError):
                    raise f.exception() from None
            raise EmofuseError(f"the worker processes did not start: {type(exc).__name__}: {exc}") from None
        self.pids = [a["pid"] for a in answers]
        self._frames_pids = [a["frames_pid"] for a in answers if a["frames_pid"] is not None]
        self.description = answers[0]["describe"]
        self.load_seconds = max(a["load_seconds"] for a in answers)

    def submit(self, job: Job) -> Future:
        return self._pool.submit(_worker_run, job)

    @property
    def broken(self) -> bool:
        """A worker died (crash, out of memory): the pool takes no more jobs until a restart."""
        return bool(getattr(self._pool, "_broken", False))

    def close(self) -> None:
        pids = list(self.pids) or [p.pid for p in getattr(self._pool, "_processes", {}).values()]
        self._pool.shutdown(wait=False, cancel_futures=True)
        _stop(pids + self._frames_pids)


class Admission:
    """The bounded queue: `workers` predictions run and `max_queue` wait; the rest are refused.

    Admitted requests include those whose header is being probed; `waiting` is what /health
    reports as the queue length."""

    def __init__(self, workers: int, max_queue: int):
        self.workers = workers
        self.max_queue = max_queue
        self.in_system = 0
        self.refused = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self.in_system >= self.workers + self.max_queue:
                self.refused += 1
                return False
            self.in_system += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_system -= 1

    @property
    def running(self) -> int:
        return min(self.in_system, self.workers)

    @property
    def waiting(self) -> int:
        return max(0, self.in_system - self.workers)
