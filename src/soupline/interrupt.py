"""Stopping work that runs outside the main thread.

Python delivers Ctrl-C (KeyboardInterrupt) to the main thread only. A stage that Prefect's thread
task runner runs in a worker thread (an ingredient of the pipeline flow on a small machine, a cell
of the study flow) would train on to its last step while the main thread waits for it. Entry points
that run stages in threads set `REQUESTED` when interrupted; the long loops (training steps,
embedding batches, the start of each stage) call `check()`, which then raises KeyboardInterrupt in
that thread too. Training resumes from its last checkpoint on the next run.
"""

from __future__ import annotations

import threading

REQUESTED = threading.Event()
# What a command line says on Ctrl-C (after a newline: a progress bar may hold the line), with exit code 130.
MESSAGE = "\ninterrupted; run the same command again to resume (finished stages and training checkpoints are kept)"


def check() -> None:
    """Raise KeyboardInterrupt once a stop was requested (a no-op otherwise: one flag read)."""
    if REQUESTED.is_set():
        raise KeyboardInterrupt("stop requested")
