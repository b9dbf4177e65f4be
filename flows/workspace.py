"""What the flows settle before they work, each in one line when wrong.

- The workspace (the flows' `root`, `--root`) is the working directory while a flow runs, as `soupline` makes it:
  relative paths in params (`prepare.source`, `select.gotd.target`) are read from the project root, as `dvc repro`
  reads them. Before, a flow started from another folder read them from there: a missing file blamed the root, and
  a file of the same name there was prepared (and keyed) in its place.
- `python -m flows.<name>`, before Prefect starts: a configured Prefect server (PREFECT_API_URL) answers (was: three
  tracebacks, 115 lines, when it was down), and the result folder (`--results`) can be written (was: a traceback
  per task, every task Completed, exit 0 and no cache record kept); the pipeline flow checks that folder again
  when it starts, for a deployment's `result_storage` parameter.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from soupline.artifacts import check_writable
from soupline.cli import prefect_server_answers
from soupline.errors import SouplineError


@contextlib.contextmanager
def entered(root: str) -> Iterator[Path]:
    """Work in `root` (resolved) while the flow runs; the working directory is restored after."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise SouplineError(f"--root {root!r} (a deployment's root parameter) is not a folder; give the project's "
                            "folder (the one holding params.yaml and data/)")
    before = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(before)


def ready(results: str | None = None) -> None:
    """Check the configured server, and the result folder when one is given."""
    prefect_server_answers()
    if results is not None:
        results_writable(results)


def results_writable(results: str | Path) -> None:
    """One line when the folder of Prefect's results and cache records cannot be written: the flow checks its
    `result_storage` itself, as a deployment's parameter reaches no `ready` (before, a traceback per task, every
    task Completed and no cache record kept)."""
    probe = Path(results) / "probe"
    try:
        check_writable(probe)
    except SouplineError as err:  # its reason, not the name of the file it tried
        why = str(err).removeprefix(f"cannot write {probe}: ")
        raise SouplineError(f"--results {results} (a deployment's result_storage parameter): cannot write there: "
                            f"{why}; give a folder this user can write") from None
