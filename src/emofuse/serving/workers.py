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

A worker that dies (the OOM killer, a crash in a native library) is replaced by a fresh one
that loads the model the same way; the request it was on is answered 500 in one line, /health
counts the restarts, and only after more than MAX_CRASHES deaths within CRASH_WINDOW seconds
does the pool give up (503, /health "broken"). A death is seen by the process's sentinel, not
only by EOF on its pipe, and a job whose worker died before it was sent goes to the
replacement. What a client reads names no server path, pid or other client's file; the server
logs the whole story.

A worker that lives but never answers (a native deadlock, a pathological input) is cut off by
the per-job limit (`job_timeout`, `emofuse serve --job-timeout`): a job that makes no progress
for that long is answered 504 in one line naming the file and the limit, its worker is killed
(SIGKILL) and replaced the same way, and /health counts it (`workers.timeouts`). Progress is
the job's answer, or for a recording predicted per segment each batch of segments the worker
reports, so an hour-long upload is not cut off while it advances. The limit needs worker
processes: a thread of the server cannot be stopped, so with `--workers 0` there is none.

Each worker builds the Predictor the in-process engine builds (`predictor_options`, e.g.
`verify=False` for `--no-verify`), as `emofuse predict --workers` does for folder workers.

No process outlives the server: on shutdown `close()` ends every worker (SIGTERM, then
SIGKILL) and the Predictor's openSMILE worker; after `kill -9` of the server each worker is
killed by the kernel (prctl PR_SET_PDEATHSIG, with a parent-pid watchdog), and each openSMILE
worker by the same signal armed against its own parent: no process outlives the server.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path

from emofuse.errors import JobTimedOut, WorkerCrashed, WorkersStopped
from emofuse.serving.jobs import Job, failed, one_line, run_job

WORKER_START_TIMEOUT = 600.0  # seconds for every worker to load its model
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a worker at shutdown
# A dead worker is replaced; more than MAX_CRASHES deaths within CRASH_WINDOW seconds and the pool
# gives up (503 "broken"): a crash loop is a problem for whoever restarts the whole service.
MAX_CRASHES = 5
CRASH_WINDOW = 60.0
IDLE_CHECK_SECONDS = 1.0  # how often an idle worker's thread checks that its worker still lives
DEFAULT_JOB_TIMEOUT = 300.0  # --job-timeout: seconds a job may go without progress before 504
# Tests only: a worker started with this variable set to a file name sleeps on a job of that name,
# as a deadlocked worker would. Read from the worker's environment, which no client can set.
HANG_FOR_TESTS = "EMOFUSE_TEST_WORKER_HANGS_ON"
HANG_MARK_FOR_TESTS = "EMOFUSE_TEST_WORKER_HANG_MARK"  # a file the hanging worker creates: the job reached it
log = logging.getLogger(__name__)


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
    """SIGTERM each pid, then SIGKILL whatever is still there after `grace` seconds. Callers pass
    only pids still known to be theirs (`_Worker.pids`): a reaped pid may be another program's."""
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


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


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

    job_timeout = None  # a thread cannot be stopped: the per-job limit needs worker processes
    timeouts = 0

    def __init__(self, model_dir: str | Path, threads: int | None = None, predictor=None,
                 predictor_options: dict | None = None):
        from emofuse.inference.predictor import Predictor

        self.predictor = predictor or Predictor(model_dir, warm=True, threads=threads, **(predictor_options or {}))
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
        if self._frames_pid is not None and _parent_of(self._frames_pid) == os.getpid():  # else: ended, pid free
            _stop([self._frames_pid])


# ------------------------------------------------------------------ worker processes
def _worker_main(conn, model_dir: str, threads: int | None, parent_pid: int, options: dict) -> None:
    """A worker process: load the model once (Predictor keyword arguments `options`), say so, then
    answer jobs from `conn` one at a time, with {"progress": seconds} messages before the answer of
    a recording predicted per segment.

    Jobs come from the server and answers go back to it over a pipe between two processes of
    the same program (multiprocessing pickles them; nothing from a client is unpickled)."""
    from emofuse.processes import exit_with_parent

    exit_with_parent(parent_pid)  # armed before the model loads: a dead server loads nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server decides
    from emofuse.errors import EmofuseError
    from emofuse.inference.predictor import Predictor

    # A process forked from here (the Predictor's openSMILE worker) drops its copy of this pipe,
    # so the server sees EOF the moment this worker dies, and dies with this worker from its
    # first instruction on, even if this worker dies before `_arm_frames_worker` could arm it.
    os.register_at_fork(after_in_child=lambda: (conn.close(), exit_with_parent(worker_pid)))
    worker_pid = os.getpid()
    try:
        predictor = Predictor(model_dir, warm=True, threads=threads, **options)
    except EmofuseError as exc:  # an EmofuseError does not cross the process boundary as itself
        conn.send({"error": str(exc)})
        return
    conn.send({"pid": os.getpid(), "frames_pid": _arm_frames_worker(predictor),
               "describe": predictor.describe(), "load_seconds": predictor.load_seconds})
    _answer_jobs(conn, predictor)


def _answer_jobs(conn, predictor) -> None:
    """A worker's loop: each job from `conn` answered on `conn` until None or EOF. Nothing one job
    does (an answer that cannot be rendered or pickled) ends the loop: the worker and its loaded
    model serve the next request."""
    hangs_on = os.environ.get(HANG_FOR_TESTS)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if job is None:
            return
        if hangs_on is not None and job.name == hangs_on:
            mark = os.environ.get(HANG_MARK_FOR_TESTS)
            if mark:
                Path(mark).touch()  # tests only: the job is on this worker now
            time.sleep(24 * 3600)
        try:
            answer = run_job(predictor, job, progress=lambda done, _total: conn.send({"progress": done}))
        except Exception as exc:  # noqa: BLE001 -- run_job answers its own errors; this is a last resort
            answer = failed("JobFailed", job.name, f"prediction failed ({one_line(exc, job)})")
        try:
            conn.send(answer)  # pickled whole before a byte is written: a failure here sends nothing
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the server is gone
            return
        except Exception as exc:  # noqa: BLE001 -- an answer that does not pickle
            conn.send(failed("JobFailed", job.name, f"the prediction could not be sent back ({one_line(exc, job)})"))


class WorkersBroken(WorkersStopped):
    """The pool gave up restarting workers (too many crashes), or is shutting down: its message
    is the line a client reads after its file's name."""


def _how_it_ended(process) -> str:
    process.join(timeout=1.0)
    code = process.exitcode
    if code is None:
        return "its pipe closed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exit status {code}"


class _Worker:
    """One worker process and the server's end of its pipe."""

    def __init__(self, context, model_dir: str, threads: int | None, options: dict):
        self.conn, child = context.Pipe()
        # not a daemon: daemonic processes may not start children, and the Predictor starts
        # its openSMILE worker; close() ends it instead
        self.process = context.Process(target=_worker_main, args=(child, model_dir, threads, os.getpid(), options),
                                       name="emofuse-serve-worker")
        self.process.start()
        child.close()  # only the worker holds its end (its forks drop theirs: `_worker_main`)
        self.pid = self.process.pid
        self.frames_pid: int | None = None

    def _receive(self, timeout: float | None) -> dict | None:
        """The worker's next message; None after `timeout` seconds; EOFError once it died. The
        process's sentinel is watched beside the pipe: a process still holding a copy of the
        pipe's other end (a grandchild forked before it could drop it) keeps EOF from coming."""
        ready = wait([self.conn, self.process.sentinel], timeout)
        if not ready:
            return None
        if self.conn.poll(0):  # a message (or EOF, which recv raises) comes before the death it preceded
            return self.conn.recv()
        raise EOFError(f"worker {self.pid} ended")

    def wait_ready(self, timeout: float) -> dict:
        """The worker's hello once its model is loaded; ConfigError for a model it cannot load."""
        from emofuse.errors import ConfigError

        try:
            hello = self._receive(timeout)
        except (EOFError, OSError):
            raise RuntimeError(f"worker {self.pid} died while loading the model ({_how_it_ended(self.process)})") \
                from None
        if hello is None:
            raise TimeoutError(f"worker {self.pid} did not load the model within {timeout:g} s")
        if "error" in hello:
            raise ConfigError(hello["error"])
        self.frames_pid = hello["frames_pid"]
        return hello

    def alive(self) -> bool:
        """False once the process has ended (its sentinel is ready), reaped or not."""
        return not wait([self.process.sentinel], 0)

    def answer(self, timeout: float | None) -> dict | None:
        """The answer to the job just sent; None when `timeout` seconds pass without it or any
        progress (each progress message starts the wait again). EOFError when the worker died."""
        while True:
            message = self._receive(timeout)  # timeout None: wait as long as it takes
            if message is None or "progress" not in message:
                return message

    def pids(self) -> list[int]:
        """The pids still this worker's to signal: its own until it is reaped, its openSMILE
        worker's while this worker is its parent (after that the pid may be anyone's)."""
        if self.process.exitcode is not None:  # reaped: the kernel may reuse the pid; its child died with it
            return []
        return [self.pid] + ([self.frames_pid] if self.frames_pid and _parent_of(self.frames_pid) == self.pid else [])

    def kill(self) -> None:
        """SIGKILL the worker and its openSMILE worker: one that does not answer may not heed SIGTERM."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class ProcessEngine:
    """N spawned worker processes, each with the model loaded once (`--workers N`).

    Each worker has a thread in the server that hands it one job at a time from a shared queue
    and waits for its answer. A worker that dies (the OOM killer, a segfault in a native
    library) is replaced by a fresh process loading the model the same way; the request it was
    answering gets a one-line 500 saying so, and /health counts the restarts. After more than
    MAX_CRASHES deaths within CRASH_WINDOW seconds the pool gives up: every request is 503 and
    /health answers 503 "broken", so that an orchestrator restarts the whole service (a file
    that crashes a decoder, sent again and again, must not keep the server loading models).

    What clients read (`broken_reason`, the 500 and 503 lines) names no server path, pid or
    other client's file; the full story of each death goes to the server's log.

    job_timeout: seconds a job may go without progress before it is answered 504 and its worker
    killed and replaced (None: no limit). predictor_options: keyword arguments of every
    worker's Predictor (`verify=False` for `--no-verify`)."""

    def __init__(self, model_dir: str | Path, workers: int, threads: int | None = None,
                 predictor_options: dict | None = None, job_timeout: float | None = DEFAULT_JOB_TIMEOUT):
        self._context = get_context("spawn")  # a fresh interpreter: no server threads or locks copied
        self._model_dir, self._threads, self._options = str(model_dir), threads, dict(predictor_options or {})
        self.workers = workers
        self.job_timeout = job_timeout or None  # 0: no limit
        self.restarts = 0
        self.timeouts = 0
        self.broken_reason: str | None = None  # for clients and /health: no path, no file name
        self._crashes: list[float] = []  # monotonic times of worker deaths within the window
        self._lock = threading.Lock()  # also orders close() against a worker being started
        self._jobs: queue.Queue = queue.Queue()
        self._closing = False
        self._slots = [_Worker(self._context, self._model_dir, threads, self._options) for _ in range(workers)]  # load in parallel
        try:
            answers = [w.wait_ready(WORKER_START_TIMEOUT) for w in self._slots]
        except Exception as exc:
            self.close()
            from emofuse.errors import EmofuseError

            if isinstance(exc, EmofuseError):  # the worker's own line (a bad model directory)
                raise
            raise EmofuseError(f"the worker processes did not start: {type(exc).__name__}: {exc}") from None
        self.description = answers[0]["describe"]
        self.load_seconds = max(a["load_seconds"] for a in answers)
        for slot in range(workers):
            threading.Thread(target=self._serve, args=(slot,), name=f"emofuse-worker-{slot}", daemon=True).start()

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._slots]

    @property
    def broken(self) -> bool:
        """The pool gave up restarting workers: the service takes no more jobs until a restart."""
        return self.broken_reason is not None

    def submit(self, job: Job) -> Future:
        if self.broken_reason is not None:
            raise WorkersBroken(self._closed_or_broken())
        future: Future = Future()
        self._jobs.put((job, future))
        # The pool may have broken (or closed) between the check above and the put, after every
        # serving thread drained the queue and left: then no one else would ever answer it.
        if self.broken_reason is not None or self._closing:
            self._fail_waiting()
        return future

    def _serve(self, slot: int) -> None:
        """Hand jobs to worker `slot`, one at a time; replace the worker when it dies."""
        while not self._closing and self.broken_reason is None:
            try:
                item = self._jobs.get(timeout=IDLE_CHECK_SECONDS)
            except queue.Empty:  # idle: a worker that died between jobs is replaced now, not on the next job
                if not self._slots[slot].alive() and not self._closing:
                    self._replace(slot, f"worker {self._slots[slot].pid} died while idle "
                                        f"({_how_it_ended(self._slots[slot].process)})")
                continue
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            answer = self._on_a_live_worker(slot, job, future)
            if answer is _BROKEN:
                break
            if answer is not None:
                future.set_result(answer)
        self._fail_waiting()

    def _on_a_live_worker(self, slot: int, job: Job, future: Future):
        """The job's answer; None when `future` is answered already (a 500 or 504 line when its
        worker died or fell silent on it: answered before the replacement loads; shutdown);
        _BROKEN when the pool gave up."""
        while True:
            worker = self._slots[slot]
            if not worker.alive() and not self._replace(
                    slot, f"worker {worker.pid} died ({_how_it_ended(worker.process)})"):
                future.set_exception(WorkersBroken(self._closed_or_broken()))
                return _BROKEN
            worker = self._slots[slot]
            try:
                worker.conn.send(job)
            except (BrokenPipeError, ConnectionResetError, EOFError):  # it died before it had the job:
                worker.process.join(timeout=5)  # (its sentinel follows its pipe at once)
                continue  # the job is not what killed it, so the next worker takes it
            try:
                answer = worker.answer(self.job_timeout)
            except (EOFError, OSError):  # the worker died on this job
                if self._closing:
                    future.set_exception(WorkersBroken(self._closed_or_broken()))
                    return None
                how = _how_it_ended(worker.process)
                log.warning("emofuse serve: worker %d died on %s (%s); starting a new one", worker.pid, job.name, how)
                future.set_exception(WorkerCrashed(f"the prediction worker died while on this request ({how}); "
                                                   "a new worker is started: send it again, unless this file "
                                                   "is what crashes it"))
                self._replace(slot, f"worker {worker.pid} died on {job.name} ({how})")
                return None
            if answer is not None:
                return answer
            # alive but silent: it will not answer, and holds a worker and a queue place
            worker.kill()
            with self._lock:
                self.timeouts += 1
            log.warning("emofuse serve: worker %d gave no answer on %s within %g s; killed", worker.pid, job.name,
                        self.job_timeout)
            future.set_exception(JobTimedOut(f"no answer within the limit of {self.job_timeout:g} s (server "
                                              "option --job-timeout); its worker was stopped and a new one started"))
            # Not a crash: the pool is sound and a timeout already costs its client the whole
            # limit, so slow inputs alone cannot reload models fast; counting them toward
            # MAX_CRASHES would let one client's slow files mark the whole service broken.
            self._replace(slot, f"worker {worker.pid} gave no answer on {job.name} within {self.job_timeout:g} s",
                          crash=False)
            return None

    def _closed_or_broken(self) -> str:
        """What a job the pool will not run is told (after the client's file name)."""
        if self.broken_reason is not None:
            return f"the prediction workers stopped ({self.broken_reason}); the server needs a restart"
        return "the server is shutting down"

    def _replace(self, slot: int, why: str, crash: bool = True) -> bool:
        """A fresh worker in slot `slot`; False when the server is closing, or (the pool broken)
        after too many crashes. `why` (for the log only: it may name a client's file) says what
        happened to the old one. crash=False (a worker killed for its time limit): only deaths
        of fresh workers count."""
        from emofuse.errors import EmofuseError

        while True:
            now = time.monotonic()
            with self._lock:
                if self._closing:
                    return False
                self._crashes = [t for t in self._crashes if now - t <= CRASH_WINDOW] + ([now] if crash else [])
                crash = True  # a fresh worker dying while it loads is a crash
                if len(self._crashes) > MAX_CRASHES and self.broken_reason is None:
                    log.error("emofuse serve: %d worker crashes within %g s, the last: %s; giving up",
                              len(self._crashes), CRASH_WINDOW, why)
                    self.broken_reason = f"{len(self._crashes)} worker crashes within {CRASH_WINDOW:g} s"
                if self.broken_reason is not None:
                    break
                old = self._slots[slot]
                old_pids = old.pids()
            _stop(old_pids, grace=0.5)
            old.conn.close()
            with self._lock:  # close() either sees this worker in the slot or it is never started
                if self._closing:
                    return False
                fresh = _Worker(self._context, self._model_dir, self._threads, self._options)
                self._slots[slot] = fresh
            try:
                fresh.wait_ready(WORKER_START_TIMEOUT)
            except EmofuseError as exc:  # the model no longer loads: restarting again cannot help
                log.error("emofuse serve: a restarted worker cannot load the model: %s", exc)
                with self._lock:
                    if not self._closing:
                        self.broken_reason = "a restarted worker cannot load the model (see the server's log)"
                break
            except Exception as exc:  # noqa: BLE001 - it died while loading: that is one more crash
                if self._closing:  # close() stopped it: nothing more is started
                    return False
                why = f"{type(exc).__name__}: {exc}"
                continue
            if self._closing:
                _stop(fresh.pids())
                return False
            with self._lock:
                self.restarts += 1
            return True
        self._fail_waiting()
        return False

    def _fail_waiting(self) -> None:
        """Every queued job gets the broken pool's answer (or shutdown's)."""
        reason = self._closed_or_broken()
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_exception(WorkersBroken(reason))

    def close(self) -> None:
        with self._lock:  # after this, `_replace` starts no worker
            self._closing = True
            slots = list(self._slots)
        for _ in slots:
            self._jobs.put(None)
        _stop([pid for w in slots for pid in w.pids()])
        for w in slots:
            w.conn.close()
        self._fail_waiting()


_BROKEN = object()  # `_on_a_live_worker`: the pool gave up; the serving thread ends


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
