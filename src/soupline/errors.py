"""The one exception type users see: a single line saying what is wrong and how to fix it.

Anything raised as `SouplineError` is printed by the CLI and the stage entry points as
`error: <message>` with exit code 2 and no traceback; everything else is a bug and keeps
its traceback. Both print a warning as one `warning: <message>` line (`one_line_warnings`).
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from pathlib import Path
from typing import Callable


class SouplineError(Exception):
    """A user-facing error (bad params, bad input data, missing artifact)."""


# What the CLI and the stage entry points print as one `error: ` line (`message`), not a traceback.
USER_ERRORS = (SouplineError, PermissionError)
# Seconds before each retry of a step that failed on what may be transient (`transient`): the Prefect flows' embed,
# train and study cell tasks, and `soupline study`'s cells
RETRY_DELAYS = (2, 10)


# What the file system answers the same way seconds later: a path missing, of the wrong kind or already there (also
# the hub's file it could neither download, after its own retries, nor find cached), a disk full, over quota or
# read-only. One line of advice from another try is what the user needs, not two more tries
STANDING = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)
STANDING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# The CUDA runtime's errors that leave the process's context unusable (cudaGetErrorString of cudaErrorAssert, -Illegal
# Address, -LaunchFailure, -LaunchTimeout, -HardwareStackError, -IllegalInstruction, -MisalignedAddress,
# -InvalidAddressSpace, -InvalidPc, -MpsClientTerminated, -ExternalDevice): "any further CUDA work will return the same
# error", so a retry in the same process cannot get past them; torch raises them as `CUDA error: <this>`
STICKY_CUDA = ("device-side assert triggered", "an illegal memory access was encountered",
               "unspecified launch failure", "the launch timed out and was terminated", "hardware stack error",
               "an illegal instruction was encountered", "misaligned address",
               "operation not supported on global/shared address space", "invalid program counter",
               "the MPS client has been terminated by the server", "in external entity outside of CUDA")


def transient(err: Exception) -> bool:
    """Whether another try may get past `err`, so the flows' tasks and `soupline study`'s cells retry it: an I/O
    error of the OS or the network (a disk or network file system hiccup, a connection dropped or timed out: OSError,
    which requests', Dask's comm and the hub's errors subclass), a process pool whose worker died (killed from
    outside), a CUDA runtime error (a device busy in exclusive mode, a driver hiccup). Not a user error, a `STANDING`
    answer of the file system, a CUDA error that corrupts the context (`STICKY_CUDA`: a device-side assert, an index
    out of range on the GPU; an illegal memory access; each wasted two tries and 12 s), nor any other error
    (KeyError, TypeError, AssertionError, ...: a bug, which the same code meets again)."""
    if isinstance(err, (*USER_ERRORS, *STANDING)) or (isinstance(err, OSError) and err.errno in STANDING_ERRNOS):
        return False
    # here, not above: it costs every entry point's import about 0.1 s (multiprocessing), and only a failed step asks
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(err, RuntimeError) and str(err).startswith("CUDA error: "):  # torch's (AcceleratorError from 2.8)
        return not any(sticky in str(err) for sticky in STICKY_CUDA)
    return isinstance(err, (OSError, BrokenProcessPool))


def message(err: SouplineError | PermissionError) -> str:
    """The line the CLI and the stage entry points print after `error: `. A PermissionError is the file system's
    answer to this user (a data source, model folder or output it may not read or write), not a bug."""
    if isinstance(err, PermissionError):
        return (f"permission denied: {err.filename or err}; give the user running soupline access to it (chmod, "
                "chown), or run as its owner")
    return str(err)


def print_error(err: SouplineError | PermissionError) -> int:
    """Print `err` as the one `error: <message>` line on stderr, as the CLI, the stage entry points, the flows run
    from the shell and the benchmarks all end on a user error; returns the exit status of bad input, 2."""
    print(f"error: {message(err)}", file=sys.stderr)
    return 2


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a script's `main` (each benchmark's, from the command line): a user error is one `error: ` line and exit
    status 2, as from the CLI and the stage entry points, not a traceback (a benchmark's --model that is no model, a
    corpus that cannot be read)."""
    try:
        main()
    except USER_ERRORS as err:
        sys.exit(print_error(err))


def one_line_warnings() -> None:
    """Print each warning as one `warning: <message>` line on stderr, as a user error is one `error: ` line: Python's
    default adds the file, line and source line of soupline's own code, which tell the user nothing."""
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)


def experiment_copy_note(path: str | os.PathLike) -> str:
    """Why a relative `path` missing here may be a git-ignored file of the user's workspace: `dvc exp run --queue`
    and `--temp` run in a copy of the repository (DVC_ROOT names the workspace) that holds what git tracks and DVC's
    outputs, so a model folder or data file git ignores is not there. "" outside such a copy, or when the workspace
    lacks `path` too."""
    root, path = os.environ.get("DVC_ROOT"), Path(path).expanduser()
    in_copy = bool(root) and not path.is_absolute() and Path(root).resolve() != Path.cwd().resolve()
    if not in_copy or not (Path(root) / path).exists():
        return ""
    return (f" (it is in the workspace {root}, but this experiment runs in a copy of the repository (`dvc exp run "
            "--queue` or `--temp`), which holds what git tracks and DVC's outputs, not what git ignores: `dvc add` it "
            "and commit its .dvc file, give an absolute path, or run `dvc exp run` without --queue / --temp)")
