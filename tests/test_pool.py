"""The one worker pool (emofuse.pool): a killed worker fails its own job alone and is replaced,
a silent job times out and its worker is killed and reaped (no zombie), progress restarts a
job's clock, close() and the parent's death leave no process, and the races of restarting,
each forced without a clock."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from helpers import end_all, alive, failing_setup, forking_setup, oserror_setup, pool_handle, pool_setup, reaped, until

from emofuse import pool as pool_module
from emofuse.errors import DataError, EmofuseError, JobFailed, JobTimedOut, WorkerCrashed, WorkersStopped
from emofuse.pool import Pool

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through Linux /proc")


def _hanging_pid(mark: Path) -> int:
    """The pid of the worker that took a ("hang", mark) job, once it has it."""
    assert until(lambda: mark.exists() and mark.read_text(), 60), "the job never reached a worker"
    return int(mark.read_text())


def _our_children(zombies_only: bool = False) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if int(ppid) == os.getpid() and (state == "Z" or not zombies_only):
            found.append(int(entry.name))
    return found


def test_a_killed_workers_job_fails_alone_and_every_other_job_finishes(tmp_path):
    mark = tmp_path / "reached"
    with Pool(pool_setup, pool_handle, ("state",), 2, name="test") as pool:
        victim = pool.submit(("hang", str(mark)), "victim.wav")
        killed = _hanging_pid(mark)
        others = [pool.submit(("echo", k), f"file-{k}.wav") for k in range(6)]
        os.kill(killed, signal.SIGKILL)  # as the OOM killer would
        with pytest.raises(WorkerCrashed) as crashed:
            victim.result(60)
        line = str(crashed.value)
        assert line.startswith("victim.wav: the test worker died while on this job (killed by SIGKILL")
        assert str(killed) not in line and "\n" not in line
        assert [f.result(60) for f in others] == [("state", k) for k in range(6)]
        assert until(lambda: pool.restarts == 1, 60) and killed not in pool.pids and reaped(killed)
        assert pool.submit(("echo", "after"), "after.wav").result(60) == ("state", "after")


def test_a_silent_job_times_out_and_its_worker_is_killed_reaped_and_replaced(tmp_path):
    mark = tmp_path / "reached"
    with Pool(pool_setup, pool_handle, (), 1, job_timeout=1, name="test", timeout_option="option --limit") as pool:
        started = time.monotonic()
        stuck = pool.submit(("hang", str(mark)), "stuck.wav")
        with pytest.raises(JobTimedOut, match=r"^stuck.wav: no answer within the limit of 1 s \(option --limit\)"):
            stuck.result(60)
        assert 1 <= time.monotonic() - started < 60
        hung = int(mark.read_text())
        assert reaped(hung), "the killed worker is left a zombie"
        assert _our_children(zombies_only=True) == []
        fresh = pool.submit(("pid",), "next.wav").result(60)
        assert fresh != hung and pool.timeouts == 1 and pool.restarts == 1


def test_progress_restarts_a_jobs_clock():
    with Pool(pool_setup, pool_handle, (), 1, job_timeout=2) as pool:
        # 8 steps of 0.5 s: 4 s in all, twice the limit, but never 2 s without progress
        assert pool.submit(("steps", 8, 0.5), "long.wav").result(60) == 8
        assert pool.timeouts == 0


def test_what_a_job_raises_is_its_answer_and_the_worker_serves_on():
    with Pool(pool_setup, pool_handle, (), 1) as pool:
        first = pool.submit(("pid",), "a.wav").result(60)
        with pytest.raises(ValueError, match="^broken input$"):
            pool.submit(("raise", "broken input"), "b.wav").result(60)
        with pytest.raises(RuntimeError, match="the result could not be sent back"):
            pool.submit(("unpicklable",), "c.wav").result(60)
        assert pool.submit(("pid",), "d.wav").result(60) == first and pool.restarts == 0


def test_a_setup_error_is_raised_as_itself_and_leaves_no_worker():
    before = set(_our_children())
    with pytest.raises(DataError, match="model.json is missing") as raised:
        Pool(failing_setup, pool_handle, (), 2)
    assert raised.value.path == "/srv/emofuse/models/secret-model"
    assert until(lambda: not set(_our_children()) - before, 10)


def test_a_setup_that_fails_with_any_error_is_one_line_and_leaves_no_worker():
    before = set(_our_children())
    with pytest.raises(EmofuseError, match=r"could not start \(OSError: libsecret.so") as raised:
        Pool(oserror_setup, pool_handle, (), 1)
    assert "Traceback" not in str(raised.value)  # before: "died in its setup (exit status 1)", the cause lost
    assert until(lambda: not set(_our_children()) - before, 10)


def test_a_job_that_cannot_be_sent_gets_its_line_and_the_pool_serves_on():
    with Pool(pool_setup, pool_handle, (), 1) as pool:
        unsendable = pool.submit(("echo", lambda: 1), "lambda.job")  # a lambda does not pickle
        with pytest.raises(JobFailed, match="^lambda.job: the pool job failed"):
            unsendable.result(60)  # before: never settled, and the slot's thread was gone
        assert pool.submit(("echo", 2), "next.job").result(60) == ("ready", 2)


def test_close_ends_every_worker_and_the_children_they_reported():
    pool = Pool(forking_setup, pool_handle, (), 2)
    workers = list(pool.pids)
    forked = [info["child"] for info in pool.info]
    assert all(alive(pid) for pid in workers + forked)
    pool.close()
    assert all(reaped(pid) for pid in workers)  # ended and reaped by close() itself
    assert until(lambda: not any(alive(pid) for pid in forked), 10)
    with pytest.raises(WorkersStopped, match="^late.wav: the pool is shutting down$"):
        pool.submit(("pid",), "late.wav").result(10)


def test_a_timed_out_worker_takes_its_children_with_it(tmp_path):
    mark = tmp_path / "reached"
    with Pool(forking_setup, pool_handle, (), 1, job_timeout=1) as pool:
        child = pool.info[0]["child"]
        with pytest.raises(JobTimedOut):
            pool.submit(("hang", str(mark)), "stuck.wav").result(60)
        assert until(lambda: not alive(child), 10)


def test_the_workers_exit_with_their_parent():
    tests = str(Path(__file__).parent)
    code = (f"import sys, time; sys.path.insert(0, {tests!r}); import helpers; from emofuse.pool import Pool; "
            "pool = Pool(helpers.pool_setup, helpers.pool_handle, (), 2); "
            "print(*pool.pids, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(p) for p in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert until(lambda: not any(alive(p) for p in workers), 5), "workers outlived their parent by 5 s"
    finally:
        end_all(parent, workers)


def test_the_pool_gives_up_after_more_crashes_than_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "MAX_CRASHES", 1)
    with Pool(pool_setup, pool_handle, (), 1, name="test", owner="the run") as pool:
        for k in range(2):  # two deaths within the window: more than allowed
            mark = tmp_path / f"reached-{k}"
            job = pool.submit(("hang", str(mark)), f"crash-{k}.wav")
            os.kill(_hanging_pid(mark), signal.SIGKILL)
            with pytest.raises(WorkerCrashed):
                job.result(60)
        assert until(lambda: pool.broken, 60)
        assert pool.broken_reason == "2 worker crashes within 60 s"
        with pytest.raises(WorkersStopped, match=r"^next.wav: the test workers stopped \(2 worker crashes within 60 s\); "
                                                 "the run needs a restart$"):
            pool.submit(("pid",), "next.wav").result(10)


# ------------------------------------------------ the pool's races, each forced without a clock


class _Ended:
    """What the pool reads of a fake worker's process."""

    exitcode = -9

    def join(self, timeout=None) -> None:
        pass


class _FakeWorker:
    """A stand-in for `pool._Worker` where a real process cannot be made to die at one exact
    instant: records its starts; `ready` decides what its wait_ready does."""

    started: list = []
    ready = staticmethod(lambda worker: {"info": None, "children": []})

    def __init__(self, *_args):
        self.pid = 4_000_000 + len(_FakeWorker.started)  # above any pid_max: nothing real is signalled
        self.conn = self
        self.sent: list = []
        self.process = _Ended()
        _FakeWorker.started.append(self)

    def wait_ready(self, _timeout):
        return type(self).ready(self)

    def alive(self) -> bool:
        return True

    def signal(self, _signum) -> None:
        pass

    def kill(self) -> None:
        pass

    def close(self) -> None:
        pass


def _bare_pool(monkeypatch, slots: int = 1) -> Pool:
    """A Pool whose workers are `_FakeWorker`s and whose serving threads end at once."""
    monkeypatch.setattr(pool_module, "_Worker", _FakeWorker)
    monkeypatch.setattr(_FakeWorker, "started", [])
    with monkeypatch.context() as patched:
        patched.setattr(Pool, "_serve", lambda self, slot: None)
        return Pool(pool_setup, pool_handle, (), slots, name="prediction", owner="the server", wait=False)


def test_close_during_a_restart_starts_no_more_workers(monkeypatch):
    pool = _bare_pool(monkeypatch)
    closed = threading.Event()

    def killed_by_close(_worker):  # a replacement running its setup when close() kills it
        closed.wait(30)
        raise RuntimeError("worker died in its setup (killed by SIGTERM)")

    monkeypatch.setattr(_FakeWorker, "ready", staticmethod(killed_by_close))
    replaced = []
    restart = threading.Thread(target=lambda: replaced.append(pool._replace(0, "worker 1 died")))
    restart.start()
    assert until(lambda: len(_FakeWorker.started) == 2, 10)  # the first fake and its replacement
    pool.close()
    closed.set()
    restart.join(10)
    assert replaced == [False] and len(_FakeWorker.started) == 2 and pool.restarts == 0


def test_a_job_submitted_as_the_pool_breaks_is_answered(monkeypatch):
    pool = _bare_pool(monkeypatch)

    class BreaksBeforePut(queue.Queue):  # the pool gives up between submit's check and its put
        def put(self, item, *args, **kwargs):
            pool.broken_reason = "6 worker crashes within 60 s"
            pool._fail_waiting()  # what the last serving thread does as it leaves
            super().put(item, *args, **kwargs)

    pool._jobs = BreaksBeforePut()
    future = pool.submit(("pid",), "a.wav")
    assert future.done()  # before: waiting for a serving thread that had already left
    with pytest.raises(WorkersStopped, match=r"^a.wav: the prediction workers stopped \(6 worker crashes within "
                                             r"60 s\); the server needs a restart$"):
        future.result(0)


def test_a_job_whose_worker_died_before_it_was_sent_goes_to_the_replacement(monkeypatch):
    pool = _bare_pool(monkeypatch)
    dead = pool._slots[0]

    def refuse(_job):
        dead.alive = lambda: False
        raise BrokenPipeError(32, "Broken pipe")

    dead.alive = lambda: True  # it still looks alive when its thread looks
    dead.send = refuse
    monkeypatch.setattr(_FakeWorker, "send", lambda self, job: self.sent.append(job), raising=False)
    monkeypatch.setattr(_FakeWorker, "answer", lambda self, _timeout: {"result": "answered"}, raising=False)
    future = Future()
    future.set_running_or_notify_cancel()
    pool._on_a_live_worker(0, ("pid",), "a.wav", future)
    assert future.result(0) == "answered"  # not WorkerCrashed "died while on this job"
    assert pool._slots[0] is not dead and pool._slots[0].sent == [("pid",)] and pool.restarts == 1


def test_a_worker_whose_pipe_a_grandchild_still_holds_is_seen_dead():
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent_end, worker_end = context.Pipe()  # worker_end stays open here, as in a forked grandchild
    worker = pool_module._Worker.__new__(pool_module._Worker)
    worker.conn, worker.children = parent_end, []
    worker.process = context.Process(target=time.sleep, args=(0,))
    worker.process.start()
    worker.pid = worker.process.pid
    started = time.monotonic()
    with pytest.raises(EOFError):
        worker.answer(60)  # without the sentinel: no EOF while worker_end is open, so None after a minute
    with pytest.raises(RuntimeError, match="died in its setup"):
        worker.wait_ready(60)
    assert time.monotonic() - started < 30 and not worker.alive() and worker.pids() == []
    worker_end.close()


def test_a_setup_that_no_longer_works_breaks_the_pool_without_naming_its_path(monkeypatch):
    pool = _bare_pool(monkeypatch)

    def cannot_load(_worker):
        raise DataError("/srv/emofuse/models/secret-model", "model.json is missing")

    monkeypatch.setattr(_FakeWorker, "ready", staticmethod(cannot_load))
    assert pool._replace(0, "worker 1 died on other-client.wav (killed by SIGKILL)") is False
    assert pool.broken and "/srv" not in pool.broken_reason and "secret-model" not in pool.broken_reason
    assert "other-client.wav" not in str(pool._refusal("a.wav"))


def test_shutdown_during_a_restart_tells_the_waiting_job_so_in_words(monkeypatch):
    pool = _bare_pool(monkeypatch)
    first = pool._slots[0]
    first.alive = lambda: False  # its thread finds it dead as it takes the job

    def loads_as_the_pool_closes(worker):
        if worker is not first:  # the replacement
            pool._closing = True
        return {"info": None, "children": []}

    monkeypatch.setattr(_FakeWorker, "ready", staticmethod(loads_as_the_pool_closes))
    waiting = Future()
    pool._jobs.put((("pid",), "a.wav", waiting))
    pool._serve(0)
    with pytest.raises(WorkersStopped, match="^a.wav: the server is shutting down$"):
        waiting.result(0)
