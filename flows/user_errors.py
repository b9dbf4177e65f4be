"""A bad input in a flow run is one line in its logs, not Prefect's traceback wall.

Prefect logs the exception of a failed task run and of a failed flow run with its traceback
(`exc_info`): for a `SouplineError` (a missing data file, a model path that does not exist) that
was two walls of about 90 lines each, on the terminal and in the logs the server keeps, around
the one line that says what is wrong. The flows' modules install this filter on Prefect's run
loggers when imported (in the flow's process and in task-runner workers); the lines and the runs'
state messages keep the error's text, and any other exception keeps its traceback.
"""

from __future__ import annotations

import logging

from soupline.errors import USER_ERRORS

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class OneLineUserErrors(logging.Filter):
    """Drop the traceback of a record whose exception is a user error (`errors.USER_ERRORS`: a `SouplineError`, a
    `PermissionError`, which the CLI prints as one line too); the record itself stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to Prefect's flow-run and task-run loggers (once)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineUserErrors) for f in logger.filters):
            logger.addFilter(OneLineUserErrors())
