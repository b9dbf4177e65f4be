"""Integration: the whole pipeline through `dvc repro` in a temporary git repo, on a tiny config.

Checks the outputs, that a second `dvc repro` is a no-op, that changing `select.budget`
re-runs select and what follows only, and that `dvc exp run -S` records an experiment
whose metrics `dvc exp show` lists next to those of the commit it started from.
"""

import json
import shutil
import subprocess
import sys
import time
import warnings

import pytest
import yaml

from tests.conftest import run_cmd, tiny_project

_run = run_cmd


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model):
    return tiny_project(tmp_path_factory.mktemp("repo"), tiny_model)


# the README's short `dvc exp show` (regexes match at the start of a column name)
SHORT_EXP_SHOW = ["--only-changed", "--drop", r"(ingredients|soups|best_ingredient)\.|.*\.ece$|.*macro_f1$|data/|Created",
                  "--keep", r"(final\.(model|accuracy|macro_f1)|probe\.accuracy)$"]


def test_dvc_repro_end_to_end(repo):
    out = _run(["dvc", "repro"], repo)
    assert "Running stage 'train'" in out
    metrics = json.loads((repo / "data/metrics/metrics.json").read_text())
    assert set(metrics["soups"]) == {"uniform", "greedy", "ties", "dare"}
    assert set(metrics["ingredients"]) == {"lr0.005-seed0", "lr0.005-seed1", "lr0.01-seed0", "lr0.01-seed1"}
    assert list(metrics)[0] == "final" and metrics["final"] == {"model": "soup:greedy", **metrics["soups"]["greedy"]}
    sel = json.loads((repo / "data/selections/selection.json").read_text())
    assert len(sel["indices"]) == sel["budget"] == round(0.3 * sel["pool_size"])
    report = (repo / "data/reports/report.md").read_text()
    assert "Ingredients vs soups" in report and (repo / "data/reports/models.png").stat().st_size > 1000
    assert "Confusion matrix of `soup:greedy`" in report and "Headline model (metrics.json's `final`" in report and "| actual / predicted | business | sport | tech |" in report
    assert report.index("## Per label") < report.index("## Timings") and "| train (4 ingredients) |" in report
    # the headline model's heatmap beside its table, the sweep's curves drawn (data/reports/ is report's out)
    assert "](confusion.png)" in report and "](curves.png)" in report and "## Training curves" in report
    assert all((repo / "data/reports" / f).stat().st_size > 1000 for f in ("confusion.png", "curves.png"))
    greedy = json.loads((repo / "data/soups/greedy/soup.json").read_text())
    assert "| soup:uniform | soup |" in report and "| all 4 |" in report  # the table names what each soup holds
    models = json.loads((repo / "data/metrics/details.json").read_text())["models"]
    assert "| ECE | mean confidence |" in report and all(1 / 3 <= m["confidence"] <= 1 for m in models.values())
    assert json.loads((repo / "data/soups/ties/soup.json").read_text())["settings"] == {"top_k": 20.0, "scale": 1.0}
    dare = json.loads((repo / "data/soups/dare/soup.json").read_text())  # what the merge ran with, ties' top_k too
    assert dare["task_arithmetic"] == {"top_k": 20.0 if dare["settings"]["merge"] == "ties" else None,
                                       "elect_sign": dare["settings"]["merge"] == "ties",
                                       **{k: dare["settings"][k] for k in ("drop", "scale", "seed")}}
    kept = "all 4" if len(greedy["ingredients"]) == 4 else ", ".join(f"`{n}`" for n in greedy["ingredients"])
    assert next(line for line in report.splitlines() if line.startswith("| soup:greedy |")).endswith(f"{kept} |")
    assert greedy["ingredients"] and greedy["val_accuracy"] >= greedy["log"][0]["val_accuracy"]
    from soupline.classifier import load_classifier

    assert load_classifier(repo / "data/soups/greedy").config.num_labels == 3

    plots = json.loads(_run(["dvc", "plots", "show", "--json"], repo))
    assert "errors" not in plots
    [models_chart] = plots["data"]["data/metrics/plots/models.csv"]
    encoding = models_chart["content"]["encoding"]  # a horizontal bar per model: x is its score, not its name
    assert (encoding["x"]["field"], encoding["x"]["type"], encoding["y"]["field"]) == ("accuracy", "quantitative",
                                                                                     "model")
    for chart, field in (("train loss", "loss"), ("validation accuracy", "accuracy"), ("validation macro-F1", "macro_f1")):
        [plot] = plots["data"][f"{chart} by ingredient"]  # one chart per metric: a line per ingredient
        assert plot["content"]["encoding"]["color"]["field"] == "ingredient"
        points = plot["content"]["data"]["values"]
        assert {p["ingredient"] for p in points} == set(metrics["ingredients"]) and all(field in p for p in points)
    [confusion] = plots["data"]["data/metrics/plots/confusion.csv"]  # DVC hands the CSV's ids over as text (DVC
    assert confusion["content"]["data"]["format"]["parse"] == {  # 3.x): parsed as numbers, 10 sorts after 2
        "actual_id": "number", "predicted_id": "number"}
    for name in metrics["ingredients"]:  # and each ingredient's own dvclive curves
        assert (repo / f"data/curves/{name}/plots/metrics/val/accuracy.tsv").exists()

    again = _run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in again
    assert "Running stage" not in again


def test_bookkeeping_params_rerun_train_only(repo):
    """train.keep_replaced / checkpoint_every change no model: train re-runs (its cache is pruned to the new
    size), soup and evaluate do not."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["keep_replaced"] = params["train"]["keep_replaced"] + 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run(["dvc", "status"], repo)
    assert "train:" in status and "soup:" not in status and "evaluate:" not in status
    out = _run(["dvc", "repro"], repo)
    assert "Running stage 'train'" in out and "Stage 'soup' didn't change" in out
    assert "Running stage 'evaluate'" not in out


def test_the_headline_model_setting_reruns_evaluate_and_report_only(repo):
    """`evaluate.final` picks metrics.json's `final` among the models scored: editing it re-runs evaluate (whose
    evaluation cache scores nothing again) and report, not soup (whose params list evaluate.batch_size alone)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    _run(["dvc", "repro"], repo)  # built by test_dvc_repro_end_to_end
    rule = json.loads((repo / "data/metrics/metrics.json").read_text())["final"]["model"]
    params["evaluate"]["final"] = "uniform"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = _run(["dvc", "status"], repo)
        assert "evaluate:" in status and "soup:" not in status and "train:" not in status
        out = _run(["dvc", "repro"], repo)
        assert "Stage 'soup' didn't change" in out and "Running stage 'evaluate'" in out
        assert "Running stage 'report'" in out and "evaluate: soup:uniform: evaluated before" in out
        metrics = json.loads((repo / "data/metrics/metrics.json").read_text())
        assert rule == "soup:greedy" and metrics["final"]["model"] == "soup:uniform"
        assert metrics["final"]["accuracy"] == metrics["soups"]["uniform"]["accuracy"]
        report = (repo / "data/reports/report.md").read_text()
        assert "**Model to use: `soup:uniform`**" in report
        assert "It is the uniform soup, as evaluate.final says" in report
    finally:
        params["evaluate"]["final"] = "auto"
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], repo)
    assert json.loads((repo / "data/metrics/metrics.json").read_text())["final"]["model"] == rule


@pytest.mark.slow
def test_a_soup_setting_edit_remakes_that_soup_only(repo):
    """data/soups persists (dvc.yaml): after a `soup.ties.top_k` edit `dvc repro` runs the soup stage, which keeps
    the soups that do not read it and makes TIES again; DVC then records the result."""
    _run(["dvc", "repro"], repo)  # built by test_dvc_repro_end_to_end, or here under `-m slow`
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["soup"]["ties"]["top_k"] = 30.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], repo)
    assert "Running stage 'soup'" in out and "soup: ties: " in out and "soup: ties: up to date" not in out
    for other in params["soup"]["methods"]:
        assert other == "ties" or f"soup: {other}: up to date (made from these ingredients and settings)" in out
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def test_editing_data_under_data_raw_is_a_change_dvc_sees(repo):
    """dvc.yaml lists data/raw as prepare's input folder: editing the source there invalidates prepare."""
    corpus = repo / "data/raw/corpus.jsonl"
    text = corpus.read_text()
    assert "data/raw" not in _run(["dvc", "status", "prepare"], repo)
    corpus.write_text("".join(reversed(text.splitlines(keepends=True))))
    try:
        assert " ".join(_run(["dvc", "status", "prepare"], repo).split()).startswith(
            "prepare: changed deps: modified: data/raw")
    finally:
        corpus.write_text(text)
    assert "data/raw" not in _run(["dvc", "status", "prepare"], repo)


def test_soupline_run_records_its_outputs_in_dvc_lock(repo):
    """`soupline run` after `dvc repro` skips every stage; with params.yaml's values it ends with
    `dvc commit -f`, so `dvc status` is clean after it."""
    out = _run(["soupline", "run"], repo)  # after `dvc repro`: the stages it ran recorded their runs
    for stage in ("prepare", "embed", "select", "soup", "evaluate", "report"):
        assert f"{stage}: up to date" in out
    assert "train: lr0.005-seed0: up to date" in out and "dvc: outputs recorded in dvc.lock" in out
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    again = _run(["soupline", "run", "--from", "select"], repo)
    assert "report: up to date" in again and "dvc.lock not updated: the run started at select" in again
    assert "warning" not in _run(["soupline", "stage", "report"], repo)
    warned = _run(["soupline", "stage", "report", "select.budget=0.45"], repo)  # runs, on the old selection's metrics
    assert "warning: select is not up to date with these params and inputs, so report runs on what" in warned
    warned = _run(["soupline", "run", "--from", "report", "select.budget=0.45"], repo)  # --from warns the same way
    assert "warning: select is not up to date with these params and inputs, so the run from report runs on" in warned


def test_outputs_checked_out_from_another_run_of_the_same_inputs_are_up_to_date(repo):
    """Two runs from the same inputs write reports that differ (their timings); `git checkout` of the older commit
    puts its report and dvc.lock back, so `dvc status` is clean: `soupline status` and `soupline run` agree (were:
    "its outputs changed since its run", and report ran again, because this workspace's record names the newer)."""
    _run(["soupline", "run"], repo)  # the test before left a report from other params
    report = repo / "data/reports/report.md"
    checked_out = report.read_text() + "\n## Reading\nanother run's report, as `git checkout` puts it back\n"
    report.write_text(checked_out)
    _run(["dvc", "commit", "-f", "report"], repo)  # the commit checked out recorded it in its dvc.lock
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    assert _run(["soupline", "status"], repo).splitlines()[-1] == "everything is up to date"
    out = _run(["soupline", "run"], repo)
    assert "report: up to date (as dvc.lock records it)" in out and report.read_text() == checked_out
    assert "report: up to date\n" in _run(["soupline", "run"], repo)  # recorded now


@pytest.mark.slow
def test_status_tells_a_params_edit_no_output_depends_on_from_unrecorded_outputs(repo):
    """Another method's setting (select.dnc.k under kmeans) changes no key, but dvc.lock records the old value:
    `soupline status` says so (was: "a run stopped before its closing `dvc commit`?"); `soupline run` records it."""
    _run(["dvc", "repro"], repo)  # the test before ran with other params
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["select"]["dnc"]["k"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = _run(["soupline", "status"], repo)
        assert "dvc.lock  records other values of params select (stage select), which no output" in status
        assert "stopped before" not in status
        assert "dvc: outputs recorded in dvc.lock" in _run(["soupline", "run"], repo)
        assert _run(["soupline", "status"], repo).splitlines()[-1] == "everything is up to date"
    finally:
        (repo / "params.yaml").write_text(text)
        _run(["dvc", "commit", "-f"], repo)


@pytest.mark.slow
def test_outputs_dvc_put_there_without_run_records_are_up_to_date(repo, monkeypatch):
    """A fresh clone after `dvc pull` (or a queued experiment's `dvc exp apply`: it ran in a copy of its own) has
    the outputs dvc.lock records but none of soupline's run records (data/cache/stages/): `dvc status` is clean, and
    `soupline status` and `soupline run` must agree (were: every stage but train "no run recorded", and `soupline
    run` ran them all again, rewriting the report and dvc.lock)."""
    import fcntl
    from soupline import config
    from tasks import dvc_lock, keys, pipeline
    from tasks.layout import Layout

    _run(["dvc", "repro"], repo)  # the test before left a report from other params
    shutil.rmtree(repo / "data/cache/stages")
    report, lock = (repo / "data/reports/report.md").read_bytes(), (repo / "dvc.lock").read_bytes()
    status = _run(["soupline", "status"], repo)
    assert status.splitlines()[-1] == "everything is up to date", status
    out = _run(["soupline", "run"], repo)
    for stage in ("prepare", "embed", "select", "soup", "evaluate", "report"):
        assert f"{stage}: up to date (as dvc.lock records it)" in out
    assert (repo / "data/reports/report.md").read_bytes() == report and (repo / "dvc.lock").read_bytes() == lock
    assert "soup: up to date\n" in _run(["soupline", "run"], repo)  # recorded now: soupline's own record
    monkeypatch.chdir(repo)
    layout, params = Layout(repo), config.load(repo / "params.yaml")
    vouches = lambda stage, p=params: pipeline.dvc_vouches(stage, p, layout, pipeline.dvc_clean(layout))  # noqa: E731
    shutil.rmtree(repo / "data/cache/stages/soup")
    with open(repo / ".dvc/tmp/lock", "a+") as held:  # a DVC process holds it: no `dvc status` (it would wait, fail)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not vouches("soup")
    assert pipeline.why_stale("soup", params, layout) is None
    with dvc_lock.repo_lock(repo, "a run"):  # a run holds DVC's lock: let go for `dvc status`, and taken back
        assert vouches("soup") and dvc_lock.busy(repo)
    assert not dvc_lock.busy(repo)
    budget = config.load(repo / "params.yaml", ["select.budget=0.45"])  # dvc.lock describes params.yaml's values
    assert not vouches("select", budget)
    # the stage's code, where Python imports it from, changed since the last run recorded here (an installed copy of
    # soupline, which dvc.yaml does not name): DVC cannot see it, the key can
    monkeypatch.setattr(keys, "code_digest", lambda *stages: "other code")
    assert vouches("soup")  # no run of soup recorded here
    assert not vouches("select")  # select's last run here ran other code
    _run(["soupline", "run"], repo)  # soup recorded again


def test_dvc_repro_cannot_delete_what_a_running_soupline_run_reads(repo, monkeypatch):
    """`dvc repro` deletes a stage's outputs before the stage meets the workspace lock; a run outside DVC holds
    DVC's repository lock too, so a `dvc repro` started meanwhile stops with DVC's own message instead."""
    import fcntl

    from soupline.errors import SouplineError
    from tasks import dvc_lock
    from tasks.common import workspace_lock
    from tasks.layout import Layout

    selection = (repo / "data/selections/selection.json").read_bytes()
    with workspace_lock(Layout(repo), "soupline run"):
        out = _run(["dvc", "repro", "-f", "-s", "select"], repo, check=False)
        assert "Unable to acquire lock" in out and "Running stage" not in out
    assert (repo / "data/selections/selection.json").read_bytes() == selection
    with open(repo / ".dvc/tmp/lock", "a+") as held:  # a DVC process holds it: the run does not start
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SouplineError, match="another DVC process .* holds .*DVC lock; wait for it to finish, "
                                                "then start soupline run again"):
            with dvc_lock.repo_lock(repo, "soupline run"):
                pass
        monkeypatch.setenv("DVC_STAGE", "select")  # a stage command under `dvc repro`: DVC's lock is its parent's
        with dvc_lock.repo_lock(repo, "python -m tasks.select"):
            pass


@pytest.mark.slow
def test_changed_budget_reruns_select_and_downstream_only(repo):
    _run(["dvc", "repro"], repo)  # the tests before may leave it from other params
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["select"]["budget"] = 0.4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], repo)
    assert "Stage 'prepare' didn't change" in out and "Stage 'embed' didn't change" in out
    for stage in ("select", "train", "soup", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "budget 0.4"], repo)


@pytest.mark.slow
def test_new_sweep_axis_trains_only_new_ingredients(repo):
    """Adding a seed trains only that seed's ingredients (the others are kept byte for byte); a new
    sweep axis gives every ingredient a new name, and the folders of the old ones are removed."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    before = {n: (repo / f"data/models/ingredients/{n}/model.safetensors").read_bytes()
              for n in ("lr0.005-seed0", "lr0.01-seed1")}
    params["train"]["seeds"] = [0, 1, 2]
    params["train"]["sweep"] = {}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], repo)
    assert out.count("up to date") == 4 and "lr0.005-seed2:" in out and "lr0.01-seed2:" in out
    for name, weights in before.items():  # kept, not retrained
        assert (repo / f"data/models/ingredients/{name}/model.safetensors").read_bytes() == weights
    metrics = json.loads((repo / "data/metrics/metrics.json").read_text())
    assert len(metrics["ingredients"]) == 6

    params["train"]["seeds"] = [0]
    params["train"]["sweep"] = {"epochs": [1, 2]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], repo)
    built = sorted(p.name for p in (repo / "data/models/ingredients").iterdir())
    assert built == ["lr0.005-seed0-epochs1", "lr0.005-seed0-epochs2", "lr0.01-seed0-epochs1", "lr0.01-seed0-epochs2"]
    infos = {n: json.loads((repo / f"data/models/ingredients/{n}/train_info.json").read_text()) for n in built}
    assert infos["lr0.005-seed0-epochs2"]["planned_steps"] > infos["lr0.005-seed0-epochs1"]["planned_steps"]
    assert sorted(p.name for p in (repo / "data/curves").iterdir() if p.is_dir()) == built
    assert {line.split("\t")[-1] for line in (repo / "data/curves/val_accuracy.tsv").read_text().splitlines()[1:]} \
        == set(built)  # the sweep's charts follow the sweep
    assert "Data and pipelines are up to date" in _run(["dvc", "repro"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "sweep epochs"], repo)


@pytest.mark.slow
def test_dvc_exp_run_set_param(repo):
    """`dvc exp show` has the metrics of the experiment and of the commit it started from: git tracks
    the `cache: false` outputs (metrics.json, plot data, curves, report), .gitignore keeps the rest out."""
    tracked = _run(["git", "ls-files", "data"], repo).split()  # committed with `git add -A` by the tests above
    assert {p.split("/")[1] for p in tracked} == {"raw", "metrics", "curves", "reports"}
    assert "data/metrics/metrics.json" in tracked and "data/metrics/details.json" not in tracked
    # a soup param: the experiment re-runs soup, evaluate and report only (a select param retrains everything)
    _run(["dvc", "exp", "run", "-S", "soup.methods=[uniform,greedy]", "-n", "two-soups"], repo)
    rows = json.loads(_run(["dvc", "exp", "show", "--json"], repo))
    baseline = next(r for r in rows if r["rev"] != "workspace")
    exp = next(r for group in baseline["experiments"] for r in group["revs"] if r["name"] == "two-soups")
    assert exp["data"]["params"]["params.yaml"]["data"]["soup"]["methods"] == ["uniform", "greedy"]
    shown = {}
    for name, row in (("baseline", baseline), ("experiment", exp)):
        metrics = row["data"]["metrics"]["data/metrics/metrics.json"]
        assert "data" in metrics, (name, metrics)  # was {"error": FileNotFoundError} while git ignored the file
        shown[name] = metrics["data"]
        assert all(isinstance(v, float) for kind in ("ingredients", "soups") for scores in shown[name][kind].values()
                   for v in scores.values()), shown[name]
    assert shown["experiment"] == json.loads((repo / "data/metrics/metrics.json").read_text())  # ran in the workspace
    assert set(shown["baseline"]["soups"]) == {"uniform", "greedy", "ties", "dare"}
    assert set(shown["experiment"]["soups"]) == {"uniform", "greedy"}
    assert shown["baseline"]["ingredients"] == shown["experiment"]["ingredients"]  # not retrained
    table = _run(["dvc", "exp", "show", "--no-pager", "--csv", *SHORT_EXP_SHOW], repo)
    header = table.splitlines()[0].split(",")  # the README's short table: the headline scores and what changed,
    assert header[header.index("final.model"):] == [  # about 110 characters wide with one changed param
        "final.model", "final.accuracy", "final.macro_f1", "probe.accuracy", "soup.methods"], header


@pytest.mark.slow
def test_dvc_exp_run_of_a_soupline_run_s_values_trains_nothing(repo):
    """`dvc exp run` starts with a forced `dvc checkout` of dvc.lock's outputs, which put the ingredients it records
    back over those a `soupline run key=value` built (a run dvc.lock does not record): the experiment of the same
    values then trained every ingredient again, and made every soup again. The run keeps a copy of them in
    data/cache/ingredients and data/cache/soups."""
    out = _run(["soupline", "run", "select.budget=0.55"], repo)
    assert "dvc.lock not updated" in out and "its ingredients are kept in data/cache/ingredients too" in out
    assert "its soups are kept in data/cache/soups too" in out
    exp = _run(["dvc", "exp", "run", "-S", "select.budget=0.55", "-n", "as-soupline-ran"], repo)
    assert exp.count("restored from data/cache/ingredients") == 4 and " steps on " not in exp, exp
    soups = yaml.safe_load((repo / "params.yaml").read_text())["soup"]["methods"]  # 2 after test_dvc_exp_run_set_param
    assert exp.count("restored from data/cache/soups") == len(soups) > 1 and " val acc " not in exp, exp
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)
    assert "dvc: outputs recorded in dvc.lock" in _run(["soupline", "run"], repo)  # the same values: nothing to do


def test_a_git_ignored_model_folder_is_named_in_a_queued_experiment(repo, tiny_model):
    """`dvc exp run --queue` (and `--temp`) run in a copy holding what git tracks and DVC's outputs: a model folder git
    ignores is not there, and a relative `model: models/tiny` failed as "not a local folder and cannot be fetched from
    the hub", though the folder is right there in the workspace. The Failed experiment goes with `dvc exp remove`."""
    shutil.copytree(tiny_model, repo / "models/tiny")
    exclude = repo / ".git/info/exclude"
    before = exclude.read_text()
    exclude.write_text(before + "/models/\n")  # git-ignored, as a user keeps a large model out of git
    try:
        _run(["dvc", "exp", "run", "--queue", "-S", "model=models/tiny", "-n", "ignored-model"], repo)
        _run(["dvc", "queue", "start", "-j", "1"], repo)
        deadline = time.monotonic() + 300
        while (state := _queue_state(repo, "ignored-model")) in ("Queued", "Running"):
            assert time.monotonic() < deadline, state
            time.sleep(2)
    finally:
        exclude.write_text(before)
        shutil.rmtree(repo / "models")
    assert state == "Failed"
    out = _run(["dvc", "queue", "logs", "ignored-model"], repo)
    assert [line for line in out.splitlines() if line.startswith("error: ")] == [
        f"error: model path 'models/tiny' does not exist (it is in the workspace {repo}, but this experiment runs in a "
        "copy of the repository (`dvc exp run --queue` or `--temp`), which holds what git tracks and DVC's outputs, "
        "not what git ignores: `dvc add` it and commit its .dvc file, give an absolute path, or run `dvc exp run` "
        "without --queue / --temp); set `model` to an existing folder or the built-in 'all-MiniLM-L6-v2'"], out
    assert "Traceback" not in out and yaml.safe_load((repo / "params.yaml").read_text())["model"] == tiny_model
    _run(["dvc", "exp", "remove", "ignored-model"], repo)  # the README's way to drop a Failed experiment
    assert "ignored-model" not in _run(["dvc", "queue", "status"], repo)


def _queue_state(repo, name: str) -> str:
    """The status `dvc queue status` gives the experiment `name` (Queued, Running, Success, Failed)."""
    return next(line for line in _run(["dvc", "queue", "status"], repo).splitlines() if f" {name} " in line).split()[-1]


def test_bad_params_fail_stage_with_one_line(repo):
    params_text = (repo / "params.yaml").read_text()
    bad = yaml.safe_load(params_text)
    bad["select"]["method"] = "kmeanz"
    (repo / "params.yaml").write_text(yaml.safe_dump(bad))
    try:
        out = subprocess.run([sys.executable, "-m", "tasks.select"], cwd=repo, capture_output=True, text=True)
    finally:
        (repo / "params.yaml").write_text(params_text)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: params: select.method: unknown selection method 'kmeanz' (did you mean 'kmeans'?); "
        "choose one of " + str(sorted(__import__("soupline.select", fromlist=["REGISTRY"]).REGISTRY))
        + " (got 'kmeanz')"]


def test_bad_params_under_dvc_repro_as_the_readme_says(repo):
    """What `dvc repro` does with wrong params, as the README's Parameters section says: a bad value fails its stage
    in one line, and DVC has removed that stage's outputs first, but for the `persist` ones (train's ingredients and
    curves, soup's soups), which it keeps; a key dvc.yaml lists by name (`train.epochs`) misspelled is DVC's own one
    line, no stage command run, but the stage's outputs removed all the same; `dvc checkout` brings them back."""
    if not (repo / "data/soups").exists():
        _run(["dvc", "repro"], repo)
    params_text = (repo / "params.yaml").read_text()
    soups = sorted(p.name for p in (repo / "data/soups").iterdir())
    try:
        (repo / "params.yaml").write_text(params_text.replace("\n  methods:\n", "\n  methods:\n  - gredy\n", 1))
        out = _run(["dvc", "repro"], repo, check=False)
        assert [line for line in out.splitlines() if line.startswith("error: ")] == [
            "error: params: soup.methods.0: Input should be 'uniform', 'greedy', 'ties', 'dare' or 'learned' "
            "(got 'gredy'; did you mean 'greedy'?)"], out
        assert "Traceback" not in out and sorted(p.name for p in (repo / "data/soups").iterdir()) == soups
        (repo / "params.yaml").write_text(params_text.replace("\n  epochs: ", "\n  epochz: ", 1))
        out = _run(["dvc", "repro"], repo, check=False)
        assert "ERROR: failed to reproduce 'select': Parameters 'train.epochs' are missing from 'params.yaml'." \
            in out.splitlines() and "Running stage" not in out and "Traceback" not in out, out
        assert not (repo / "data/selections").exists()
    finally:
        (repo / "params.yaml").write_text(params_text)
    _run(["dvc", "checkout"], repo)
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo)


def _embedded_copy(repo, dest):
    """Copy the prepare and embed outputs into `dest` (a workspace for one stage), producing them first when
    this test runs without test_dvc_repro_end_to_end before it (`-k`)."""
    if not (repo / "data/embeddings/pool.npy").exists():
        _run(["dvc", "repro", "embed"], repo)
    for folder in ("data/prepared", "data/embeddings"):
        shutil.copytree(repo / folder, dest / folder)


def test_select_stage_excludes_copies_of_validation_and_test_texts(repo, tmp_path):
    """The select stage checks the pool against both held-out splits' embeddings (a workspace copy)."""
    import numpy as np

    _embedded_copy(repo, tmp_path)
    emb = {s: np.load(tmp_path / f"data/embeddings/{s}.npy") for s in ("pool", "validation", "test")}
    sims = emb["pool"] @ np.vstack([emb["validation"], emb["test"]]).T
    nearest = np.sort(sims.max(1))
    k = int(0.8 * len(nearest))  # about a fifth of the pool counts as a "copy"; the threshold falls between two
    threshold = float(nearest[k - 1] + nearest[k]) / 2
    expected = len(nearest) - k
    out = subprocess.run([sys.executable, "-m", "tasks.select", "--root", str(tmp_path), "--set",
                          f"select.heldout_dedup_threshold={threshold}", "--set", "select.budget=3"],
                         cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sel = json.loads((tmp_path / "data/selections/selection.json").read_text())
    assert 0 < expected == sel["info"]["heldout_twins_excluded"]
    assert all(sims[i].max() < threshold for i in sel["indices"])


def test_select_stage_reads_a_kept_quality_column(repo, tmp_path):
    """select.dnc.q: column:<name> reads a column prepare kept (a workspace copy with a rating added)."""
    import numpy as np
    import pandas as pd

    _embedded_copy(repo, tmp_path)
    pool = pd.read_parquet(tmp_path / "data/prepared/pool.parquet")
    good = np.arange(len(pool)) % 3 == 0
    pool.assign(rating=good.astype(float)).to_parquet(tmp_path / "data/prepared/pool.parquet", index=False)
    args = [sys.executable, "-m", "tasks.select", "--root", str(tmp_path), "--set", "select.method=dnc",
            "--set", "select.dnc.rounds=1", "--set", "select.dnc.temperature=0.01", "--set", "select.budget=6"]
    out = subprocess.run(args + ["--set", "select.dnc.q=column:rating"], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sel = json.loads((tmp_path / "data/selections/selection.json").read_text())
    assert good[sel["indices"]].all() and sel["params"]["dnc"]["q"] == "column:rating"
    out = subprocess.run(args + ["--set", "select.dnc.q=column:stars"], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "has no column 'stars' (it has ['rating'])" in out.stderr


def test_a_selection_that_leaves_labels_out_warns(repo, tmp_path):
    """Unstratified, a small budget can miss whole labels: the stage says which, and how to avoid it."""
    from soupline import config
    from tasks import select
    from tasks.layout import Layout

    _embedded_copy(repo, tmp_path)
    params = config.load(repo / "params.yaml", ["select.method=random", "select.budget=1"])
    with pytest.warns(UserWarning, match=r"the selection has no example of 2 label\(s\)") as caught:
        select.run(params, Layout(tmp_path))
    assert "select.stratify: balanced" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every label has an example: no warning
        select.run(config.load(repo / "params.yaml", ["select.method=random", "select.budget=30"]), Layout(tmp_path))
