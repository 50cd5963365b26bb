"""Starting the local stack's processes (servers, services, the simulator) either tied to
whoever started them, as the tests want, or in sessions of their own, as `baton dev run` does.

A test run can be killed at any moment: SIGKILL of pytest, of one of its xdist workers, or
of the whole process group (a CI timeout). What it started must end with it, or it holds
ports, files and CPU until someone finds it. A process started tied is therefore

- in its starter's process group, so that a kill of the group reaches it directly; and
- (Linux) sent `death_signal` by the kernel when its starter dies, however it dies, even
  alone: prctl(PR_SET_PDEATHSIG), set in the child between fork and exec.

`baton dev run` starts its processes in sessions of their own and with no death signal: the
terminal's Ctrl-C reaches only it, and it stops them in order. A test that runs `baton dev
run` itself starts it in a session of its own too, with SIGTERM as its death signal: if the
test run dies, it stops its stack as `make stop` has it do.

The kernel's "parent" there is the *thread* that forked the child, not the process: a server
started from a worker thread (`asyncio.to_thread`, a thread pool: the chaos runs and the
cluster tests restart servers so) would be killed as soon as that thread ends. So every tied
process is forked by one thread of our own that lives as long as the process does
(`_forker`), whichever thread asks. A watchdog process was the alternative; it would itself
have to survive the kill it watches for, and know pids that may have been reused by then.

The signal is set from Python code run in the child before exec (`preexec_fn`), which
CPython warns may deadlock in a process with threads: a lock another thread held at the fork
stays held in the child. What runs there takes none: a libc function resolved beforehand
and `os.getppid`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_forker_lock = threading.Lock()
_forker_pool: ThreadPoolExecutor | None = None


def start_process(
    command: Sequence[str],
    *,
    own_session: bool = False,
    death_signal: signal.Signals | None = signal.SIGKILL,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(command, **popen)`, in its starter's process group or with
    `own_session` in a session of its own (out of reach of its starter's terminal and
    group), and sent `death_signal` when its starter dies (see the module; PostgreSQL's
    postmaster wants SIGQUIT, which takes its own processes down with it). None: nothing
    ties it to its starter, which it outlives."""
    if death_signal is None or sys.platform != "linux":  # no parent-death signal there
        return subprocess.Popen(command, start_new_session=own_session, **popen)
    tie = _tie(death_signal, os.getpid())
    return (
        _forker()
        .submit(
            lambda: subprocess.Popen(
                command, start_new_session=own_session, preexec_fn=tie, **popen
            )
        )
        .result()
    )


def _tie(death_signal: signal.Signals, starter: int) -> Callable[[], None]:
    """What the child runs before exec: ask for `death_signal` when its parent dies, then
    check that the parent had not already died (its starter killed between the fork and
    now: it is no longer `starter`'s child, and nothing would ever send the signal)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def tie() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != starter:
            raise ChildProcessError("its starter died before it started")

    return tie


def _forker() -> ThreadPoolExecutor:
    """The one thread every tied process is forked from: started at the first, never
    stopped before the interpreter (whose end then takes what is still running with it)."""
    global _forker_pool
    with _forker_lock:
        if _forker_pool is None:
            _forker_pool = ThreadPoolExecutor(1, thread_name_prefix="baton-forker")
        return _forker_pool


def _forget_forker() -> None:
    # A forked child has none of its parent's threads: it needs a forker of its own.
    global _forker_pool, _forker_lock
    _forker_pool = None
    _forker_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_forker)
