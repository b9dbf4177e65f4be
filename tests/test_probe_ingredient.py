"""train.method: probe: one logistic-regression ingredient on the embed stage's embeddings, no soups."""

import json
import shutil
import warnings

import pytest
import yaml

from soupline import config
from soupline.errors import SouplineError
from tasks.layout import Layout
from tasks.pipeline import run_pipeline, run_stage
from tests.conftest import ROOT, make_frame, run_cmd


def _params(tmp_path, tiny_model, *extra):
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    return config.validate(config.apply_overrides({}, [
        f"model={tiny_model}", "device=cpu", f"prepare.source={tmp_path / 'corpus.jsonl'}", "embed.max_length=32",
        "select.budget=12", "train.method=probe", *extra]))


def test_probe_run_has_one_ingredient_equal_to_the_reference(tmp_path, tiny_model):
    params = _params(tmp_path, tiny_model)
    assert [i.name for i in params.train.ingredients()] == ["linear-probe"]
    layout = Layout(tmp_path)
    run_pipeline(params, layout)
    metrics = json.loads((layout.metrics / "metrics.json").read_text())
    assert list(metrics["ingredients"]) == ["linear-probe"] and metrics["soups"] == {}
    # the ingredient is the probe evaluate fits as the reference: same data, same C grid, same numbers
    assert metrics["ingredients"]["linear-probe"] == metrics["probe"]
    info = json.loads((layout.ingredients / "linear-probe" / "train_info.json").read_text())
    assert info["method"] == "probe" and info["C"] > 0 and 0 <= info["val_accuracy"] <= 1
    assert json.loads((layout.soups / "soups.json").read_text())["soups"] == []
    report = (layout.reports / "report.md").read_text()
    assert "`probe` is the same model as `linear-probe` (`train.method: probe`)" in report
    assert "a fine-tune should beat" not in report  # there is no fine-tune in this run
    assert "`linear-probe` takes no step: its point at step 0" in report  # its curves: one point each
    assert (layout.reports / "curves.png").exists() and (layout.reports / "confusion.png").exists()
    assert "<table>" in (layout.reports / "report.html").read_text()  # the same report for a browser

    run_stage("train", params, layout)  # built from the same inputs: kept
    assert json.loads((layout.ingredients / "linear-probe" / "train_info.json").read_text()) == info
    shutil.rmtree(layout.curves / "linear-probe")  # deleted by hand: rewritten from its history.json
    run_stage("train", params, layout)
    assert json.loads((layout.ingredients / "linear-probe" / "train_info.json").read_text()) == info
    assert (layout.curves / "linear-probe" / "plots" / "metrics" / "train" / "loss.tsv").exists()

    # dvc.yaml's three curve charts each draw the probe's point at step 0: its curve files held the header alone,
    # which `dvc plots show --json` listed as `[]` (no chart) and the HTML page drew as three empty charts
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    run_cmd(["git", "init", "-q"], tmp_path)
    charts = [next(iter(p)) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]
    shown = json.loads(run_cmd(["dvc", "plots", "show", "--json", *charts], tmp_path))
    for chart, field in zip(charts, ("loss", "accuracy", "macro_f1")):
        [plot] = shown["data"][chart]
        [point] = plot["content"]["data"]["values"]
        assert (point["ingredient"], point["step"]) == ("linear-probe", "0") and float(point[field]) >= 0
    assert float(point["macro_f1"]) == pytest.approx(info["val_macro_f1"])

    # `soupline predict` with the probe, under params.yaml's values (another base model): the texts are embedded
    # with the model and max_length the probe was fit on
    from tasks import predict

    with pytest.warns(UserWarning, match="linear-probe is a model of the last run, not of these params"):
        out = predict.run(config.load(ROOT / "params.yaml"), layout, str(layout.split("test")), "final",
                          str(tmp_path / "p.jsonl"))
    assert (out["prediction"] == out["label"]).mean() == pytest.approx(metrics["probe"]["accuracy"], abs=1e-4)

    # the probe copied into another workspace, whose labels are others: its own label names, from its train_info.json
    assert info["labels"] == json.loads((layout.prepared / "labels.json").read_text())
    other = Layout(tmp_path / "other")
    other.prepared.mkdir(parents=True)
    (other.prepared / "labels.json").write_text(json.dumps(["apple", "zebra"]))
    copy = shutil.copytree(layout.ingredients / "linear-probe", tmp_path / "elsewhere" / "linear-probe")
    moved = predict.run(params, other, str(layout.split("test")), str(copy))
    assert moved["prediction"].tolist() == out["prediction"].tolist()
    # one saved before the names were recorded: the workspace's names, and a count that differs is one line
    (copy / "train_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "labels"}))
    with pytest.raises(SouplineError, match="is a probe over 3 labels without their names .* this workspace has 2"):
        predict.run(params, other, str(layout.split("test")), str(copy))


def test_probe_needs_the_embeddings(tmp_path, tiny_model):
    params = _params(tmp_path, tiny_model)
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select"):
        run_stage(stage, params, layout)
    (layout.embedding("pool")).unlink()
    with pytest.raises(SouplineError, match="run the embed stage first") as err:
        run_stage("train", params, layout)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("extra, message", [
    (["train.sweep={epochs: [1, 2]}"], "train.method: probe fits one deterministic probe"),
])
def test_probe_sweep_is_one_line(tmp_path, tiny_model, extra, message):
    with pytest.raises(SouplineError, match=message) as err:
        _params(tmp_path, tiny_model, *extra)
    assert "\n" not in str(err.value)


def test_probe_cannot_be_swept_with_fine_tunes():
    with pytest.raises(SouplineError, match="a probe cannot be souped with fine-tuned models"):
        config.validate({"train": {"sweep": {"method": ["full", "probe"]}}})
    with pytest.raises(SouplineError, match=r"only \(for the probe alone, set train.method: probe and drop the axis\)"):
        config.validate({"train": {"sweep": {"method": ["probe"]}}})


def test_probe_warns_about_train_keys_it_does_not_read():
    with pytest.warns(UserWarning, match=r"so train.pooling=cls, train.max_length=64 does not apply"):
        config.validate({"train": {"method": "probe", "pooling": "cls", "max_length": 64}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.validate({"train": {"method": "probe"}})  # the defaults: nothing to say
        config.validate({"train": {"pooling": "cls", "max_length": 64}})
        config.validate({"train": {"method": "probe", "max_length": 32}, "embed": {"max_length": 32}})  # same length
        # DEALRec's effort pass builds the model train would start from: it reads both (the warning said they did not)
        config.validate({"train": {"method": "probe", "pooling": "cls", "max_length": 64},
                         "select": {"method": "dealrec"}})
    with pytest.warns(UserWarning, match=r"so train.pooling=cls does not apply"):  # el2n: no effort pass, no model
        config.validate({"train": {"method": "probe", "pooling": "cls"},
                         "select": {"method": "dealrec", "dealrec": {"score": "el2n"}}})


def test_probe_study_cells_report_the_probe(tmp_path, tiny_model):
    from tasks import study

    params = _params(tmp_path, tiny_model, "study.methods=[random, kmeans]", "study.budgets=[12]",
                     "study.full_pool=false")
    table = study.run(params, Layout(tmp_path))
    assert {r["method"] for r in table} == {"random", "kmeans"} and all(r["model"] == "linear-probe" for r in table)
    assert all(r["accuracy"] == r["probe_accuracy"] for r in table)
    with pytest.raises(SouplineError, match="no soups|none to soup"):
        _params(tmp_path, tiny_model, "study.cross_soups=true")


def test_probe_file_is_the_same_bytes_every_save(tmp_path):
    """safetensors orders the metadata (C, val_score) by a hash map, differently from call to call: the same probe
    must still be the same file, or a retrained probe ingredient is a new DVC output and what follows re-runs."""
    import numpy as np

    from soupline.probe import Probe

    probe = Probe(np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(3, dtype=np.float32), 100.0, 0.75)
    files = set()
    for i in range(12):
        probe.save(tmp_path / f"{i}.safetensors")
        files.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(files) == 1
    back = Probe.load(tmp_path / "0.safetensors")
    assert (back.weight == probe.weight).all() and (back.bias == probe.bias).all()
    assert (back.C, back.val_score) == (100.0, 0.75)
