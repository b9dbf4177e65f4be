"""The Prefect flow on the tiny temporary project: same stages as `dvc repro`, cached on the same inputs.

A cold run builds everything and leaves `dvc status` clean; a second run is all cache hits;
a changed `select.budget` re-runs select and what follows only; deleted outputs are rebuilt;
bad params fail in one line before any task runs. The flows run in this process against a
temporary Prefect server (`prefect_test_harness`) with PREFECT_HOME in a temp folder.
"""

import contextlib
import filecmp
import functools
import json
import logging
import os
import re
import select
import signal
import socket
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml


pytest.importorskip("prefect")

from prefect.states import Failed  # noqa: E402

from tasks import keys  # noqa: E402
from flows.pipeline import _this_runs_key, pipeline, train_runner  # noqa: E402
from flows.user_errors import retry_if_transient  # noqa: E402
from soupline import config  # noqa: E402
from soupline.errors import SouplineError  # noqa: E402
from soupline.report import self_contained  # noqa: E402
from tests.conftest import ROOT, tiny_project  # noqa: E402
from tests.conftest import run_cmd as _run  # noqa: E402

STAGES = ["prepare", "embed", "select", "soup", "evaluate", "report"]
INGREDIENTS = ["train-lr0.005-seed0", "train-lr0.005-seed1", "train-lr0.01-seed0", "train-lr0.01-seed1"]
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model):
    """The tiny project of tests/test_pipeline_dvc.py (same params), plus the flows package."""
    return tiny_project(tmp_path_factory.mktemp("flow-repo"), tiny_model, ("flows",))


def _flow(repo, monkeypatch, name: str, serial: bool = False, chdir: bool = True, **kwargs):
    """Run the flow from the project root (unless `chdir=False`), timed."""
    # serial: ingredients one after another in this process (the default on 2 cores), sparing
    # bigger machines the worker processes' start-up; the cold run uses the default runner.
    if chdir:
        monkeypatch.chdir(repo)
    flow = pipeline.with_options(task_runner=train_runner(workers=1)) if serial else pipeline
    start = time.perf_counter()
    out = flow(root=str(repo), **kwargs)
    TIMES[name] = time.perf_counter() - start
    return out


@pytest.fixture(scope="module")
def cold(repo, prefect_server, tmp_path_factory):
    """The cold run's result: the module's first flow run, which builds everything the later tests start from, run
    by whichever test needs it first, so that each test passes alone too (the budget test alone saw prepare and
    embed run, not cached). "copy": the project as it built it, which `built` puts back before each test;
    "artifacts": the latest version of each artifact, read now, as later runs add versions of their own (listed in
    no order: the server sorts them by their random ids)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with pytest.MonkeyPatch.context() as mp:
        out = _flow(repo, mp, "cold")
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a.data for a in client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=["soupline-report", "soupline-metrics"])))}
    copy = tmp_path_factory.mktemp("flow-repo-built") / "project"
    shutil.copytree(repo, copy)
    return {**out, "artifacts": artifacts, "copy": copy}


@pytest.fixture
def built(repo, cold):
    """The project as the cold run built it, whatever the tests before did to it: a test changes it at will (edits
    params.yaml, overrides the sweep, deletes outputs or records, stops a run mid-training), and each test starts
    from the same workspace in any order. Before, the reverse order failed two tests (the renamed-ingredient test
    found only the ingredient a cancelled run's overrides had left; the cold run's test, its metrics rewritten by
    later runs), a shuffled one also the run-records test (select and ingredients ran again: the cancelled run's
    overrides had replaced them)."""
    _put_back(filecmp.dircmp(cold["copy"], repo, ignore=[]))
    return repo


def _put_back(diff: filecmp.dircmp) -> None:
    """Make the right folder of `diff` the left one again: what differs (`filecmp`: size and mtime, then content) or
    is missing copied back, what the left lacks removed, the rest left alone (a whole copy cost each test a second).
    A symbolic link (a study cell's) is an entry of its own, put back as a link, never followed: filecmp compares
    what it points at, so a stray link to a folder stopped rmtree, a deleted one came back a copy of its target."""
    linked = {name for name in diff.common if Path(diff.left, name).is_symlink() or Path(diff.right, name).is_symlink()}
    changed = {name for name in linked if _link(Path(diff.left, name)) != _link(Path(diff.right, name))}
    for name in sorted(set(diff.right_only + diff.common_funny) | changed):
        path = Path(diff.right, name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in sorted(set(diff.left_only + diff.diff_files + diff.common_funny) | changed):
        source, target = Path(diff.left, name), Path(diff.right, name)
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target, follow_symlinks=False)
    for name, sub in diff.subdirs.items():
        if name not in linked:
            _put_back(sub)


def _link(path: Path) -> str | None:
    """Where a symbolic link points; None for anything else."""
    return os.readlink(path) if path.is_symlink() else None


@pytest.fixture
def flow_in(built, monkeypatch):
    """`_flow` on the built project."""
    return functools.partial(_flow, built, monkeypatch)


def test_put_back_makes_the_folder_the_copy_again_and_copies_only_what_changed(tmp_path):
    """`built`'s `_put_back`: an edited file (same size), a deleted one, a stray one, a new folder and a file where
    a folder was are as in the copy again; a file no test touched is not copied again (same inode)."""
    def tree(root) -> dict[str, bytes | None]:
        return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")}

    copy, work = tmp_path / "copy", tmp_path / "work"
    (copy / "data/models/gone").mkdir(parents=True)
    (copy / "data/models/a.bin").write_bytes(b"weights")
    (copy / "data/models/gone/x").write_text("x")
    (copy / "params.yaml").write_text("budget: 0.3\n")
    (copy / "kept").write_text("k")
    shutil.copytree(copy, work)
    kept = (work / "kept").stat().st_ino
    (work / "params.yaml").write_text("budget: 0.4\n")
    (work / "data/models/a.bin").unlink()
    shutil.rmtree(work / "data/models/gone")
    (work / "data/models/gone").write_text("a file where a folder was")
    (work / "data/models/new").mkdir()
    (work / "data/models/new/y").write_text("y")
    (work / "stray.pt").write_bytes(b"checkpoint")
    _put_back(filecmp.dircmp(copy, work, ignore=[]))
    assert tree(work) == tree(copy) and (work / "kept").stat().st_ino == kept


def test_put_back_puts_symbolic_links_back_as_links(tmp_path):
    """`_put_back` and a study cell's links: a stray link to a folder is removed (rmtree refused it: "Cannot call
    rmtree on a symbolic link"), a deleted link comes back a link (it came back a copy of its target), a link
    pointed elsewhere points back, and nothing is written through a link into its target."""
    def links(root) -> dict[str, str]:
        return {str(p.relative_to(root)): os.readlink(p) for p in root.rglob("*") if p.is_symlink()}

    copy, work = tmp_path / "copy", tmp_path / "work"
    for name in ("shared", "other"):
        (copy / "data" / name).mkdir(parents=True)
        (copy / "data" / name / "f").write_text(name)
    (copy / "data/cell").mkdir()
    (copy / "data/cell/gone").symlink_to("../shared")
    (copy / "data/cell/moved").symlink_to("../shared")
    shutil.copytree(copy, work, symlinks=True)
    (work / "stray").symlink_to("data/shared")
    (work / "data/cell/gone").unlink()
    (work / "data/cell/moved").unlink()
    (work / "data/cell/moved").symlink_to("../other")
    _put_back(filecmp.dircmp(copy, work, ignore=[]))
    assert links(work) == links(copy) == {"data/cell/gone": "../shared", "data/cell/moved": "../shared"}
    assert [(work / "data" / name / "f").read_text() for name in ("shared", "other")] == ["shared", "other"]


def _outputs(repo) -> dict[str, tuple]:
    """(content, mtime of the stage's timing record) of every output: a stage that runs rewrites its timing."""
    files = sorted(p for p in (repo / "data").rglob("*") if p.is_file() and "cache" not in p.parts)
    return {str(p.relative_to(repo)): p.stat().st_mtime_ns if "timings" in p.parts else p.read_bytes()
            for p in files}


def test_cold_run_builds_everything_and_dvc_is_clean(repo, built, cold, monkeypatch):
    out = cold
    monkeypatch.chdir(repo)  # as the run: the params' relative `prepare.source` is read from the working directory
    assert set(out["states"]) == set(STAGES + INGREDIENTS)
    assert set(out["states"].values()) == {"Completed"}, out["states"]
    metrics = json.loads((repo / "data/metrics/metrics.json").read_text())
    assert out["metrics"] == metrics
    assert set(metrics["soups"]) == set(config.load(repo / "params.yaml").soup.methods)
    assert set(metrics["ingredients"]) == {n.removeprefix("train-") for n in INGREDIENTS}
    assert (repo / "data/reports/report.md").exists() and (repo / "data/soups/greedy/model.safetensors").exists()
    assert out["dvc"] == "committed"
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    assert "Running stage" not in _run(["dvc", "repro"], repo)  # DVC agrees: nothing to do
    params = config.load(repo / "params.yaml")  # and `soupline run` would skip every stage: the flow recorded them
    assert all(keys.is_fresh(s, keys.stage_key(s, params, repo), repo) for s in STAGES)
    found = out["artifacts"]
    # report.md with its plots inlined: the UI cannot follow report.md's relative links
    assert found["soupline-report"] == self_contained(repo / "data/reports/report.md")
    assert "](models.png)" in (repo / "data/reports/report.md").read_text()
    assert "](models.png)" not in found["soupline-report"] and "](data:image/png;base64," in found["soupline-report"]
    assert "soup:greedy" in found["soupline-metrics"] and '"model": "probe"' in found["soupline-metrics"]


def test_second_run_is_all_cache_hits(repo, flow_in):
    before = _outputs(repo)
    out = flow_in("cached")
    assert set(out["states"].values()) == {"Cached"}, out["states"]
    assert _outputs(repo) == before  # no stage ran, nothing changed
    assert TIMES["cached"] < TIMES["cold"], TIMES  # no stage ran: only Prefect's overhead is left (ratio, not seconds)
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_a_killed_runs_flow_run_is_recorded_crashed_by_the_next_run(repo, flow_in):
    """A flow run whose process was killed (SIGKILL, out of memory) cannot record its end: it and its task
    runs stayed `Running` on the server for good. It leaves its note on the workspace lock, naming the run; the next
    flow run there records them `Crashed`. A run that ended cleanly leaves no note."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State, StateType

    from flows.pipeline import train

    with get_client(sync_client=True) as client:
        killed = client.create_flow_run(pipeline, parameters={"root": str(repo)}, state=State(type=StateType.RUNNING))
        task_run = client.create_task_run(train, flow_run_id=killed.id, dynamic_key="0",
                                          state=State(type=StateType.RUNNING))
        (repo / "data/.soupline.lock").write_text(f"`the Prefect flow soupline-pipeline, flow run {killed.id}` (pid 1)")
        out = flow_in("after-a-kill", serial=True)
        assert set(out["states"].values()) == {"Cached"}, out["states"]
        state = client.read_flow_run(killed.id).state
        assert state.type == StateType.CRASHED and "was killed" in state.message, state  # before: Running
        assert client.read_task_run(task_run.id).state.type == StateType.CRASHED
        assert (repo / "data/.soupline.lock").read_text() == ""
        flow_in("after-a-clean-run", serial=True)  # no note: nothing to end

def test_cache_hits_without_run_records_still_commit_dvc_lock(repo, flow_in):
    """With the run records gone (`soupline cache --clear stages`, or by hand) the tasks are cache hits, their outputs
    as those runs wrote them: the closing check took each for a stage whose inputs were edited during the run, so no
    flow run committed dvc.lock again (`dvc status` then listed what a params.yaml edit rebuilt)."""
    shutil.rmtree(repo / "data/cache/stages")
    out = flow_in("no-records", serial=True)
    assert set(out["states"].values()) == {"Cached"}, out["states"]
    assert out["dvc"] == "committed", out["dvc"]


def test_a_run_that_builds_nothing_asks_dvc_status_instead_of_committing(repo, flow_in, monkeypatch):
    """As `soupline run`: `dvc status -q` (about 0.6x a `dvc commit -f`) when nothing was built, and no commit
    when dvc.lock already records the workspace."""
    from tasks import dvc_lock

    recorded, commit, calls = dvc_lock._recorded, dvc_lock._commit, []
    monkeypatch.setattr(dvc_lock, "_recorded", lambda repo, stages: calls.append("status") or recorded(repo, stages))
    monkeypatch.setattr(dvc_lock, "_commit", lambda repo, stages: calls.append("commit") or commit(repo, stages))
    out = flow_in("nothing-built", serial=True)
    assert set(out["states"].values()) == {"Cached"} and out["dvc"] == "committed"
    assert "commit" not in calls and "status" in calls


def test_a_moved_workspace_is_still_all_cache_hits(repo, flow_in, tmp_path, monkeypatch):
    """The cache keys hash contents, not paths: the project folder copied (or renamed) elsewhere, with its data/,
    is all cache hits there, and `dvc status` is clean."""
    moved = tmp_path / "moved-project"
    shutil.copytree(repo, moved, symlinks=True)
    monkeypatch.chdir(moved)  # relative `prepare.source` is read from the working directory
    out = pipeline.with_options(task_runner=train_runner(workers=1))(root=str(moved))
    assert set(out["states"].values()) == {"Cached"}, out["states"]
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], moved)


def test_stages_another_driver_built_are_not_run_again(repo, flow_in):
    """Without the flow's own cache records (as after `soupline run` or `dvc repro`, which keep only soupline's run
    records), a stage whose recorded run built its outputs from these inputs is not run again (it was: every
    stage but train re-ran, rewriting its outputs)."""
    before = _outputs(repo)
    shutil.rmtree(repo / "data/cache/prefect")
    out = flow_in("other-driver", serial=True)
    assert set(out["states"].values()) == {"Completed"}, out["states"]  # no Prefect record: each task ran...
    after = _outputs(repo)  # ...and found its stage up to date (train rewrites its ingredients' timings only)
    assert {k: v for k, v in after.items() if "timings/train-" not in k} == \
        {k: v for k, v in before.items() if "timings/train-" not in k}
    assert set(flow_in("cached-again")["states"].values()) == {"Cached"}  # and the flow's records are back


def test_outputs_dvc_lock_records_are_not_built_again(repo, flow_in):
    """With neither the flow's records nor soupline's (as after `dvc pull` in a fresh clone, or `dvc exp apply` of a
    queued experiment, which ran in a copy of its own), stages whose outputs dvc.lock records as they are were run
    again (select, soup, evaluate and report, where `soupline run` says up to date); now they count as built."""
    before = _outputs(repo)
    for records in ("prefect", "stages"):
        shutil.rmtree(repo / "data/cache" / records)
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    out = flow_in("dvc-vouches", serial=True)
    assert set(out["states"].values()) == {"Completed"}, out["states"]  # no record: each task ran...
    after = _outputs(repo)  # ...and found its stage up to date (train rewrites its ingredients' timings only)
    assert {k: v for k, v in after.items() if "timings/train-" not in k} == \
        {k: v for k, v in before.items() if "timings/train-" not in k}
    assert set(flow_in("cached-after-dvc")["states"].values()) == {"Cached"}


def test_a_report_checked_out_from_another_run_of_the_same_inputs_is_not_built_again(repo, flow_in):
    """`git checkout` of an older commit puts back its report (another run's timings) and its dvc.lock: the flow's
    record and soupline's name the newer report, but dvc.lock vouches for this one, so report is not run again."""
    report = repo / "data/reports/report.md"
    checked_out = report.read_text() + "\n## Reading\nanother run's report, as `git checkout` puts it back\n"
    report.write_text(checked_out)
    _run(["dvc", "commit", "-f", "report"], repo)
    out = flow_in("checked-out-report", serial=True)
    assert out["states"]["report"] == "Completed" and report.read_text() == checked_out
    assert {k: v for k, v in out["states"].items() if k != "report"} == dict.fromkeys(STAGES[:-1] + INGREDIENTS,
                                                                                      "Cached")
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    assert set(flow_in("cached-after-checkout")["states"].values()) == {"Cached"}


def test_a_flow_started_elsewhere_reads_relative_paths_from_its_root(repo, flow_in, tmp_path, monkeypatch):
    """The flow's root is its working directory while it runs, as `soupline --root` makes it: relative params paths
    (the project's `prepare.source: data/raw/corpus.jsonl`) were read from wherever the flow started, so a run from
    another folder failed on a 'missing' source, or read another project's file of that name."""
    monkeypatch.chdir(tmp_path)
    out = flow_in("elsewhere", serial=True, chdir=False)
    assert set(out["states"].values()) == {"Cached"}, out["states"]
    assert os.getcwd() == str(tmp_path)  # given back after the run


def test_module_entry_point_unreachable_server_or_results_is_one_line(repo, tmp_path):
    """A PREFECT_API_URL whose server is down was 115 lines of tracebacks; an unwritable --results a traceback per
    task, exit 0, and no cache record kept."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    out = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert out.stderr.startswith("error: the Prefect server at PREFECT_API_URL=http://127.0.0.1:9/api does not answer")
    (tmp_path / "file").write_text("")
    env.pop("PREFECT_API_URL")
    out = subprocess.run([sys.executable, "-m", "flows.pipeline", "--results", str(tmp_path / "file" / "x")],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: --results {tmp_path / 'file' / 'x'} (a deployment's result_storage parameter): cannot write there: "
        f"Not a directory ({tmp_path / 'file' / 'x'}); a file is in the way of a folder there; give a folder this "
        "user can write"], out.stderr[-2000:]


def test_an_unwritable_result_storage_parameter_fails_the_run_in_one_line(repo, flow_in, tmp_path):
    """A deployment's result_storage reaches the flow, not `python -m flows.pipeline`'s check: every task logged a
    traceback, ended Completed with no cache record kept, and the run Completed."""
    (tmp_path / "file").write_text("")
    before = _outputs(repo)
    with pytest.raises(SouplineError) as err:
        flow_in("results", result_storage=str(tmp_path / "file" / "x"))
    assert str(err.value) == (f"--results {tmp_path / 'file' / 'x'} (a deployment's result_storage parameter): cannot "
                              f"write there: Not a directory ({tmp_path / 'file' / 'x'}); a file is in the way of a "
                              "folder there; give a folder this user can write")
    assert _outputs(repo) == before


def test_deleted_output_is_rebuilt(repo, flow_in):
    shutil.rmtree(repo / "data/reports")
    out = flow_in("report-only")
    assert out["states"]["report"] == "Completed"
    assert {k: v for k, v in out["states"].items() if k != "report"} == dict.fromkeys(STAGES[:-1] + INGREDIENTS,
                                                                                      "Cached")
    assert (repo / "data/reports/report.md").exists()
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_deleted_curves_are_rewritten_without_retraining(repo, flow_in):
    """An ingredient's curves folder, or one file of it, deleted by hand: its task's outputs no longer match its
    cache record, so it runs, finds the ingredient built and rewrites the curves from history.json."""
    curves, models = repo / "data/curves", repo / "data/models/ingredients"
    names = [n.removeprefix("train-") for n in INGREDIENTS]
    before = {p: p.read_bytes() for p in curves.rglob("*.tsv")}
    weights = {n: (models / n / "model.safetensors").stat().st_mtime_ns for n in names}
    shutil.rmtree(curves / names[0])
    (curves / names[1] / "plots/metrics/val/accuracy.tsv").unlink()
    out = flow_in("curves", serial=True)
    assert {k: v for k, v in out["states"].items() if v != "Cached"} == dict.fromkeys(INGREDIENTS[:2], "Completed")
    assert {p: p.read_bytes() for p in curves.rglob("*.tsv")} == before
    assert {n: (models / n / "model.safetensors").stat().st_mtime_ns for n in names} == weights  # none trained
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_changed_budget_reruns_select_and_downstream_only(repo, flow_in):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["select"]["budget"] = 0.4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = flow_in("budget", serial=True)
    assert out["states"]["prepare"] == out["states"]["embed"] == "Cached"
    assert {k: v for k, v in out["states"].items() if k not in ("prepare", "embed")} == dict.fromkeys(
        ["select", "soup", "evaluate", "report"] + INGREDIENTS, "Completed")
    sel = json.loads((repo / "data/selections/selection.json").read_text())
    assert sel["budget"] == round(0.4 * sel["pool_size"])
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_override_runs_but_is_not_committed_to_dvc(repo, flow_in):
    """dvc.lock describes params.yaml: a run with other values must not be recorded as if it were."""
    out = flow_in("override", serial=True, overrides=["evaluate.batch_size=7"])
    assert out["states"]["evaluate"] == "Completed" and out["states"]["select"] == "Cached"
    assert out["dvc"].startswith("not committed")
    back = flow_in("back", serial=True)  # params.yaml again: old records, trusted only where the files still match
    assert {k: back["states"][k] for k in ["prepare", "embed", "select"] + INGREDIENTS} == dict.fromkeys(
        ["prepare", "embed", "select"] + INGREDIENTS, "Cached")
    assert back["dvc"] == "committed"
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_data_edited_while_the_flow_ran_is_not_committed(repo, flow_in, monkeypatch):
    """A row appended to the source while the flow ran: its closing `dvc commit -f` recorded the new data with the
    outputs of the old (as `soupline run` did), and every status command then trusted them."""
    import tasks.pipeline

    corpus = repo / "data/raw/corpus.jsonl"
    original = corpus.read_bytes()
    check = tasks.pipeline.changed_while_running

    def appended_then_checked(params, layout):
        corpus.write_bytes(original + original.splitlines(keepends=True)[0])
        return check(params, layout)

    monkeypatch.setattr(tasks.pipeline, "changed_while_running", appended_then_checked)
    try:
        out = flow_in("edited-mid-run", serial=True)
    finally:
        corpus.write_bytes(original)
    assert out["dvc"].startswith("not committed: the inputs of prepare changed while the run went on"), out["dvc"]


def test_an_ingredient_renamed_by_a_sweep_axis_is_restored_not_retrained(repo, flow_in):
    """`train.sweep={epochs: [2]}` renames every ingredient of the tiny project (train.epochs is 2), not its model:
    the flow moves the old folders aside before the ingredient tasks run, which then restore them (a rename keeps
    the weights file's mtime; training would write a new one)."""
    names = [n.removeprefix("train-") for n in INGREDIENTS]
    weights = {n: (repo / "data/models/ingredients" / n / "model.safetensors").stat().st_mtime_ns for n in names}
    out = flow_in("renamed", serial=True, overrides=["train.sweep={epochs: [2]}"])
    assert all(out["states"][f"train-{n}-epochs2"] == "Completed" for n in names), out["states"]
    assert {n: (repo / "data/models/ingredients" / f"{n}-epochs2" / "model.safetensors").stat().st_mtime_ns
            for n in names} == weights
    back = flow_in("renamed-back", serial=True)  # the old names: their Prefect records no longer match the files
    assert {n: (repo / "data/models/ingredients" / n / "model.safetensors").stat().st_mtime_ns
            for n in names} == weights
    assert back["dvc"] == "committed" and "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_self_trainings_teacher_is_a_task_retried_and_cached_as_an_ingredient_is(tmp_path, tiny_model, prefect_server,
                                                                                 monkeypatch):
    """Self-training's teacher trained in the flow's body: no retry, no cache record, no entry in the run's states
    or the UI. Now a task of its own, before the students': an I/O error while it trains is retried, as an
    ingredient's; a second run finds it Cached as every ingredient; its predictions deleted while a student is to be
    trained, it runs again (restoring the teacher from the ingredient cache, training none) before the students'
    tasks, which would each have made them."""
    from flows import pipeline as flow_module
    from tasks.train import TEACHER, teach

    root = tiny_project(tmp_path / "self-training", tiny_model, ("flows",))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(learning_rates=[5e-3], self_training={"multiple": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-qam", "self-training"], root)
    monkeypatch.chdir(root)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return teach(*args, **kwargs)

    monkeypatch.setattr(flow_module, "teach", flaky)
    flow = pipeline.with_options(task_runner=train_runner(workers=1))
    cold = flow(root=str(root))
    students = ["train-lr0.005-seed0", "train-lr0.005-seed1"]
    assert list(cold["states"])[:4] == ["prepare", "embed", "select", "teacher"]
    assert cold["states"] == dict.fromkeys([*STAGES[:3], "teacher", *students, *STAGES[3:]], "Completed")
    assert len(calls) == 2  # the try the I/O error failed, and its retry
    assert cold["dvc"] == "committed" and "Data and pipelines are up to date" in _run(["dvc", "status"], root)
    assert not (root / "data/models/ingredients" / TEACHER).exists()

    again = flow(root=str(root))
    assert again["states"] == dict.fromkeys(cold["states"], "Cached") and len(calls) == 2

    for predictions in (root / "data/cache/heads").glob("*.teacher.npy"):
        predictions.unlink()
    record = json.loads((root / "data/models/ingredients/lr0.005-seed1/pseudo_labels.json").read_text())
    shutil.rmtree(root / "data/models/ingredients/lr0.005-seed1")
    weights = root / "data/cache/ingredients" / record["teacher"]["key"] / "model.safetensors"
    trained = weights.stat().st_mtime_ns
    third = flow(root=str(root))
    assert third["states"]["teacher"] == third["states"][students[1]] == "Completed"
    assert third["states"][students[0]] == "Cached" and len(calls) == 3
    assert list((root / "data/cache/heads").glob("*.teacher.npy")) and weights.stat().st_mtime_ns == trained


def test_bad_override_fails_in_one_line(repo, flow_in):
    before = _outputs(repo)
    with pytest.raises(SouplineError) as err:
        flow_in("bad", overrides=["select.budget=-1"])
    assert "\n" not in str(err.value) and "select.budget" in str(err.value)
    assert _outputs(repo) == before


def test_a_cuda_device_this_machine_lacks_stops_before_any_task(repo, flow_in, monkeypatch):
    """It failed at the first task that loads a model, after prepare, embed and select had run."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    lock = "data/.soupline.lock"  # the workspace lock: there from here on, whatever ran before
    before = {k: v for k, v in _outputs(repo).items() if k != lock}
    with pytest.raises(SouplineError, match=r"^device 'cuda' asked for but CUDA is not available"):
        flow_in("cuda", serial=True, overrides=["device=cuda", "embed.max_length=16"])
    assert {k: v for k, v in _outputs(repo).items() if k != lock} == before


def test_a_budget_the_pool_cannot_hold_stops_before_embed(repo, flow_in):
    """The select task was the first to compare select.budget with the pool, after embed had encoded every split
    (here: a new embed.max_length, so embed is not up to date): the flow checks it once prepare has run."""
    embedded = {k: v for k, v in _outputs(repo).items() if "embed" in k}
    with pytest.raises(SouplineError, match=r"^select\.budget=100000 asks for 100000 examples but the pool has only"):
        flow_in("budget", serial=True, overrides=["select.budget=100000", "embed.max_length=16"])
    assert (repo / "data" / "prepared" / "pool.parquet").exists()  # prepare ran (or was up to date)
    assert {k: v for k, v in _outputs(repo).items() if "embed" in k} == embedded


def test_a_bad_input_inside_a_task_is_one_line_in_the_run_logs(repo, flow_in):
    """A SouplineError raised by a stage (here prepare's missing source) is logged by the task run and the flow run
    without Prefect's traceback (two walls of ~90 lines each before), in the terminal and in the logs the server
    keeps; the state messages carry the line."""
    before = _outputs(repo)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(f"prefect.{name}") for name in ("flow_runs", "task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with pytest.raises(SouplineError, match="missing.jsonl"):
            flow_in("missing source", overrides=["prepare.source=data/raw/missing.jsonl"])
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert {r.name for r in errors} == {"prefect.flow_runs", "prefect.task_runs"}
    assert all("missing.jsonl" in r.getMessage() and r.exc_info is None for r in errors), errors
    assert _outputs(repo) == before


def test_module_entry_point_bad_override(repo, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "flows.pipeline", "select.metod=random"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: params: unknown key 'select.metod' (did you mean "
                                               "'select.method'?)"]


def test_retries_skip_user_errors_and_bugs():
    """A bug (a KeyError) was retried twice, 2 s then 10 s later, before it surfaced; the rule is `errors.transient`
    (each kind tested in test_study.py), as `soupline study`'s."""
    assert retry_if_transient(None, None, Failed(data=OSError("disk hiccup"))) is True
    assert retry_if_transient(None, None, Failed(data=SouplineError("bad input"))) is False
    assert retry_if_transient(None, None, Failed(data=KeyError("a bug"))) is False


def test_user_error_fails_at_once_without_retries(repo, prefect_server, tmp_path):
    """embed (retries=2, 2 s then 10 s) on a workspace with no prepared data: one run, a one-line error."""
    from flows.pipeline import embed

    runs = []
    failing = embed.with_options(on_failure=[lambda task, task_run, state: runs.append(task_run.run_count)])
    state = failing(config.load(repo / "params.yaml"), str(tmp_path), return_state=True)
    assert state.is_failed() and runs == [1]  # one run: the retries (2 s, then 10 s) were skipped
    with pytest.raises(SouplineError, match="run the prepare stage first") as err:
        state.result()
    assert "\n" not in str(err.value)


def test_a_transient_failure_in_train_is_retried(repo, built, tmp_path, monkeypatch):
    """An I/O error while an ingredient trains (a disk hiccup) fails that try only: train's retries run it again
    2 s later, and the task ends Completed."""
    from flows import pipeline as flow_module

    real, calls = flow_module.STAGES["train"], []

    def flaky(params, layout, **item):
        calls.append(item["ingredient"])
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return real(params, layout, **item)

    monkeypatch.setitem(flow_module.STAGES, "train", flaky)
    runs = []
    retried = flow_module.train.with_options(
        refresh_cache=True, result_storage=tmp_path,
        on_completion=[lambda task, task_run, state: runs.append(task_run.run_count)])
    state = retried(config.load(repo / "params.yaml"), str(repo), "lr0.005-seed0", return_state=True)
    assert state.is_completed() and runs == [2] and calls == ["lr0.005-seed0"] * 2


def test_a_task_records_its_run_under_the_key_prefect_computed(prefect_server):
    """`keys.recorded` gets the task run's cache key instead of hashing the stage's deps a second time."""
    from prefect import flow, task

    @task(cache_key_fn=lambda context, inputs: "soupline-soup-0123", persist_result=True)
    def soup_like() -> tuple:
        return _this_runs_key("soup"), _this_runs_key("evaluate")

    @flow
    def one_task() -> tuple:
        return soup_like()

    assert one_task() == ("soupline-soup-0123", None)  # another stage's key is never taken
    assert _this_runs_key("soup") is None  # outside a task run: `recorded` computes the key


def test_keys_follow_dvc_yaml_and_content(tmp_path):
    params = config.load(ROOT / "params.yaml")
    spec = keys.stage_spec("train", "lr0.005-seed0")
    assert spec["outs"] == ["data/models/ingredients/lr0.005-seed0", "data/curves/lr0.005-seed0"]
    assert "data/selections" in spec["deps"]
    ingredient = keys.stage_key("train", params, tmp_path, "lr0.0001-seed0")
    more_seeds = config.load(ROOT / "params.yaml", ["train.seeds=[0, 1, 5]"])
    assert keys.stage_key("train", more_seeds, tmp_path, "lr0.0001-seed0") == ingredient  # its own values only
    bookkeeping = config.load(ROOT / "params.yaml", ["train.checkpoint_every=7", "train.keep_replaced=0"])
    assert keys.stage_key("train", bookkeeping, tmp_path, "lr0.0001-seed0") == ingredient  # no change to the model
    longer = config.load(ROOT / "params.yaml", ["train.epochs=3"])
    assert keys.stage_key("train", longer, tmp_path, "lr0.0001-seed0") != ingredient
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/pool.parquet").write_bytes(b"a")
    base = {s: keys.stage_key(s, params, tmp_path) for s in ("embed", "select")}
    budget = params.model_copy(update={"select": params.select.model_copy(update={"budget": 0.2})})
    assert keys.stage_key("embed", budget, tmp_path) == base["embed"]
    assert keys.stage_key("select", budget, tmp_path) != base["select"]
    # selectors may score with train's model (dealrec effort, dnc scorer: finetune): its settings are then
    # select's inputs, the sweep's seeds are not; kmeans reads no train setting
    def select_key(*overrides: str) -> str:
        return keys.stage_key("select", config.load(ROOT / "params.yaml", list(overrides)), tmp_path)

    finetune = ("select.method=dnc", "select.dnc.scorer=finetune")
    assert select_key(*finetune, "train.learning_rates=[3e-4]") != select_key(*finetune)
    assert select_key(*finetune, "train.seeds=[0, 1, 5]") == select_key(*finetune)
    assert select_key("train.learning_rates=[3e-4]") == base["select"]
    assert keys.stage_key("select", more_seeds, tmp_path) == base["select"]
    # self_training: select's scorers never train on pseudo-labels (dnc drops it), and soup and evaluate read the
    # students through the ingredients, whose keys and content hold it
    model_keys = set(config.TrainParams.model_fields) - {"seeds", "sweep", "self_training", *config.BOOKKEEPING}
    for stage, also in (("select", set()), ("soup", {"seeds", "sweep"}), ("evaluate", {"seeds", "sweep"})):
        listed = {p.split(".", 1)[1] for p in keys.stage_spec(stage)["params"] if p.startswith("train.")}
        assert listed == model_keys | also, stage
    bookkeeping = config.load(ROOT / "params.yaml", ["train.keep_replaced=1", "train.checkpoint_every=7"])
    assert all(keys.stage_key(s, bookkeeping, tmp_path) == keys.stage_key(s, params, tmp_path)
               for s in ("select", "soup", "evaluate"))
    os.utime(tmp_path / "data/prepared/pool.parquet", (0, 0))  # a new mtime is not a new input
    assert keys.stage_key("embed", params, tmp_path) == base["embed"]
    (tmp_path / "data/prepared/pool.parquet").write_bytes(b"b")
    assert keys.stage_key("embed", params, tmp_path) != base["embed"]


@pytest.fixture(scope="module")
def entry_env(tmp_path_factory) -> dict[str, str]:
    """The environment of `python -m flows.pipeline` with no PREFECT_API_URL; one PREFECT_HOME for the module's
    runs, so only the first temporary server creates its database."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.slow
def test_module_entry_point_ephemeral_server(repo, entry_env):
    """`python -m flows.pipeline` with no PREFECT_API_URL: one ephemeral server, shared by 2 worker processes."""
    env = {**entry_env, "SOUPLINE_TRAIN_WORKERS": "2"}
    first = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=600)  # what the module's tests before built; under `-m slow`, built here
    assert first.returncode == 0, first.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "flows.pipeline", "train.seeds=[0, 2]"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (out.stdout + out.stderr).count("Starting temporary server") == 1
    states = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("train", "select")))
    assert states == {"select": "Cached", "train-lr0.005-seed0": "Cached", "train-lr0.01-seed0": "Cached",
                      "train-lr0.005-seed2": "Completed", "train-lr0.01-seed2": "Completed"}
    assert "dvc.lock: not committed" in out.stdout


CHECKPOINTS = "data/cache/checkpoints/lr0.005-seed0-*.pt"


def _training_under_way(repo, env):
    """`python -m flows.pipeline` training one long ingredient, in a session of its own, once its first checkpoint
    is written: (the process, its output as read so far, the thread reading it)."""
    for stale in repo.glob(CHECKPOINTS):  # another run's: wait for this one's
        stale.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "train.epochs=20000", "train.seeds=[0]",
                             "train.learning_rates=[0.005]", "train.checkpoint_every=20"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = bytearray()
    reader = threading.Thread(
        target=lambda: [out.extend(chunk) for chunk in iter(lambda: proc.stdout.read1(4096), b"")])
    reader.start()
    deadline = time.monotonic() + 300
    while not list(repo.glob(CHECKPOINTS)):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            reader.join()
            raise AssertionError(out.decode(errors="replace")[-3000:])
        time.sleep(0.5)
    return proc, out, reader


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_the_flow_and_its_training_thread(repo, entry_env, workers):
    """Ctrl-C (SIGINT to the terminal's process group) on `python -m flows.pipeline` with a temporary server:
    the ingredient training in a worker thread stops at its next step, the run is recorded as crashed (the
    server, in a session of its own, is still up), and the process exits 130 with one line; the server goes too.
    Before, the server died with the Ctrl-C, Prefect retried for minutes, and training ran to its last step.
    With 2 workers the ingredient trains in a worker process, which the Ctrl-C reaches too: before, its
    KeyboardInterrupt broke the process pool, and the flow's process hung at exit after a traceback wall."""
    env = {**entry_env, "SOUPLINE_TRAIN_WORKERS": workers}  # 1: the ingredient trains in a thread of the flow's process
    proc, out, reader = _training_under_way(repo, env)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join()
    text = out.decode(errors="replace")
    assert "Finished in state Crashed" in text and text.rstrip().endswith("Stopping temporary server on "
                                                                           f"{_server_address(text)}")
    assert "interrupted: the flow run is recorded as crashed" in text and "Traceback" not in text
    assert list(repo.glob(CHECKPOINTS))  # mid-training: removed at its end
    with pytest.raises(OSError):
        socket.create_connection(_server_address(text).removeprefix("http://").split(":"), timeout=2)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_closed_terminal_stops_the_flow_as_ctrl_c_does(repo, entry_env, prefect_server, workers):
    """A closed ssh session or terminal window: its pty hangs up and the shell sends SIGHUP to the whole job. The flow
    run stops as on Ctrl-C, its ingredient (in a thread, or a worker process) at its next step with its checkpoint,
    recorded `Crashed` by this run itself, and the command exits 129; its writes to the dead terminal (EIO) fail
    nothing. Before, SIGHUP killed it where it stood: the run stayed `Running` until the next run in the workspace."""
    import pty

    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    for stale in repo.glob(CHECKPOINTS):
        stale.unlink()
    env = {**entry_env, "SOUPLINE_TRAIN_WORKERS": workers, "PREFECT_API_URL": get_current_settings().api.url}
    pid, terminal = pty.fork()  # the flow's process leads a session whose terminal is the pty
    if pid == 0:
        os.chdir(repo)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's session: not `nohup pytest`'s ignored SIGHUP
        os.execve(sys.executable, [sys.executable, "-m", "flows.pipeline", "train.epochs=20000", "train.seeds=[0]",
                                   "train.learning_rates=[0.005]", "train.checkpoint_every=20"], env)
    out, deadline = bytearray(), time.monotonic() + 300
    try:
        while not list(repo.glob(CHECKPOINTS)) and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # nothing to read yet
                out += os.read(terminal, 65536) if select.select([terminal], [], [], 0.5)[0] else b""
        assert list(repo.glob(CHECKPOINTS)), out.decode(errors="replace")[-3000:]
        os.close(terminal)  # the terminal hangs up
        os.killpg(pid, signal.SIGHUP)  # as the shell does to its jobs
        for _ in range(240):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.5)
        assert done and os.waitstatus_to_exitcode(status) == 129, "still running or killed"
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    run = re.search(r"/runs/flow-run/([0-9a-f-]{36})", out.decode(errors="replace")).group(1)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run).state.name == "Crashed"
    assert list(repo.glob(CHECKPOINTS))  # mid-training: removed at its end


@pytest.mark.slow
def test_a_run_started_from_the_shell_stops_when_cancelled(repo, entry_env):
    """`prefect flow-run cancel` (another terminal, the same PREFECT_HOME, no PREFECT_API_URL: it reaches the
    temporary server's database) on `python -m flows.pipeline`: the run stops as a cancelled deployment run does, its
    ingredient at its next step (checkpoint kept), `Cancelled`, exit 143 with one line. Before, Prefect enforced
    cancellation only through a deployment's runner: the run stayed `Cancelling` and trained on to its end."""
    env = {**entry_env, "SOUPLINE_TRAIN_WORKERS": "1"}
    proc, out, reader = _training_under_way(repo, env)
    try:
        run = re.search(r"/runs/flow-run/([0-9a-f-]{36})", out.decode(errors="replace")).group(1)
        cancel = subprocess.run([os.path.join(os.path.dirname(sys.executable), "prefect"), "flow-run", "cancel", run],
                                env=env, capture_output=True, text=True, timeout=300)
        assert "successfully scheduled for cancellation" in " ".join(cancel.stdout.split()), cancel.stderr
        sent = time.monotonic()
        assert proc.wait(timeout=120) == 143
        print(f"exited {time.monotonic() - sent:.1f} s after `prefect flow-run cancel` returned")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join()
    text = out.decode(errors="replace")
    assert "Finished in state Cancelled" in text and "Traceback" not in text, text[-3000:]
    assert "cancelled: the flow run is Cancelled; run it again to go on" in text
    assert list(repo.glob(CHECKPOINTS))  # stopped mid-training: a finished ingredient removes its checkpoint


def _started_training(steps: list, runs: list):
    """Inside a flow run: record its id in `runs`, submit a task of 300 steps of 0.1 s (30 s) that checks for a stop
    request before each, as a stage's steps do, and return its future once 3 steps ran (into `steps`)."""
    from prefect import task
    from prefect.context import FlowRunContext

    from soupline import interrupt

    @task
    def training() -> None:
        for step in range(300):
            interrupt.check()
            steps.append(step)
            time.sleep(0.1)

    runs.append(FlowRunContext.get().flow_run.id)
    future = training.submit()
    while len(steps) < 3:
        time.sleep(0.05)
    return future


def test_a_run_no_deployment_started_stops_when_cancelled(prefect_server):
    """A run started from Python (or `python -m flows.*`) stayed `Cancelling` and ran to its end: Prefect enforces
    cancellation only through a deployment's runner. `stops_when_cancelled` reads the run's state and stops it as the
    runner's SIGTERM does: the work in a worker thread stops at its next step, the run ends `Cancelled`; its thread
    ends with the run, and none starts outside a flow run."""
    from prefect import flow
    from prefect._internal import control_listener
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State, StateType
    from prefect.exceptions import TerminationSignal
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.interruptible import stops_when_cancelled, threads_stop_with_the_run
    from soupline import interrupt

    def watching() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "soupline-cancel-watch"]

    steps: list[int] = []
    runs: list = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def cancelled_elsewhere() -> None:
        with threads_stop_with_the_run(), stops_when_cancelled(interval=0.2):
            future = _started_training(steps, runs)
            # what `prefect flow-run cancel` does
            get_client(sync_client=True).set_flow_run_state(runs[0], State(type=StateType.CANCELLING))
            future.wait()

    @flow
    def not_cancelled() -> str:
        with stops_when_cancelled(interval=0.05):
            time.sleep(0.3)
            return watching()[0]

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(TerminationSignal):
            cancelled_elsewhere()
    finally:
        signal.signal(signal.SIGTERM, previous)  # Prefect keeps its handler once a run is cancelled
        control_listener.clear_intent()
        interrupt.REQUESTED.clear()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(runs[0]).state.name == "Cancelled"
    assert len(steps) < 100 and not watching()  # before: Cancelling, all 300 steps
    assert not_cancelled() == "soupline-cancel-watch" and not watching()
    with stops_when_cancelled():  # no flow run: nothing to watch
        assert not watching()


def test_a_hang_up_stops_the_run_in_one_line(prefect_server, capfd):
    """SIGHUP (a closed terminal's; `kill -HUP`) on `python -m flows.*`: the stage in a worker thread stops at its
    next step, the run is `Crashed`, and the command ends with one line and exit code 129, as a Ctrl-C ends it with
    130. Before, SIGHUP ended the process where it stood, the run left `Running`, no line."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.interruptible import from_the_shell, interruptible, threads_stop_with_the_run
    from soupline import interrupt

    steps: list[int] = []
    runs: list = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def hung_up() -> None:
        with threads_stop_with_the_run():
            future = _started_training(steps, runs)
            os.kill(os.getpid(), signal.SIGHUP)
            future.wait()

    def start() -> None:
        with interruptible():
            hung_up()

    def ignored(signum, frame) -> None:  # not Python's default, which would end pytest: `interruptible` replaces it
        pass

    previous = signal.signal(signal.SIGHUP, ignored)
    try:
        assert from_the_shell(start) == (129, None)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and not interrupt.REQUESTED.is_set()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert capfd.readouterr().err.splitlines()[-1].startswith("hung up (SIGHUP): the flow run is recorded as crashed")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(runs[0]).state.name == "Crashed"
    assert len(steps) < 100


def test_after_a_hang_up_the_terminal_goes_to_dev_null_and_later_ones_are_ignored():
    """After a hang-up every write to the terminal fails (EIO), which failed the stop's log lines and its closing
    line: `hung_up` points such stdout / stderr at /dev/null, and leaves a live one alone. It ignores later SIGHUPs
    (the kernel's after the shell's), which `put_back` keeps: one killed the process while it recorded its stop."""
    from soupline import interrupt

    saved, previous = os.dup(2), signal.getsignal(signal.SIGHUP)
    terminal, tty = os.openpty()
    try:
        os.dup2(tty, 2)
        interrupt.hung_up()
        os.write(2, b"x")
        assert os.read(terminal, 1) == b"x"  # alive: still the terminal
        os.close(terminal)  # hung up
        with pytest.raises(OSError):
            os.write(2, b"x")
        interrupt.hung_up()
        assert os.write(2, b"x") == 1
        interrupt.put_back(signal.SIGHUP, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(tty)
        signal.signal(signal.SIGHUP, previous)


def _server_address(text: str) -> str:
    return re.search(r"Starting temporary server on (http://127\.0\.0\.1:\d+)", text).group(1)


def test_a_cancelled_run_stops_its_training_thread(repo, flow_in):
    """Cancelling a deployment's run (`prefect flow-run cancel`): the runner sends SIGTERM and Prefect raises
    TerminationSignal in the flow's main thread. The ingredient training in a worker thread stops at its next step
    (its checkpoint kept for the next run), as on Ctrl-C; before, it trained on to its last step while the main
    thread waited for it (or until the runner's 30 s grace ran out and it SIGKILLed the run)."""
    from prefect.exceptions import TerminationSignal

    from soupline import interrupt

    passed_on = []  # Prefect passes the signal on to the handler it replaced: this one, not Python's default exit
    checkpoints = "data/cache/checkpoints/lr0.005-seed0-*.pt"
    with pytest.raises(TerminationSignal), _sigterm_once(repo, checkpoints, passed_on):
        flow_in("cancelled", serial=True, overrides=["train.epochs=600", "train.seeds=[0]",
                                                     "train.learning_rates=[0.005]", "train.checkpoint_every=5"])
    assert passed_on == [signal.SIGTERM]
    assert list(repo.glob(checkpoints))  # stopped mid-training: a finished ingredient removes its checkpoint
    # the stop request does not outlive the cancelled run: select (new params) checks it at its start, and runs
    out = flow_in("after the cancelled run", serial=True, overrides=["train.seeds=[0]", "train.learning_rates=[0.005]",
                                                                    "select.seed=1"])
    assert out["states"]["select"] == "Completed" and not interrupt.REQUESTED.is_set()


@pytest.mark.slow
def test_a_cancelled_run_stops_its_worker_processes(repo, prefect_server, monkeypatch):
    """As above with the ingredients in worker processes (the runner on >= 4 cores): the stop request reaches them,
    and they stop at their next step, checkpoints kept. Before, the flow's process waited for them (the process pool's
    shutdown) until they had trained to their last step (minutes), or until the runner's grace ran out."""
    from prefect.exceptions import TerminationSignal

    from flows.pipeline import pipeline
    from soupline import interrupt

    monkeypatch.chdir(repo)
    passed_on = []
    with pytest.raises(TerminationSignal), _sigterm_once(repo, "data/cache/checkpoints/lr0.005-seed*-*.pt", passed_on,
                                                         count=2) as sent:
        pipeline.with_options(task_runner=train_runner(workers=2))(
            root=str(repo), overrides=["train.epochs=1000", "train.seeds=[0, 1]", "train.learning_rates=[0.005]",
                                       "train.checkpoint_every=5"])
    print(f"stopped {time.monotonic() - sent[0]:.1f} s after the signal")
    assert passed_on == [signal.SIGTERM]
    # both stopped mid-training (3000 steps each, about a minute here): a finished ingredient removes its checkpoint
    assert len(list(repo.glob("data/cache/checkpoints/lr0.005-seed*-*.pt"))) == 2
    # The request stays set in this process until the next flow run clears it at its start (test above); the later
    # test modules run stages here without a flow, whose first step would stop at it.
    assert interrupt.REQUESTED.is_set()
    interrupt.REQUESTED.clear()


@contextlib.contextmanager
def _sigterm_once(repo, checkpoints: str, passed_on: list, count: int = 1):
    """SIGTERM this process (as a runner cancelling a deployment run does) once `count` checkpoints exist, with a
    handler that notes it in `passed_on` (Prefect passes the signal on to the handler it replaced); yields the list
    that gets the time it was sent."""
    for stale in repo.glob(checkpoints):  # an earlier test's: wait for this run's
        stale.unlink()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: passed_on.append(signum))
    sent: list[float] = []

    def cancel_once_training() -> None:
        deadline = time.monotonic() + 300
        while len(list(repo.glob(checkpoints))) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    try:
        yield sent
    finally:
        canceller.join()
        signal.signal(signal.SIGTERM, previous)


def test_a_permission_error_is_not_retried_and_logs_one_line():
    """The CLI prints a PermissionError as one line (`errors.USER_ERRORS`); the flow retried it twice per ingredient
    (2 s, then 10 s) and logged a traceback each time (a read-only data/models/ingredients: 50 s, 245 log lines)."""
    import logging

    from prefect.states import Failed

    from flows.user_errors import OneLineUserErrors

    denied = PermissionError(1, "Operation not permitted", "/p/data/models/ingredients/lr0.01-seed1")
    assert retry_if_transient(None, None, Failed(data=denied)) is False
    assert retry_if_transient(None, None, Failed(data=OSError("disk hiccup"))) is True
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None,
                               (PermissionError, denied, None))
    assert OneLineUserErrors().filter(record) and record.exc_info is None


def test_a_user_error_under_a_worker_is_not_called_unexpected(prefect_server):
    """A worker's (or `prefect flow-run execute`'s) engine logs the error that ended a run once more, as "Engine
    execution exited with unexpected exception": a third ERROR line, after the run's own two, calling a bad input
    unexpected. Any other exception keeps it, with its traceback."""
    from prefect import flow
    from prefect.flow_engine import run_flow

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        for error in (SouplineError("data source 'x.jsonl' does not exist"), RuntimeError("a bug")):
            @flow(name="fails")
            def fails():
                raise error

            with pytest.raises(type(error)):
                run_flow(fails, error_logger=logger)
    finally:
        logger.removeHandler(handler)
    unexpected = [r for r in records if "unexpected exception" in r.getMessage()]
    assert [(type(r.exc_info[1]), r.levelno) for r in unexpected] == [(RuntimeError, logging.ERROR)], unexpected


def test_a_bad_root_or_params_path_names_the_deployment_parameters_too(tmp_path):
    """A served run with parameter root=/nonexistent said only `--root ...`, a flag its user never gave."""
    from flows.workspace import entered
    from soupline import config
    from soupline.errors import SouplineError

    with pytest.raises(SouplineError, match=r"^--root '.*missing' \(a deployment's root parameter\) is not a folder"):
        with entered(str(tmp_path / "missing")):
            pass
    with pytest.raises(SouplineError, match=r"or a deployment's params_path and root parameters$"):
        config.load_existing(tmp_path / "params.yaml")


def test_a_worker_process_whose_flow_was_killed_stops_and_exits():
    """A pipeline flow killed by SIGKILL (no Ctrl-C to pass on) left its ingredient worker processes training on,
    each taking the queued ingredients and writing them into a workspace no process held the lock of, then waiting
    for good. A worker's initializer now watches its parent: gone, it requests the stop and exits once idle."""
    import subprocess
    import sys
    import time

    code = ("import time\nfrom flows import interruptible\n"
            "interruptible._end_when_orphaned(-1, interval=0.1)\ntime.sleep(60)\n")  # -1: never its parent
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert out.returncode == 1 and not out.stderr, out.stderr  # os._exit(1), not an error
    assert time.monotonic() - start < 30
