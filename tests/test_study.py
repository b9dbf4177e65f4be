"""`soupline study` on the tiny model: every cell runs once, is cached, and lands in study.md/html/json."""

import csv
import errno
import json
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import torch

from soupline import config
from soupline.errors import SouplineError, transient
from soupline.study_report import CROSS
from tasks import study
from tasks.layout import Layout
from tests.conftest import make_frame


@pytest.fixture
def workspace(tmp_path, tiny_model):
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    overrides = [f"model={tiny_model}", "device=cpu", f"prepare.source={tmp_path / 'corpus.jsonl'}",
                 "embed.max_length=32", "train.learning_rates=[0.005]", "train.seeds=[0, 1]", "train.epochs=2",
                 "train.min_steps=0", "train.batch_size=8", "train.max_length=32", "soup.methods=[uniform, greedy]",
                 "study.methods=[random, kmeans]", "study.budgets=[0.3, 12]", "study.seeds=[0, 1]",
                 "select.gotd.target_copy_threshold=null"]  # a random tiny BERT puts every text within 0.95 cosine
    return Layout(tmp_path), overrides


@pytest.mark.slow
def test_study_runs_every_cell_once_and_reports(workspace, capsys):
    layout, overrides = workspace
    params = config.validate(config.apply_overrides({}, overrides))
    table = study.run(params, layout)
    out = layout.study_report
    grid = list(study.cells(params))
    assert grid[-1] == "full-pool" and len(grid) == 2 * 2 * 2 + 1
    assert {(r["method"], r["budget"], r["seeds"]) for r in table} == {
        (m, b, 2) for m in ("random", "kmeans") for b in (0.3, 12)}
    saved = json.loads((out / "study.json").read_text())
    full = saved["full_pool"]
    assert full["model"] == "soup:greedy" and 0 <= full["accuracy"] <= 1
    rows = saved["rows"]
    assert {r["cell"] for r in rows} == set(grid)
    assert {r["model"] for r in rows if r["cell"] == "kmeans-b12-s1"} == {
        "lr0.005-seed0", "lr0.005-seed1", "soup:uniform", "soup:greedy", "probe"}
    sel = json.loads((layout.data / "study/cells/kmeans-b12-s1/data/selections/selection.json").read_text())
    assert sel["budget"] == 12 and sel["seed"] == 1 and sel["method"] == "kmeans"
    other = json.loads((layout.data / "study/cells/kmeans-b12-s0/data/selections/selection.json").read_text())
    assert sel["indices"] != other["indices"]  # the selection seed is the cell's, not the global one
    assert not (layout.data / "study/cells/kmeans-b12-s1/data/models").exists()  # keep_models: false
    for name in ("budget.png", "soups.png", "time.png", "plots/budget.csv", "study.md"):
        assert (out / name).stat().st_size > 0
    md = (out / "study.md").read_text()
    assert "| kmeans | 12 |" in md and "![accuracy and macro-F1 vs budget](budget.png)" in md
    html = (out / "study.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html

    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in (layout.data / "study/cells").glob("*/cell.json")}
    params = config.validate(config.apply_overrides({}, overrides + ["study.methods=[random, kmeans, gotd]"]))
    study.run(params, layout)
    printed = capsys.readouterr().out
    assert printed.count(" cached") == 9 and printed.count(" done in ") == 4  # only gotd's cells ran
    assert "-> data/study/report/study.md and data/study/report/study.html" in printed
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def test_changed_params_rerun_the_cells_they_reach(workspace, capsys):
    layout, overrides = workspace
    overrides = [o for o in overrides if not o.startswith("study.")] + [
        "study.methods=[kmeans]", "study.budgets=[10]", "study.seeds=[0]", "study.full_pool=false"]
    study.run(config.validate(config.apply_overrides({}, overrides)), layout)
    capsys.readouterr()
    unread = ["select.gotd.rounds=3", "train.keep_replaced=0", "train.eval_every=1", "train.warmup_ratio=0.12"]
    study.run(config.validate(config.apply_overrides({}, overrides + unread)), layout)
    out = capsys.readouterr().out
    # another method's settings, bookkeeping, what no model reads, a warm-up ratio that moves no step (0 of 4 steps
    # either way; the cell keyed the sweep as written and trained it again): not this cell's
    assert "kmeans-b10-s0 cached" in out
    assert "prepare: up to date" in out and "embed: up to date" in out  # not re-run (nor their timings rewritten)
    md = (layout.study_report / "study.md").read_text()
    params = md.split("## Params")[1]  # what the cells ran with, so a reader can rerun them
    assert "niter: 25" in params and "learning_rates:\n  - 0.005" in params and "gotd:" not in params
    for changed in ("select.kmeans.niter=5", "train.epochs=3", "train.warmup_ratio=0.5"):  # 0.5: 2 of 4 steps warm up
        study.run(config.validate(config.apply_overrides({}, overrides + [changed, "study.keep_models=true"])), layout)
        assert "kmeans-b10-s0 done in" in capsys.readouterr().out, changed
    cell = study.cell_layout(layout, "kmeans-b10-s0")  # its models kept, the ones they replaced not
    assert list(cell.ingredients.iterdir()) and not list(cell.ingredient_cache.glob("*"))


def _one_cell(overrides: list[str], *extra: str):
    """The workspace's params with a study of one cell, random-b12-s0 (and `extra`)."""
    return config.validate(config.apply_overrides({}, [o for o in overrides if not o.startswith("study.")] + [
        "study.methods=[random]", "study.budgets=[12]", "study.seeds=[0]", "study.full_pool=false", *extra]))


def test_a_budget_the_pool_cannot_hold_is_one_line_before_the_embeddings(workspace):
    """A budget larger than the pool failed its cell after prepare, embed and the cells before it had run, and told a
    study user to lower select.budget (which the study sets): the grid's budgets are checked once prepare has run."""
    layout, overrides = workspace
    with pytest.raises(SouplineError, match=r"^study\.budgets\[1\]=1000 asks for 1000 examples but the pool has only "
                                            r"\d+; lower study\.budgets\[1\]$") as err:
        study.run(_one_cell(overrides, "study.budgets=[12, 1000]"), layout)
    assert "\n" not in str(err.value)
    assert layout.split("pool").exists() and not layout.embeddings.exists() and not layout.study_cells.exists()


def test_a_failed_cell_is_named_in_its_one_line(workspace):
    """A cell's error did not say which cell failed, and told a study user to change select.budget (which the
    study overrides): it names the cell and where its selection comes from."""
    layout, overrides = workspace
    with pytest.raises(SouplineError, match=r"^study cell random-b0\.9-s0 failed \(the study sets its select\.method, "
                                            r"select\.budget and select\.seed\): .*select\.dedup_threshold") as err:
        study.run(_one_cell(overrides, "study.budgets=[0.9]", "select.dedup_threshold=0.5"), layout)
    assert "\n" not in str(err.value)


def stop_at(last: str, monkeypatch) -> list[str]:
    """Make the study's stages stop with Ctrl-C at stage `last`; the stages begun, in order."""
    begun, run_stage = [], study.run_stage

    def stopping(stage, *args):
        begun.append(stage)
        if stage == last:
            raise KeyboardInterrupt
        run_stage(stage, *args)

    monkeypatch.setattr(study, "run_stage", stopping)
    return begun


def test_a_cell_stopped_while_re_running_is_not_trusted(workspace, monkeypatch, capsys):
    """A cell re-run for changed params kept its old cell.json until it finished: stopped after train, then run
    with the old params again, it was 'cached', its kept models the new params' (or gone)."""
    layout, overrides = workspace
    study.run(_one_cell(overrides, "study.keep_models=true"), layout)
    stages = stop_at("soup", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        study.run(_one_cell(overrides, "study.keep_models=true", "train.epochs=1"), layout)
    assert stages == ["select", "train", "soup"]
    monkeypatch.undo()
    capsys.readouterr()
    study.run(_one_cell(overrides, "study.keep_models=true"), layout)
    assert "random-b12-s0 done in" in capsys.readouterr().out
    cell = study.cell_layout(layout, "random-b12-s0")
    assert {json.loads((i / "train_info.json").read_text())["steps"] for i in cell.ingredients.iterdir()} == {4}


def test_a_transient_failure_is_retried_and_a_user_error_is_not(workspace, monkeypatch, capsys):
    """An I/O error in a cell (a disk hiccup) failed the whole study at once, where the Prefect flows retry one
    (`errors.RETRY_DELAYS`, 2 s then 10 s): `soupline study` tries the cell again, resumed; a user error (bad input,
    a file this user may not read) fails at once, and an error met on every try fails after the last."""
    layout, overrides = workspace
    monkeypatch.setattr(study, "RETRY_DELAYS", (0, 0))
    run_stage, calls = study.run_stage, []

    def failing(error: Exception | None, times: int):
        def stage_(stage, *args):
            calls.append(stage)
            if error is not None and len(calls) <= times:
                raise error
            run_stage(stage, *args)
        monkeypatch.setattr(study, "run_stage", stage_)

    failing(OSError("disk hiccup"), 2)  # select, then select again
    study.run(_one_cell(overrides), layout)
    assert capsys.readouterr().out.count("study: random-b12-s0 failed (OSError: disk hiccup); trying it again") == 2
    assert calls == ["select", "select", *study.CELL_STAGES]
    for error, times, tries in ((PermissionError(13, "Permission denied", "data/x"), 1, 1),
                                (SouplineError("bad input"), 1, 1), (KeyError("a bug"), 1, 1),
                                (OSError("disk gone"), 9, 3)):
        calls.clear()
        failing(error, times)
        with pytest.raises(type(error)):
            study.run(_one_cell(overrides, "study.seeds=[1]"), layout)
        assert calls == ["select"] * tries, error


@pytest.mark.parametrize("error, retried", [
    (OSError(errno.EIO, "Input/output error"), True), (ConnectionResetError(), True), (TimeoutError(), True),
    (BrokenProcessPool("a worker died"), True),
    (torch.AcceleratorError("CUDA error: CUDA-capable device(s) is/are busy or unavailable"), True),
    (torch.AcceleratorError("CUDA error: device-side assert triggered"), False),
    (RuntimeError("CUDA error: CUDA-capable device(s) is/are busy or unavailable"), True),  # torch before 2.8
    *((torch.AcceleratorError(f"CUDA error: {sticky}\nCUDA kernel errors might be asynchronously reported at some "
                              "other API call"), False) for sticky in (
        "an illegal memory access was encountered", "unspecified launch failure", "misaligned address",
        "the launch timed out and was terminated", "an illegal instruction was encountered", "hardware stack error",
        "operation not supported on global/shared address space", "invalid program counter",
        "the MPS client has been terminated by the server",
        "an async error has occured in external entity outside of CUDA")),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),  # torch before 2.8
    (SouplineError("bad input"), False), (PermissionError(13, "Permission denied", "data/x"), False),
    (FileNotFoundError(2, "No such file or directory", "data/x"), False), (IsADirectoryError(), False),
    (OSError(errno.ENOSPC, "No space left on device"), False), (OSError(errno.EROFS, "Read-only file system"), False),
    (KeyError("a"), False), (TypeError(), False), (AttributeError(), False), (AssertionError(), False),
    (IndexError(), False), (ValueError(), False), (RuntimeError("a bug"), False)])
def test_only_an_error_another_try_may_get_past_is_retried(error, retried):
    """Every error but a user error was retried, twice, 2 s then 10 s later, by the flows' tasks and `soupline study`:
    a bug (KeyError, TypeError, ...) or a file missing surfaced 12 s late, after two more tracebacks. Now an I/O or
    network error, a dead pool worker or a CUDA hiccup is retried; a bug, a file system's standing answer (a path
    missing, a disk full or read-only) or a CUDA error that corrupts the context (a device-side assert, an illegal
    memory access: the same process meets it again) is not."""
    assert transient(error) is retried


def test_a_resumed_cell_counts_the_compute_of_its_stopped_run(workspace, monkeypatch):
    """A cell stopped after its soups and run again counted only the resumed run's seconds (train and soup found
    built: about 0 s), so it looked cheaper than it was and won the study's ties on compute."""
    layout, overrides = workspace
    stop_at("evaluate", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        study.run(_one_cell(overrides, "study.budgets=[0.5]"), layout)
    cell = study.cell_layout(layout, "random-b0.5-s0")
    stopped = {rec["stage"]: rec["seconds"] for rec in map(json.loads, map(Path.read_text, cell.timings.glob("*")))}
    assert set(stopped) == {"select", "train", "soup"}
    monkeypatch.undo()
    study.run(_one_cell(overrides, "study.budgets=[0.5]"), layout)
    seconds = json.loads((cell.root / "cell.json").read_text())["seconds"]
    assert seconds["train"] >= stopped["train"] and seconds["soup"] >= stopped["soup"], (seconds, stopped)
    assert not (cell.root / study.ATTEMPT).exists()  # the cell is finished


def test_a_seed_that_picks_what_another_picked_trains_nothing(workspace, monkeypatch, capsys):
    """GOT-D picks alike whatever the seed, as does any method given the whole pool: the second seed's cell trained
    and evaluated the same models again. Its results are now the first cell's, after its own select; a cell whose
    models are to be kept still trains them."""
    layout, overrides = workspace
    stages = []
    run_stage = study.run_stage
    monkeypatch.setattr(study, "run_stage", lambda stage, *args: stages.append(stage) or run_stage(stage, *args))
    study.run(_one_cell(overrides, "study.budgets=[1.0]", "study.seeds=[0, 1]"), layout)
    assert stages == ["select", "train", "soup", "evaluate", "select"]
    first, second = (json.loads((layout.study_cells / f"random-b1.0-s{s}" / "cell.json").read_text()) for s in (0, 1))
    assert second["same_as"] == "random-b1.0-s0" and second["models"] == first["models"] and second["seed"] == 1
    assert first["labels_missed"] == second["labels_missed"] == []  # the whole pool: every label
    assert second["seconds"]["train"] == first["seconds"]["train"]
    assert "random-b1.0-s1 picked the examples random-b1.0-s0 picked" in capsys.readouterr().out
    assert "| 2 (1 distinct selection) |" in (layout.study_report / "study.md").read_text()
    stages.clear()
    study.run(_one_cell(overrides, "study.budgets=[1.0]", "study.seeds=[0, 1]", "study.keep_models=true"), layout)
    assert stages == ["select", "train", "soup", "evaluate"] * 2


def test_budgets_that_give_one_count_share_one_cell(workspace, monkeypatch, capsys):
    """`study.budgets: [0.5, 21]` on a pool of 42: the two cells trained on the same 21 examples, as the twin check
    compared the budget as written. Now the second takes the first's results after its select."""
    layout, overrides = workspace
    stages = []
    run_stage = study.run_stage
    monkeypatch.setattr(study, "run_stage", lambda stage, *args: stages.append(stage) or run_stage(stage, *args))
    study.run(_one_cell(overrides, "study.budgets=[0.5, 21]"), layout)
    assert stages == ["select", "train", "soup", "evaluate", "select"]
    first, second = (json.loads((layout.study_cells / f"random-b{b}-s0" / "cell.json").read_text()) for b in (0.5, 21))
    assert first["examples"] == second["examples"] == 21 and second["same_as"] == "random-b0.5-s0"
    assert "random-b21-s0 picked the examples random-b0.5-s0 picked" in capsys.readouterr().out
    assert {r["budget"] for r in json.loads((layout.study_report / "study.json").read_text())["rows"]} == {0.5, 21}
    md = (layout.study_report / "study.md").read_text()
    assert "| random-b21-s0 (results of random-b0.5-s0: the same picks) | " in md


def test_a_cross_soup_member_shares_models_only_while_their_cell_holds_them(tmp_path):
    """A member that took another cell's results (`same_as`) lends that cell's models to a cross soup: not once
    that cell ran again on other examples, nor under `study.keep_models`, which asks for the member's own."""
    layout = Layout(tmp_path)
    (layout.study_cells / "a" / "data/models/ingredients/lr0.005-seed0").mkdir(parents=True)
    source = {"cell": "a", "key": "ka", "same_inputs": "s", "selection": "x"}
    (layout.study_cells / "a" / "cell.json").write_text(json.dumps(source))
    (layout.study_cells / "b").mkdir()
    twin = {**source, "cell": "b", "key": "kb", "same_as": "a"}
    (layout.study_cells / "b" / "cell.json").write_text(json.dumps(twin))
    assert study.cached_cell("b", layout, "kb", need_models=True)["same_as"] == "a"
    assert study.cached_cell("b", layout, "kb", need_models=True, own_models=True) is None
    (layout.study_cells / "a" / "cell.json").write_text(json.dumps({**source, "selection": "y"}))
    assert study.cached_cell("b", layout, "kb", need_models=True) is None
    assert study.cached_cell("b", layout, "kb")["same_as"] == "a"  # its results stand: no models asked for


def test_cross_soups_take_each_selections_models_once(workspace, monkeypatch, capsys):
    """Every method given the whole pool picks the same examples, as two budgets of one count do: a cross soup
    counted those cells' identical models once per cell, and each budget's cross soup souped them again. Now each
    selection's models go in once, and a cross soup of the same models takes the first one's results."""
    layout, overrides = workspace
    stages = []
    run_stage = study.run_stage
    monkeypatch.setattr(study, "run_stage", lambda stage, *args: stages.append(stage) or run_stage(stage, *args))
    params = _one_cell(overrides, "study.methods=[random, kmeans]", "study.budgets=[1.0, 42]", "study.cross_soups=true",
                       "train.head_init=random")
    study.run(params, layout)
    assert stages == ["select", "train", "soup", "evaluate"] + ["select"] * 3  # one selection, trained once
    cross, twin = (json.loads((layout.study_cells / f"cross-b{b}" / "cell.json").read_text()) for b in ("1.0", "42"))
    assert sorted(k for k, v in cross["models"].items() if v["kind"] == "ingredient") == [
        "random-b1.0-s0.lr0.005-seed0", "random-b1.0-s0.lr0.005-seed1"]
    assert cross["souped"] == ["random-b1.0-s0"] and twin["same_as"] == "cross-b1.0"
    assert "kmeans-b1.0-s0 picked the examples random-b1.0-s0 picked: its models are souped once" in \
        capsys.readouterr().out
    assert not any(layout.study_cells.glob("*/data/models"))  # dropped once the cross soups are done


def test_keep_models_reruns_a_cell_whose_models_were_dropped(workspace, capsys):
    """`study.keep_models: true` after a run without it: `soupline study` took the cell as cached and kept no
    models (the Prefect flow re-ran it); now both re-run it, and the models are there."""
    layout, overrides = workspace
    study.run(_one_cell(overrides), layout)
    capsys.readouterr()
    study.run(_one_cell(overrides, "study.keep_models=true"), layout)
    assert "random-b12-s0 done in" in capsys.readouterr().out
    assert len(list(study.cell_layout(layout, "random-b12-s0").ingredients.iterdir())) == 2
    study.run(_one_cell(overrides, "study.keep_models=true"), layout)
    assert "random-b12-s0 cached" in capsys.readouterr().out


def test_bad_study_params_are_one_line():
    for bad, key in [({"study": {"methods": ["kmaens"]}}, "did you mean 'kmeans'"),
                     ({"study": {"budgets": [0]}}, "budget must be > 0"),
                     ({"study": {"seeds": []}}, "study.seeds"),
                     ({"study": {"seeds": [0, -1]}}, "study.seeds.*greater than or equal to 0")]:
        with pytest.raises(SouplineError, match=key) as err:
            config.validate(bad)
        assert "\n" not in str(err.value)


def test_gotd_target_file_is_embedded_and_used(workspace, tmp_path):
    """select.gotd.target: the named texts become the target set (here: only sport texts pull sport examples)."""
    import pandas as pd

    from tasks.pipeline import run_stage

    layout, overrides = workspace
    sport = make_frame(20, seed=5).query("label == 'sport'")[["text"]]
    sport.to_csv(tmp_path / "target.csv", index=False)
    params = config.validate(config.apply_overrides({}, overrides + [
        "select.method=gotd", "select.budget=6", f"select.gotd.target={tmp_path / 'target.csv'}"]))
    for stage in ("prepare", "embed", "select"):
        run_stage(stage, params, layout)
    sel = json.loads(layout.selection.read_text())
    pool = pd.read_parquet(layout.split("pool"))
    assert (pool["label"].iloc[sel["indices"]] == "sport").mean() >= 0.5
    (tmp_path / "empty.csv").write_text("text\n\n")
    bad = config.validate(config.apply_overrides({}, overrides + [
        "select.method=gotd", f"select.gotd.target={tmp_path / 'empty.csv'}"]))
    with pytest.raises(SouplineError, match="no text") as err:
        run_stage("select", bad, layout)
    assert "\n" not in str(err.value)


def test_a_gotd_cell_key_follows_its_target_files_content(workspace, tmp_path):
    """A GOT-D target file edited in place (same path) changes the gotd cells' keys, as it changes the select
    stage's: the study re-runs them, where it served the old target's cached results."""
    from tasks.pipeline import run_stage

    layout, overrides = workspace
    target = tmp_path / "target.csv"
    make_frame(20, seed=5).query("label == 'sport'")[["text"]].to_csv(target, index=False)
    params = config.validate(config.apply_overrides({}, overrides + [
        "select.method=gotd", "select.budget=6", f"select.gotd.target={target}"]))
    for stage in ("prepare", "embed"):
        run_stage(stage, params, layout)
    before = study.cell_key(params, layout)
    make_frame(20, seed=5).query("label == 'tech'")[["text"]].to_csv(target, index=False)
    assert study.cell_key(params, layout) != before
    assert study.cell_key(params, layout, with_selection=False) != study.cell_key(params, layout)


def test_cross_selection_soups(workspace, capsys):
    """study.cross_soups: per budget, the ingredients of every method and seed souped together."""
    layout, overrides = workspace
    overrides = [o for o in overrides if not o.startswith("study.")] + [
        "study.methods=[random, kmeans]", "study.budgets=[10]", "study.seeds=[0]", "study.full_pool=false",
        "study.cross_soups=true", "train.head_init=random", "soup.methods=[uniform, greedy, learned]",
        "soup.learned.epochs=2"]
    params = config.validate(config.apply_overrides({}, overrides))
    assert study.cross_cells(params) == {"cross-b10": ["random-b10-s0", "kmeans-b10-s0"]}
    table = study.run(params, layout)
    cross = layout.data / "study/cells/cross-b10"
    result = json.loads((cross / "cell.json").read_text())
    ingredients = [k for k, v in result["models"].items() if v["kind"] == "ingredient"]
    assert sorted(ingredients) == sorted(f"{c}.lr0.005-seed{s}" for c in ("random-b10-s0", "kmeans-b10-s0")
                                         for s in (0, 1))
    assert {"soup:uniform", "soup:greedy", "soup:learned", "probe"} <= set(result["models"])
    weights = result["models"]["soup:learned"]["weights"]  # the learned mix, for the report's 'soup of' column
    assert len(weights) == 4 and sum(weights) == pytest.approx(1, abs=1e-4)
    sel = [json.loads((layout.data / f"study/cells/{c}/data/selections/selection.json").read_text())["indices"]
           for c in ("random-b10-s0", "kmeans-b10-s0")]
    assert result["examples"] == len(set(sel[0]) | set(sel[1])) and result["method"] == "cross"
    assert any(r["method"] == "cross" and r["budget"] == 10 for r in table)
    members = [json.loads((layout.data / f"study/cells/{c}/cell.json").read_text())["seconds"]
               for c in ("random-b10-s0", "kmeans-b10-s0")]
    assert result["seconds"]["train"] == pytest.approx(sum(m["train"] for m in members))  # its ingredients' compute
    assert result["seconds"]["soup"] > 0
    # every model is deleted once the cross soup is done (keep_models: false)
    assert not any((layout.data / "study/cells").glob("*/data/models"))

    capsys.readouterr()
    study.run(params, layout)  # all cached, cross soup included: nothing trains again
    assert capsys.readouterr().out.count(" cached") == 3


def test_cross_soups_refuse_lp_ft():
    with pytest.raises(SouplineError, match="shared initialisation") as err:
        config.validate({"study": {"cross_soups": True}, "train": {"head_init": "probe"}})
    assert "\n" not in str(err.value)


def test_the_study_report_is_outside_every_dvc_output():
    """`dvc repro` empties and checks out a stage's outputs: inside data/reports the study report was deleted or
    rolled back to the one of the last `dvc commit`."""
    from tasks import keys

    outs = [Path(o) for stage in keys._dvc_stages() for o in keys.stage_spec(stage)["outs"]]
    report = Layout(Path(".")).study_report
    assert report == Path("data/study/report") and not any(report.is_relative_to(o) for o in outs)


def _cell(cell, seed, selection, acc):
    ing = {"kind": "ingredient", "accuracy": acc, "macro_f1": acc, "ece": 0.1, "val_accuracy": acc}
    return {"cell": cell, "method": "gotd", "budget": 10, "examples": 10, "fraction": 0.1, "seed": seed,
            "selection": selection, "seconds": {"train": 1.0},
            "models": {"lr0.1-seed0": ing, "lr0.1-seed1": {**ing, "val_accuracy": 0.0},
                       "soup:greedy": {**ing, "kind": "soup", "ingredients": ["lr0.1-seed0"]},
                       "probe": {**ing, "kind": "reference"}}}


def test_study_table_sample_std_distinct_selections_and_greedy_members():
    from soupline.study_report import by_budget, rows_of, seeds_cell, spread

    row, = by_budget([_cell("gotd-b10-s0", 0, "a", 0.8), _cell("gotd-b10-s1", 1, "b", 0.9)], ["greedy"])
    assert row["accuracy_std"] == pytest.approx(0.0707, abs=1e-4)  # sample std (ddof 1), not 0.05
    assert seeds_cell(row) == "2"
    same, = by_budget([_cell("gotd-b10-s0", 0, "a", 0.8), _cell("gotd-b10-s1", 1, "a", 0.8)], ["greedy"])
    assert seeds_cell(same) == "2 (1 distinct selection)" and same["accuracy_std"] == 0.0
    # one result twice is no measured spread: the table's '± std' read 0.0000, steadier than any other method
    assert spread(same, "accuracy_std") == "-" and spread(row, "accuracy_std") == row["accuracy_std"]
    soup_of = {r["model"]: r["soup_of"] for r in rows_of([_cell("gotd-b10-s0", 0, "a", 0.8)])}
    assert soup_of == {"lr0.1-seed0": "", "lr0.1-seed1": "", "soup:greedy": "1 of 2: `lr0.1-seed0`", "probe": ""}


def test_what_a_person_reads_is_rounded_and_study_json_keeps_the_exact_means(tmp_path):
    """The Prefect flow's table artifact showed each mean as computed (0.86234567445, per seed [0.9123456789, ...]),
    where study.md's tables read 4 places. study.json keeps them exact: the best cell's ties are judged to 9 places."""
    import re

    from soupline.study_report import render_study, shown_rows

    table = render_study([_cell("gotd-b10-s0", 0, "a", 0.9123456789), _cell("gotd-b10-s1", 1, "b", 0.81234567)],
                         ["greedy"], tmp_path)
    row, = shown_rows(table)
    assert row["accuracy"] == 0.8623 and row["accuracy_per_seed"] == [0.9123, 0.8123] and row["accuracy_std"] == 0.0707
    assert row["failed_cells"] == [] and row["fraction"] == 0.1 and row["method"] == "gotd"
    assert shown_rows([{"fraction": 3e-05, "accuracy": 0.5}]) == [{"fraction": 3e-05, "accuracy": 0.5}]  # `_share`'s
    tiny = [{"budget": b, "fraction": b, "accuracy": 0.5} for b in (3e-05, 5e-05)]  # of a 1M pool: 30 and 50 texts
    assert [r["budget"] for r in shown_rows(tiny)] == [3e-05, 5e-05]  # as written (4 places: 0.0 and 0.0001)
    assert json.loads((tmp_path / "study.json").read_text())["by_budget"][0]["accuracy"] == 0.86234567445
    assert not re.search(r"\d\.\d{5}", (tmp_path / "study.md").read_text())


@pytest.mark.parametrize("overrides, line", [
    ([], "Ingredients fine-tuned with `train.method: full`. Head: LP-FT (`train.head_init: probe`: the head starts "
         "as the probe fit on the selection); learning rates 0.0001, 0.0002 (head 0.002); 6 epochs, at least "
         "60 steps."),
    (["train.method=lora", "train.head_init=random", "train.learning_rates=[5e-4]", "train.head_learning_rate=null",
      "train.epochs=3", "train.min_steps=0", "train.sweep={lora.r: [4, 8]}"],
     "Ingredients fine-tuned with `train.method: lora`: peft adapters merged into the body, `train.lora`: r=4, "),
    (["train.method=probe"], "Ingredients: the probe (`train.method: probe`: logistic regression on the embed "
                             "stage's embeddings, no fine-tuning).")])
def test_the_study_says_the_recipe_its_cells_trained_with(tmp_path, overrides, line):
    """study.md's headline named the best cell but not how its ingredients were trained (method, LP-FT or not,
    learning rates, epochs): two studies of different recipes read alike down to the params at the end. Now a line
    under the best cell says it, report.md's recipe line (`report.training_recipe`) and the rest of the schedule."""
    params = config.validate(config.apply_overrides({}, overrides))
    study.aggregate(params, Layout(tmp_path), {"gotd-b10-s0": _cell("gotd-b10-s0", 0, "a", 0.8)})
    text = (tmp_path / "data/study/report/study.md").read_text()
    assert line in text and text.index("Best cell") < text.index(line) < text.index("## Accuracy")
    if "train.method=lora" in overrides:
        assert ("Head: random (`train.head_init: random`); learning rates 0.0005 (adapters x10: 0.005; head the "
                "body's); 3 epochs, at least 0 steps; swept: lora.r [4, 8].") in text  # adapters: x lora's scale


def test_a_run_and_a_study_judge_by_the_same_headline_model():
    """metrics.json's `final` and a study cell's model were two rules: with soup.methods [ties, dare] the run named
    its best ingredient and the study its TIES soup; with [ties, uniform] the run uniform and the study TIES."""
    import tasks.evaluate
    from soupline.evaluate import headline
    from soupline.study_report import by_budget

    ing = {"kind": "ingredient", "accuracy": 0.8, "macro_f1": 0.8, "ece": 0.1}
    models = {"a": {**ing, "val_accuracy": 0.7}, "b": {**ing, "val_accuracy": 0.9},
              **{f"soup:{m}": {**ing, "kind": "soup", "accuracy": 0.9, "val_accuracy": 0.9}
                 for m in ("ties", "dare", "uniform")}}
    assert headline(models, ["ties", "uniform", "dare"]) == "soup:uniform"
    no_uniform = {k: v for k, v in models.items() if k != "soup:uniform"}
    assert headline(no_uniform, ["dare", "ties"]) == "soup:dare"
    assert headline({**models, "soup:greedy": models["soup:ties"]}, ["ties", "greedy"]) == "soup:greedy"
    assert headline({"a": models["a"], "b": models["b"]}, []) == "b"
    cell = _cell("gotd-b10-s0", 0, "a", 0.8)
    cell["models"] = {**no_uniform, "probe": cell["models"]["probe"]}
    assert by_budget([cell], ["ties", "dare"])[0]["model"] == "soup:ties"
    assert tasks.evaluate.headline is headline  # the run's `final`


def test_evaluate_final_picks_the_headline_model_of_a_run_and_of_every_study_cell(tmp_path):
    """`evaluate.final` names the headline model (best_ingredient, or a soup) for metrics.json and study.md alike;
    study.md says the rule its rows follow, and a soup the cell did not make is one line, not a KeyError."""
    from soupline.evaluate import headline, headline_rule
    from soupline.study_report import render_study

    cells = [_cell("gotd-b10-s0", 0, "a", 0.8), _cell("gotd-b10-s1", 1, "b", 0.9)]
    for c in cells:  # a uniform soup below the greedy one and the best ingredient
        c["models"]["soup:uniform"] = {**c["models"]["soup:greedy"], "accuracy": 0.5, "val_accuracy": 0.5}
    models = cells[0]["models"]
    assert headline(models, ["greedy", "uniform"]) == "soup:greedy"
    assert headline(models, ["greedy", "uniform"], "best_ingredient") == "lr0.1-seed0"
    assert headline(models, ["greedy", "uniform"], "uniform") == "soup:uniform"
    with pytest.raises(SouplineError, match=r"^evaluate.final is ties, but no ties soup was made"):
        headline(models, ["greedy", "uniform"], "ties")
    table = render_study(cells, ["greedy", "uniform"], tmp_path, {"evaluate": {"batch_size": 64, "final": "uniform"}})
    assert table[0]["model"] == "soup:uniform" and table[0]["accuracy"] == 0.5
    assert table[0]["below_best_cells"] == ["gotd-b10-s0", "gotd-b10-s1"]
    md = (tmp_path / "study.md").read_text()
    assert f"the headline model of a cell is {headline_rule('uniform')}." in md
    assert "the headline rule took the uniform soup evaluate.final names without comparing it" in md
    assert render_study(cells, ["greedy", "uniform"], tmp_path)[0]["model"] == "soup:greedy"  # auto: no params
    assert "the headline model of a cell is the greedy soup, else" in (tmp_path / "study.md").read_text()


def test_evaluate_final_is_in_no_cell_key(workspace):
    """Changing `evaluate.final` re-judges a study's cells from their scores: no cell (nor cross soup) runs again;
    evaluate.batch_size still keys them."""
    layout, overrides = workspace

    def keys(*extra: str) -> tuple[str, dict]:
        params = config.validate(config.apply_overrides({}, [*overrides, *extra]))
        return study.cell_key(params, layout), study._cross_settings(params)

    assert keys("evaluate.final=uniform") == keys() == keys("evaluate.final=best_ingredient")
    assert keys("evaluate.batch_size=8")[0] != keys()[0]


def test_report_says_how_the_selection_was_made_and_what_each_soup_holds():
    from soupline.report import members, selection_settings, unselected_labels

    sel = {"method": "dnc", "pool_size": 220, "info": {"candidates_after_dedup": 86, "heldout_twins_excluded": 3},
           "params": {"stratify": "balanced", "dedup_threshold": 0.97, "heldout_dedup_threshold": 0.9,
                      "dnc": {"q": "column:rating", "rounds": 3}, "kmeans": {"niter": 25}}}
    assert selection_settings(sel) == (
        "Label quotas: `select.stratify: balanced` (the method ran inside each label). Near-duplicate filters "
        "`dedup_threshold: 0.97`, `heldout_dedup_threshold: 0.9`: 86 of 220 pool examples stayed candidates (3 "
        "near-copies of a validation or test text excluded). `select.dnc`: q=column:rating, rounds=3.")
    gotd = {"method": "gotd", "pool_size": 9, "info": {"eps": 0.0123456, "label_weight": 0.1},
            "params": {"gotd": {"eps": None, "label_weight": None, "target": None, "rounds": 16}}}
    assert selection_settings(gotd) == ("`select.gotd`: eps=null (0.01235 used), label_weight=null (0.1 used), "
                                        "target=null, rounds=16.")
    assert selection_settings({"method": "random", "pool_size": 9, "info": {},
                               "params": {"stratify": "none", "random": {}}}) == ""
    copies = {"method": "random", "pool_size": 9, "params": {"random": {}},
              "info": {"repeated_picks": 3, "repeated_picks_conflicting_labels": 1}}
    assert selection_settings(copies) == (
        "**Exact copies:** the selection holds 3 pick(s) that repeat another pick's text (1 text(s) picked under "
        "different labels): the pool has exact copies, which tie on every score; set select.dedup_threshold: 1.0 to "
        "keep one copy of each.")
    assert members(["b", "a"], ["a", "b"]) == "all 2" and members(None, ["a"]) == ""
    assert members(["a", "b"], ["a", "b"], [0.625, 0.375]) == "all 2 (learned weights 0.62, 0.38)"
    counts = {"sport": {"pool": 40, "selected": 8}, "tech": {"pool": 4, "selected": 0}}
    assert unselected_labels(counts) == ("**No example selected** of 1 label (`tech`): no model trained on this "
                                         "selection can predict it; `select.stratify: balanced` gives every label a "
                                         "quota while the budget is at least the number of labels.")
    assert unselected_labels({"sport": {"pool": 4, "selected": 1}, "x": {"pool": 0, "selected": 0}}) == ""
    counts["biz"] = {"pool": 3, "selected": 0}
    assert unselected_labels(counts, ["tech"]) == (
        "**No example selected** of 2 labels (`tech`, `biz`): no model trained on this selection can predict them; "
        "the near-duplicate filters left no candidate of `tech`; `select.stratify: balanced` gives every label a quota "
        "while the budget is at least the number of labels.")


def test_report_html_draws_the_markdown_tables_and_images_and_escapes_html():
    from soupline.report import as_html, md_table

    page = as_html("# r\n\n" + md_table(["label", "n"], [["<b>x</b>", 3]]) + "\n\n![models](models.png)\n")
    assert page.startswith("<!DOCTYPE html>") and "<h1>r</h1>" in page and "<td>3</td>" in page
    assert '<img src="models.png" alt="models"' in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # a label is text, not markup


def test_self_contained_report_inlines_local_pngs(tmp_path):
    import base64

    from soupline.report import self_contained

    (tmp_path / "models.png").write_bytes(b"\x89PNG fake bytes")
    (tmp_path / "r.md").write_text("# r\n![ingredients vs soups](models.png)\n![gone](missing.png)\n[link](models.png)\n")
    out = self_contained(tmp_path / "r.md")
    encoded = base64.b64encode(b"\x89PNG fake bytes").decode()
    assert f"![ingredients vs soups](data:image/png;base64,{encoded})" in out
    assert "![gone](missing.png)" in out and "[link](models.png)" in out  # a missing file, a plain link: untouched


def test_budget_plot_of_one_budget_draws_without_warnings(tmp_path):
    """One budget (a study of one fraction) drew a log axis of zero width: its points sat 1e-14 off their tick,
    and matplotlib warned 'divide by zero' (a user sees the warning in the study's output). A budget of a
    thousandth of a percent (a large pool) keeps a tick and a positive axis too."""
    import warnings

    from soupline.study_report import plot_budget

    for fractions in ([0.3016], [0.00003, 0.01]):
        table = [{"method": m, "budget": f, "fraction": f, "model": "soup:greedy", "accuracy": 1.0, "accuracy_std": 0.0,
                  "macro_f1": 1.0, "macro_f1_std": 0.0, "probe_accuracy": 0.9, "probe_macro_f1": 0.9}
                 for m in ("kmeans", "random") for f in fractions]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plot_budget(table, None, tmp_path / "budget.png")
        assert (tmp_path / "budget.png").stat().st_size > 0


def _plot_rows(report) -> list[dict]:
    return list(csv.DictReader((report / "plots" / "budget.csv").read_text().splitlines()))


def test_study_plot_data_is_one_file_that_dvc_draws_as_one_chart_of_a_line_per_method(tmp_path):
    """The study wrote plots/<method>.csv, which `dvc plots show data/study/report/plots/*.csv` drew as one chart per
    method, each of one line. It writes one long-format plots/budget.csv (a `method` column, each budget as written,
    a cross soup at its budget's share), which the `methods` template draws as one chart colored by method; the
    per-method files of an earlier study are deleted. Also a method an earlier study ran is gone from it."""
    from dvc_render import VegaRenderer
    from dvc_render.vega_templates import get_template

    from soupline.study_report import render_study
    from tests.conftest import ROOT

    (tmp_path / "plots").mkdir()
    for stale in ("random.csv", "gotd.csv"):
        (tmp_path / "plots" / stale).write_text("fraction,accuracy\n0.1,0.5\n")
    (tmp_path / "plots" / "notes.txt").write_text("mine")  # not plot data: kept
    kmeans = {**_cell("kmeans-b10-s0", 0, "k", 0.7), "method": "kmeans"}
    cross = {**_cell("cross-b10", "all", "u", 0.9), "method": CROSS, "examples": 19, "fraction": 0.19}
    render_study([_cell("gotd-b10-s0", 0, "a", 0.8), kmeans, cross], ["greedy"], tmp_path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["budget.csv", "notes.txt"]
    rows = _plot_rows(tmp_path)
    assert [(r["method"], r["budget"], r["examples"], r["fraction"], r["accuracy"]) for r in rows] == [
        ("cross", "10", "19", "0.1", "0.9000"), ("gotd", "10", "10", "0.1", "0.8000"),
        ("kmeans", "10", "10", "0.1", "0.7000")]
    template = get_template("methods", str(ROOT / ".dvc" / "plots"))
    spec = VegaRenderer([{**r, "rev": "workspace"} for r in rows], "budget.csv", template=template, x="fraction",
                        y="accuracy").get_filled_template()
    assert spec["mark"]["type"] == "line" and spec["encoding"]["color"]["field"] == "method"
    assert spec["encoding"]["x"] == {"field": "fraction", "type": "quantitative", "title": "fraction",
                                     "scale": {"type": "log"}}
    render_study([kmeans], ["greedy"], tmp_path)
    assert {r["method"] for r in _plot_rows(tmp_path)} == {"kmeans"}


def test_budgets_1_and_1_0_are_two_budgets_in_every_table_and_plot(monkeypatch, tmp_path):
    """A count of one example (`1`) and the whole pool (`1.0`) are two budgets of a study (two cells each), but the
    report keyed its rows on the number, and `1 == 1.0`: by_budget made one row of both (4 seeds, 1 example, 50.8 %
    of the pool), the winners one row, and both printed as `1`."""
    from soupline import plots, study_report

    cells = []
    for method, budget, examples, accs in (("random", 1, 1, (0.3, 0.4)), ("kmeans", 1, 1, (0.5, 0.6)),
                                           ("random", 1.0, 63, (0.9, 0.95)), ("kmeans", 1.0, 63, (0.8, 0.85))):
        for seed, acc in enumerate(accs):
            cell = _cell(f"{method}-b{budget}-s{seed}", seed, f"{method}{budget}{seed}", acc)
            cells.append({**cell, "method": method, "budget": budget, "examples": examples, "fraction": examples / 63})
    table = study_report.render_study(cells, ["greedy"], tmp_path)
    assert [(r["method"], r["budget"], r["seeds"], r["examples"]) for r in table] == [
        ("kmeans", 1, 2, 1), ("kmeans", 1.0, 2, 63), ("random", 1, 2, 1), ("random", 1.0, 2, 63)]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert [(w["budget"], w["winner"]) for w in saved["winners"]] == [(1, "kmeans"), (1.0, "random")]
    assert [type(w["budget"]) for w in saved["winners"]] == [int, float]  # as written, in JSON too
    md = (tmp_path / "study.md").read_text()
    assert "| random | 1 | 1 | 1.6 |" in md and "| random | 1.0 | 63 | 100.0 |" in md
    assert "| 1 | kmeans | 0.5500 |" in md and "| 1.0 | random | 0.9250 |" in md
    assert [r["budget"] for r in _plot_rows(tmp_path)] == ["1", "1.0"] * 2

    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    fig, _ = _drawn(monkeypatch, study_report.plot_budget, table, None, tmp_path / "budget.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1.59\n1", "100\n1.0"]


def test_budget_plot_draws_a_cross_soup_at_its_budget_and_says_so(monkeypatch, tmp_path):
    """budget.png drew a cross soup at its union's share of the pool (3 methods at 10 %: a point near 30 %), where it
    read as a third budget, with a tick of its own and a legend that said nothing of it. It is a star at the tick of
    its budget now, and the legend says what it soups; the ticks are the budgets' alone."""
    from soupline import plots, study_report

    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    cells = []
    for method, budget, examples in (("random", 0.1, 10), ("kmeans", 0.1, 10), ("random", 0.02, 2),
                                     ("kmeans", 0.02, 2), (CROSS, 0.1, 29), (CROSS, 0.02, 4)):
        cell = _cell(f"{method}-b{budget}-s0", 0, f"{method}{budget}", 0.5 + examples / 100)
        cells.append({**cell, "method": method, "budget": budget, "examples": examples, "fraction": examples / 100})
    table = study_report.by_budget(cells, ["greedy"])
    fig, _ = _drawn(monkeypatch, study_report.plot_budget, table, None, tmp_path / "budget.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2\n0.02", "10\n0.1"]
    stars, = [line for line in ax.lines if line.get_marker() == "*"]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(dots) == 2 and stars.get_linestyle() == "-."
    for line in (stars, *dots):  # beside each budget's tick, a little apart
        assert [round(x) for x in line.get_xdata()] == [2, 10]
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "cross (soup:greedy): at each budget, its methods' models souped together" in legend
    assert [w["budget"] for w in study_report.by_budget_winners(table)] == [0.02, 0.1]  # by the budgets' share


def test_budget_plot_keeps_a_budget_of_a_few_examples_of_a_large_pool(monkeypatch, tmp_path):
    """A budget of 3 examples of a pool of 100,000 was a fraction of 0.0 (rounded to 4 places): budget.png put it at
    0 % on a log axis (not drawn, warnings) and the table said 0.0 % of the pool. Shares keep 4 significant digits."""
    import warnings

    from soupline import plots, study_report

    cells = [{**_cell(f"random-b{b}-s0", 0, str(b), 0.6), "method": "random", "budget": b, "examples": n,
              "fraction": n / 100_000} for b, n in ((3, 3), (0.01, 1000))]
    table = study_report.by_budget(cells, ["greedy"])
    assert [r["fraction"] for r in table] == [3e-05, 0.01]
    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, _ = _drawn(monkeypatch, study_report.plot_budget, table, None, tmp_path / "budget.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.003\n3", "1\n0.01"]


def _drawn(monkeypatch, plot, *args):
    """The figure `plot` saves, drawn, with its renderer (save_figure is patched to keep it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from soupline import plots

    kept = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: kept.setdefault("fig", fig))
    plot(*args)
    canvas = FigureCanvasAgg(kept["fig"])
    canvas.draw()
    return kept["fig"], canvas.get_renderer()


def _overlapping(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1) if a.overlaps(b)]


def _not_covered(ax, box) -> None:
    """No point of `ax` lies inside `box` (display coordinates), and none is clipped at the axis' edge."""
    for points in ax.collections:
        if len(points.get_offsets()):
            assert not points.get_clip_on()
            assert not any(box.contains(x, y) for x, y in ax.transData.transform(points.get_offsets()))


SKEWED = [(0.81, 0.63), (0.75, 0.29), (0.81, 0.53), (0.75, 0.29), (0.75, 0.29), (0.81, 0.63), (0.81, 0.63),
          (0.75, 0.29), (0.75, 0.29)]  # the label-skewed run: the probe (last) scores lowest


@pytest.mark.parametrize("n_ingredients, scores", [(4, [(1.0, 1.0)] * 9), (16, [(1.0, 1.0)] * 22),
                                                   (1, [(1.0, 1.0)] * 2), (4, SKEWED)])
def test_models_plot_labels_do_not_collide_and_the_legend_covers_no_point(monkeypatch, tmp_path, n_ingredients,
                                                                          scores):
    """models.png drew neighbours' value labels over each other ('1.0001.000' when models tie, as they do on an
    easy task), cut the markers of a score of 1.0 in half at the top of the axis, and put its legend in the lower
    right corner, over the probe's point when the probe scored lowest."""
    from soupline.plots import plot_models

    kinds = ["ingredient"] * n_ingredients + ["soup"] * (len(scores) - n_ingredients - 1) + ["reference"]
    names = [f"lr0.0{i}-seed{i}" for i in range(n_ingredients)] + [f"soup:m{i}" for i in range(len(scores))]
    models = {("probe" if kind == "reference" else names[i]): {"kind": kind, "accuracy": acc, "macro_f1": f1}
              for i, (kind, (acc, f1)) in enumerate(zip(kinds, scores))}
    fig, renderer = _drawn(monkeypatch, plot_models, models, tmp_path / "models.png")
    ax = fig.axes[0]
    assert len(ax.texts) == 2 * len(models)  # a value beside each point, clear of the others and the title
    assert not _overlapping([t.get_window_extent(renderer).padded(3) for t in [ax.title, *ax.texts]])
    _not_covered(ax, ax.get_legend().get_window_extent(renderer))


def test_coverage_plot_legend_covers_no_bar(monkeypatch, tmp_path):
    """coverage.png put its legend where matplotlib's 'best' found room; with 12 even labels there is none, and it
    hid a label's selection bar."""
    from soupline.plots import plot_coverage

    pool = [11, 10, 11, 10, 10, 11, 10, 10, 11, 11, 11, 10]
    selected = [4, 3, 4, 3, 3, 4, 1, 4, 2, 4, 4, 2]
    coverage = {f"label{i:02d}": {"pool": p, "selected": s} for i, (p, s) in enumerate(zip(pool, selected))}
    fig, renderer = _drawn(monkeypatch, plot_coverage, coverage, tmp_path / "coverage.png")
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not [bar for bar in ax.patches if bar.get_window_extent(renderer).overlaps(legend)]


def test_coverage_plot_escapes_label_characters_its_fonts_cannot_draw(monkeypatch, tmp_path):
    """coverage.png drew each CJK or emoji character of a label as the same empty box (`日本` and `中国` looked
    alike) and matplotlib warned once per character; such characters are now written as their escapes."""
    import warnings

    from soupline.plots import plot_coverage

    coverage = {name: {"pool": 3, "selected": 1} for name in ("日本", "中国", "émoji 🙂", "café")}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph .* missing")
        fig, _ = _drawn(monkeypatch, plot_coverage, coverage, tmp_path / "coverage.png")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(set(ticks)) == 4 and ticks[3] == "café"  # drawable characters are kept as they are


def test_study_html_shows_markdown_code_spans_as_code(tmp_path):
    """study.html printed the markdown backticks of the 'soup of' column as they are ('1 of 2: `lr0.1-seed0`')."""
    from soupline.study_report import render_study

    render_study([_cell("gotd-b10-s0", 0, "a", 0.8)], ["greedy"], tmp_path)
    page = (tmp_path / "study.html").read_text()
    assert "<td>1 of 2: <code>lr0.1-seed0</code></td>" in page and "`" not in page
    assert "1 of 2: `lr0.1-seed0`" in (tmp_path / "study.md").read_text()


def test_study_without_soups_draws_no_soup_plot(tmp_path):
    """A study whose cells have no soup (one ingredient each) drew soups.png anyway: a dot per cell under the title
    'Ingredient spread (gray) vs soups', which says nothing the budget plot does not."""
    from soupline.study_report import render_study

    render_study([_cell("gotd-b10-s0", 0, "a", 0.8)], ["greedy"], tmp_path)
    assert (tmp_path / "soups.png").exists() and "](soups.png)" in (tmp_path / "study.md").read_text()
    alone = _cell("gotd-b10-s0", 0, "a", 0.8)
    alone["models"] = {k: v for k, v in alone["models"].items() if k in ("lr0.1-seed0", "probe")}
    render_study([alone], ["greedy"], tmp_path)
    md = (tmp_path / "study.md").read_text()
    assert not (tmp_path / "soups.png").exists() and "soups.png" not in md  # the earlier study's plot is gone too
    assert "No cell has a soup" in md and "| gotd-b10-s0 | lr0.1-seed0 | ingredient |" in md


def test_study_table_without_soups_takes_each_cells_own_best_ingredient():
    """With no soups a cell's headline model is its best ingredient by validation, which differs from cell to cell:
    the table took the first seed's ingredient name and averaged that same name over every seed's cell."""
    from soupline.study_report import by_budget

    first, second = _cell("gotd-b10-s0", 0, "a", 0.8), _cell("gotd-b10-s1", 1, "b", 0.9)
    for cell in (first, second):
        del cell["models"]["soup:greedy"]
    second["models"]["lr0.1-seed0"] = {**second["models"]["lr0.1-seed0"], "accuracy": 0.5, "val_accuracy": 0.0}
    second["models"]["lr0.1-seed1"] = {**second["models"]["lr0.1-seed1"], "accuracy": 0.9, "val_accuracy": 0.95}
    row, = by_budget([first, second], [])
    assert row["accuracy"] == pytest.approx((0.8 + 0.9) / 2)  # lr0.1-seed0 in the first cell, lr0.1-seed1 in the other
    assert row["accuracy"] == row["best_ingredient_accuracy"]
    assert row["model"] == "best ingredient (by val.)"
    souped, = by_budget([_cell("gotd-b10-s0", 0, "a", 0.8), _cell("gotd-b10-s1", 1, "b", 0.9)], ["greedy"])
    assert souped["model"] == "soup:greedy"


def test_budget_plot_keeps_methods_error_bars_apart_and_its_legend_off_the_points(monkeypatch, tmp_path):
    """budget.png drew every method's point and error bar at one x per budget: kmeans' bar hid random's; its legend,
    inside the accuracy chart, covered a low-budget point, and said nothing of the dotted probe lines, which a study of
    one budget did not draw at all (a dotted line of one point, no marker)."""
    from soupline import plots, study_report

    # study_report's own name for save_figure calls the one _drawn patches
    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))

    table = [{"method": m, "budget": f, "fraction": f, "model": "soup:greedy", "accuracy": a, "accuracy_std": 0.09,
              "macro_f1": a, "macro_f1_std": 0.09, "probe_accuracy": a - 0.1, "probe_macro_f1": a - 0.1}
             for m, shift in (("gotd", 0.1), ("kmeans", 0.0), ("random", 0.03)) for f, a in ((0.05, 0.45), (0.2, 0.84))
             for a in [a + shift]]
    fig, renderer = _drawn(monkeypatch, study_report.plot_budget, table, {"model": "soup:greedy", "accuracy": 0.92,
                                                             "macro_f1": 0.91}, tmp_path / "budget.png")
    legend = fig.legends[0]
    one_budget, _ = _drawn(monkeypatch, study_report.plot_budget, [r for r in table if r["fraction"] == 0.2], None,
                           tmp_path / "one.png")
    for ax in one_budget.axes:
        probes = [line for line in ax.lines if line.get_linestyle() == ":"]
        assert len(probes) == 3 and all(line.get_marker() not in (None, "", "None") for line in probes)
    assert "linear probe" in " ".join(t.get_text() for t in legend.get_texts())
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        xs = [line.get_xdata()[0] for line in ax.lines if line.get_marker() == "o"]  # each method's first point
        assert len(set(xs)) == 3
        for line in ax.lines:
            points = ax.transData.transform(line.get_xydata())
            assert not any(box.contains(x, y) for x, y in points)


def test_budget_plot_error_bars_stay_within_a_score(monkeypatch, tmp_path):
    """Two seeds scoring 1.0 and 0.67 have a sample std of 0.24: budget.png drew the bar of their mean, 0.83, up to
    1.07, an accuracy no model reaches, and its macro-F1 axis went up to 1.1. The bars and the axis stop at 1 (and
    at 0)."""
    from soupline import plots, study_report

    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    cells = []
    for budget, accs in ((0.1, (1.0, 2 / 3)), (0.3, (0.0, 0.3))):
        for seed, acc in enumerate(accs):
            cell = _cell(f"random-b{budget}-s{seed}", seed, f"r{budget}{seed}", acc)
            cells.append({**cell, "method": "random", "budget": budget, "fraction": budget})
    table = study_report.by_budget(cells, ["greedy"])
    assert table[0]["accuracy"] + table[0]["accuracy_std"] > 1  # the bar the mean ± std would draw
    fig, _ = _drawn(monkeypatch, study_report.plot_budget, table, None, tmp_path / "budget.png")
    for ax in fig.axes:
        bars, = [c for c in ax.collections if c.get_segments()]
        ends = [y for segment in bars.get_segments() for _, y in segment]
        assert min(ends) == 0 and max(ends) == 1 and ax.get_ylim()[1] == 1.0
        assert [round(y, 4) for y in ends] == [0.5976, 1.0, 0.0, 0.3621]  # the std where it fits: 0.83 - 0.24


def test_budget_plot_shows_a_probe_that_scored_as_its_method(monkeypatch, tmp_path):
    """An easy task: every cell and its probe score 1.0. The probe's x (5 points, the method's colour) lay inside the
    method's dot (6 points) and could not be seen, and the axis went up to 1.04. The x is wider than the dot now,
    and the axis stops at 1."""
    from soupline import plots, study_report

    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    table = [{"method": m, "budget": 0.3, "fraction": 0.3, "model": "soup:greedy", "accuracy": 1.0, "accuracy_std": 0.0,
              "macro_f1": 1.0, "macro_f1_std": 0.0, "probe_accuracy": 1.0, "probe_macro_f1": 1.0}
             for m in ("kmeans", "random")]
    fig, _ = _drawn(monkeypatch, study_report.plot_budget, table, None, tmp_path / "budget.png")
    for ax in fig.axes:
        probes = [line for line in ax.lines if line.get_marker() == "x"]
        dots = [line for line in ax.lines if line.get_marker() == "o"]
        assert len(probes) == len(dots) == 2 and min(p.get_markersize() for p in probes) > max(
            d.get_markersize() for d in dots)
        assert ax.get_ylim()[1] == 1.0


def test_time_plot_legend_covers_no_bar(monkeypatch, tmp_path):
    """time.png put its legend inside the chart ('best' corner): with cells of about one length, some cell's bar lay
    under it whichever corner it took."""
    from soupline import plots, study_report

    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    cells = [{"cell": f"random-b0.1-s{seed}", "seconds": {"select": 0.1, "train": 2.0, "soup": 1.0, "evaluate": 1.0}}
             for seed in range(3)]
    fig, renderer = _drawn(monkeypatch, study_report.plot_time, cells, tmp_path / "time.png")
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent(renderer)
    assert len(ax.patches) == 12 and not any(bar.get_window_extent(renderer).overlaps(box) for bar in ax.patches)


def test_the_study_says_when_a_cells_headline_soup_is_below_its_best_ingredient(tmp_path):
    """report.md warns when its headline soup is below the best ingredient on validation (without greedy in
    `soup.methods` the rule takes the uniform soup, or the first soup, uncompared); study.md judged its cells by the
    same rule and said nothing: a row read `soup:uniform` as if it were its cells' best model. Now that row, the best
    cell's line and a line under the table say it, by report.md's rule (`below_best_ingredient`)."""
    from soupline import report, study_report

    def uniform(cell, seed, acc, val):
        """A cell of `soup.methods: [uniform]` whose soup scores `val` on validation, its best ingredient `acc`."""
        out = _cell(cell, seed, cell, acc)
        out["models"]["soup:uniform"] = {**out["models"].pop("soup:greedy"), "val_accuracy": val}
        return out

    table = study_report.render_study([uniform("gotd-b10-s0", 0, 0.8, 0.7), uniform("gotd-b10-s1", 1, 0.9, 0.95)],
                                      ["uniform"], tmp_path)
    assert table[0]["below_best_cells"] == ["gotd-b10-s0"]
    assert json.loads((tmp_path / "study.json").read_text())["by_budget"][0]["below_best_cells"] == ["gotd-b10-s0"]
    md = (tmp_path / "study.md").read_text()
    flagged = "soup:uniform (below the best ingredient on validation in 1 of 2 cells)"
    assert md.split("\n\n")[1].startswith(f"Best cell by mean test accuracy: gotd at 10 (10.0 % of the pool) with "
                                           f"{flagged}: accuracy")
    assert f"| gotd | 10 | 10 | 10.0 | 2 | {flagged} |" in md
    assert ("**Below the best ingredient on validation** in gotd-b10-s0 (`soup:uniform` 0.7000 vs `lr0.1-seed0`'s "
            "0.8000): the headline rule took the uniform soup") in md
    assert md.count("a greedy soup (`soup.methods`) is never below it") == 1
    assert report.below_best_ingredient is study_report.below_best_ingredient  # one rule: report.md's warning
    study_report.render_study([_cell("gotd-b10-s0", 0, "a", 0.8)], ["greedy"], tmp_path)  # greedy: never below
    assert "below the best ingredient" not in (tmp_path / "study.md").read_text().lower()


def test_best_cell_breaks_a_tie_by_the_rule_and_names_it(tmp_path):
    """Equal mean accuracies (seeds scoring 40 and 48 of 60 texts against 44 and 44) differ in their last float bit:
    the larger selection won the 'best cell' on that bit, not the documented tie rule (fewer examples, then less
    compute), and the report said nothing of the tie."""
    from soupline.study_report import render_study

    cells = []
    for method, budget, examples, hits in (("kmeans", 20, 20, (40, 48)), ("random", 10, 10, (44, 44))):
        for seed, hit in enumerate(hits):
            cell = _cell(f"{method}-b{budget}-s{seed}", seed, f"{method}{seed}", hit / 60)
            cells.append({**cell, "method": method, "budget": budget, "examples": examples, "fraction": examples / 100})
    render_study(cells, ["greedy"], tmp_path)
    first = (tmp_path / "study.md").read_text().split("\n\n")[1]
    assert first.startswith("Best cell by mean test accuracy: random at 10 (10.0 % of the pool)")
    assert "Tied on mean accuracy with kmeans at 20 (20 examples, 1 s per cell)" in first


def test_the_study_report_names_selections_that_miss_a_label(tmp_path):
    """A cell whose selection had no example of a label scored low on macro-F1 without a word why (prepare and select
    warn in their own runs, which a study does not show)."""
    from soupline.study_report import render_study

    short = {**_cell("gotd-b10-s0", 0, "a", 0.5), "labels_missed": ["sport", "tech"]}
    render_study([short, {**_cell("gotd-b10-s1", 1, "b", 0.8), "labels_missed": []}], ["greedy"], tmp_path)
    md = (tmp_path / "study.md").read_text()
    assert "Selections with no example of some label" in md and "gotd-b10-s0 (2: sport, tech)." in md
    assert "gotd-b10-s1" not in md.split("Selections with no example")[1].split("\n")[0]
    render_study([_cell("gotd-b10-s0", 0, "a", 0.8)], ["greedy"], tmp_path)  # a cell from before: no such field
    assert "Selections with no example" not in (tmp_path / "study.md").read_text()


def test_full_pool_cell_does_not_change_with_the_grid_seeds(tmp_path):
    """The full-pool cell took `study.seeds[0]` as its selection seed, so a grid whose first seed changed
    ([0, 1] -> [1, 2]) trained the whole pool again, the study's costliest cell, for the very same examples."""
    cells = [study.cells(config.validate(config.apply_overrides({}, [f"study.seeds={seeds}"])))["full-pool"]
             for seeds in ("[0, 1]", "[1, 2]", "[3]")]
    layout = Layout(tmp_path)
    assert len({study.cell_key(p, layout) for p in cells}) == 1
    assert all(p.select.method == "random" and p.select.budget == 1.0 for p in cells)


def test_the_study_report_says_which_method_wins_each_budget_and_if_beyond_seed_noise(tmp_path):
    """The report named one best cell overall and a mean ± std per row: which method won at each budget, and whether
    its lead was more than the seeds' spread, was left to the reader (with 2 seeds, a std of 0.24 hid 0.33 and 0.67)."""
    from soupline.study_report import render_study

    cells = []
    for method, budget, accs in (("random", 10, (0.9, 0.95)), ("kmeans", 10, (0.5, 0.6)), ("random", 20, (0.5, 0.9)),
                                 ("kmeans", 20, (0.6, 0.7)), ("gotd", 30, (0.8, 0.8)), ("random", 30, (0.6, 0.7)),
                                 ("cross", 10, (1.0,)), ("kmeans", 40, (0.7,)), ("random", 50, (0.7, 0.7)),
                                 ("kmeans", 50, (0.6, 0.8))):
        for seed, acc in enumerate(accs):
            cell = _cell(f"{method}-b{budget}-s{seed}", seed, f"{method}{budget}-{acc}", acc)
            cells.append({**cell, "method": method, "budget": budget, "fraction": budget / 100})
    render_study(cells, ["greedy"], tmp_path)
    winners = json.loads((tmp_path / "study.json").read_text())["winners"]
    assert [(w["budget"], w["winner"], w["runner_up"]) for w in winners] == [
        (10, "random", "kmeans"), (20, "random", "kmeans"), (30, "gotd", "random"), (50, "kmeans", "random")]
    # no cross, no one-method budget
    assert [w["verdict"].split(":")[0] for w in winners[:3]] == [
        "beyond seed noise", "within seed noise", "not measured"]
    assert winners[3]["verdict"].startswith("tied with random on mean accuracy")
    md = (tmp_path / "study.md").read_text()
    assert "## Which method wins at each budget" in md
    assert "| 20 | random | 0.7000 | kmeans | 0.6500 | +0.0500 | within seed noise: its seeds' accuracies overlap " \
           "those of kmeans |" in md
    assert "| random | 20 |" in md and "| 0.5000, 0.9000 |" in md  # each seed's accuracy beside the mean
    render_study([c for c in cells if c["budget"] == 10 and c["method"] == "random"], ["greedy"], tmp_path)
    assert "Which method wins" not in (tmp_path / "study.md").read_text()  # one method: nothing to compare


def test_soup_plot_keeps_each_cells_markers_by_its_tick_and_the_legend_off_the_points(monkeypatch, tmp_path):
    """soups.png drew a cell's fourth soup (dare) 0.48 right of its tick, as near the next cell's, and its legend, in
    the axis' emptiest corner, over the first cells' points at a low accuracy."""
    from soupline import plots, study_report

    monkeypatch.setattr(study_report, "save_figure", lambda fig, path: plots.save_figure(fig, path))
    soups = ["uniform", "greedy", "ties", "dare"]
    cells = []
    for i in range(6):
        cell = _cell(f"random-b10-s{i}", i, str(i), 0.3 + 0.1 * (i % 2))
        cell["models"].update({f"soup:{s}": {**cell["models"]["soup:greedy"], "accuracy": 0.3 + 0.02 * j}
                               for j, s in enumerate(soups)})
        cells.append(cell)
    fig, renderer = _drawn(monkeypatch, study_report.plot_soups, cells, soups, tmp_path / "soups.png")
    ax, = fig.axes
    box = ax.get_legend().get_window_extent(renderer)
    xs = [x for points in ax.collections[1:] for x, _ in points.get_offsets()]  # [0]: the gray bars
    assert xs and all(abs(x - round(x)) < 0.4 for x in xs)
    for points in ax.collections:
        assert not any(box.contains(x, y) for x, y in ax.transData.transform(points.get_offsets()))


def test_the_study_report_flags_cells_whose_ingredients_failed_training(tmp_path, capsys):
    """A cell whose ingredients' training failed (train_info.json `failed`, through details.json) read in study.md as a
    result like any other: its row, its models' rows and the study's last line now say so."""
    failed = _cell("gotd-b10-s1", 1, "b", 0.2)
    failed["models"]["lr0.1-seed1"]["failed"] = "its validation accuracy ended at 0.2000, ..."
    results = {"gotd-b10-s0": _cell("gotd-b10-s0", 0, "a", 0.8), "gotd-b10-s1": failed}
    study.aggregate(config.validate({}), Layout(tmp_path), results)
    md = (tmp_path / "data/study/report/study.md").read_text()
    assert "| gotd | 10 | 10 | 10.0 | 2 | soup:greedy (training failed in 1 of 2 cells) |" in md
    assert ("**Training failed** in gotd-b10-s1 (lr0.1-seed1): those models learned nothing (`failed` in "
            "data/study/cells/<cell>/cell.json says why)") in md
    assert "| gotd-b10-s1 | lr0.1-seed1 | ingredient (training failed) |" in md
    assert "| gotd-b10-s0 | lr0.1-seed1 | ingredient |" in md
    rows = json.loads((tmp_path / "data/study/report/study.json").read_text())
    assert rows["by_budget"][0]["failed_cells"] == ["gotd-b10-s1"]
    assert [r["failed"] for r in rows["rows"] if "failed" in r] == [failed["models"]["lr0.1-seed1"]["failed"]]
    assert capsys.readouterr().out.endswith("study: training failed for ingredients of gotd-b10-s1 (flagged in "
                                            "data/study/report/study.md); lower train.learning_rates\n")
    study.aggregate(config.validate({}), Layout(tmp_path), {"gotd-b10-s0": results["gotd-b10-s0"]})
    assert "training failed" not in (tmp_path / "data/study/report/study.md").read_text() + capsys.readouterr().out


def test_a_study_records_its_prepare_and_embed_in_dvc_lock_and_takes_its_word(tmp_path, tiny_model, monkeypatch,
                                                                               capsys):
    """`soupline study` ran prepare and embed without recording them in dvc.lock, so `dvc repro` ran both again
    though nothing they read had changed; and over outputs DVC put there (a clone's `dvc pull`, `dvc exp apply`: no
    run records here) it ran both again, where `soupline run` takes dvc.lock's word. `study.*` overrides are no
    prepare or embed param."""
    import shutil

    from tasks.common import workspace_lock
    from tests.conftest import run_cmd, tiny_project

    root = tiny_project(tmp_path / "project", tiny_model)
    monkeypatch.chdir(root)  # as the drivers run DVC
    layout, params = Layout(root), config.load(root / "params.yaml", ["study.methods=[random]"])
    with workspace_lock(layout, "soupline study"):
        study.prepare_and_embed(params, layout)
    assert "dvc: prepare and embed recorded in dvc.lock" in capsys.readouterr().out
    assert run_cmd(["dvc", "status", "embed"], root).strip() == "Data and pipelines are up to date."
    shutil.rmtree(layout.data / "cache" / "stages")  # the run records a clone lacks
    with workspace_lock(layout, "soupline study"):
        study.prepare_and_embed(params, layout)
    out = capsys.readouterr().out
    assert "prepare: up to date (as dvc.lock records it)" in out and "embed: up to date (as dvc.lock records it)" in out
    with workspace_lock(layout, "soupline study"):
        study.prepare_and_embed(config.load(root / "params.yaml", ["prepare.validation_size=0.2"]), layout)
    assert "dvc: dvc.lock not updated for prepare and embed: the run's params differ" in capsys.readouterr().out
