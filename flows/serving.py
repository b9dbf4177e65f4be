"""`soupline serve`: the pipeline flow served as a Prefect deployment by a Runner in this process, what Prefect's
`flow.serve` does without its catch-all, so a stop is told apart and ends cleanly whatever the server does.

- Two serves of one deployment at once are refused (`_not_served_already`): both started its runs.
- Ctrl-C and a hang-up (SIGHUP, `stop_serving`) stop the runner and pause the deployment's schedule (`_pause`);
  SIGTERM is the runner's own stop. With the server gone, the stop ends the runs in progress and exits
  (`_stopped_without_server`) where Prefect's shutdown retried for 78 s and left them training.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from datetime import datetime, timezone

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.runner import Runner

from flows.workspace import prefect_server_answers
from soupline.errors import SouplineError

SERVED_WITHIN = 60  # s: a deployment whose runs were polled for this recently is served (Prefect's READY status)


def _not_served_already(client, full_name: str) -> None:
    """One line when another `soupline serve` (a live runner: polled lately, not paused) serves this deployment: both
    started its runs, two at once in one workspace (the second failed on its lock), or, from another project, the
    runs of the project registered last."""
    try:
        deployment = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        return
    if deployment.paused or deployment.last_polled is None:  # a stopped serve pauses it
        return
    ago = (datetime.now(timezone.utc) - deployment.last_polled).total_seconds()
    if ago < SERVED_WITHIN:
        raise SouplineError(f"{full_name} is served already, on {deployment.parameters.get('root')} (polled for runs "
                            f"{ago:.0f} s ago): stop that `soupline serve` first (gone? try again in a minute), or "
                            "give this one another --name")


def _answers() -> bool:
    """Whether the configured Prefect server answers (a /health request of at most 5 s)."""
    try:
        prefect_server_answers()
    except SouplineError:
        return False
    return True


def _not_paused(full_name: str) -> None:
    print(f"warning: the Prefect server does not answer, so {full_name} is not paused (its schedule stays on): "
          f"`prefect deployment pause '{full_name}'` once it is back", file=sys.stderr)


def _pause(full_name: str, deployment_id) -> None:
    """Pause the served deployment's schedule on the way out, as Prefect's runner does, unless the server is gone:
    the runner then retried for 78 s and ended in a 90-line traceback."""
    if not _answers():
        _not_paused(full_name)
        return
    with get_client(sync_client=True) as client:
        client.pause_deployment(deployment_id)


def _stopped_without_server(full_name: str, grace: float = 30) -> None:
    """SIGTERM with the server gone: stop the runs in progress (their processes, this one's only multiprocessing
    children) as Prefect's runner does, SIGTERM then SIGKILL after `grace` s, and exit 0. Prefect's shutdown first
    asked the server about each run, for 78 s, then left it training; the command hung for minutes."""
    runs = multiprocessing.active_children()
    for run in runs:
        run.terminate()  # the flow stops its stages at their next step, checkpoint kept
    deadline = time.monotonic() + grace
    for run in runs:
        run.join(max(0.0, deadline - time.monotonic()))
        if run.is_alive():  # still trying to tell the server how it ended
            run.kill()
    if runs:
        print(f"warning: the Prefect server does not answer: {len(runs)} run(s) in progress stopped (checkpoints "
              "kept), their end not recorded there", file=sys.stderr)
    _not_paused(full_name)
    sys.stderr.flush()
    os._exit(0)  # from a signal handler, past Prefect's shutdown, which would ask the server again


def serve_until_stopped(flow, *, name: str, cron: str | None, limit: int, temporary: str | None = None,
                        **deployment) -> bool:
    """What Prefect's `flow.serve` does, less its catch-all: register the deployment and run a Prefect Runner until
    it stops. False on Ctrl-C or a hang-up (`stop_serving`), True when the runner stopped by itself (SIGTERM:
    Prefect's runner handles it, or `_stopped_without_server` once the server is gone). `temporary`: the URL of the
    temporary server it serves on, which a command in another terminal must be given.

    `flow.serve` swallows KeyboardInterrupt, so Ctrl-C and SIGTERM looked alike; a SIGINT handler of our own to
    tell them apart kept asyncio from installing its own, which cancels the runner's task: the interrupt then
    landed inside the event loop's poll, and a run in progress ended with 35 lines of asyncio traceback."""
    full_name = f"{flow.name}/{name}"
    with get_client(sync_client=True) as client:
        _not_served_already(client, full_name)
    runner = Runner(name=name, pause_on_shutdown=False, limit=limit)  # paused by `_pause`
    deployment_id = runner.add_flow(flow, name=name, cron=cron, **deployment)
    # A temporary server's URL is given: the other terminal's `prefect deployment run` started a server of its own,
    # and its --watch waited for good (its server never heard of the run's end)
    env = f"PREFECT_API_URL={temporary} " if temporary else ""
    print(f"deployment {full_name} is being served (id {deployment_id}): trigger a run with "
          f"`{env}prefect deployment run '{full_name}'` or the UI; stop with Ctrl-C", file=sys.stderr)
    prefect_stop = runner.handle_sigterm  # start() installs it

    def on_sigterm(*args) -> None:
        if not _answers():
            _stopped_without_server(full_name)
        prefect_stop(*args)

    runner.handle_sigterm = on_sigterm

    async def serve() -> None:
        _SERVING.append(asyncio.current_task())  # what a hang-up stops (`stop_serving`)
        try:
            await runner.start()
        finally:
            _SERVING.clear()

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C; a hang-up (`stop_serving`)
        return False
    finally:
        _pause(full_name, deployment_id)
    return True


_SERVING: list = []  # the asyncio task of the runner `serve_until_stopped` runs, while it runs


def stop_serving() -> None:
    """Stop `soupline serve` as Ctrl-C does: cancel its runner's task and wake the event loop, what asyncio's Ctrl-C
    handler does, which is not there when SIGINT is ignored (`cmd &` in a script, `trap '' INT`: asyncio installs
    none, and a hang-up raised as a SIGINT for it killed the command where it stood); before the runner starts, a
    KeyboardInterrupt, as Ctrl-C's."""
    if not _SERVING:
        raise KeyboardInterrupt("serve")
    task = _SERVING[0]
    task.cancel()
    task.get_loop().call_soon_threadsafe(lambda: None)  # a poll blocked in select() returns
