"""A process's lifetime, as every worker emofuse starts needs it: it ends when its parent
does (`exit_with_parent`), and when it ended, the parent can say how (`how_it_ended`).
`emofuse.pool` builds its workers on these."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """End this process when `parent_pid` (the process that started it) dies.

    On Linux the kernel kills it when its parent dies (prctl PR_SET_PDEATHSIG); everywhere, a
    daemon thread also watches the parent's pid and ends the process once it has been
    re-parented. The parent's pid is passed in rather than read here: a worker whose parent
    died before it got this far has already been re-parented, and ends at once. Work written
    atomically (emofuse.io) leaves at most a temporary file that is never read."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: the watchdog below still ends the process
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="emofuse-parent-watchdog", daemon=True).start()


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def how_it_ended(process) -> str:
    """A dead process's end in words: its exit status or the signal that killed it."""
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
