"""Where the service's predictions run: in the server process, or in N worker processes that
each load the model once; and the bounded queue in front of them.

    request, its body read whole (app.UploadLimit)
        ──► Admission (workers running + max_queue waiting, else 503) ──► Engine.submit(job)
                                                                     │
                  InProcessEngine: one thread, the server's own Predictor
                  ProcessEngine:   N 'spawn' processes, each with its own Predictor (and its own
                                   openSMILE worker, forked by the Predictor)

A job (`serving.jobs`) is a temporary file whose header the server has already checked, or a
live segment's samples, plus its name and transcript; `run_job` decodes it (bounded,
`features.audio.decode_bounded`), predicts and returns an outcome of plain data, so a worker
never sends Python objects back. Decoding happens
inside the engine, so at most `workers` decodes run at once, whatever the number of requests.

The worker processes are an `emofuse.pool.Pool` (setup: build the Predictor; handle: `run_job`).
A worker that dies (the OOM killer, a crash in a native library) is replaced by a fresh one
that loads the model the same way; the request it was on fails with WorkerCrashed (500 in one
line), /health counts the restarts, and only after more than `pool.MAX_CRASHES` deaths within
`pool.CRASH_WINDOW` seconds does the pool give up (WorkersStopped: 503, /health "broken").
What a client reads names no server path, pid or other client's file; the server logs the
whole story.

A worker that lives but never answers (a native deadlock, a pathological input) is cut off by
the per-job limit (`job_timeout`, `emofuse serve --job-timeout`): a job that makes no progress
for that long fails with JobTimedOut (504 in one line naming the file and the limit), its
worker is killed (SIGKILL), reaped and replaced, and /health counts it (`workers.timeouts`).
Progress is the job's answer, or for a recording predicted per segment each batch of segments
the worker reports, so an hour-long upload is not cut off while it advances. The limit needs
worker processes: a thread of the server cannot be stopped, so with `--workers 0` there is none.

Each worker builds the Predictor the in-process engine builds (`predictor_options`, e.g.
`verify=False` for `--no-verify`), as `emofuse predict --workers` does for folder workers.

No process outlives the server: on shutdown `close()` ends every worker (SIGTERM, then
SIGKILL) and the Predictor's openSMILE worker; after `kill -9` of the server each worker is
killed by the kernel (prctl PR_SET_PDEATHSIG, with a parent-pid watchdog), and each openSMILE
worker by the same signal armed against its own parent (`emofuse.pool`).
"""

from __future__ import annotations

import os
import pickle
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from emofuse.pool import Pool, Ready
from emofuse.serving.jobs import Job, Outcome, failed, one_line, run_job

DEFAULT_JOB_TIMEOUT = 300.0  # --job-timeout: seconds a job may go without progress before 504


class InProcessEngine:
    """The model in the server process, one prediction at a time (`--workers 0`, and tests)."""

    job_timeout = None  # a thread cannot be stopped: the per-job limit needs worker processes
    timeouts = 0

    def __init__(self, model_dir: str | Path, threads: int | None = None, predictor=None,
                 predictor_options: dict | None = None):
        from emofuse.inference.predictor import Predictor

        self.predictor = predictor or Predictor(model_dir, warm=True, threads=threads, **(predictor_options or {}))
        self.workers = 1
        self.description = self.predictor.describe()
        self.load_seconds = getattr(self.predictor, "load_seconds", 0.0)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emofuse-predict")
        self.pids = [os.getpid()]

    def submit(self, job: Job) -> Future:
        return self._pool.submit(run_job, self.predictor, job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        frames = getattr(self.predictor, "_frames_proc", None)
        if frames is not None:  # the Predictor's openSMILE worker (a Pool of one)
            frames.close()


# ------------------------------------------------------------------ worker processes
def load_predictor(model_dir: str, threads: int | None, options: dict) -> Ready:
    """A worker's setup: the model loaded once (Predictor keyword arguments `options`); its
    openSMILE worker, when it has one, is killed with the worker."""
    from emofuse.inference.predictor import Predictor

    predictor = Predictor(model_dir, warm=True, threads=threads, **options)
    frames = predictor._frames_proc
    return Ready(predictor, {"describe": predictor.describe(), "load_seconds": predictor.load_seconds},
                 children=tuple(frames.pids) if frames is not None else ())


def answer_job(predictor, job: Job, progress) -> Outcome:
    """A worker's handle: `run_job`'s answer, always one that can be sent back. Nothing one job
    does (an answer that cannot be rendered or pickled) ends the worker: it and its loaded
    model serve the next request."""
    try:
        answer = run_job(predictor, job, progress=lambda done, _total: progress(done))
    except Exception as exc:  # noqa: BLE001 -- run_job answers its own errors; this is a last resort
        answer = failed("JobFailed", job.name, f"prediction failed ({one_line(exc, job)})")
    try:
        pickle.dumps(answer)
    except Exception as exc:  # noqa: BLE001 -- an answer that does not pickle
        answer = failed("JobFailed", job.name, f"the prediction could not be sent back ({one_line(exc, job)})")
    return answer


class ProcessEngine:
    """N spawned worker processes, each with the model loaded once (`--workers N`): a Pool
    (module docstring). A job's future holds `run_job`'s answer, or raises WorkerCrashed,
    JobTimedOut or WorkersStopped (emofuse.errors; `serving.app.HTTP_STATUS` has their codes).

    job_timeout: seconds a job may go without progress before it fails and its worker is
    killed and replaced (None: no limit). predictor_options: keyword arguments of every
    worker's Predictor (`verify=False` for `--no-verify`)."""

    setup = staticmethod(load_predictor)
    handle = staticmethod(answer_job)  # tests put one that hangs here (they cannot reach a spawned worker)

    def __init__(self, model_dir: str | Path, workers: int, threads: int | None = None,
                 predictor_options: dict | None = None, job_timeout: float | None = DEFAULT_JOB_TIMEOUT):
        self.workers = workers
        self.job_timeout = job_timeout or None  # 0: no limit
        self.pool = Pool(self.setup, self.handle, (str(model_dir), threads, dict(predictor_options or {})), workers,
                         job_timeout=self.job_timeout, name="prediction", owner="the server",
                         timeout_option="server option --job-timeout")
        self.description = self.pool.info[0]["describe"]
        self.load_seconds = max(info["load_seconds"] for info in self.pool.info)

    @property
    def pids(self) -> list[int]:
        return self.pool.pids

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    @property
    def timeouts(self) -> int:
        return self.pool.timeouts

    @property
    def broken_reason(self) -> str | None:
        """For clients and /health: no path, no file name."""
        return self.pool.broken_reason

    @property
    def broken(self) -> bool:
        """The pool gave up restarting workers: the service takes no more jobs until a restart."""
        return self.pool.broken

    def submit(self, job: Job) -> Future:
        return self.pool.submit(job, job.name)

    def close(self) -> None:
        self.pool.close()


class Admission:
    """The bounded queue: `workers` predictions run and `max_queue` wait; the rest are refused.

    Admitted requests include those whose header is being probed (never those whose body is
    still arriving); `waiting` is what /health reports as the queue length."""

    def __init__(self, workers: int, max_queue: int):
        self.workers = workers
        self.max_queue = max_queue
        self.in_system = 0
        self.refused = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """A place taken, or False (counted as refused) when the queue is full."""
        return self._check(take=True)

    def release(self) -> None:
        with self._lock:
            self.in_system -= 1

    def refuse_if_full(self) -> bool:
        """Whether admit() would refuse now (counted as refused): a request is turned away before
        its body is read, and admitted only once it has been."""
        return not self._check(take=False)

    def _check(self, take: bool) -> bool:
        with self._lock:
            if self.in_system >= self.workers + self.max_queue:
                self.refused += 1
                return False
            self.in_system += take
            return True

    @property
    def running(self) -> int:
        return min(self.in_system, self.workers)

    @property
    def waiting(self) -> int:
        return max(0, self.in_system - self.workers)


class Readers:
    """Uploads being read before they queue (`app.UploadLimit`): at most `max_readers` at once, so
    the memory bodies hold while they arrive is bounded; the rest are refused. Counted on the
    event loop only (the middleware's), so no lock."""

    def __init__(self, max_readers: int):
        self.max_readers = max_readers
        self.reading = 0
        self.refused = 0

    def start(self) -> bool:
        if self.reading >= self.max_readers:
            self.refused += 1
            return False
        self.reading += 1
        return True

    def done(self) -> None:
        self.reading -= 1
