"""A bad input in a flow run is one line in its logs, not Prefect's traceback wall.

Prefect logs the exception of a failed task run and of a failed flow run with its traceback
(`exc_info`): for a `SouplineError` (a missing data file, a model path that does not exist) that
was two walls of about 90 lines each, on the terminal and in the logs the server keeps, around
the one line that says what is wrong. `flows.interruptible`, which the flows' modules and every cell
or ingredient a worker runs import, installs this filter on Prefect's run loggers when imported (in the
flow's process and in task-runner workers); the lines and the runs' state messages keep the error's text,
and any other exception keeps its traceback. A user error (or a bug) also fails a retried task at once (`RETRIED`).
"""

from __future__ import annotations

import logging

from soupline.errors import RETRY_DELAYS, USER_ERRORS, transient

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# What Prefect's engine logs, in a worker's or `prefect flow-run execute`'s process, of any exception that ends a run,
# after the run has logged it and failed with its line as the state message
ENGINE_EXIT = "Engine execution exited with unexpected exception"


class OneLineUserErrors(logging.Filter):
    """Drop the traceback of a record whose exception is a user error (`errors.USER_ERRORS`: a `SouplineError`, a
    `PermissionError`, which the CLI prints as one line too); the record itself stays, but for the engine's
    `ENGINE_EXIT` line, which calls it unexpected and says nothing new."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            if record.getMessage() == ENGINE_EXIT:
                return False
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to Prefect's flow-run and task-run loggers (once)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineUserErrors) for f in logger.filters):
            logger.addFilter(OneLineUserErrors())


def retry_if_transient(task_, task_run, state) -> bool:
    """Prefect's retry condition of a task run that failed: retry what another try may get past (an I/O error, a CUDA
    hiccup: `errors.transient`, as `soupline study` does), not a user error or a bug, which would fail again."""
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - the task's error, whatever it is
        return transient(err)
    return True


# The options of a task retried on a transient error: embed and train (flows.pipeline), a study cell (flows.study)
RETRIED = {"retries": len(RETRY_DELAYS), "retry_delay_seconds": list(RETRY_DELAYS),
           "retry_condition_fn": retry_if_transient}
