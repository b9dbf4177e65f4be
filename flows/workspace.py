"""What the flows settle before they work, each in one line when wrong.

- The workspace (the flows' `root`, `--root`) is the working directory while a flow runs, as `soupline` makes it:
  relative paths in params (`prepare.source`, `select.gotd.target`) are read from the project root, as `dvc repro`
  reads them. Before, a flow started from another folder read them from there: a missing file blamed the root, and
  a file of the same name there was prepared (and keyed) in its place.
- `python -m flows.<name>`, before Prefect starts: a configured Prefect server (PREFECT_API_URL) answers (was: three
  tracebacks, 115 lines, when it was down), and the result folder (`--results`) can be written (was: a traceback
  per task, every task Completed, exit 0 and no cache record kept); the pipeline flow checks that folder again
  when it starts, for a deployment's `result_storage` parameter.
- A flow run whose process was killed (SIGKILL, the out-of-memory killer) cannot record
  its end: it stayed `Running` in the UI and `prefect flow-run ls` for good, its task runs too. The flows name their
  run in the workspace lock's note (`holder`), which only a killed holder leaves behind, and the next flow run there
  records that run and its unfinished task runs `Crashed` (`end_left_running`).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import prefect.runtime
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, \
    TaskRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from soupline.artifacts import check_writable
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


def prefect_server_answers() -> str | None:
    """The configured Prefect API URL after a short /health request to it (None: no server configured,
    Prefect will start a temporary one). Raises a one-line SouplineError when the server does not answer."""
    import ssl

    import httpx
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if not api.url:
        return None
    url = api.url.rstrip("/")
    headers = {"Authorization": f"Bearer {api.key.get_secret_value()}"} if api.key else {}
    try:
        verify = (False if api.tls_insecure_skip_verify else  # as Prefect's client verifies: its CA file, if set
                  ssl.create_default_context(cafile=api.ssl_cert_file) if api.ssl_cert_file else True)
        reply = httpx.get(f"{url}/health", headers=headers, timeout=5, verify=verify)
    except httpx.HTTPError as err:
        raise SouplineError(f"the Prefect server at PREFECT_API_URL={url} does not answer ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no reply'}); start it with `prefect "
                            "server start`, or unset PREFECT_API_URL") from None
    if reply.status_code != 200:
        raise SouplineError(f"the Prefect server at PREFECT_API_URL={url} answered {reply.status_code} to "
                            "GET /health; is it a Prefect API URL (ending in /api)?")
    return url


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


_RUN_IN_NOTE = re.compile(r"flow run ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_UNFINISHED = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]


def holder(flow_name: str) -> str:
    """What the flow run writes in the workspace lock's note: its flow's name and its id (`end_left_running`)."""
    return f"the Prefect flow {flow_name}, flow run {prefect.runtime.flow_run.get_id()}"


def end_left_running(note: str) -> None:
    """Record as `Crashed` the flow run named in `note`, the lock's note a killed holder left (`workspace_lock`), and
    its task runs, when the server still has them unfinished. Best effort: another server's run, one deleted, or an
    API error leaves them as they are, and this run goes on."""
    if not (found := _RUN_IN_NOTE.search(note)):
        return
    run, client = found[1], get_client(sync_client=True)  # the run's own client: the engine closes it
    why = (f"its process was killed before it could record its end (the workspace lock's note: {note}); seen by "
           f"flow run {prefect.runtime.flow_run.get_id()}")
    try:
        if client.read_flow_run(run).state.type not in _UNFINISHED:
            return
        for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run])),
                                              task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                                                  type=TaskRunFilterStateType(any_=_UNFINISHED)))):
            client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
        client.set_flow_run_state(run, Crashed(message=why), force=True)
    except Exception:  # noqa: BLE001 - not on this server (ObjectNotFound), no state, the API hiccuped: leave it
        return
    get_run_logger().warning(f"flow run {run} recorded as Crashed: {why}")
