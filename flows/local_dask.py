"""The study flow's local Dask cluster (`python -m flows.study --runner dask`): its worker processes share the cores,
stop as the flow stops, and leave the flow's process as it was.

- Threads: distributed starts each worker process with OMP/MKL/OPENBLAS_NUM_THREADS=1
  (`distributed.nanny.pre-spawn-environ`), so a cell trained on one thread even where one worker had all the cores;
  now each worker gets cores // workers (`--workers 2` on 2 cores: 1, as before). A value exported by the user wins.
- Environment: to pass those on, distributed sets them (and PYTHONHASHSEED, MALLOC_TRIM_THRESHOLD_...) in this
  process's os.environ and leaves them: after a Dask study, the flow process's later child processes (a pipeline
  flow's ingredient workers, DVC) ran on one thread. They are put back when the cluster closes.
- Ctrl-C: the terminal's reaches the worker processes too, where it met their event loop, not the cell, which
  trained on until the closing cluster killed it mid-step; now it stops the cell at its next step
  (`stop_with_the_flow`, as in the pipeline flow's worker processes), as does the end of the flow's process
  (SIGKILL, out of memory), after which a cell trained on in a workspace no lock guarded.
- Close: a worker process spent seconds of its exit in the interpreter's last garbage collection (torch, Prefect
  and pydantic objects), past the 4 s the cluster waits: "Worker process still alive after 4.0 seconds, killing"
  ended every run. Its objects are frozen out of that collection once its atexit hooks (Prefect's log flush) ran.
"""

from __future__ import annotations

import atexit
import gc
import os
from pathlib import Path
from typing import Any

import dask
from dask.system import CPU_COUNT
from prefect_dask import DaskTaskRunner

from flows.interruptible import stop_with_the_flow

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class LocalDaskRunner(DaskTaskRunner):
    """A DaskTaskRunner whose local cluster is built as the module docstring says (`cluster_kwargs` as Dask's)."""

    def __enter__(self) -> LocalDaskRunner:
        threads = str(max(1, CPU_COUNT // self.cluster_kwargs.get("n_workers", 1)))
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **dict.fromkeys(THREAD_VARS, threads)}
        super().__enter__()
        self._exit_stack.callback(_put_back, dict(os.environ))  # last: after the cluster (made on first submit) closed
        self._exit_stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": environ}))
        # Worker processes import tasks/ and flows/ from this checkout.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return self


def _put_back(environ: dict[str, str]) -> None:
    """os.environ as `environ` again: what the cluster's start set there (the variables it passed on to its worker
    processes, PYTHONHASHSEED, __DASK_PARENT_PID) and PYTHONPATH."""
    for key in os.environ.keys() - environ.keys():
        del os.environ[key]
    os.environ.update({key: value for key, value in environ.items() if os.environ.get(key) != value})


def dask_setup(worker: Any) -> None:
    """Run in each worker process as it starts (a Dask preload: `cluster_kwargs["preload"]`), in its main thread."""
    stop_with_the_flow()
    atexit.register(gc.freeze)  # registered first, run last
