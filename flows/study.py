"""The study as a Prefect flow: one cached task per cell, fanned out through the task runner.

    python -m flows.study                                        # params.yaml `study`, one cell at a time
    python -m flows.study --runner dask --workers 2              # a local Dask cluster, 2 worker processes
    python -m flows.study --runner dask --address tcp://host:8786   # an existing Dask scheduler
    python -m flows.study study.methods=[random,gotd]             # dotted overrides

Same cells, same code and same report as `soupline study` (`tasks/study.py`); the flow adds
the fan-out, Prefect's cache records and a UI. A cell's cache key is `tasks.study.cell_key`
(content of the prepared data and embeddings, the cell's params, its stages' code), so a
cell run by `soupline study` is a hit here too, and the reverse.

Runners: threads by default, one cell at a time: training seeds torch's process-wide RNG, so
two cells in threads of one process would draw from one stream and lose determinism. Dask
workers are processes with one thread each, so N workers run N cells at once, each as
deterministic as a cell run alone (tested: same metrics as the thread runner).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import urlparse

import prefect.runtime
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.interruptible import (from_the_shell, interruptible, stopped_in_a_worker, stops_when_cancelled,
                                 threads_stop_with_the_run)
from flows.user_errors import RETRIED
from flows.workspace import end_left_running, entered, holder, ready
from soupline import config
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.report import self_contained
from soupline.study_report import shown_rows
from tasks import study
from tasks.common import workspace_lock
from tasks.layout import Layout


@task(name="prepare-and-embed", cache_policy=NO_CACHE, persist_result=False)
def prepare_and_embed(params: Params, root: str) -> None:
    """The shared inputs of every cell, each stage skipped when up to date (as in `soupline study`)."""
    study.prepare_and_embed(params, Layout(Path(root)))


def _cell_key(context, inputs) -> str:
    return f"soupline-study-{inputs['name']}-{inputs['key']}"


@task(name="cell", task_run_name="cell-{name}", cache_key_fn=_cell_key, persist_result=True, log_prints=True,
      **RETRIED)
def cell(name: str, params: Params, root: str, key: str, keep_models: bool = False) -> dict:
    """select -> train -> soup -> evaluate of one cell (or its cell.json, if `soupline study` ran it), in `root` (a
    Dask worker started elsewhere reads relative params paths from there too). Retried on a transient error as the
    pipeline flow's train (`RETRIED`): the retry resumes it as a rerun does; a user error or a bug fails at once."""
    layout = Layout(Path(root))
    keep = params.study.keep_models or keep_models
    with entered(root), stopped_in_a_worker():
        return study.cached_cell(name, layout, key, need_models=keep, own_models=params.study.keep_models) or \
            study.run_cell(name, params, layout, key, keep)


@task(name="cross-soup", task_run_name="{name}", cache_key_fn=_cell_key, persist_result=True, log_prints=True,
      **RETRIED)
def cross_soup(name: str, members: list[str], params: Params, root: str, key: str) -> dict:
    """Soup the ingredients of several cells (different selections, one initialisation) and evaluate, in `root`."""
    layout = Layout(Path(root))
    with entered(root):
        return study.cached_cell(name, layout, key) or study.run_cross_cell(name, members, params, layout, key)


def _results(submitted: Mapping[str, PrefectFuture] | Iterable[tuple[str, PrefectFuture]]) -> dict[str, dict]:
    """Each cell's result, in grid order (`submitted`: name -> future, or pairs submitted as they are read here).
    On the first failure, met as the cells end (on Dask a cell that fails while an earlier one trains was met only
    once that one had ended), the cells not started yet are cancelled (`soupline study` stops there too) and those
    running have stopped before it is raised: the flow's workspace lock is let go when it is raised, and a cell still
    training went on writing in the workspace after that (a second `soupline study` or flow could start meanwhile).
    On Ctrl-C or a cancelled run (TerminationSignal) the running cells stop, not end: in threads once it leaves the
    flow body (`threads_stop_with_the_run`), on Dask here, before the lock is let go. A cancelled deployment run's
    SIGTERM reaches no Dask worker, and no signal reaches an address's workers: their cells trained on, unlocked,
    until the local cluster's close killed them mid-step, or on a shared cluster to their end."""
    futures: dict[str, PrefectFuture] = {}
    try:
        futures.update(submitted)
        for future in as_completed(list(futures.values())):
            future.result()
        return {name: f.result() for name, f in futures.items()}
    except Exception:  # a failed cell
        _cancel_and_wait([f.wrapped_future for f in futures.values()])
        raise
    except (KeyboardInterrupt, TerminationSignal):
        _stop_on_dask([f.wrapped_future for f in futures.values()])
        raise


def _cancel_and_wait(pending: list) -> None:
    """Cancel the cells not started; stop those running on Dask (`_stop_on_dask`), wait for a thread runner's (one
    that runs is not cancelled, and its result() waits)."""
    threads = [f for f in pending if isinstance(f, concurrent.futures.Future)]
    _stop_on_dask(pending)
    for future in threads:
        future.cancel()
    for future in threads:
        with contextlib.suppress(Exception):  # its failure, or cancelled: the one raised here is what counts
            future.result()


def _stop_on_dask(pending: list) -> None:
    """Cancel the grid's cells on Dask (those of `pending` that are not a thread runner's) and stop those running at
    their next step, as Ctrl-C stops a cell (no cell.json: a rerun runs it again, training from its last checkpoint),
    then wait until no worker holds one. Dask's cancel makes the scheduler forget the keys, but a cell that runs goes
    on in its worker thread; and a worker could start its next cell in the moment between the failure and the cancel.
    Before, the flow waited for those cells to train to their end. The stop is this flow run's
    (`interrupt.stop_run`): another flow's cell in a thread of the same worker (a shared cluster) trains on. It is
    withdrawn once the cells are gone (a retried flow run runs under the same id)."""
    futures = [f for f in pending if not isinstance(f, concurrent.futures.Future)]
    if not futures:
        return
    client, keys, run = futures[0].client, {f.key for f in futures}, prefect.runtime.flow_run.get_id()
    client.cancel(futures, msg="the study stopped: a cell failed, or the flow run was interrupted or cancelled")

    def stop(dask_worker) -> bool:  # nested: pickled by value, for a scheduler or worker without flows/
        from soupline import interrupt

        holds = not keys.isdisjoint(dask_worker.state.tasks)
        if holds:
            interrupt.stop_run(run)
        return holds

    def go_on() -> None:
        from soupline import interrupt

        interrupt.go_on(run)

    def scheduler_holds(dask_scheduler) -> bool:
        return not keys.isdisjoint(dask_scheduler.tasks)

    stopped: set[str] = set()
    while True:
        holding = {worker for worker, holds in client.run(stop, on_error="ignore").items() if holds is True}
        stopped |= holding
        if not holding and not client.run_on_scheduler(scheduler_holds):
            break
        time.sleep(0.2)
    if stopped:
        client.run(go_on, workers=sorted(stopped), on_error="ignore")


def check_scheduler(address: str) -> None:
    """One line when a Dask scheduler address does not answer (before Prefect waits on it)."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        socket.create_connection((url.hostname, url.port or 8786), timeout=3).close()
    except (OSError, TypeError) as err:
        raise SouplineError(f"the Dask scheduler at {address} does not answer ({type(err).__name__}); start one with "
                            "`dask scheduler` or leave out --address for a local cluster") from None


def task_runner(runner: str, workers: int = 2, address: str | None = None):
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=1)
    # distributed logs at INFO into Prefect's console: the cluster's start, each cancelled key, and on Ctrl-C its
    # close, dozens of lines. Read when distributed is imported, here and in the local cluster's worker processes.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from prefect_dask import DaskTaskRunner

    if address:
        check_scheduler(address)
        return DaskTaskRunner(address=address)
    from flows.local_dask import LocalDaskRunner

    return LocalDaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                           "dashboard_address": None, "preload": ["flows.local_dask"]})


@flow(name="soupline-study", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def study_flow(overrides: list[str] | None = None, params_path: str = "params.yaml", root: str = ".") -> list[dict]:
    """Every cell of params.yaml's `study` grid, each a cached task; then study.md/html and artifacts. `root` is the
    working directory while the flow runs (relative paths in params are read from it)."""
    with entered(root) as workspace:
        return _study(overrides, params_path, workspace)


def _study(overrides: list[str] | None, params_path: str, root: Path) -> list[dict]:
    """study_flow's body, in `root` (resolved by `entered`)."""
    params = config.load_existing(root / params_path, overrides)
    layout, workspace = Layout(root), str(root)
    with workspace_lock(layout, holder("soupline-study")) as left, threads_stop_with_the_run(), \
            stops_when_cancelled():
        end_left_running(left)
        prepare_and_embed(params, workspace)
        storage = layout.prefect_results.resolve()
        keys, crosses, needed = study.plan(params, layout)
        # A cache record counts only while the cell's folder holds what it describes: its cell.json from this
        # key (another run of the same cell name may have replaced it) and, when kept or needed by a cross
        # soup still to run, its models. A cell without one runs.
        refresh = {name: study.cached_cell(name, layout, keys[name], need_models=name in needed,
                                           own_models=params.study.keep_models) is None
                   for name in study.cells(params)}
        if any(refresh.values()):
            study.warm_up(params, layout)  # the cells' timings then leave the one-time imports out
        results = _results((name, cell.with_options(result_storage=storage, refresh_cache=refresh[name] or None)
                            .submit(name, p, workspace, keys[name], name in needed))
                           for name, p in study.cells(params).items())
        for name, members in study.cross_cells(params).items():  # a record counts while its cell.json is there
            rerun = study.cached_cell(name, layout, crosses[name]) is None
            results[name] = cross_soup.with_options(result_storage=storage, refresh_cache=rerun or None)(
                name, members, params, workspace, crosses[name])
        # What the folder holds is its cell.json: a record of the same key can describe another run of the cell
        # (a `same_as` twin that `soupline study` has since trained for its kept models, a resumed run's seconds).
        keys_of = {**keys, **crosses}
        results = {name: study.cached_cell(name, layout, keys_of[name]) or result for name, result in results.items()}
        if not params.study.keep_models:
            for name in needed:
                study.drop_models(study.cell_layout(layout, name))
        table = study.aggregate(params, layout, results)
        create_markdown_artifact(self_contained(layout.study_report / "study.md"), key="soupline-study",
                                 description="data/study/report/study.md of this run (plots inlined)")
        create_table_artifact(shown_rows(table), key="soupline-study-table",
                              description="mean test metrics per method and budget")
        return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted params overrides")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    parser.add_argument("--root", default=".", help="the workspace (holds data/)")
    parser.add_argument("--runner", choices=["threads", "dask"], default="threads")
    parser.add_argument("--workers", type=int, default=None, help="local Dask cluster: worker processes (default 2)")
    parser.add_argument("--address", default=None, help="Dask scheduler address (default: a local cluster)")
    args = parser.parse_args(argv)
    if args.runner == "threads" and (args.workers is not None or args.address):
        # The thread runner runs one cell at a time; running the grid serially instead of as asked is no answer.
        parser.error(f"{'--workers' if args.workers is not None else '--address'} needs --runner dask (the thread "
                     "runner runs one cell at a time: training seeds torch's process-wide RNG)")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers is not None and args.address:
        parser.error("--workers sizes a local cluster, and --address names a running scheduler, whose own workers run "
                     "the cells; give one of them")

    def start() -> list[dict]:
        config.load_existing(Path(args.root) / args.params, args.overrides)  # one line before Prefect starts, each
        ready()
        runner = task_runner(args.runner, args.workers or 2, args.address)
        with interruptible():
            return study_flow.with_options(task_runner=runner)(overrides=args.overrides, params_path=args.params,
                                                               root=str(Path(args.root).resolve()))

    code, table = from_the_shell(start)
    if code:
        return code
    for row in table:
        print(f"{row['method']:<10} {row['budget']!s:<8} {row['model']:<14} acc {row['accuracy']:.4f}  "
              f"macro-F1 {row['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
