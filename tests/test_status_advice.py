"""soupline status's advice (no `dvc pull` for outputs DVC does not cache; a cut list says so) and `soupline stage`'s
device check."""

from __future__ import annotations

import types

from soupline import cli
from tasks.layout import Layout


def test_status_does_not_offer_dvc_pull_for_outputs_dvc_does_not_cache(tmp_path):
    """data/reports (and metrics.json, plots, curves) are `cache: false`: git tracks them, so `dvc pull` and
    `dvc checkout` bring nothing back; `soupline status` offered them for a deleted data/reports."""
    import shutil

    from tasks.dvc_lock import pullable_stages, uncached_outs
    from tests.conftest import ROOT

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    uncached = uncached_outs(tmp_path)
    assert {"data/reports", "data/curves", "data/metrics/metrics.json"} <= uncached
    assert "data/soups" not in uncached
    assert pullable_stages({"report": [{"changed outs": {"data/reports": "deleted"}}]}, uncached) == []
    assert pullable_stages({"soup": [{"changed outs": {"data/soups": "deleted"}}]}, uncached) == ["soup"]


def test_soupline_stage_checks_a_cuda_device_before_the_stage_moves_its_outputs(tmp_path, monkeypatch):
    """`soupline stage soup device=cuda` on a machine without CUDA shelved every soup in data/soups (into
    data/cache/soups) and then said CUDA is not available: one line now, before the stage runs."""
    import torch

    ran = []
    fake = types.SimpleNamespace(stale_upstream=lambda name, params, layout: None,
                                 run_recorded=lambda *a: ran.append(a))
    from tasks import pipeline

    fake.check_device = pipeline.check_device
    from soupline import config

    params = config.validate(config.apply_overrides({}, ["device=cuda"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "_workspace", lambda args: (params, Layout(tmp_path), fake))
    monkeypatch.setattr("tasks.keys.stage_key", lambda *a: "k")
    assert cli.main(["stage", "soup"]) == 2
    assert ran == []


def test_status_says_when_it_lists_only_the_first_ingredients(tmp_path, monkeypatch):
    """`6 of 6 ingredient(s) to train: a, b, c, d, e` read as the whole list; the sixth was left out unsaid."""
    from soupline import config
    from tasks import pipeline, train

    params = config.validate(config.apply_overrides({}, ["train.seeds=[0, 1, 2]", "train.learning_rates=[1, 2]"]))
    names = [i.name for i in params.train.ingredients()]
    monkeypatch.setattr(train, "unbuilt", lambda params, layout: names)
    monkeypatch.setattr(train, "restorable", lambda params, layout: [])
    monkeypatch.setattr(train, "renamed", lambda params, layout: [])
    monkeypatch.setattr(train, "resumable", lambda params, layout: ([], []))
    why = pipeline.why_stale("train", params, Layout(tmp_path))
    assert why.startswith("6 of 6 ingredient(s) to train: ") and why.endswith(", ...")


def test_status_says_a_stage_after_one_that_runs_is_judged_on_the_outputs_now(tmp_path, monkeypatch, capsys):
    """With the model switched back, status said `4 of 4 ingredient(s) to train` on the last model's selection;
    `soupline run` then ran select and restored all 4 from data/cache/ingredients, training none."""
    status = {"prepare": None, "embed": "a later run from other params or inputs replaced what its run from these "
              "wrote", "select": "no run recorded from these params and inputs",
              "train": "4 of 4 ingredient(s) to train: a, b, c, d", "report": None}
    fake = types.SimpleNamespace(stage_status=lambda params, layout: status, pullable=lambda params, layout: [],
                                 unrecorded_in_dvc=lambda params, layout, todo: None)
    monkeypatch.setattr(cli, "_workspace", lambda args: (None, Layout(tmp_path), fake))
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[1:5] == [
        "embed    a later run from other params or inputs replaced what its run from these wrote",
        "select   no run recorded from these params and inputs (judged on the outputs on disk now: embed runs first)",
        "train    4 of 4 ingredient(s) to train: a, b, c, d (judged on the outputs on disk now: select runs first)",
        "report   up to date with the outputs on disk now (runs if train changes them)"]
