"""evaluate, report and predict: stale soups in the report, models of other labels in evaluate, damaged
metrics files, and predict's message for a soup a workspace does not make."""

import json

import pandas as pd
import pytest

from soupline.errors import SouplineError
from tasks import predict
from tasks.layout import Layout
from tasks.pipeline import run_pipeline, run_recorded
from tests.conftest import make_frame, one_ingredient_params


def _workspace(tmp_path, tiny_model, *extra):
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)

    def params(*more):
        return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *extra, *more)

    run_pipeline(params(), layout)
    return layout, params


def test_the_report_warns_of_soups_that_were_stale_when_evaluated(tmp_path, tiny_model):
    """`soupline stage train` after an edit, `soupline stage evaluate`, `soupline stage report`: the soups are of the
    ingredients before, yet report.md showed them (and one as the model to use) without a warning."""
    layout, params = _workspace(tmp_path, tiny_model)
    run_recorded("train", params("train.epochs=3"), layout)
    run_recorded("evaluate", params("train.epochs=3"), layout)
    with pytest.warns(UserWarning, match="were not made from the ingredients below"):
        run_recorded("report", params("train.epochs=3"), layout)
    assert "> **Warning:** 4 soup(s) (soup:uniform, soup:greedy" in (layout.reports / "report.md").read_text()
    run_pipeline(params("train.epochs=3"), layout)  # soups made again, scored again: no warning
    assert "Warning" not in (layout.reports / "report.md").read_text()


def test_an_ingredient_whose_training_failed_is_warned_of_and_flagged_in_the_report(tmp_path, tiny_model):
    """A finite but too-high learning rate wrecks LP-FT's probe head (validation 1.0) into a model no better than
    the majority label: train warns, naming the soups that average it in, and report.md flags its row and says
    which soups hold it, where before the run finished silently and the report read its scores as a result."""
    with pytest.warns(UserWarning, match=r"train lr10\.0-seed0: training failed \(learning rate 10, head 0\.002\): "
                                         r"its validation accuracy ended at .*; lower train\.learning_rates \(or "
                                         r"train\.head_learning_rate\); the uniform, ties and dare soups average "
                                         r"it in$"):
        layout, _ = _workspace(tmp_path, tiny_model, "train.learning_rates=[0.001,10.0]")
    report = (layout.reports / "report.md").read_text()
    assert "| lr10.0-seed0 | ingredient (training failed) |" in report and "| lr0.001-seed0 | ingredient |" in report
    assert "**Training failed** for `lr10.0-seed0` (its validation accuracy ended at" in report
    assert "`soup:uniform`, `soup:ties`, `soup:dare` hold it. Lower `train.learning_rates`" in report


def test_the_report_says_how_the_ingredients_were_fine_tuned(tmp_path, tiny_model):
    """A LoRA run's report.md read word for word as a full fine-tune's (train.method was nowhere in it): two reports
    that differ in the recipe, or a report read on its own, could not tell them apart. A sweep over the recipe names
    each with its ingredients."""
    layout, params = _workspace(tmp_path, tiny_model, "train.method=lora", "train.lora.r=4",
                                "train.learning_rates=[1e-4]")
    report = (layout.reports / "report.md").read_text()
    assert ("Ingredients fine-tuned with `train.method: lora`: peft adapters merged into the body, `train.lora`: r=4, "
            "alpha=16.0, dropout=0.05, target_modules=['query', 'value'], learning_rate_scale=10.0.") in report
    assert ("Head: LP-FT (`train.head_init: probe`: the head starts as the probe fit on the selection); learning rates "
            "0.0001 (adapters x10: 0.001; head 0.002); 1 epoch, at least 2 steps.") in report  # study.md's line too
    run_pipeline(params("train.method=full", "train.head_learning_rate=null"), layout)
    assert ("Ingredients fine-tuned with `train.method: full`. Head: LP-FT (`train.head_init: probe`: the head starts "
            "as the probe fit on the selection); learning rates 0.0001 (head the body's); 1 epoch,") in (
        layout.reports / "report.md").read_text()
    assert json.loads((layout.metrics / "details.json").read_text())["train"] == {
        "method": "full", "head_init": "probe", "learning_rates": [1e-4], "head_learning_rate": None, "epochs": 1,
        "min_steps": 2, "sweep": {}, "self_training": {"multiple": 0.0}}
    run_pipeline(params("train.sweep={lora.r: [2, 4]}"), layout)  # a sweep's recipes, each with its ingredients
    report = (layout.reports / "report.md").read_text()
    assert ("`train.lora`: r=2, alpha=16.0, dropout=0.05, target_modules=['query', 'value'], learning_rate_scale=10.0 "
            "(`lr0.0001-seed0-lora.r2`); `train.method: lora`: peft adapters merged into the body, `train.lora`: r=4, "
            "alpha=16.0, dropout=0.05, target_modules=['query', 'value'], learning_rate_scale=10.0 "
            "(`lr0.0001-seed0-lora.r4`). Head: LP-FT") in report
    assert "at least 2 steps; swept: lora.r [2, 4]." in report


def test_evaluate_refuses_models_trained_on_other_labels(tmp_path, tiny_model):
    """Your own splits, a test file with a new label, `soupline stage prepare`, `soupline stage embed`, `soupline stage
    evaluate`: labels.json's ids moved (`arts` sorts first), and evaluate wrote metrics.json scoring the old models'
    ids against them (accuracy 0.16 where predict gave 0.38)."""
    frame = make_frame(20)
    files = {name: tmp_path / f"{name}.jsonl" for name in ("pool", "validation", "test")}
    for (name, path), rows in zip(files.items(), (frame.iloc[:36], frame.iloc[36:48], frame.iloc[48:])):
        rows.to_json(path, orient="records", lines=True)
    splits = "prepare.splits={" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    layout = Layout(tmp_path)

    def params():
        return one_ingredient_params(tmp_path / "pool.jsonl", tiny_model, splits)

    run_pipeline(params(), layout)
    arts = pd.DataFrame({"text": [f"the gallery opened a painting exhibition {i}" for i in range(4)], "label": "arts"})
    pd.concat([frame.iloc[48:], arts]).to_json(files["test"], orient="records", lines=True)
    run_recorded("prepare", params(), layout)
    run_recorded("embed", params(), layout)
    before = (layout.metrics / "metrics.json").read_text()
    with pytest.raises(SouplineError, match=r"predicts the labels \['business', 'sport', 'tech'\], and the test "):
        run_recorded("evaluate", params(), layout)
    assert (layout.metrics / "metrics.json").read_text() == before


def test_damaged_metrics_files_are_one_line(tmp_path, tiny_model):
    """metrics.json is in git (a merge leaves conflict markers in it); details.json cut short: one line each, where
    predict and report gave JSONDecodeError / KeyError tracebacks."""
    layout, params = _workspace(tmp_path, tiny_model)
    test = str(layout.split("test"))
    metrics = layout.metrics / "metrics.json"
    good = metrics.read_text()
    for damaged in ("<<<<<<< HEAD\n" + good, '{"final": {"accuracy": 1}}', "[]"):
        metrics.write_text(damaged)
        with pytest.raises(SouplineError, match="metrics.json is damaged"):
            predict.run(params(), layout, test)
    metrics.write_text(good)
    details = layout.metrics / "details.json"
    details.write_text(details.read_text()[:300])
    with pytest.raises(SouplineError, match="details.json is damaged; run the evaluate stage again"):
        run_recorded("report", params(), layout)


def test_predict_names_why_a_listed_soup_is_missing(tmp_path, tiny_model):
    """One ingredient: no soups. `--model soup:greedy` said `add greedy to soup.methods`, which lists it already."""
    layout, params = _workspace(tmp_path, tiny_model, "train.learning_rates=[1e-4]")
    with pytest.raises(SouplineError, match=r"this workspace makes no soups \(one ingredient, lr0.0001-seed0"):
        predict.run(params(), layout, str(layout.split("test")), "soup:greedy")
