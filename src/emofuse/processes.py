"""Worker processes that never outlive the process that started them.

Extraction, folder prediction and the service all spread work over spawned processes. After
`kill -9` of the parent nothing closes their pools, so without help the workers live on
(and an extraction worker keeps writing into the store). A worker's initializer calls
`exit_with_parent(parent_pid)` first, before any slow loading.
"""

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
