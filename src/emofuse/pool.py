"""One pool of worker processes for every stage that spreads work over processes: the service's
prediction workers, feature extraction, folder prediction and the predictor's openSMILE worker.

    Pool(setup, handle, args, workers) ──► N processes, each: state = setup(*args) once
                                                               then handle(state, job, progress) per job
    pool.submit(job, label) ──► Future: what handle returned (or raised)
                                        JobTimedOut / WorkerCrashed / WorkersStopped (emofuse.errors)

Each worker has a thread here that hands it one job at a time from a shared queue and waits for
its answer; `progress(...)` from inside `handle` restarts the job's clock, so a long job that
advances is never cut off while one that falls silent for `job_timeout` seconds is: its future
gets JobTimedOut, its worker is SIGKILLed, reaped and replaced. A worker that dies (the OOM
killer, a crash in a native library) fails only the job it was on (WorkerCrashed) and is
replaced by a fresh one running `setup` again; a job whose worker died before the job was sent
goes to the replacement, and every other job still finishes. A death is seen by the process's
sentinel, not only by EOF on its pipe (a grandchild may hold a copy of it). After more than
MAX_CRASHES deaths within CRASH_WINDOW seconds the pool gives up: every job left, and every
later one, gets WorkersStopped, so a crash loop is left to whoever restarts the whole program.
A timeout does not count toward that: one client's slow files must not mark the pool broken.

What a job's error says (its message) names the job's label, never a path or pid; the log gets
the whole story. Every process ended here is reaped (joined) before the next step, so no zombie
is left behind a kill. No worker outlives this process: each arms `exit_with_parent` before
`setup` runs (PR_SET_PDEATHSIG and a parent-pid watchdog), each process it forks does the same
against it, and `close()` ends every worker and the extra processes `setup` reported
(`Ready.children`), SIGTERM then SIGKILL.

Why not `concurrent.futures.ProcessPoolExecutor`, pebble or loky: ProcessPoolExecutor breaks as
a whole when one worker dies (BrokenProcessPool fails every job in flight) and has no per-job
timeout. pebble's ProcessPool restarts dead workers and has per-task timeouts, but its timeout
runs from the task's start and cannot be reset by progress, and it has no hook to kill a
worker's own children; loky reuses an executor after a crash but still fails every pending job
with it. Neither is a dependency of emofuse; the logic here is the service's worker pool,
tested against each of these failures, made generic.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any, Callable

from emofuse.errors import EmofuseError, JobFailed, JobTimedOut, WorkerCrashed, WorkersStopped, first_line
from emofuse.processes import exit_with_parent, how_it_ended, parent_of

START_TIMEOUT = 600.0  # seconds for a worker's setup (loading a model)
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL at close()
# A dead worker is replaced; more than MAX_CRASHES deaths within CRASH_WINDOW seconds and the pool
# gives up: a crash loop is a problem for whoever restarts the whole program.
MAX_CRASHES = 5
CRASH_WINDOW = 60.0
IDLE_CHECK_SECONDS = 1.0  # how often an idle worker's thread checks that its worker still lives
log = logging.getLogger(__name__)


@dataclass
class Ready:
    """What `setup` may return instead of its state alone: `info` is sent to the parent once
    (`Pool.info`), `children` are pids of processes the worker started that die with it."""

    state: Any
    info: Any = None
    children: tuple[int, ...] = ()


# ------------------------------------------------------------------ inside a worker
def _worker_main(conn, setup: Callable, args: tuple, handle: Callable, parent_pid: int, parents_end=None) -> None:
    """A worker process: run `setup(*args)` once, say so, then answer jobs from `conn` one at a
    time until None or EOF. Messages are pickled between two processes of the same program
    (nothing from a client is unpickled). parents_end: the parent's end of the pipe, which a
    forked worker inherits and drops."""
    if parents_end is not None:
        parents_end.close()
    exit_with_parent(parent_pid)  # armed before setup: a dead parent loads nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    worker_pid = os.getpid()
    # A process forked from here (the Predictor's openSMILE worker) drops its copy of this pipe,
    # so the parent sees EOF the moment this worker dies, and dies with this worker from its
    # first instruction on.
    os.register_at_fork(after_in_child=lambda: (conn.close(), exit_with_parent(worker_pid)))
    try:
        made = setup(*args)
    except EmofuseError as exc:  # a line for the user (a model that does not load): the parent raises it
        conn.send({"error": _portable(exc)})
        return
    except Exception as exc:  # noqa: BLE001 -- any other failure: its type and first line, not a traceback
        log.exception("emofuse: a worker's setup failed")
        conn.send({"error": EmofuseError(f"the worker could not start ({first_line(exc)})")})
        return
    ready = made if isinstance(made, Ready) else Ready(made)
    conn.send({"info": ready.info, "children": list(ready.children)})
    state = ready.state
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if job is None:
            return
        try:
            message = {"result": handle(state, job, lambda *done: conn.send({"progress": done}))}
        except Exception as exc:  # noqa: BLE001 -- one job's failure is its answer, never the worker's end
            message = {"raised": _portable(exc)}
        try:
            conn.send(message)  # pickled whole before a byte is written: a failure here sends nothing
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent is gone
            return
        except Exception as exc:  # noqa: BLE001 -- a result that does not pickle
            conn.send({"raised": RuntimeError(f"the result could not be sent back ({first_line(exc)})")})


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling both ways (so the parent can raise it as itself), else a
    RuntimeError holding its type and first line."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 -- an exception whose arguments do not rebuild it
        return RuntimeError(first_line(exc))


# ------------------------------------------------------------------ a worker, seen from the parent
class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, setup: Callable, args: tuple, handle: Callable, name: str):
        self.conn, child = context.Pipe()
        # not a daemon: daemonic processes may not start children (the Predictor forks its
        # openSMILE worker); close() ends it instead
        forked = context.get_start_method() == "fork"  # (a spawned worker gets only what is passed)
        self.process = context.Process(target=_worker_main, name=f"emofuse-{name}-worker",
                                       args=(child, setup, args, handle, os.getpid(), self.conn if forked else None))
        self.process.start()
        child.close()  # only the worker holds its end (its forks drop theirs: `_worker_main`)
        self.pid = self.process.pid
        self.children: list[int] = []

    def _receive(self, timeout: float | None) -> dict | None:
        """The worker's next message; None after `timeout` seconds; EOFError once it died. The
        sentinel is watched beside the pipe: a process still holding a copy of the pipe's other
        end (a grandchild forked before it could drop it) keeps EOF from coming."""
        ready = wait([self.conn, self.process.sentinel], timeout)
        if not ready:
            return None
        if self.conn.poll(0):  # a message (or EOF, which recv raises) comes before the death it preceded
            return self.conn.recv()
        raise EOFError(f"worker {self.pid} ended")

    def wait_ready(self, timeout: float) -> dict:
        """The worker's hello once `setup` returned; setup's EmofuseError raised as itself."""
        try:
            hello = self._receive(timeout)
        except (EOFError, OSError):
            raise RuntimeError(f"worker {self.pid} died in its setup ({how_it_ended(self.process)})") from None
        if hello is None:
            raise TimeoutError(f"worker {self.pid} did not finish its setup within {timeout:g} s")
        if "error" in hello:
            raise hello["error"]
        self.children = list(hello["children"])
        return hello

    def alive(self) -> bool:
        """False once the process has ended (its sentinel is ready), reaped or not."""
        return not wait([self.process.sentinel], 0)

    def answer(self, timeout: float | None) -> dict | None:
        """The answer to the job just sent ({"result"} or {"raised"}); None when `timeout`
        seconds pass without it or any progress (each progress message starts the wait again).
        EOFError when the worker died."""
        while True:
            message = self._receive(timeout)  # timeout None: wait as long as it takes
            if message is None or "progress" not in message:
                return message

    def pids(self) -> list[int]:
        """The pids still this worker's to signal: its own until it is reaped, its children's
        while it is their parent (after that the pid may be anyone's)."""
        if self.process.exitcode is not None:  # reaped: the kernel may reuse the pid; its children died with it
            return []
        return [self.pid] + [pid for pid in self.children if parent_of(pid) == self.pid]

    def signal(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the worker and its children (one that does not answer may not heed SIGTERM),
        then reap it: no zombie stays behind."""
        self.signal(signal.SIGKILL)
        self.process.join(timeout=30)  # SIGKILL cannot be caught: only a process stuck in the kernel takes long
        self.conn.close()


def _end(workers: list[_Worker], grace: float = STOP_GRACE) -> None:
    """SIGTERM every worker and its children, SIGKILL whatever is left after `grace` seconds,
    and reap each worker."""
    for w in workers:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.process.exitcode is None:
            w.kill()
        w.conn.close()


# ------------------------------------------------------------------ the pool
class Pool:
    """`workers` processes running `setup(*args)` once and `handle(state, job, progress)` per job
    (module docstring). setup and handle must be importable (module-level functions) for the
    default 'spawn' context; context="fork" starts a worker at once with this process's modules.

    job_timeout: seconds a job may go without progress (None: no limit). name: what the workers
    are, in lines ("the prediction worker died ..."); owner: who must be restarted when the pool
    gives up ("the server"); timeout_option: where the limit is set, named in JobTimedOut's line.
    wait=False returns at once; `started()` then waits for the workers' setup (jobs submitted
    before wait in the queue)."""

    def __init__(self, setup: Callable, handle: Callable, args: tuple = (), workers: int = 1, *,
                 job_timeout: float | None = None, context: str = "spawn", name: str = "pool",
                 owner: str = "the pool", timeout_option: str | None = None,
                 start_timeout: float = START_TIMEOUT, wait: bool = True):
        self._context = get_context(context)  # spawn: a fresh interpreter, no threads or locks copied
        self._setup, self._handle, self._args = setup, handle, tuple(args)
        self.workers = workers
        self.job_timeout = job_timeout or None  # 0: no limit
        self.name, self.owner, self.timeout_option = name, owner, timeout_option
        self.max_crashes, self.crash_window = MAX_CRASHES, CRASH_WINDOW
        self.start_timeout = start_timeout
        self.restarts = 0
        self.timeouts = 0
        self.broken_reason: str | None = None  # no path, no label: what every job refused is told
        self.info: list = [None] * workers  # each first worker's Ready.info
        self._crashes: list[float] = []  # monotonic times of worker deaths within the window
        self._lock = threading.Lock()  # also orders close() against a worker being started
        self._jobs: queue.Queue = queue.Queue()
        self._closing = False
        self._start_error: BaseException | None = None
        self._ready = [threading.Event() for _ in range(workers)]
        self._slots = [_Worker(self._context, setup, self._args, handle, name) for _ in range(workers)]  # in parallel
        for slot in range(workers):
            threading.Thread(target=self._serve, args=(slot,), name=f"emofuse-{name}-{slot}", daemon=True).start()
        if wait:
            self.started()

    def started(self, timeout: float | None = None) -> None:
        """Wait until every first worker has run its setup; raise setup's EmofuseError, or an
        EmofuseError saying why the workers did not start (the pool is closed then)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self._ready:
            if not event.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                self.close()
                raise EmofuseError(f"the {self.name} workers did not start within {timeout:g} s")
        if self._start_error is not None:
            self.close()
            if isinstance(self._start_error, EmofuseError):  # the worker's own line (a bad model directory)
                raise self._start_error
            raise EmofuseError(f"the {self.name} workers did not start: {first_line(self._start_error)}")

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._slots]

    @property
    def broken(self) -> bool:
        """The pool gave up replacing workers: it takes no more jobs."""
        return self.broken_reason is not None

    def submit(self, job, label: str) -> Future:
        """Run `job` on the next free worker; `label` names it in error lines (never a path)."""
        future: Future = Future()
        if self.broken_reason is not None or self._closing:
            future.set_exception(self._refusal(label))
            return future
        self._jobs.put((job, label, future))
        # The pool may have broken (or closed) between the check above and the put, after every
        # serving thread drained the queue and left: then no one else would ever answer it.
        if self.broken_reason is not None or self._closing:
            self._fail_waiting()
        return future

    def _serve(self, slot: int) -> None:
        """Start worker `slot`, then hand it jobs one at a time; replace it when it dies."""
        try:
            self.info[slot] = self._slots[slot].wait_ready(self.start_timeout)["info"]
        except Exception as exc:  # noqa: BLE001 -- raised by started(); nothing more is served
            with self._lock:
                self._start_error = self._start_error or exc
                if not self._closing:
                    self.broken_reason = self.broken_reason or f"a {self.name} worker could not start (see the log)"
                    log.error("emofuse: a %s worker could not start: %s", self.name, first_line(exc))
        finally:
            self._ready[slot].set()
        while not self._closing and self.broken_reason is None:
            try:
                item = self._jobs.get(timeout=IDLE_CHECK_SECONDS)
            except queue.Empty:  # idle: a worker that died between jobs is replaced now, not on the next job
                worker = self._slots[slot]
                if not worker.alive() and not self._closing:
                    self._replace(slot, f"worker {worker.pid} died while idle ({how_it_ended(worker.process)})")
                continue
            if item is None:
                break
            job, label, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                self._on_a_live_worker(slot, job, label, future)
            except Exception as exc:  # noqa: BLE001 -- a job that does not pickle, an answer that does not unpickle:
                # the job gets its line, and the worker (its pipe in an unknown state) is replaced
                log.exception("emofuse: %s worker slot %d failed on %s", self.name, slot, label)
                if not future.done():
                    future.set_exception(JobFailed(label, f"the {self.name} job failed ({first_line(exc)})"))
                self._slots[slot].kill()
                self._replace(slot, f"its serving thread failed on {label} ({first_line(exc)})", crash=False)
        self._fail_waiting()

    def _on_a_live_worker(self, slot: int, job, label: str, future: Future) -> None:
        """Run `job` on worker `slot` and settle `future`: the answer; WorkerCrashed when the worker
        died on it, JobTimedOut when it fell silent (settled before the replacement loads);
        WorkersStopped when the pool gave up or is closing."""
        while True:
            worker = self._slots[slot]
            if not worker.alive() and not self._replace(slot, f"worker {worker.pid} died "
                                                              f"({how_it_ended(worker.process)})"):
                future.set_exception(self._refusal(label))
                return
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
                    future.set_exception(self._refusal(label))
                    return
                how = how_it_ended(worker.process)
                log.warning("emofuse: %s worker %d died on %s (%s); starting a new one", self.name, worker.pid,
                            label, how)
                future.set_exception(WorkerCrashed(label, f"the {self.name} worker died while on this job ({how}); "
                                                          "a new worker was started"))
                self._replace(slot, f"worker {worker.pid} died on {label} ({how})")
                return
            if answer is None:  # alive but silent: it will not answer, and holds a worker
                worker.kill()
                with self._lock:
                    self.timeouts += 1
                log.warning("emofuse: %s worker %d gave no answer on %s within %g s; killed", self.name,
                            worker.pid, label, self.job_timeout)
                where = f" ({self.timeout_option})" if self.timeout_option else ""
                future.set_exception(JobTimedOut(label, f"no answer within the limit of {self.job_timeout:g} s{where}; "
                                                        "its worker was stopped and a new one started"))
                # Not a crash: the pool is sound and a timeout already costs its caller the whole
                # limit, so slow inputs alone cannot restart workers fast.
                self._replace(slot, f"worker {worker.pid} gave no answer on {label} within {self.job_timeout:g} s",
                              crash=False)
                return
            if "raised" in answer:
                future.set_exception(answer["raised"])
            else:
                future.set_result(answer["result"])
            return

    def _refusal(self, label: str) -> WorkersStopped:
        """What a job the pool will not run is told."""
        if self.broken_reason is not None:
            return WorkersStopped(label, f"the {self.name} workers stopped ({self.broken_reason}); "
                                         f"{self.owner} needs a restart")
        return WorkersStopped(label, f"{self.owner} is shutting down")

    def _replace(self, slot: int, why: str, crash: bool = True) -> bool:
        """A fresh worker in slot `slot`; False when the pool is closing, or (the pool broken)
        after too many crashes. `why` (for the log only: it may name a job's label) says what
        happened to the old one. crash=False (a worker killed for its time limit): only deaths
        of fresh workers count."""
        while True:
            now = time.monotonic()
            with self._lock:
                if self._closing:
                    return False
                self._crashes = [t for t in self._crashes if now - t <= self.crash_window] + ([now] if crash else [])
                crash = True  # a fresh worker dying in its setup is a crash
                if len(self._crashes) > self.max_crashes and self.broken_reason is None:
                    log.error("emofuse: %d %s worker crashes within %g s, the last: %s; giving up",
                              len(self._crashes), self.name, self.crash_window, why)
                    self.broken_reason = f"{len(self._crashes)} worker crashes within {self.crash_window:g} s"
                if self.broken_reason is not None:
                    break
                old = self._slots[slot]
            _end([old], grace=0.5)
            with self._lock:  # close() either sees this worker in the slot or it is never started
                if self._closing:
                    return False
                fresh = _Worker(self._context, self._setup, self._args, self._handle, self.name)
                self._slots[slot] = fresh
            try:
                fresh.wait_ready(self.start_timeout)
            except EmofuseError as exc:  # setup fails for good (the model no longer loads): restarting cannot help
                log.error("emofuse: a restarted %s worker cannot start: %s", self.name, exc)
                with self._lock:
                    if not self._closing:
                        self.broken_reason = "a restarted worker cannot start (see the log)"
                break
            except Exception as exc:  # noqa: BLE001 - it died in its setup: that is one more crash
                if self._closing:  # close() stopped it: nothing more is started
                    return False
                why = first_line(exc)
                continue
            if self._closing:
                _end([fresh])
                return False
            with self._lock:
                self.restarts += 1
            return True
        self._fail_waiting()
        return False

    def _fail_waiting(self) -> None:
        """Every queued job gets the broken pool's answer (or closing's)."""
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[2].set_running_or_notify_cancel():
                item[2].set_exception(self._refusal(item[1]))

    def close(self) -> None:
        """End every worker and its children (SIGTERM, then SIGKILL) and reap them; jobs not yet
        answered get WorkersStopped."""
        with self._lock:  # after this, `_replace` starts no worker
            self._closing = True
            slots = list(self._slots)
        for _ in slots:
            self._jobs.put(None)
        _end(slots)
        self._fail_waiting()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
