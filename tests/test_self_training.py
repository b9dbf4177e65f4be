"""Self-training (`train.self_training.multiple`): the teacher's class-balanced pseudo-labels of the unselected pool
texts, the students that train on them, what is reused and what is refused."""

import json
import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from soupline import cli, config
from soupline.errors import SouplineError
from soupline.self_training import pseudo_labels
from tasks.evaluate import weights_digest
from tasks.layout import Layout
from tasks.common import read_selection
from tasks.pipeline import STAGES, run_pipeline
from tasks.train import (TEACHER, checkpoint_path, is_whole, predictions_file, pseudo_labelled, set_aside_strays,
                         teacher_key, validation_and_labels)
from tests.conftest import ROOT, killed_after_a_checkpoint, make_frame, one_ingredient_params, tiny_project


def test_pseudo_labels_are_the_most_confident_per_predicted_label():
    """Per predicted label its count // labels most confident texts (a tie by row order), a label predicted fewer
    times gives what it has; rows ascending with their argmax labels."""
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1],
                      [0.1, 0.5, 0.4], [0.2, 0.2, 0.6], [0.6, 0.4, 0.0]])  # label 2: one prediction
    rows, labels = pseudo_labels(probs, 6)
    assert rows.tolist() == [0, 2, 3, 4, 5] and labels.tolist() == [0, 0, 1, 1, 2]
    assert pseudo_labels(probs, 9)[0].tolist() == [0, 1, 2, 3, 4, 5]  # 3 a label: row 1 before row 6's tie
    assert pseudo_labels(probs, 2)[0].size == 0


@pytest.mark.parametrize("overrides, says", [
    (["train.self_training.multiple=-1"], "train.self_training.multiple: Input should be greater than or equal to 0"),
    (["train.self_training.multiple=2", "train.method=probe"],
     "train.self_training.multiple=2 needs a fine-tuned model (its students train on pseudo-labels); train.method: "
     "probe fits none"),
    (["train.self_training.multiple=2", "train.sweep={self_training.multiple: [1, 2]}"],
     "'self_training.multiple' cannot be a sweep axis"),
])
def test_bad_self_training_params_are_one_line(capsys, overrides, says):
    assert cli.main(["run", "--root", str(ROOT), *overrides]) == 2  # refused before any stage runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_a_selection_of_the_whole_pool_has_nothing_to_pseudo_label(tmp_path, tiny_model):
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "select.budget=1.0",
                                   "train.self_training.multiple=2")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select"):
        STAGES[stage](params, layout)
    with pytest.raises(SouplineError, match=r"train.self_training.multiple=2 pseudo-labels the pool's unselected "
                                            r"texts, and the selection holds all \d+ of them; lower select.budget"):
        STAGES["train"](params, layout)
    assert not layout.ingredients.exists()  # refused before any ingredient, the teacher included, was trained


def test_a_multiple_under_one_pseudo_label_per_label_is_one_line_before_the_teacher_trains(tmp_path, tiny_model):
    """0.001 x a selection of a dozen asks for no pseudo-label: the teacher trained and labelled the pool, and the
    students trained on the selection alone, their weights those of a run without self-training, with no word."""
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.self_training.multiple=0.001")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select"):
        STAGES[stage](params, layout)
    size = len(read_selection(layout)["indices"])
    with pytest.raises(SouplineError, match=rf"^train.self_training.multiple=0.001 asks for 0 pseudo-labels \(0.001 x "
                                            rf"the selection's {size}\), fewer than one per label \(3 labels\), so "
                                            rf"the students would train on none; raise it to at least "
                                            rf"{math.ceil(3 / size * 1000) / 1000:g}, or set it to 0"):
        STAGES["train"](params, layout)
    assert not layout.ingredients.exists() and not layout.head_cache.exists()  # no teacher, no head, no prediction
    run = Layout(tmp_path / "run")  # `soupline run` (the flow and `soupline study` too): before the embeddings
    with pytest.raises(SouplineError, match=r"^train.self_training.multiple=0.001 asks for 0 pseudo-labels"):
        run_pipeline(params, run)
    assert run.split("pool").exists() and not run.embeddings.exists()
    enough = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model,
                                   f"train.self_training.multiple={math.ceil(3 / size * 1000) / 1000:g}")
    assert round(enough.train.self_training.multiple * size) == 3  # the value the line names is enough


def test_soupline_study_names_the_budget_under_one_pseudo_label_per_label(tmp_path, tiny_model):
    """`soupline study` checks every study budget before embed (`check_budgets`): the line names the one that is too
    small (it said no budget, so a study of several left the user to find it); a run's select.budget reads as before."""
    from tasks.select import check_budgets

    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.self_training.multiple=0.5")
    layout = Layout(tmp_path)
    STAGES["prepare"](params, layout)
    check_budgets({"study.budgets[0]": 0.5}, layout, params.select, multiple=0.5)  # enough: no error
    with pytest.raises(SouplineError, match=r"^study.budgets\[1\] 2: train.self_training.multiple=0.5 asks for 1 "):
        check_budgets({"study.budgets[0]": 0.5, "study.budgets[1]": 2}, layout, params.select, multiple=0.5)
    with pytest.raises(SouplineError, match=r"^train.self_training.multiple=0.5 asks for 1 "):
        check_budgets({"select.budget": 2}, layout, params.select, multiple=0.5)


def test_only_a_label_short_of_its_even_share_is_warned_of(tmp_path, tiny_model, monkeypatch):
    """8 pseudo-labels asked of 3 labels are 2 a label (`pseudo_labels`): the 2 the even split leaves are no
    shortfall to warn of (every run warned of them); a label predicted fewer times than its share is. The teacher's
    predictions as the head cache holds them: no model runs."""
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select"):
        STAGES[stage](one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), layout)
    selection, validation = read_selection(layout), validation_and_labels(layout)
    unselected = len(pd.read_parquet(layout.split("pool"))) - len(selection["indices"])
    probs = np.full((unselected, 3), 0.1, dtype=np.float32)
    probs[np.arange(unselected), np.arange(unselected) % 3] = 0.8  # each label predicted unselected / 3 times
    multiple = 8 / len(selection["indices"])
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, f"train.self_training.multiple={multiple}")
    layout.head_cache.mkdir(parents=True)
    np.save(layout.head_cache / predictions_file(params, selection, validation), probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = pseudo_labelled(params, layout, selection, validation)
    assert (record["asked"], record["kept"]) == (8, 6) and not layout.ingredients.exists()
    many = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, f"train.self_training.multiple={multiple * 3}")
    np.save(layout.head_cache / predictions_file(many, selection, validation), probs)
    with pytest.warns(UserWarning, match=f"asks for 24 pseudo-labels, 8 per label; the teacher's predictions of the "
                                         f"{unselected} unselected texts give {unselected}"):
        pseudo_labelled(many, layout, selection, validation)
    # keyed on the train code too, as a teacher's build is: predictions of a teacher built by other code are not read
    name = predictions_file(many, selection, validation)
    monkeypatch.setattr("tasks.train.code_digest", lambda *stages: "edited")
    assert predictions_file(many, selection, validation) != name


def ingredient_files(layout: Layout) -> dict[str, tuple[str, str]]:
    """Ingredient name -> its weights digest and its pseudo_labels.json (or '')."""
    return {p.name: (weights_digest(p), (p / "pseudo_labels.json").read_text()
                     if (p / "pseudo_labels.json").exists() else "")
            for p in sorted(layout.ingredients.iterdir()) if p.is_dir()}


def test_self_training_end_to_end_through_soupline_run(tmp_path, tiny_model, capsys):
    """`soupline run train.self_training.multiple=2` after a run without it: the teacher is that run's first
    ingredient (not trained again), every ingredient is a student trained on selection + pseudo-labels for the
    selection's steps (pseudo_labels.json in its folder), the soups and the report follow; a changed multiple trains
    the students again from the teacher's cached predictions (more than the unselected texts hold: what there is,
    said once); off again restores the first run's ingredients, the teacher among them; the same params from empty
    caches give the same pseudo-labels and weights."""
    root = tiny_project(tmp_path / "project", tiny_model)
    layout, run = Layout(root), ["run", "--root", str(root), "train.seeds=[0]", "train.epochs=1"]
    assert cli.main(run) == 0
    plain = ingredient_files(layout)
    selected = json.loads(layout.selection.read_text())["indices"]
    unselected = len(pd.read_parquet(layout.split("pool"))) - len(selected)
    capsys.readouterr()

    assert cli.main([*run, "train.self_training.multiple=2"]) == 0
    out = capsys.readouterr().out
    assert "the teacher, " not in out  # the first run's ingredient lr0.005-seed0 is the teacher
    assert f"train: self-training: the teacher labelled {unselected} unselected pool texts" in out
    students = ingredient_files(layout)
    assert students.keys() == plain.keys() and all(students[n][0] != plain[n][0] for n in plain)
    record = json.loads(students["lr0.005-seed0"][1])
    assert all(files[1] == students["lr0.005-seed0"][1] for files in students.values())
    assert record["teacher"]["ingredient"] == "lr0.005-seed0" and record["asked"] == 2 * len(selected)
    assert len(record["rows"]) == len(record["labels"]) == len(record["confidences"]) == record["kept"] > 0
    assert not set(record["rows"]) & set(selected) and 0 <= record["agreement"] <= 1
    info = json.loads((layout.ingredients / "lr0.005-seed0" / "train_info.json").read_text())
    assert info["examples"] == len(selected) + record["kept"]
    assert info["steps"] == math.ceil(len(selected) / 8)  # one epoch of the selection alone, batch 8
    assert info["self_training"]["agreement"] == record["agreement"]
    assert (layout.soups / "uniform" / "soup.json").exists()
    report = (layout.reports / "report.md").read_text()
    assert "Self-training (`train.self_training.multiple: 2`): the teacher `lr0.005-seed0`" in report

    def train(*overrides: str, **kwargs) -> None:  # the train stage alone (what `soupline run` runs of it)
        STAGES["train"](config.load(root / "params.yaml", [*run[3:], *overrides]), layout, **kwargs)

    with pytest.warns(UserWarning, match=f"asks for {5 * len(selected)} pseudo-labels") as seen:
        train("train.self_training.multiple=5")
    assert len([w for w in seen if "pseudo-labels" in str(w.message)]) == 1
    assert "the teacher" not in capsys.readouterr().out  # neither trained nor predicting: its predictions are cached
    again = ingredient_files(layout)
    assert all(again[n][0] != students[n][0] for n in plain)
    assert json.loads(again["lr0.005-seed0"][1])["kept"] <= unselected

    train()  # off: the first run's ingredients, the teacher among them, come back from the cache
    assert "restored from data/cache/ingredients" in capsys.readouterr().out and ingredient_files(layout) == plain

    shutil.rmtree(layout.cache)
    shutil.rmtree(layout.ingredients)
    train("train.self_training.multiple=2", ingredient="lr0.005-seed0")
    assert "train: self-training: the teacher, lr0.005-seed0" in capsys.readouterr().out
    assert ingredient_files(layout) == {"lr0.005-seed0": students["lr0.005-seed0"]}


def test_a_studys_full_pool_cell_trains_without_self_training():
    """The full-pool cell selects every pool text: nothing is left for a teacher to label, so it trains without
    self-training (the selection's line would stop the study there), and the grid's cells with it."""
    from soupline.study_report import FULL
    from tasks.study import cells

    params = config.validate(config.apply_overrides({}, ["train.self_training.multiple=2", "study.full_pool=true"]))
    grid = cells(params)
    assert grid[FULL].train.self_training.multiple == 0
    assert {c.train.self_training.multiple for name, c in grid.items() if name != FULL} == {2}


def test_a_teacher_stopped_mid_training_resumes_and_says_it_is_the_teacher(tmp_path, tiny_model, monkeypatch,
                                                                          capsys):
    """A run killed while the teacher trains leaves its checkpoint: `soupline status` says the teacher resumes,
    `soupline cache --gc` keeps the checkpoint and the LP-FT head it trains from (it deleted both: the teacher
    started over), and the next run resumes it, its lines naming it `teacher (<ingredient>)` (they read `.teacher`).
    A teacher trained by a run stopped before it went to the ingredient cache is shelved, not trained again."""
    from tasks import caches, keys, pipeline

    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.self_training.multiple=0.5",
                                   "train.checkpoint_every=1")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select"):
        with keys.recorded(stage, params, tmp_path):  # recorded, as a driver runs them: gc judges train's caches
            STAGES[stage](params, layout)
    with killed_after_a_checkpoint(monkeypatch):
        STAGES["train"](params, layout)
    selection, validation = read_selection(layout), validation_and_labels(layout)
    teacher = checkpoint_path(layout, TEACHER, teacher_key(params, selection, validation))
    heads = sorted(p.name for p in layout.head_cache.iterdir())
    assert teacher.is_file() and len(heads) == 1  # the teacher's LP-FT head
    assert "(self-training's teacher stopped mid-training: resumed from its checkpoint in data/cache/checkpoints)" \
        in pipeline.why_stale("train", params, layout)
    deleted, whole = caches.unused(params, layout)
    assert not deleted and "data/cache/heads" not in whole and "data/cache/checkpoints" not in whole  # judged, kept
    capsys.readouterr()
    STAGES["train"](params, layout)
    out = capsys.readouterr().out
    lines = out.splitlines()  # in order: what trains, that it resumed, where it ended ("resumed" named no model)
    said = [[i for i, line in enumerate(lines) if line.startswith(start)] for start in (
        "train: self-training: the teacher, lr0.0001-seed0 on the selection alone", "train: teacher (lr0.0001-seed0): "
        "resumed from step 1 (", "train: teacher (lr0.0001-seed0): 2 steps on ")]
    assert all(len(at) == 1 for at in said) and said == sorted(said), out
    assert "train: .teacher" not in out and not teacher.exists()

    cached = layout.ingredient_cache / teacher_key(params, selection, validation)
    shutil.move(cached, layout.ingredients / TEACHER)  # where a run stopped between its training and its shelving
    (layout.head_cache / predictions_file(params, selection, validation)).unlink()
    shutil.rmtree(layout.ingredients / "lr0.0001-seed0")
    STAGES["train"](params, layout)
    out = capsys.readouterr().out
    assert "the teacher, " not in out and "the teacher labelled" in out and cached.is_dir()
    assert not (layout.ingredients / TEACHER).exists()


def test_a_teacher_a_stopped_run_left_of_other_params_is_set_aside_and_gc_deletes_it(tmp_path, tiny_model, capsys):
    """A teacher folder (`.teacher`) left by a run stopped before it moved the teacher to the ingredient cache stayed
    in data/models/ingredients for good once the params changed (hidden folders were never set aside), and gc and
    `soupline status` never saw it. Now `soupline cache --gc` deletes one that no run of the params reads, status
    names it, and the next train run sets it aside, whole, to the ingredient cache under its key: these params' own
    teacher stays (the run uses it), and without self-training it is the sweep's first ingredient, restored, not
    trained."""
    from tasks import caches, keys, pipeline

    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    corpus, st = tmp_path / "corpus.jsonl", "train.self_training.multiple=0.5"
    params = one_ingredient_params(corpus, tiny_model, st)
    other = one_ingredient_params(corpus, tiny_model, st, "train.learning_rates=[3e-4]")  # another teacher
    plain = one_ingredient_params(corpus, tiny_model)  # no teacher: its first ingredient is the teacher's model
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select"):
        with keys.recorded(stage, params, tmp_path):  # recorded, as a driver runs them: gc judges train's caches
            STAGES[stage](params, layout)
    STAGES["train"](params, layout)
    key = teacher_key(params, read_selection(layout), validation_and_labels(layout))
    left, cached = layout.ingredients / TEACHER, layout.ingredient_cache / key
    shutil.move(cached, left)  # where a run stopped between the teacher's training and its shelving left it

    set_aside_strays(params, layout)
    assert left.is_dir() and not cached.exists()  # its own teacher: the run shelves it, trained (or trains it)
    set_aside_strays(other, layout)
    assert not left.exists() and is_whole(cached, key)
    shutil.move(cached, left)
    assert caches.unused(other, layout)[0][caches.TEACHER_LEFT] == [left]
    assert all(caches.TEACHER_LEFT not in caches.unused(p, layout)[0] for p in (params, plain))  # read by these
    # `soupline status` names it, with its size, where it never did
    size = caches.human_size(caches.entry_size(left))
    assert size.endswith(("kB", "MB")) and pipeline.stage_status(other, layout)["train"].endswith(
        f"; would set aside data/models/ingredients/.teacher ({size}), self-training's teacher that a stopped run of "
        "other params left, to data/cache/ingredients (`soupline cache --gc` deletes it)")
    assert all(".teacher" not in (pipeline.stage_status(p, layout)["train"] or "") for p in (params, plain))
    capsys.readouterr()
    STAGES["train"](plain, layout)
    assert "train: lr0.0001-seed0: restored from data/cache/ingredients" in capsys.readouterr().out
    assert not left.exists()


def test_report_says_the_students_lp_ft_head_is_fitted_on_the_pseudo_labels_too():
    """report.md's recipe line said LP-FT's head was fit "on the selection" while a student's is fit on the
    selection and its pseudo-labels (`finetune` fits it on the texts it trains on)."""
    from soupline.report import training_recipe

    def head(*overrides: str) -> str:
        train = config.validate(config.apply_overrides({}, list(overrides))).train
        return training_recipe([{"method": "full"}], train.recipe()).split("Head: ")[1].split(";")[0]

    assert head() == "LP-FT (`train.head_init: probe`: the head starts as the probe fit on the selection)"
    assert head("train.self_training.multiple=2") == (
        "LP-FT (`train.head_init: probe`: the head starts as the probe fit on the selection and its pseudo-labels "
        "(self-training, `train.self_training.multiple: 2`))")


def test_the_studys_recipe_line_says_the_full_pool_cell_has_no_pseudo_labels(tmp_path):
    """study.md's recipe line said nothing of self-training; now the head's line names the pseudo-labels, and the
    full-pool cell, which trains without them (`test_a_studys_full_pool_cell_trains_without_self_training`), is
    said apart."""
    from soupline.study_report import FULL
    from tasks import study
    from tests.test_study import _cell

    params = config.validate(config.apply_overrides({}, ["train.self_training.multiple=2"]))
    full = {**_cell(FULL, 0, "all", 0.9), "method": "random", "budget": 1.0, "fraction": 1.0}
    study.aggregate(params, Layout(tmp_path), {"gotd-b10-s0": _cell("gotd-b10-s0", 0, "a", 0.8), FULL: full})
    text = (tmp_path / "data/study/report/study.md").read_text()
    assert ("the probe fit on the selection and its pseudo-labels (self-training, `train.self_training.multiple: 2`)"
            in text)
    assert ("60 steps. The full-pool cell trains without self-training: it leaves no unselected text to "
            "pseudo-label.") in text
