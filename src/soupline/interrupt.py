"""Stopping work that runs outside the main thread.

Python delivers Ctrl-C (KeyboardInterrupt) to the main thread only. A stage that Prefect's thread
task runner runs in a worker thread (an ingredient of the pipeline flow on a small machine, a cell
of the study flow) would train on to its last step while the main thread waits for it. Entry points
that run stages in threads set `REQUESTED` when interrupted; the long loops (training steps,
embedding batches, the start of each stage) call `check()`, which then raises KeyboardInterrupt in
that thread too. Training resumes from its last checkpoint on the next run.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time

REQUESTED = threading.Event()
# What a command line says on Ctrl-C (after a newline: a progress bar may hold the line), with exit code 130.
MESSAGE = "\ninterrupted; run the same command again to resume (finished stages and training checkpoints are kept)"


def check() -> None:
    """Raise KeyboardInterrupt once a stop was requested (a no-op otherwise: one flag read)."""
    if REQUESTED.is_set():
        raise KeyboardInterrupt("stop requested")


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
