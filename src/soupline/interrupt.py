"""Stopping work that runs outside the main thread.

Python delivers Ctrl-C (KeyboardInterrupt) to the main thread only. A stage that Prefect's thread
task runner runs in a worker thread (an ingredient of the pipeline flow on a small machine, a cell
of the study flow) would train on to its last step while the main thread waits for it. Entry points
that run stages in threads set `REQUESTED` when interrupted; the long loops (training steps,
embedding batches, the start of each stage) call `check()`, which then raises KeyboardInterrupt in
that thread too. Training resumes from its last checkpoint on the next run.

A process that runs the work of several runs at once (a shared Dask cluster's worker, a thread per task) is asked
to stop one run's work only: `stop_run(run)`, which `check()` honours in the threads `working_for(run)`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from typing import Iterator

REQUESTED = threading.Event()
_STOPPED_RUNS: set[str] = set()  # runs asked to stop in this process (`stop_run`)
_WORKING_FOR = threading.local()  # .run: the run this thread works for (`working_for`)
# What a command line says on Ctrl-C (after a newline: a progress bar may hold the line), with exit code 130.
MESSAGE = "\ninterrupted; run the same command again to resume (finished stages and training checkpoints are kept)"


def check() -> None:
    """Raise KeyboardInterrupt once a stop was requested, for the process or for the run this thread works for
    (a no-op otherwise: a flag read, and a set's while one of its runs is stopping)."""
    if REQUESTED.is_set() or (_STOPPED_RUNS and getattr(_WORKING_FOR, "run", None) in _STOPPED_RUNS):
        raise KeyboardInterrupt("stop requested")


@contextlib.contextmanager
def working_for(run: str | None) -> Iterator[None]:
    """Inside, this thread works for `run` (a flow run's id; None: none), which `stop_run(run)` stops too."""
    previous, _WORKING_FOR.run = getattr(_WORKING_FOR, "run", None), run
    try:
        yield
    finally:
        _WORKING_FOR.run = previous


def stop_run(run: str) -> None:
    """Ask the threads working for `run` in this process to stop at their next `check()`."""
    _STOPPED_RUNS.add(run)


def go_on(run: str) -> None:
    """Withdraw `stop_run(run)` once its threads have stopped (a retried flow run runs under the same id)."""
    _STOPPED_RUNS.discard(run)


def hung_up() -> None:
    """On SIGHUP (a closed ssh session or terminal window), in the main thread: ignore the later ones, and point
    stdout and stderr at /dev/null where they are a terminal that hung up. A second SIGHUP comes (the shell's to its
    job, then the kernel's as the shell exits) while the process records its stop, and ended it there once a default
    handler was put back (`put_back`); a hung-up terminal fails every write (EIO, even an empty one), so the stop and
    its closing line failed on an OSError. A live terminal (`kill -HUP`) stays."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


def may_stop_on(signum: int) -> bool:
    """Whether an entry point may make `signum` (SIGHUP, SIGTERM) stop its work as Ctrl-C does: the signal still has its
    default action, which ends the process where it stands (`nohup` ignores SIGHUP: the command is to outlive the
    terminal; a handler of the caller's own is the caller's), and this is the main thread, the only one that may set a
    handler. The CLI's commands and the flows' runs ask alike."""
    return threading.current_thread() is threading.main_thread() and signal.getsignal(signum) is signal.SIG_DFL


def put_back(signum: int, handler) -> None:
    """Make `handler` the handler of `signum` again, but leave a SIGHUP that a hang-up made ignored (`hung_up`): the
    process is on its way out."""
    if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, handler)


_QUIET_EXIT: list[bool] = []


def exit_quietly() -> None:
    """Call once the `interrupted` line is printed: the process is on its way out. A second Ctrl-C (pressed again
    while it exits) then interrupted the libraries' atexit callbacks (torch's imports a module in one), a traceback
    below the line; SIGINT is ignored from the interpreter's shutdown on (not before: an in-process caller keeps
    its Ctrl-C)."""
    if not _QUIET_EXIT:
        _QUIET_EXIT.append(True)
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)  # registered last: runs first


def stop_when_orphaned(parent: int, interval: float = 1.0) -> threading.Thread:
    """Request a stop (`REQUESTED`, as Ctrl-C does) once this process's parent is no longer `parent`: it died and
    the process was handed to another. For a stage `dvc repro` runs: `kill <dvc's pid>` (a scheduler's SIGTERM to
    DVC alone) ended DVC, but its stage trained on to the last step, holding the workspace lock that the next run
    then met; now it stops at its next step, its checkpoint kept. Watches from a daemon thread; returns it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        REQUESTED.set()

    watcher = threading.Thread(target=watch, name="soupline-parent-watch", daemon=True)
    watcher.start()
    return watcher
