"""The study flow: cells as cached Prefect tasks; a local Dask cluster gives the thread runner's metrics."""

import json
import os

import pytest

pytest.importorskip("prefect_dask")

from flows.study import cell, check_scheduler, main, prepare_and_embed, study_flow, task_runner  # noqa: E402
from soupline import config  # noqa: E402
from soupline.errors import SouplineError  # noqa: E402
from tests.conftest import ROOT, make_frame  # noqa: E402


CROSS = ["study.cross_soups=true", "train.head_init=random"]  # cross soups need one shared head

def _project(root, tiny_model):
    root.mkdir(exist_ok=True)
    make_frame(20).to_json(root / "corpus.jsonl", orient="records", lines=True)
    (root / "params.yaml").write_text("\n".join([
        f"model: {tiny_model}", "device: cpu",
        f"prepare: {{source: {root / 'corpus.jsonl'}}}", "embed: {max_length: 32}",
        "train: {learning_rates: [0.005], seeds: [0, 1], epochs: 2, min_steps: 0, batch_size: 8, max_length: 32}",
        "soup: {methods: [uniform, greedy]}",
        "study: {methods: [random, kmeans], budgets: [12], seeds: [0], full_pool: false}"]) + "\n")
    return root


def _states(flow_state) -> dict[str, str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    return {r.name: r.state.name for r in runs if r.flow_run_id == flow_state.state_details.flow_run_id
            and r.name.startswith("cell-")}


@pytest.mark.slow
def test_thread_and_dask_runners_agree_and_cells_are_cached(tmp_path, tiny_model, prefect_server):
    threads, dask = _project(tmp_path / "threads", tiny_model), _project(tmp_path / "dask", tiny_model)

    state = study_flow.with_options(task_runner=task_runner("threads"))(root=str(threads), return_state=True)
    by_threads = state.result()
    assert _states(state) == {"cell-random-b12-s0": "Completed", "cell-kmeans-b12-s0": "Completed"}
    again = study_flow.with_options(task_runner=task_runner("threads"))(root=str(threads), return_state=True)
    assert _states(again) == {"cell-random-b12-s0": "Cached", "cell-kmeans-b12-s0": "Cached"}
    assert again.result() == by_threads

    by_dask = study_flow.with_options(task_runner=task_runner("dask", workers=2))(root=str(dask))
    assert [(r["method"], r["budget"]) for r in by_dask] == [(r["method"], r["budget"]) for r in by_threads]
    for a, b in zip(by_threads, by_dask):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert a["macro_f1"] == pytest.approx(b["macro_f1"], abs=1e-6)
    rows = json.loads((dask / "data/study/report/study.json").read_text())["rows"]
    assert {r["cell"] for r in rows} == {"random-b12-s0", "kmeans-b12-s0"} and (dask / "data/study/report/study.html").exists()


def test_cells_run_by_soupline_study_are_hits_for_the_flow(tmp_path, tiny_model, prefect_server):
    from soupline import config
    from tasks import study
    from tasks.layout import Layout

    root = _project(tmp_path, tiny_model)
    params = config.load(root / "params.yaml", ["study.methods=[random]"])
    study.run(params, Layout(root))
    before = (root / "data/study/cells/random-b12-s0/cell.json").stat().st_mtime_ns
    state = study_flow(root=str(root), overrides=["study.methods=[random]"], return_state=True)
    assert _states(state) == {"cell-random-b12-s0": "Completed"}  # no Prefect record yet: the task ran ...
    assert (root / "data/study/cells/random-b12-s0/cell.json").stat().st_mtime_ns == before  # ... and reused it
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # this run's: the server holds the earlier tests' too (the default
        table, = client.read_artifacts(  # order, by id, not time, gave one of theirs in a run of the whole file)
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["soupline-study-table"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    row, = json.loads(table.data)  # to 4 places, as study.md's table: the means were as computed (0.3333333333)
    assert row["accuracy"] == round(row["accuracy"], 4) and row["probe_accuracy"] == round(row["probe_accuracy"], 4)
    # keep_models asks for the models the cached cell no longer has: the record does not count, the cell runs
    state = study_flow(root=str(root), overrides=["study.methods=[random]", "study.keep_models=true"],
                       return_state=True)
    assert _states(state) == {"cell-random-b12-s0": "Completed"}
    assert any((root / "data/study/cells/random-b12-s0/data/models/ingredients").iterdir())


def test_a_cell_is_retried_after_a_transient_error_not_after_a_user_error(tmp_path, tiny_model, prefect_server,
                                                                         monkeypatch):
    """A study cell task was never retried: an I/O error (a disk hiccup) failed the study, where the pipeline flow's
    train retries (`flows.user_errors.RETRIED`). Now a cell is run again 2 s later and completes; a user error (a file
    this user may not read) fails at once, one run, and so does a bug (`errors.transient`; it was tried thrice)."""
    from tasks import study
    from tasks.layout import Layout

    root = _project(tmp_path, tiny_model)
    params, layout = config.load(root / "params.yaml", ["study.methods=[random]"]), Layout(root)
    study.prepare_and_embed(params, layout)
    key = study.plan(params, layout)[0]["random-b12-s0"]
    run_stage, calls, runs = study.run_stage, [], []

    def flaky(stage, *args):
        calls.append(stage)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        run_stage(stage, *args)

    monkeypatch.setattr(study, "run_stage", flaky)
    counted = {"refresh_cache": True, "result_storage": tmp_path / "results",
               "on_completion": [lambda task, task_run, state: runs.append(task_run.run_count)],
               "on_failure": [lambda task, task_run, state: runs.append(-task_run.run_count)]}
    state = cell.with_options(**counted)("random-b12-s0", params, str(root), key, return_state=True)
    assert state.is_completed() and runs == [2] and calls == ["select", *study.CELL_STAGES]

    for error in (PermissionError(13, "Permission denied", "data/x"), KeyError("a bug")):  # neither was retried
        def failing(stage, *args, error=error):
            calls.append(stage)
            raise error

        monkeypatch.setattr(study, "run_stage", failing)
        calls.clear()
        runs.clear()
        state = cell.with_options(**counted)("random-b12-s0", params, str(root), "another-key", return_state=True)
        assert state.is_failed() and runs == [-1] and calls == ["select"], error


def test_dask_scheduler_that_does_not_answer_is_one_line(capsys):
    with pytest.raises(SouplineError, match="does not answer") as err:
        check_scheduler("tcp://127.0.0.1:9")
    assert "\n" not in str(err.value)
    assert main(["--root", str(ROOT), "--runner", "dask", "--address", "tcp://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("error: the Dask scheduler at tcp://127.0.0.1:9 does not answer")


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--address", "tcp://127.0.0.1:8786"]])
def test_dask_flags_without_the_dask_runner_are_refused(flag, capsys):
    """The thread runner runs one cell at a time: asking for workers there must not silently run serially."""
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(ROOT), *flag])
    assert exit_.value.code == 2 and f"{flag[0]} needs --runner dask" in capsys.readouterr().err


def test_workers_and_a_scheduler_address_are_refused_together(capsys):
    """--workers sizes a local cluster, which --address replaces: it was dropped without a word."""
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(ROOT), "--runner", "dask", "--workers", "2", "--address", "tcp://127.0.0.1:8786"])
    assert exit_.value.code == 2 and "--workers sizes a local cluster, and --address names a running scheduler" in \
        capsys.readouterr().err


def test_prepare_and_embed_skip_up_to_date_stages(tmp_path, tiny_model, capsys):
    """As `soupline study` does: a second study flow run does not prepare again (it re-read the source each time)."""
    root = _project(tmp_path / "p", tiny_model)
    params = config.load_existing(root / "params.yaml", [])
    prepare_and_embed.fn(params, str(root))
    first = capsys.readouterr().out
    assert "prepare: {'pool'" in first and "up to date" not in first
    prepare_and_embed.fn(params, str(root))
    assert capsys.readouterr().out.splitlines() == ["prepare: up to date", "embed: up to date"]


def test_bad_override_is_one_line(capsys):
    assert main(["--root", str(ROOT), "study.methods=[rnd]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params: study.methods: unknown selection method 'rnd'") and "\n" not in err


def test_cross_selection_soup_is_a_cached_task(tmp_path, tiny_model, prefect_server):
    """study.cross_soups through the flow (its default task runner: concurrent threads would share torch's RNG and
    give the ingredients of one cell different heads): member cells keep their models until the cross soup ran."""
    root = _project(tmp_path, tiny_model)
    state = study_flow(root=str(root), overrides=CROSS, return_state=True)
    table = state.result()
    assert any(r["method"] == "cross" for r in table)
    cross = json.loads((root / "data/study/cells/cross-b12/cell.json").read_text())
    assert cross["members"] == ["random-b12-s0", "kmeans-b12-s0"]
    assert sum(m["kind"] == "ingredient" for m in cross["models"].values()) == 4
    assert not any((root / "data/study/cells").glob("*/data/models"))  # keep_models: false
    again = study_flow(root=str(root), overrides=CROSS, return_state=True)
    assert again.result() == table
    # a deleted cross soup is made again (was: its Prefect record short-circuited it, so it never came back, and its
    # member cells retrained for it on every run), and the run after that trains nothing
    import shutil

    shutil.rmtree(root / "data/study/cells/cross-b12")
    rebuilt = study_flow(root=str(root), overrides=CROSS, return_state=True)
    assert _states(rebuilt) == {"cell-random-b12-s0": "Completed", "cell-kmeans-b12-s0": "Completed"}
    assert (root / "data/study/cells/cross-b12/cell.json").exists()
    then = study_flow(root=str(root), overrides=CROSS, return_state=True)
    assert _states(then) == {"cell-random-b12-s0": "Cached", "cell-kmeans-b12-s0": "Cached"}


def test_a_failed_cell_is_raised_only_once_the_running_cells_have_ended(prefect_server):
    """The flow lets go of the workspace lock when a cell's failure is raised: a cell still training then went on
    writing in the workspace unlocked (a second study could start there). Now the running cells end first, and the
    cells not started yet are cancelled, as `soupline study` stops at its first failed cell."""
    import threading
    import time

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.study import _results

    started, ended, lock = [], [], threading.Lock()

    @task
    def fake_cell(name: str) -> str:
        with lock:
            started.append(name)
        if name == "bad":
            raise SouplineError("study cell bad failed")
        time.sleep(1.5)
        with lock:
            ended.append(name)
        return name

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def grid() -> tuple[list, list]:
        futures = {name: fake_cell.submit(name) for name in ("bad", "slow", "queued")}
        with pytest.raises(SouplineError, match="study cell bad failed"):
            _results(futures)
        time.sleep(0.5)  # a cell the pool started after the failure has begun by now (its task run set up)
        with lock:  # what had started, and what had ended
            return list(started), list(ended)

    began, finished = grid()
    assert set(began) - {"bad"} == set(finished)  # no cell runs on once the failure is raised
    assert "queued" not in began  # and none still queued starts


def _marking_cell(name: str, folder: str) -> str:
    """A cell for a Dask worker: marks its start and its end (`ended`, or `stopped` at a step) in `folder`; `bad`
    fails at once, the others train 60 steps of 0.1 s, stopping as a cell does (`interrupt.check`)."""
    import time
    from pathlib import Path

    from flows.interruptible import stopped_in_a_worker
    from soupline import interrupt

    Path(folder, f"{name}.began").touch()
    if name == "bad":
        raise SouplineError("study cell bad failed")
    with stopped_in_a_worker():
        try:
            for _ in range(60):
                interrupt.check()
                time.sleep(0.1)
        except KeyboardInterrupt:
            Path(folder, f"{name}.stopped").touch()
            raise
    Path(folder, f"{name}.ended").touch()
    return name


def _stop_requested() -> bool:
    from soupline import interrupt

    return interrupt.REQUESTED.is_set() or bool(interrupt._STOPPED_RUNS)


def test_a_failed_cell_on_dask_stops_the_running_ones_and_starts_no_more(tmp_path, prefect_server):
    """Dask's futures were not cancelled: every queued cell ran before the failure was raised. Then the flow waited
    for the running cells, and for one a worker began in the moment before the cancel reached it, to train to their
    end. Now they stop at their next step (as on Ctrl-C: no cell.json), none queued behind them begins, the failure
    is raised, and the workers' stop requests are cleared (an address's workers run the next flow)."""
    from prefect import flow, task

    from flows.study import _results

    marking_cell = task(_marking_cell)

    @flow(task_runner=task_runner("dask", workers=2))
    def grid() -> dict:
        futures = {name: marking_cell.submit(name, str(tmp_path)) for name in ("slow", "bad", "q1", "q2", "q3", "q4")}
        with pytest.raises(SouplineError, match="study cell bad failed"):
            _results(futures)
        return futures["slow"].wrapped_future.client.run(_stop_requested)

    requested = grid()
    began, stopped = ({p.stem for p in tmp_path.glob(f"*.{end}")} for end in ("began", "stopped"))
    assert "slow" in stopped and began - {"bad"} == stopped  # no cell runs on once the failure is raised ...
    assert not list(tmp_path.glob("*.ended"))  # ... to its end
    assert not began & {"q3", "q4"}  # a worker's next cell may begin as "bad" ends; those behind it never do
    assert requested and not any(requested.values())


@pytest.mark.slow  # a local cluster, two cells, a SIGTERM: 75 s on 2 busy cores
def test_a_cancelled_run_stops_its_dask_cells_and_no_other_runs(tmp_path, prefect_server):
    """Cancelling a deployment run (the runner's SIGTERM: TerminationSignal in the flow's main thread) reached no Dask
    worker: its running cells trained on, with the workspace unlocked, until the local cluster's close killed them
    mid-step (a shared cluster's: to their end). Now they stop at their next step before the flow body is left. The
    stop is this flow run's: another run's task in a thread of the same worker (a shared cluster) trains on, where
    the stop of a failed cell stopped it too."""
    import signal
    import threading
    import time

    from prefect import flow, task
    from prefect.exceptions import TerminationSignal

    from flows.local_dask import LocalDaskRunner
    from flows.study import _results

    def cancel_once_both_began() -> None:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{name}.began").exists() for name in ("mine", "other")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    @flow(task_runner=LocalDaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": True,
                                                      "dashboard_address": None, "preload": ["flows.local_dask"]}))
    def grid() -> tuple[list[str], dict]:
        mine = task(_marking_cell).submit("mine", str(tmp_path))
        other = mine.wrapped_future.client.submit(_marking_cell, "other", str(tmp_path), pure=False)  # not this run's
        threading.Thread(target=cancel_once_both_began, daemon=True).start()
        with pytest.raises(TerminationSignal):  # caught here, so Prefect's handler does not pass SIGTERM on
            _results({"mine": mine})
        marks = sorted(p.name for p in tmp_path.iterdir())  # as the flow body is left
        assert other.result(timeout=120) == "other"
        return marks, other.client.run(_stop_requested)

    marks, requested = grid()
    assert marks == ["mine.began", "mine.stopped", "other.began"]  # before: ["mine.began", "other.began"]
    assert (tmp_path / "other.ended").exists() and not any(requested.values())


def _threads() -> dict:
    import os

    import torch

    return {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def test_a_local_cluster_shares_the_cores_and_leaves_this_process_environment(prefect_server, monkeypatch,
                                                                               caplog):
    """distributed starts its worker processes with OMP/MKL/OPENBLAS_NUM_THREADS=1 (one thread even for a worker
    alone on the machine) by setting them in this process's os.environ, and left them there: the flow process's
    later child processes (a pipeline flow's ingredient workers) ran on one thread too. And each worker process was
    killed as the cluster closed."""
    from dask.system import CPU_COUNT
    from prefect import flow, task

    from flows.local_dask import THREAD_VARS

    for var in (*THREAD_VARS, "PYTHONHASHSEED"):
        monkeypatch.delenv(var, raising=False)
    runner = task_runner("dask", workers=1)
    before = dict(os.environ)

    @flow(task_runner=runner)
    def threads() -> dict:
        return task(_threads).submit().result()

    with caplog.at_level("WARNING", logger="distributed"):
        assert threads() == {"torch": CPU_COUNT, "OMP_NUM_THREADS": str(CPU_COUNT)}
    assert dict(os.environ) == before
    assert "still alive" not in caplog.text  # its exit's last garbage collection took longer than the 4 s allowed


def test_ctrl_c_in_a_local_dask_worker_stops_its_cell_at_the_next_step(tmp_path, prefect_server):
    """The terminal's Ctrl-C reaches the worker processes too: it ended a worker process (the flow, had it not been
    stopped too, waited for its cell for good), and the flow's own Ctrl-C then killed the cell mid-step as the cluster
    closed. Now it stops the cell at its next step, as in the pipeline flow's worker processes."""
    import multiprocessing
    import signal
    import time

    from prefect import flow, task

    @flow(task_runner=task_runner("dask", workers=1))
    def one() -> None:
        future = task(_marking_cell).submit("slow", str(tmp_path))
        while not (tmp_path / "slow.began").exists():
            time.sleep(0.1)
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGINT)
        with pytest.raises(SouplineError, match="stopped with its flow run"):
            future.result(timeout=120)  # before: the worker process died, and the flow waited for good

    one()
    assert (tmp_path / "slow.stopped").exists() and not (tmp_path / "slow.ended").exists()


def test_a_stopped_cell_on_a_dask_worker_without_a_nanny_fails_in_one_line(tmp_path, prefect_server, caplog):
    """A Dask worker that no nanny started (`dask worker --no-nanny`, an in-process cluster) has no parent process,
    which the stop took for the flow's own: the cell's KeyboardInterrupt escaped into distributed, which logged its
    traceback ("Unhandled exception in async instruction") and shut the worker down. Now the cell fails as
    `Stopped`, one line, and the worker runs the next task."""
    import logging
    import time

    import prefect.runtime
    from distributed import LocalCluster
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from soupline import interrupt

    @flow(task_runner=DaskTaskRunner(cluster_class=LocalCluster, cluster_kwargs={
        "n_workers": 1, "threads_per_worker": 1, "processes": False, "dashboard_address": None}))
    def stopped() -> int:
        future = task(_marking_cell).submit("stopped", str(tmp_path))
        while not (tmp_path / "stopped.began").exists():
            time.sleep(0.1)
        interrupt.stop_run(prefect.runtime.flow_run.get_id())  # as `_stop_on_dask` asks a worker
        try:
            with pytest.raises(SouplineError, match="^stopped with its flow run"):
                future.result(timeout=30)
        finally:
            interrupt.go_on(prefect.runtime.flow_run.get_id())
        return future.wrapped_future.client.submit(len, "one", pure=False).result(timeout=30)

    with caplog.at_level(logging.WARNING, logger="distributed"):
        assert stopped() == 3  # before: the worker was gone
    assert (tmp_path / "stopped.stopped").exists()
    assert not [r for r in caplog.records if r.name.startswith("distributed") and r.levelno >= logging.ERROR]


def test_a_worker_that_gets_the_cell_pickled_by_value_logs_a_stopped_cell_in_one_line():
    """`python -m flows.study` runs the module as __main__, so Dask pickles its cell task by value: an `--address`
    worker imported flows.interruptible for it, never flows.study, whose import installs the one-line filter, and
    logged a stopped cell's `Stopped` with Prefect's traceback (17 lines). flows.interruptible installs it too."""
    import subprocess
    import sys

    code = ("import logging, flows.interruptible\n"
            "print([type(f).__name__ for f in logging.getLogger('prefect.task_runs').filters])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['OneLineUserErrors']", out.stdout + out.stderr[-2000:]


@pytest.mark.slow
def test_a_failed_cell_on_dask_cancels_the_cells_not_started(tmp_path, tiny_model, prefect_server, capsys):
    """On Dask the whole grid ran before the flow failed: a failure was met in grid order (after the cells before
    it), and Dask's futures were never cancelled. The near-duplicate filter leaves 25 of the 42 pool examples, too
    few for the first cell's budget of 30: it fails at once, while the second cell trains on the other worker."""
    from tasks import study
    from tasks.layout import Layout

    root = _project(tmp_path, tiny_model)
    overrides = ["study.methods=[random]", "select.dedup_threshold=0.995"]
    assert main(["--root", str(root), "--runner", "dask", "--workers", "2", *overrides,
                 "study.budgets=[30,12,10,8,6,4]"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: study cell random-b30-s0 failed") and "only 25 pool example(s)" in err[-1]
    cells = root / "data/study/cells"
    began = {p.name for p in cells.iterdir()} - {"random-b30-s0"}
    # The one training when the failure came stopped at its next step (and a worker's next cell, if it began as
    # the failed one ended, before the cancel could reach it); the cells queued behind them never began.
    assert "random-b12-s0" in began and not began & {"random-b6-s0", "random-b4-s0"}
    assert not any((cells / name / "cell.json").exists() for name in began)  # nothing a rerun would trust ...
    params = config.load_existing(root / "params.yaml", [*overrides, "study.budgets=[12]"])
    key = study.plan(params, Layout(root))[0]["random-b12-s0"]
    state = study_flow(root=str(root), overrides=[*overrides, "study.budgets=[12]"], return_state=True)
    assert _states(state) == {"cell-random-b12-s0": "Completed"}  # ... so it runs again, to its end
    assert study.cached_cell("random-b12-s0", Layout(root), key) is not None


def test_ctrl_c_while_the_cells_run_does_not_wait_for_them_to_end():
    """Ctrl-C (or a cancelled run's TerminationSignal) met while waiting for the cells: the running cells stop at
    their next step once it leaves the flow body (`threads_stop_with_the_run`); `_results` waited for them to end
    first, so a cell trained on to its last step."""
    import concurrent.futures
    import threading
    import time

    from flows.study import _results

    running = concurrent.futures.Future()
    running.set_running_or_notify_cancel()
    threading.Timer(3, running.set_result, ("b",)).start()  # a cell that trains 3 s more

    class Stopped:  # the first cell's result() as Ctrl-C meets it
        wrapped_future, _final_state = concurrent.futures.Future(), "ended"

        def result(self):
            raise KeyboardInterrupt

    class Running:
        wrapped_future, _final_state = running, None

        def add_done_callback(self, fn):
            running.add_done_callback(lambda _: fn(self))

        def result(self):
            return running.result()

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _results({"a": Stopped(), "b": Running()})
    assert time.perf_counter() - start < 1


def test_the_report_reads_each_cells_cell_json_not_an_older_prefect_record(tmp_path, tiny_model, prefect_server):
    """A Prefect record of a cell's key outlived the cell.json it was made with: `soupline study` with
    `study.keep_models` trains a `same_as` twin itself and rewrites its cell.json under the same key, and the flow's
    report went on showing the record's `same_as` and the twin's seconds, not what the folder holds."""
    root = _project(tmp_path, tiny_model)
    overrides = ["study.methods=[random]"]
    first = study_flow(root=str(root), overrides=overrides)
    path = root / "data/study/cells/random-b12-s0/cell.json"
    cell = json.loads(path.read_text())
    cell["seconds"] = {"select": 100.0, "train": 200.0, "soup": 0.0, "evaluate": 0.0}  # another run, same key
    path.write_text(json.dumps(cell))
    again = study_flow(root=str(root), overrides=overrides)
    assert first[0]["seconds"] != 300.0 and again[0]["seconds"] == 300.0
