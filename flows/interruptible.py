"""Ctrl-C on `python -m flows.pipeline` / `python -m flows.study`: the run stops in seconds, recorded as crashed.

Without a PREFECT_API_URL, Prefect starts a temporary API server as a child process in the
terminal's process group, so the Ctrl-C meant for the flow stopped the server too: the flow then
retried for minutes to record its end, printing a traceback per retry, while a stage running in a
worker thread (where KeyboardInterrupt never arrives) trained on to its last step. `interruptible()`
starts that temporary server itself, in a session of its own (on Linux it still ends when this
process does, even a killed one), and turns the first Ctrl-C into `soupline.interrupt.REQUESTED`
(the worker threads stop at their next step) plus the usual KeyboardInterrupt in the main thread. `soupline serve`
serves on such a server too (`temporary_server`), which its flow runs' processes share. A hang-up (SIGHUP: a closed ssh
session or terminal window) stops the run the same way (`HungUp`); before, it killed the process where it stood: the
run stayed `Running` until the next run in the workspace, and training lost its steps since the last checkpoint.

`threads_stop_with_the_run` does the same for a cancelled deployment run: the runner (`soupline serve`, a worker) sends
SIGTERM, which Prefect turns into TerminationSignal in the main thread only. `workers_stop_with_the_run` passes the stop
on to the pipeline flow's worker processes as a Ctrl-C, which there only requests the stop (`stop_with_the_flow`, their
initializer): before, the process pool's shutdown waited for them to train to their last step; and the Ctrl-C that
reached them from the terminal came back to the flow as a KeyboardInterrupt that broke the pool (its manager thread
died), and the flow's process hung at exit.

`stops_when_cancelled` does what the runner does for a run that no deployment started (`python -m flows.pipeline`, a
Python call): Prefect enforces cancellation through the runner only, so such a run stayed `Cancelling` and trained on
to its end. A thread reads the run's state every 2 s and, once it is Cancelling, stops the run as that SIGTERM does.

`from_the_shell` ends those two commands as the CLI ends: a user error, a Ctrl-C or a cancel is one line and an exit
code.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import prefect.runtime
from prefect._internal import control_listener
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.settings import get_current_settings, temporary_settings
from prefect.utilities.engine import is_prefect_sigterm_handler_installed

from flows import user_errors
from soupline import interrupt
from soupline.errors import USER_ERRORS, SouplineError, print_error

# A stopped cell or ingredient (`Stopped`) is one line in a worker's log too: a worker of `python -m flows.study`
# gets the cell pickled by value (its module is __main__) and imports this module for it, never flows.study.
user_errors.install()
PR_SET_PDEATHSIG = 1
INTERRUPTED = ("interrupted: the flow run is recorded as crashed; run it again to go on (finished stages and cells "
               "are cached, training resumes from its last checkpoint)")
CANCELLED = ("cancelled: the flow run is Cancelled; run it again to go on (finished stages and cells are cached, "
             "training resumes from its last checkpoint)")
HUNG_UP = ("hung up (SIGHUP): the flow run is recorded as crashed; run it again to go on (finished stages and cells "
           "are cached, training resumes from its last checkpoint)")
CANCEL_POLL_S = 2.0  # how often a run no deployment started reads its state (`stops_when_cancelled`)


class Stopped(SouplineError):
    """A stage in a worker process or a Dask worker, stopped with its flow run. Raised there instead of the
    KeyboardInterrupt that `interrupt.check` raises, which the process pool cannot send back (Prefect lets it through
    its result callback, killing the pool's manager thread); a SouplineError: not retried, one line."""


def _end_with_parent() -> None:
    """Run in the server's process before it starts (Linux): SIGTERM it when the flow's process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_own_session_server():
    """Prefect's temporary server (`SubprocessASGIServer`, imported here: 3 s that a run against a real server
    does not need), started in a new session: out of reach of the terminal's Ctrl-C."""
    from prefect.server.api.server import SubprocessASGIServer

    class OwnSessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            popen = subprocess.Popen  # Prefect builds the command; only how the process starts changes
            subprocess.Popen = functools.partial(  # type: ignore[misc]
                popen, start_new_session=True, preexec_fn=_end_with_parent if sys.platform == "linux" else None)
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = popen  # type: ignore[misc]

    server = OwnSessionServer()
    server.start()
    return server


class HungUp(KeyboardInterrupt):
    """SIGHUP: stops the run as Ctrl-C does (Prefect records it `Crashed`); `from_the_shell` ends with exit code 129."""


def _request_stop(signum: int, frame: Any) -> None:
    """The stage threads stop at their next step; after a hang-up, output no longer goes to the dead terminal."""
    if signum == signal.SIGHUP:
        interrupt.hung_up()
    interrupt.REQUESTED.set()


def _on_stop_signal(signum: int, frame: Any) -> None:
    _request_stop(signum, frame)
    raise HungUp if signum == signal.SIGHUP else KeyboardInterrupt


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Inside, this process and the flow runs it starts talk to the temporary server started here in a session of its
    own, unless PREFECT_API_URL names a server (None then); yields its API URL. The server stays up until exit (its
    own atexit hook): Prefect's log and event workers flush to it then."""
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None
        return
    # A first temporary server on a busy 2-core laptop (fresh database) can take longer than Prefect's 20 s.
    with temporary_settings(set_defaults={"server.ephemeral.startup_timeout_seconds": 120}):
        server = _start_own_session_server()
    with temporary_settings(updates={"api.url": server.api_url}):
        yield server.api_url


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Around a flow run from the command line: the temporary server (unless PREFECT_API_URL names one)
    and Ctrl-C and hang-up handling."""
    with temporary_server():
        # not a SIGHUP that `nohup` ignores: it asks the run to outlive the terminal
        stops = [signal.SIGINT] + [signal.SIGHUP] * (signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN)
        previous = {signum: signal.signal(signum, _on_stop_signal) for signum in stops}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                interrupt.put_back(signum, handler)
            interrupt.REQUESTED.clear()


@contextlib.contextmanager
def threads_stop_with_the_run() -> Iterator[None]:
    """Around a flow run's body. When its main thread is stopped (Ctrl-C; a cancelled deployment run, whose SIGTERM
    Prefect raises as TerminationSignal), the stages in worker threads stop at their next step too, while the thread
    task runner waits for them on the way out; without it, a cancelled run trained on to its last step (or until the
    runner's 30 s grace ran out and it killed the run). The request does not outlive the run: the next one clears it.
    A hang-up stops it as Ctrl-C does where SIGHUP would end the process (its default action): a run that `soupline
    serve` or a worker started in a terminal that closed, which it killed unrecorded (a run from `interruptible`, a
    `nohup`'s, or one in a process with its own SIGHUP handler is left to it)."""
    interrupt.REQUESTED.clear()
    hang_up = interrupt.may_stop_on(signal.SIGHUP)
    if hang_up:
        signal.signal(signal.SIGHUP, _on_stop_signal)
    try:
        yield
    except (KeyboardInterrupt, TerminationSignal):
        interrupt.REQUESTED.set()
        raise
    finally:
        if hang_up:
            interrupt.put_back(signal.SIGHUP, signal.SIG_DFL)


@contextlib.contextmanager
def stops_when_cancelled(interval: float = CANCEL_POLL_S) -> Iterator[None]:
    """Around a flow run's body: once the run is Cancelling (`prefect flow-run cancel`, Cancel in the UI), it stops as a
    cancelled deployment run stops: a daemon thread reads its state every `interval` s and does what the runner does,
    Prefect's cancel intent, then SIGTERM to the main thread, where Prefect raises TerminationSignal (the stages stop
    at their next step, `threads_stop_with_the_run` and its kin) and ends the run `Cancelled`. Not for a deployment's
    run (its runner does it), nor where Prefect could not install its SIGTERM handler (a flow called from another
    thread). A temporary server is polled too: it shares its database with the UI of `prefect server start` and with
    `prefect flow-run cancel` run elsewhere. Quiet: a read that fails is tried again at the next poll."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is not None or \
            not is_prefect_sigterm_handler_installed():
        yield
        return
    control_listener.clear_intent()  # an earlier cancelled run's, in this interpreter (a Python session)
    # the run's own client (its SyncClientContext's; read in this thread, a new thread lacks the settings), which the
    # engine closes when the run ends: no client, socket or thread is left per run (closing it here closes the run's)
    run, client, main = context.flow_run.id, get_client(sync_client=True), threading.main_thread().ident
    done, deciding = threading.Event(), threading.Lock()

    def watch() -> None:
        while not done.wait(interval):
            try:
                state = client.read_flow_run(run).state
            except Exception:  # noqa: BLE001 - the API hiccuped, or the run ended meanwhile: read again, or stop
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                with deciding:
                    if not done.is_set():
                        control_listener._set_intent("cancel")  # what the runner commits before its SIGTERM
                        signal.pthread_kill(main, signal.SIGTERM)
                return

    threading.Thread(target=watch, name="soupline-cancel-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        with deciding:  # a SIGTERM sent meanwhile is raised here at the latest, inside the body
            pass


@contextlib.contextmanager
def workers_stop_with_the_run() -> Iterator[None]:
    """Around a flow run's body whose task runner has worker processes (its only multiprocessing children): when its
    main thread is stopped, send them a Ctrl-C, which `stop_with_the_flow` turns into a stop at their next step."""
    try:
        yield
    except (KeyboardInterrupt, TerminationSignal):
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(child.pid, signal.SIGINT)
        raise


def stop_with_the_flow() -> None:
    """Worker-process initializer: a Ctrl-C (from the terminal or `workers_stop_with_the_run`) or a hang-up (a closed
    terminal's SIGHUP reaches its whole job) stops this process's stage at its next step (`interrupt.check`), not
    wherever it lands."""
    signal.signal(signal.SIGINT, _request_stop)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # `nohup`: the run outlives the terminal
        signal.signal(signal.SIGHUP, _request_stop)
    _end_when_orphaned(os.getppid())


_BUSY = threading.Event()  # a worker process runs a stage now (`stopped_in_a_worker`)


def _end_when_orphaned(parent: int, interval: float = 1.0) -> None:
    """A worker process whose flow was killed (SIGKILL, OOM: no Ctrl-C passed on) trained on to its ingredient's
    last step and wrote it into a workspace whose lock no process held any more (a `soupline run` started then trained
    the same ingredient beside it), then waited for its next task for good, holding its memory. Now, once its parent
    is gone, it stops its stage at the next step, as on Ctrl-C (checkpoint kept), and exits once no stage runs."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        interrupt.REQUESTED.set()
        while _BUSY.is_set():
            time.sleep(0.1)
        os._exit(1)

    threading.Thread(target=watch, name="soupline-flow-watch", daemon=True).start()


@contextlib.contextmanager
def stopped_in_a_worker() -> Iterator[None]:
    """Around a stage that may run in a worker process: there, a stop request ends it as `Stopped`. It works for its
    flow run (`interrupt.working_for`): a shared Dask cluster's worker is asked to stop one flow run's cells. A Dask
    worker with no parent process (`dask worker --no-nanny`) counts as one: the KeyboardInterrupt that escaped there
    was logged as a traceback in the worker's log, and it shut the worker down."""
    _BUSY.set()
    try:
        with interrupt.working_for(prefect.runtime.flow_run.get_id()):
            yield
    except KeyboardInterrupt:
        if multiprocessing.parent_process() is None and not _on_a_dask_worker():
            raise
        raise Stopped("stopped with its flow run; run the flow again to resume from the last checkpoint") from None
    finally:
        _BUSY.clear()


def _on_a_dask_worker() -> bool:
    """Whether this thread runs a Dask worker's task (distributed imported: a worker has it)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:  # not in a worker
        return False
    return True


def from_the_shell(start: Callable[[], Any]) -> tuple[int, Any]:
    """`python -m flows.<name>`'s run: (0, what `start` returns), or the exit code after one line on stderr, as the
    CLI and the stage entry points end: 2 for a user error (`errors.message`: a bad params file, one this user may
    not read), 130 for Ctrl-C (INTERRUPTED), 129 for a hang-up (HUNG_UP), 143 for a cancelled run (CANCELLED; as a
    SIGTERM'd command: another SIGTERM ends this process before it gets here)."""
    try:
        return 0, start()
    except USER_ERRORS as err:
        return print_error(err), None
    except HungUp:
        print(HUNG_UP, file=sys.stderr)
        return 128 + signal.SIGHUP, None
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130, None
    except TerminationSignal:
        control_listener.clear_intent()
        print(CANCELLED, file=sys.stderr)
        return 143, None
