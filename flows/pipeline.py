"""The soupline DAG as a Prefect flow: one cached task per stage, one per ingredient for train.

    python -m flows.pipeline                          # params.yaml, workspace = current directory
    python -m flows.pipeline select.budget=0.05       # dotted overrides, as `dvc exp run -S`
    prefect server start & python -m flows.pipeline   # then watch runs, cache hits, the report

Each task calls the stage function dvc.yaml calls (`tasks.pipeline.STAGES`); nothing here
computes anything. Why a second driver: Prefect adds scheduling (prefect.yaml), retries,
concurrent ingredients in worker processes, and a UI; DVC stays the record of what was built.

- Caching: a task's key is `tasks.keys.stage_key` (content of its dvc.yaml deps, code included, + its
  dvc.yaml params (an ingredient: its own train values)), with the result persisted under
  `data/cache/prefect`. A record only counts while the stage's outputs on disk still hash
  to what that run wrote; otherwise the task runs again (`refresh_cache`) and rewrites it.
- Retries: `embed` and `train` retry twice (2 s, then 10 s) an error another try may get past
  (`errors.transient`: an I/O error, a CUDA hiccup); a user error (a `SouplineError`, bad input,
  or a `PermissionError`) or a bug fails at once.
- DVC: after the stages, `dvc commit -f` records the workspace in dvc.lock, so `dvc status`
  is clean and `dvc repro` is a no-op. It is skipped (with a warning) when the run's params
  differ from params.yaml (overrides, another params file): dvc.lock describes params.yaml,
  and committing outputs built from other values would make it lie. Put the values in
  params.yaml, or use `dvc exp run -S`, to have DVC record them.
- One run at a time: the flow holds the workspace lock (`tasks.common.workspace_lock`, as
  `soupline run` and `dvc repro`'s stages do); a second run in the same workspace fails in one line.
- Ingredients: one task each, submitted together. With >= 4 cores they train in worker
  processes (min(cores // 2, 4) of them, or SOUPLINE_TRAIN_WORKERS), each with its share of the
  cores; on 2 cores, one at a time in this process, since a worker's start-up (torch import)
  buys nothing there. Not threads: torch seeds are per process. Fewer torch threads per ingredient
  change the weights' last bits (float summation order), so SOUPLINE_TRAIN_WORKERS=1 is the setting
  that gives `soupline run`'s and `dvc repro`'s bytes. For a cluster, swap the
  runner: `pipeline.with_options(task_runner=DaskTaskRunner(address=...))` (prefect-dask).
- Self-training (`train.self_training.multiple`): a `teacher` task runs before the ingredients' (in this process,
  retried as train is): the students' teacher trained or found and its predictions cached (`tasks.train.teach`),
  so no concurrent student trains it. Its key is the teacher's, on content, with the train code
  (`tasks.train.teacher_task_key`); its record counts while the predictions it left are as it wrote them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.settings import get_current_settings, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.transactions import get_transaction

from flows.interruptible import (from_the_shell, interruptible, stop_with_the_flow, stopped_in_a_worker,
                                 stops_when_cancelled, threads_stop_with_the_run, workers_stop_with_the_run)
from flows.user_errors import RETRIED
from flows.workspace import end_left_running, entered, holder, ready, results_writable
from soupline import config
from soupline.artifacts import read_json
from soupline.config import Params
from soupline.errors import SouplineError, print_error
from soupline.report import self_contained
from tasks import dvc_lock, keys
from tasks.common import timed, workspace_lock
from tasks.layout import Layout
from tasks.pipeline import (STAGES, check_device, check_model_layers, dvc_clean, dvc_vouches, shelve_unrecorded,
                            why_not_commit)
from tasks.select import check_budgets
from tasks.train import ingredient_names, set_aside_strays, teach, teacher_outputs, teacher_task_key, unbuilt

CORES = os.cpu_count() or 1


def _train_workers() -> int:
    """Ingredients trained at once: SOUPLINE_TRAIN_WORKERS, else min(cores // 2, 4), at least 1. Read when the
    flow is defined (at import), so a bad value stops there in one line, before Prefect starts, with the exit code
    of bad input (2, `errors.print_error` as the CLI's `error:` lines; raised, a SouplineError would be a traceback
    at import)."""
    value = os.environ.get("SOUPLINE_TRAIN_WORKERS", str(max(1, min(CORES // 2, 4))))
    if not value.strip().isdigit() or int(value) < 1:
        raise SystemExit(print_error(SouplineError(f"SOUPLINE_TRAIN_WORKERS={value!r}: give a whole number >= 1 (1: "
                                                   "one ingredient at a time, in the flow's process)")))
    return int(value)


TRAIN_WORKERS = _train_workers()


def _worker_init(n: int) -> None:
    """Worker-process initializer: share the cores between the concurrent ingredients; stop with the flow run."""
    import torch

    torch.set_num_threads(n)
    stop_with_the_flow()


def train_runner(workers: int = TRAIN_WORKERS):
    """Worker processes with >= 2 cores each (torch seeds are per process: threads would mix their
    random streams); below that, one ingredient at a time in this process, with no start-up cost."""
    if workers < 2:
        return ThreadPoolTaskRunner(max_workers=1)
    return ProcessPoolTaskRunner(max_workers=workers, initializer=_worker_init,
                                 initargs=(max(1, CORES // workers),))


def _cache_key(context, inputs: dict[str, Any]) -> str:
    return keys.stage_key(context.task.name, inputs["params"], Path(inputs["root"]), inputs.get("ingredient"))


def _run(stage: str, params: Params, root: str, **item: Any) -> dict:
    """Run one stage function and note the content of what it wrote (checked on later cache hits). Not when another
    driver's run from the same key built the outputs as they are (`soupline run`, `dvc repro`: no Prefect record
    here), as `soupline run` skips what the flow built; train skips its built ingredients itself."""
    workspace, key = Path(root), _this_runs_key(stage)
    if not item and keys.is_fresh(stage, key or keys.stage_key(stage, params, workspace), workspace):
        print(f"{stage}: up to date (an earlier run from these inputs built its outputs)")
        info = None
    else:
        with keys.recorded(stage, params, workspace, key):
            info = timed(stage, STAGES[stage], params, Layout(workspace), **item)
    return {"outputs": keys.outputs_hash(stage, workspace, **item), "info": info}


def _this_runs_key(stage: str) -> str | None:
    """The key `_cache_key` gave this task run (Prefect's transaction key), so `keys.recorded` does not hash the
    stage's deps again (seconds for soup and evaluate, which read every model); None: `recorded` computes it."""
    key = getattr(get_transaction(), "key", None)
    return key if isinstance(key, str) and key.startswith(f"soupline-{stage}-") else None


CACHED = {"cache_key_fn": _cache_key, "persist_result": True, "log_prints": True}


@task(name="prepare", **CACHED)
def prepare(params: Params, root: str) -> dict:
    """Load the source, split pool/validation/test."""
    return _run("prepare", params, root)


@task(name="embed", **CACHED, **RETRIED)
def embed(params: Params, root: str) -> dict:
    """Sentence embeddings of every split."""
    return _run("embed", params, root)


@task(name="select", **CACHED)
def select(params: Params, root: str) -> dict:
    """Choose the fine-tuning subset of the pool."""
    return _run("select", params, root)


def _teacher_cache_key(context, inputs: dict[str, Any]) -> str:
    """The teacher task's key (`tasks.train.teacher_task_key`): no dvc.yaml stage, so not `keys.stage_key`'s."""
    return teacher_task_key(inputs["params"], Layout(Path(inputs["root"])))


@task(name="teacher", cache_key_fn=_teacher_cache_key, persist_result=True, log_prints=True, **RETRIED)
def teacher(params: Params, root: str) -> dict:
    """Self-training's teacher trained (or found) and its predictions cached, once, before the students' concurrent
    tasks (`tasks.train.teach`); retried, cached and reported as an ingredient's task is."""
    layout = Layout(Path(root))
    teach(params, layout)
    return {"outputs": teacher_outputs(params, layout), "info": None}


@task(name="train", task_run_name="train-{ingredient}", **CACHED, **RETRIED)
def train(params: Params, root: str, ingredient: str) -> dict:
    """Fine-tune one ingredient of the sweep."""
    with stopped_in_a_worker():
        return _run("train", params, root, ingredient=ingredient)


@task(name="train-sweep", cache_policy=NO_CACHE, persist_result=False)
def train_sweep(params: Params, root: str) -> None:
    """Drop ingredient folders no longer in the sweep, prune the ingredient cache and write the sweep's curves (the
    ingredients are built)."""
    STAGES["train"](params, Layout(Path(root)))


@task(name="soup", **CACHED)
def soup(params: Params, root: str) -> dict:
    """Average the ingredients into one model per soup method."""
    return _run("soup", params, root)


@task(name="evaluate", **CACHED)
def evaluate(params: Params, root: str) -> dict:
    """Test metrics of every ingredient and soup."""
    return _run("evaluate", params, root)


@task(name="report", **CACHED)
def report(params: Params, root: str) -> dict:
    """report.md and plots."""
    return _run("report", params, root)


@task(name="dvc-commit", cache_policy=NO_CACHE, persist_result=False)
def dvc_commit(root: str, unless_recorded: bool = False) -> None:
    """Record the pipeline's outputs in dvc.lock (`dvc commit -f`), so `dvc status` is clean; a task, so runs show it.
    `unless_recorded` (a run that built nothing): only when `dvc status` finds dvc.lock behind, as `soupline run`."""
    dvc_lock.dvc_commit(Path(root), list(STAGES), unless_recorded=unless_recorded)


def _outputs_changed(store: ResultStore, key: str, outputs: Callable[[], str]) -> bool:
    """True when the task's outputs on disk (`outputs()`: their hash) are not the ones the run cached under `key`
    wrote."""
    try:
        return store.read(key).result["outputs"] != outputs()
    except Exception:  # noqa: BLE001 - an unreadable record is no evidence: run again
        return True


def _workers_share_server() -> contextlib.AbstractContextManager:
    """Point worker processes at this run's API. An ephemeral server (no PREFECT_API_URL) is not in the
    settings they inherit, and each would start a server of its own, where the UI never looks."""
    if get_current_settings().api.url:
        return contextlib.nullcontext()
    return temporary_settings(updates={"api.url": str(get_client(sync_client=True).api_url).rstrip("/")})


def _metrics_table(metrics: dict) -> list[dict]:
    rows = [{"model": name, "kind": "ingredient", **m} for name, m in metrics["ingredients"].items()]
    rows += [{"model": f"soup:{name}", "kind": "soup", **m} for name, m in metrics["soups"].items()]
    return rows + [{"model": "probe", "kind": "reference", **metrics["probe"]}]


@flow(name="soupline-pipeline", log_prints=True, task_runner=train_runner())
def pipeline(overrides: list[str] | None = None, params_path: str = "params.yaml", root: str = ".",
             result_storage: str | None = None) -> dict:
    """prepare -> embed -> select -> train (one task per ingredient, concurrent) -> soup -> evaluate -> report.

    Args:
        overrides: dotted `key=value` params overrides (`select.budget=0.05`).
        params_path: params file, relative to `root`.
        root: the workspace (holds data/), the working directory while the flow runs: relative paths in params
            (`prepare.source`, `select.gotd.target`) are read from it, as `soupline` and `dvc repro` read them.
        result_storage: folder of Prefect's persisted results and cache records (default root/data/cache/prefect).
    """
    with entered(root) as workspace:
        return _pipeline(overrides, params_path, workspace, result_storage)


def _pipeline(overrides: list[str] | None, params_path: str, workspace: Path, result_storage: str | None) -> dict:
    """pipeline's body, in `workspace` (its root, resolved by `entered`)."""
    params = config.load_existing(workspace / params_path, overrides)  # one-line SouplineError before any task runs
    storage = Path(result_storage or Layout(workspace).prefect_results).expanduser().resolve()
    if result_storage:  # likewise (the default lies in the workspace, which the lock below needs writable)
        results_writable(storage)
    with workspace_lock(Layout(workspace), holder("soupline-pipeline")) as left, threads_stop_with_the_run(), \
            workers_stop_with_the_run(), stops_when_cancelled():
        end_left_running(left)
        logger = get_run_logger()
        store = ResultStore(result_storage=LocalFileSystem(basepath=str(storage)))
        ws = str(workspace)
        states: dict[str, Any] = {}
        clean, built = dvc_clean(Layout(workspace)), False

        def configured(stage_task, ingredient: str | None = None, key: str | None = None,
                       outputs: Callable[[], str] | None = None):
            """The task set up for this run, whether its cache record is there and still matches the files, and its
            key (default: the stage's, `keys.stage_key`, its outputs dvc.yaml's)."""
            key = key or keys.stage_key(stage_task.name, params, workspace, ingredient)
            recorded = store.exists(key)
            stale = recorded and _outputs_changed(
                store, key, outputs or (lambda: keys.outputs_hash(stage_task.name, workspace, ingredient)))
            if stale:
                logger.info(f"{key}: outputs changed since the cached run; running it again")
            return (stage_task.with_options(result_storage=storage, refresh_cache=stale or None),
                    recorded and not stale, key)

        def run_in_flow(stage_task) -> None:
            nonlocal built
            configured_task, hit, key = configured(stage_task)
            if not hit and not built:
                vouched_by_dvc(stage_task.name, key)
            state = configured_task(params, ws, return_state=True)
            states[stage_task.name] = state
            out = state.result()  # raises the stage's error, failing the flow
            built = built or (state.name != "Cached" and out["info"] is not None)
            if state.name == "Cached":
                recorded_as_cached(stage_task.name, key)

        def recorded_as_cached(stage: str, key: str) -> None:
            """A cache hit is a run from this key whose outputs are on disk as it wrote them (`configured` checked):
            record it where `soupline run` and the closing commit's check (`changed_while_running`) look, when no
            record says so (`soupline cache --clear stages`, or another driver's run from this key replaced the
            outputs and a `git checkout` put these back). Else that check took every cached stage for one whose
            inputs were edited during the run, and no flow run committed dvc.lock again."""
            with keys.memoized():
                if not keys.is_fresh(stage, key, workspace):
                    keys.record(stage, key, workspace, params)

        def vouched_by_dvc(stage: str, key: str) -> None:
            """Outputs that no run recorded here wrote but dvc.lock records as they are (`dvc pull` in a fresh
            clone, `dvc exp apply` of a queued experiment, which ran in a copy of its own, `git checkout` of another
            run's report) count as built, as `soupline run` counts them (`tasks.pipeline.dvc_vouches`, one `dvc
            status` per run): the stage's task then finds them up to date. Only until a stage builds something, whose
            followers may then read other inputs."""
            with keys.memoized():  # the outputs hashed once for the checks and the record
                if keys.is_fresh(stage, key, workspace) or not dvc_vouches(stage, params, Layout(workspace), clean,
                                                                            key):
                    return
                keys.record(stage, key, workspace, params)
                logger.info(f"{stage}: dvc.lock records its outputs as they are; not run again")

        check_device(params.device, params.train)  # one line before any task, not after prepare, embed and select ran
        check_model_layers(params, Layout(workspace))  # likewise a LoRA target or head the model lacks
        run_in_flow(prepare)
        # before the embeddings: the budget, and DEALRec's hard_prune against it
        check_budgets({"select.budget": params.select.budget}, Layout(workspace), params.select,
                      multiple=params.train.self_training.multiple)
        for stage_task in (embed, select):
            run_in_flow(stage_task)
        sweep = {f"train-{name}": name for name in ingredient_names(params)}
        set_aside_strays(params, Layout(workspace))  # before the ingredient tasks: a renamed one is restored
        built = bool(unbuilt(params, Layout(workspace))) or built
        if params.train.self_training.multiple:  # its teacher once, not in each concurrent student's task
            configured_teacher, _, _ = configured(teacher, key=teacher_task_key(params, Layout(workspace)),
                                                  outputs=lambda: teacher_outputs(params, Layout(workspace)))
            states["teacher"] = configured_teacher(params, ws, return_state=True)
            states["teacher"].result()  # its error fails the flow before any student starts
        futures = {}
        with _workers_share_server():
            for name, ingredient in sweep.items():
                configured_train, hit, _ = configured(train, ingredient=ingredient)
                if hit:  # a cache hit needs no worker process
                    states[name] = configured_train(params, ws, ingredient, return_state=True)
                else:
                    futures[name] = configured_train.submit(params, ws, ingredient)
            for name, future in futures.items():
                future.wait()
                states[name] = future.state
        for name in sweep:
            states[name] = states.pop(name)  # report in sweep order
            states[name].result()
        train_sweep(params, ws)
        for stage_task in (soup, evaluate, report):
            run_in_flow(stage_task)

        layout = Layout(workspace)
        reason = why_not_commit(params, layout)
        if reason is None:
            dvc_commit(ws, unless_recorded=not built)  # a run that built nothing: `dvc status -q`, 0.6x the commit
            dvc = "committed"
        else:
            dvc = f"not committed: {reason}"
            if reason != dvc_lock.NOT_DVC:
                logger.warning(shelve_unrecorded(params, layout, reason))

        metrics = read_json(layout.metrics / "metrics.json")
        create_markdown_artifact(self_contained(layout.reports / "report.md"), key="soupline-report",
                                 description="data/reports/report.md of this run (plots inlined)")
        create_table_artifact(_metrics_table(metrics), key="soupline-metrics",
                              description="test accuracy, macro-F1 and ECE of every ingredient and soup, "
                                          "and the probe reference")
        return {"states": {name: state.name for name, state in states.items()}, "metrics": metrics, "dvc": dvc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted params overrides")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --root")
    parser.add_argument("--root", default=".", help="the workspace (holds data/)")
    parser.add_argument("--results", default=None, help="Prefect result storage (default ROOT/data/cache/prefect; "
                                                            "relative: from where the command runs)")
    args = parser.parse_args(argv)
    results = args.results and str(Path(args.results).expanduser().resolve())

    def start() -> dict:
        config.load_existing(Path(args.root) / args.params, args.overrides)  # one line before Prefect starts, each
        ready(results)
        with interruptible():
            return pipeline(overrides=args.overrides, params_path=args.params, root=str(Path(args.root).resolve()),
                            result_storage=results)

    code, out = from_the_shell(start)
    if code:
        return code
    width = max(map(len, out["states"]))
    for name, state in out["states"].items():
        print(f"{name:<{width}}  {state}")
    print(f"dvc.lock: {out['dvc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
