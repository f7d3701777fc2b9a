"""No orphaned workers: after `kill -9` of `emofuse extract --workers 2`, its worker processes
end within seconds and write nothing more into the store (issue 18, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import end_all, alive, children

from emofuse.corpora.base import Corpus, Utterance

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through Linux /proc")


def entries(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.safetensors")}


def test_workers_die_with_a_killed_extract_and_stop_writing(tmp_path, ravdess_root):
    paths = sorted(ravdess_root.glob("Actor_*/*.flac"))[:400]  # minutes of work: it is still running when killed
    corpus = Corpus([Utterance(p.stem, str(p), p.stem[-2:], "x", "x") for p in paths], name="orphans")
    manifest = corpus.write(tmp_path / "m.jsonl")
    store = tmp_path / "store"
    command = [sys.executable, "-c", "from emofuse.cli import main; main()", "extract", str(manifest),
               "--features", "compare_lld", "--align", "none", "--workers", "2", "--out", str(store), "--no-progress"]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert parent.poll() is None, f"extract ended before it could be killed: {parent.stderr.read()!r}"
            workers = {pid: cmd for pid, cmd in children(parent.pid).items() if "spawn_main" in cmd}
            if len(workers) == 2 and entries(store / "frames"):
                break
            time.sleep(0.2)
        assert len(workers) == 2 and entries(store / "frames"), "the workers never started writing"

        parent.send_signal(signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while any(alive(pid) for pid in workers) and time.monotonic() - killed < 5:
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "workers outlived their parent by 5 s"

        written = entries(store)
        time.sleep(2)
        assert entries(store) == written  # nothing more arrives
        assert len(written) < 2 * len(paths)  # the run was really cut short (frames + speech mask each)
    finally:
        end_all(parent, workers)


def test_the_parent_watchdog_alone_ends_a_worker_where_prctl_is_missing():
    # the portable fallback: sys.platform says "darwin", so no parent-death signal is armed
    worker = ("import sys, time; from emofuse.processes import exit_with_parent; "
              "sys.platform = 'darwin'; exit_with_parent(int(sys.argv[1]), poll_seconds=0.1); "
              "sys.platform = 'linux'; print('armed', flush=True); time.sleep(60)")
    launcher = ("import os, subprocess, sys, time; "
                f"child = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())]); "
                "print(child.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "armed"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while alive(child) and time.monotonic() - killed < 3:
            time.sleep(0.05)
        assert not alive(child), "the watchdog did not end the worker within 3 s"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)
