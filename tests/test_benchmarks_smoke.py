"""Benchmark scripts run against today's library: the smallest configuration of each that fits in seconds."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from soupline.errors import SouplineError
from tests.test_benchmark_targets import load_benchmark


def _soup_memory_ingredients(sm, tiny_model: str, folder) -> list:
    """soup_memory's ingredient folders, of the tiny model: its shared init plus seeded noise."""
    import torch

    from soupline.classifier import init_model

    dirs = []
    for i in range(3):
        model = init_model(tiny_model, sm.LABELS, 0)
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        model.save_pretrained(folder / f"ingredient-{i}")
        dirs.append(folder / f"ingredient-{i}")
    return dirs


def test_soup_memory_greedy_modes_agree(tiny_model, tmp_path):
    """The greedy soup with a constant score keeps every candidate in both modes (greedy is strict by
    default, which would keep only the first ingredient in the streaming mode), so the soups match."""
    import torch
    from safetensors.torch import load_file

    sm = load_benchmark("soup_memory")
    dirs = _soup_memory_ingredients(sm, tiny_model, tmp_path)
    outs = {mode: str(tmp_path / f"{mode}.safetensors") for mode in ("in-memory", "stream")}
    for mode, out in outs.items():
        res = sm.worker("greedy", mode, dirs, out)
        assert res["seconds"] >= 0 and res["peak_rss_mb"] > 0
    a, b = load_file(outs["in-memory"]), load_file(outs["stream"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(dirs[0] / "model.safetensors")
    assert not all(torch.equal(first[k], b[k]) for k in first if k in b)  # a mean, not the first ingredient


@pytest.mark.slow
def test_soup_memory_worker_peak_is_its_own_not_the_parents(tiny_model, tmp_path):
    """A worker's peak RSS is its own high-water mark: `ru_maxrss` of a process started by a larger one reports the
    parent's RSS at the fork (Linux), so a worker's peak read as at least whatever the driver held then."""
    sm = load_benchmark("soup_memory")
    _soup_memory_ingredients(sm, tiny_model, tmp_path)
    held = bytearray(2 << 30)  # the driver holds 2 GiB, resident, while the worker runs
    held[::4096] = b"\1" * len(held[::4096])
    res = sm.run_worker("uniform", "stream", tmp_path, 3)
    assert res["rss_after_imports_mb"] <= res["peak_rss_mb"] < 1500, res


def sandbox(module, tmp_path, tiny_model: str):
    """Point a docs-writing benchmark at `tmp_path` (its params.yaml: the tiny model, seconds per ingredient), so
    its workspace (data/bench) and report (docs/) land there, never in the repository."""
    import yaml

    from tests.test_benchmark_targets import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(model=tiny_model, device="cpu")
    params["embed"]["max_length"] = 32
    params["train"].update(epochs=1, min_steps=2, max_length=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "docs").mkdir()
    module.ROOT = tmp_path
    return module


def test_soup_quality_report_only_without_cells_is_one_line(tmp_path, tiny_model):
    import pytest

    sq = sandbox(load_benchmark("soup_quality"), tmp_path, tiny_model)
    with pytest.raises(SystemExit, match="no finished cells for selection seeds \\[7\\]"):
        sq.main(["--report-only", "--seeds", "7"])
    assert not any((tmp_path / "docs").iterdir())


@pytest.mark.slow
def test_soup_quality_smallest_run(tmp_path, tiny_model, capsys):
    """One selection seed, one training seed: 2 ingredients and every soup, on the tiny model."""
    import json

    sq = sandbox(load_benchmark("soup_quality"), tmp_path, tiny_model)
    sq.main(["--seeds", "0", "--train-seeds", "0"])
    report = json.loads((tmp_path / "docs" / "soup_quality.json").read_text())
    assert [r["seed"] for r in report["rows"]] == [0] and report["rows"][0]["ingredients"] == 2
    assert set(sq.SOUPS) <= set(report["mean"])
    assert 1 <= report["rows"][0]["greedy_kept"] <= 2
    assert "| mean |" in capsys.readouterr().out
    md = tmp_path / "docs" / "soup_quality.md"
    md.write_text(md.read_text() + "\n## Reading\n\nwritten by hand\n")
    sq.main(["--seeds", "0", "--train-seeds", "0", "--report-only"])  # the finished cell, run nothing
    assert md.read_text().endswith("## Reading\n\nwritten by hand\n") and "| greedy kept |" in md.read_text()


def test_recipe_quality_smallest_run(tmp_path, tiny_model, capsys):
    """One budget, one seed, the default recipe and the full-pool reference, on a 200-document subsample."""
    import json

    rq = sandbox(load_benchmark("recipe_quality"), tmp_path, tiny_model)
    rq.main(["--corpus", "bbcnews", "--max-examples", "200", "--budgets", "0.1", "--seeds", "0",
             "--recipes", "default"])
    out = json.loads((tmp_path / "docs" / "recipe_quality_bbcnews_200.json").read_text())
    assert [(r["budget"], r["recipe"]) for r in out["rows"]] == [(0.1, "default")] and out["full_pool"]
    assert "at 10 %, accuracy >= 0.95 x the full-pool fine-tune" in capsys.readouterr().out
    rq.main(["--corpus", "bbcnews", "--max-examples", "200", "--budgets", "0.1", "--seeds", "0", "--recipes",
             "default", "--report-only", "--no-full", "--out", str(tmp_path / "screen")])  # a report apart
    assert {p.name for p in tmp_path.glob("screen.*")} == {"screen.md", "screen.json", "screen.png"}


def test_recipe_quality_model_gets_its_own_workspace(tmp_path, tiny_model):
    """`--model` reaches the pipeline (a folder that is no model fails at embed, naming it) and keeps its cells and
    report apart from params.yaml's model's."""
    import pytest

    from soupline.errors import SouplineError

    rq = sandbox(load_benchmark("recipe_quality"), tmp_path, tiny_model)
    assert rq.model_tag(None) == "" and rq.model_tag("/models/All-MPNet base/") == "_all-mpnet-base"
    assert rq.model_tag("sentence-transformers/all-mpnet-base-v2") == "_all-mpnet-base-v2"
    missing = tmp_path / "no-such-model"
    with pytest.raises(SouplineError, match="no-such-model"):
        rq.main(["--corpus", "bbcnews", "--max-examples", "200", "--budgets", "0.1", "--seeds", "0", "--recipes",
                 "default", "--no-full", "--model", str(missing)])
    assert [p.name for p in (tmp_path / "data" / "bench").iterdir()] == ["recipe-bbcnews-200-no-such-model"]


def screen_sandbox(name: str, tmp_path, tiny_model, monkeypatch):
    """A `run_screen` benchmark (setfit_stage.py's harness) sandboxed on the tiny model, with its workspace and
    params.yaml the sandbox's; returns the module and the workspace's study cells folder."""
    module = sandbox(load_benchmark(name), tmp_path, tiny_model)
    import recipe_quality  # on the path once a benchmark is loaded
    import setfit_stage

    for harness in (recipe_quality, setfit_stage):
        monkeypatch.setattr(harness, "ROOT", tmp_path)
    return module, tmp_path / "data" / "bench" / "recipe-bbcnews" / "data" / "study" / "cells"


def test_tapt_stage_smallest_run(tmp_path, tiny_model, monkeypatch, capsys):
    """The TAPT screen on the tiny model: the default and the TAPT arm on one selection, the TAPT encoder saved as
    the encoder body (no MLM head) with its tokenizer, trained once and reused by another selection seed."""
    import json

    from safetensors.torch import load_file

    tapt, cells = screen_sandbox("tapt_stage", tmp_path, tiny_model, monkeypatch)
    argv = ["--corpus", "bbcnews", "--budgets", "0.02", "--mlm-steps", "2", "--head-steps", "1", "--mlm-batch", "4"]
    tapt.main(argv)
    results = json.loads((cells / "tapt-results.json").read_text())
    assert sorted(r["arm"] for r in results.values()) == ["default", "tapt-head1x0.001-mlm2x0.0001-b4-p0.15"]
    assert all(r["mlm_loss_after"] > 0 for r in results.values() if r["arm"] != "default")
    [encoder] = cells.glob("tapt-encoder-*")
    assert json.loads((encoder / "config.json").read_text())["architectures"] == ["BertModel"]
    assert (encoder / "tokenizer.json").exists() and json.loads((encoder / "tapt.json").read_text())["mlm_steps"] == 2
    before, after = load_file(f"{tiny_model}/model.safetensors"), load_file(encoder / "model.safetensors")
    assert before.keys() == after.keys() and not (before["embeddings.word_embeddings.weight"]
                                                  == after["embeddings.word_embeddings.weight"]).all()
    tapt.main([*argv, "--seed", "1"])
    assert "TAPT encoder: reusing" in capsys.readouterr().out
    tapt.main([*argv, "--mlm-lr", "2e-5"])  # another setting: another arm and encoder, not the finished one
    assert len(json.loads((cells / "tapt-results.json").read_text())) == 5 and len(list(cells.glob("tapt-enc*"))) == 2


def test_window_stage_smallest_run(tmp_path, tiny_model, monkeypatch, capsys):
    """The window screen on the tiny model: the windows arm trains on more examples than the selection's posts at
    the default's steps; both arms are scored from first windows and from window means; `--score` scores a finished
    ingredient and trains nothing."""
    import json

    ws, cells = screen_sandbox("window_stage", tmp_path, tiny_model, monkeypatch)
    ws.main(["--corpus", "bbcnews", "--budgets", "0.02", "--windows", "3"])
    default, window = json.loads((cells / "window-w3-o0-results.json").read_text()).values()
    assert (default["arm"], window["arm"]) == ("default", "windows-w3-o0")
    assert default["train_examples"] == default["examples"] < window["train_examples"] <= 3 * window["examples"]
    assert default["steps"] == window["steps"] and all(0 <= r[k] <= 1 for r in (default, window) for k in ws.SCORES)
    capsys.readouterr()
    ws.main(["--corpus", "bbcnews", "--windows", "3", "--score", str(cells / "window-w3-o0-b0.02-s0" / "default")])
    out = capsys.readouterr().out
    assert f"'accuracy': {default['accuracy']}" in out and f"'window_accuracy': {default['window_accuracy']}" in out
    assert len(json.loads((cells / "window-w3-o0-results.json").read_text())) == 2


def test_self_training_stage_smallest_run(tmp_path, tiny_model, monkeypatch):
    """The self-training screen on the tiny model: the student trains on the selection plus the teacher's
    class-balanced pseudo-labels of unselected pool texts, and their accuracy is recorded."""
    import json

    st, cells = screen_sandbox("self_training_stage", tmp_path, tiny_model, monkeypatch)
    st.main(["--corpus", "bbcnews", "--budgets", "0.02", "--multiples", "2"])
    default, student = json.loads((cells / "selftrain-results.json").read_text()).values()
    assert (default["arm"], student["arm"]) == ("default", "st2x") and default["pseudo"] == 0
    assert 0 < student["pseudo"] <= 2 * student["examples"] and 0 <= student["pseudo_accuracy"] <= 1
    info = json.loads((cells / "selftrain-b0.02-s0" / "st2x" / "train_info.json").read_text())
    assert info["examples"] == student["examples"] + student["pseudo"]
    # the step controls: each arm held to another step count, named by it, the student in place of st2x (trained
    # before: not again); the label controls at the held student's count and steps, with true labels
    st.main(["--corpus", "bbcnews", "--budgets", "0.02", "--multiples", "2", "--default-steps", "3",
             "--student-steps", "2", "--controls"])
    results = json.loads((cells / "selftrain-results.json").read_text())
    assert {r["arm"]: r["steps"] for r in results.values()} == {
        "default": default["steps"], "st2x": student["steps"], "default-steps3": 3, "st2x-steps2": 2,
        "true2x-steps2": 2, "random2x-steps2": 2}
    held, true, rand = (results[f"b0.02-s0-lr0.0002-{arm}2x-steps2"] for arm in ("st", "true", "random"))
    assert (held["pseudo"], held["pseudo_accuracy"]) == (student["pseudo"], student["pseudo_accuracy"])
    assert true["pseudo"] == held["pseudo"] and 0 < rand["pseudo"] <= 2 * rand["examples"]
    assert true["pseudo_accuracy"] is None is rand["pseudo_accuracy"]
    cell = cells / "selftrain-b0.02-s0"
    infos = {arm: json.loads((cell / f"{arm}2x-steps2" / "train_info.json").read_text()) for arm in ("true", "random")}
    assert infos["true"]["examples"] == held["examples"] + held["pseudo"]
    assert infos["random"]["examples"] == rand["examples"] + rand["pseudo"]


def test_screen_resumes_a_stopped_arm_only_under_its_own_setting(tmp_path, tiny_model, monkeypatch, capsys):
    """An arm stopped mid-training leaves its checkpoint in the cell, whose folder names do not hold the learning
    rate: `--lr 1e-4` resumed the lr 2e-4 default's checkpoint (fingerprint '') and recorded it as its own. Now it
    refuses it in one line and keeps the file; the setting that wrote it resumes it."""
    from itertools import count
    from types import SimpleNamespace

    import yaml

    from soupline import train as train_module

    st, cells = screen_sandbox("self_training_stage", tmp_path, tiny_model, monkeypatch)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"].update(checkpoint_every=1, min_steps=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    calls = count()

    def stop_at_the_second_step():
        if next(calls) == 1:
            raise KeyboardInterrupt("stop requested")

    argv = ["--corpus", "bbcnews", "--budgets", "0.02", "--multiples", "2"]
    monkeypatch.setattr(train_module, "interrupt", SimpleNamespace(check=stop_at_the_second_step))
    with pytest.raises(KeyboardInterrupt):
        st.main(argv)
    checkpoint = cells / "selftrain-b0.02-s0" / "default.ckpt"
    assert checkpoint.exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        st.main([*argv, "--lr", "1e-4"])
    assert str(stopped.value.code).startswith("b0.02-s0-lr0.0001-default: checkpoint ") and checkpoint.exists()
    assert "was written by a different train config" in str(stopped.value.code)
    assert not (cells / "selftrain-results.json").exists()
    st.main(argv)
    assert f": resumed from step 1 ({checkpoint})" in capsys.readouterr().out and not checkpoint.exists()


@pytest.mark.slow  # 45-85 s: five setfit screen runs on the tiny model
def test_screen_reuses_a_finished_arm_only_under_its_own_settings(tmp_path, tiny_model, monkeypatch, capsys):
    """A finished arm's row was reused by its name alone (budget, seed, rate, arm), so a run under another setting the
    name lacks (setfit's --contrastive-lr, a train setting, another start model) reported the old row as its own. Now
    each row records what produced it; a row of other settings stops the run in one line naming the arm, the results
    file and the setting, before any training; a moved model of the same content and a row from before rows recorded
    settings (one warning) are reused."""
    import json
    import shutil

    import yaml

    setfit, cells = screen_sandbox("setfit_stage", tmp_path, tiny_model, monkeypatch)
    argv = ["--corpus", "bbcnews", "--budgets", "0.02", "--contrastive-steps", "1", "--contrastive-batch", "2"]
    setfit.main(argv)
    path = cells / "setfit-results.json"
    rows = json.loads(path.read_text())
    capsys.readouterr()

    def finds(*extra: str) -> str:
        """The run's one-line stop under `extra`; the results file is as it was."""
        with pytest.raises(SystemExit) as stopped:
            setfit.main([*argv, *extra])
        assert json.loads(path.read_text()) == rows
        return str(stopped.value.code)

    assert finds("--contrastive-lr", "1e-4") == (
        f"b0.02-s0-lr0.0002-setfit1: {path} holds this arm finished under other settings (arm.contrastive_lr 2e-05 "
        "there, 0.0001 here); delete its row (or the file) to train it under these, or run with the settings that "
        "wrote it")
    assert capsys.readouterr().out.splitlines()[-1] == (  # the default does not read --contrastive-lr
        "b0.02-s0-lr0.0002-default: finished under these settings, not trained again")
    default, arm = (rows[f"b0.02-s0-lr0.0002-{name}"] for name in ("default", "setfit1"))
    assert "arm.contrastive_lr" not in default["settings"] and arm["settings"]["arm.contrastive_lr"] == 2e-5
    assert default["settings"]["fit.lr"] == 0.0002 and default["settings"]["fit.train.max_length"] == 32
    assert default["settings"]["data.budget"] == 0.02 and len(default["settings"]["data.selection"]) == 12
    assert [part for part in default["fingerprint"] if default["fingerprint"][part] != arm["fingerprint"][part]] == [
        "arm"]
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["min_steps"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert finds().startswith(f"b0.02-s0-lr0.0002-default: {path} holds this arm finished under other settings "
                              "(fit.train.min_steps 2 there, 3 here); ")
    params["train"]["min_steps"] = 2
    params["model"] = str(shutil.copytree(tiny_model, tmp_path / "moved-model"))  # the same content elsewhere
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    capsys.readouterr()
    setfit.main([*argv, "--budgets", "0.02", "0.02"])  # and a budget given twice is one cell
    assert json.loads(path.read_text()) == rows
    assert capsys.readouterr().out.count("finished under these settings, not trained again") == 2
    config = json.loads((tmp_path / "moved-model" / "config.json").read_text())
    (tmp_path / "moved-model" / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.2}))
    assert f"(model.content \"{default['settings']['model.content']}\" there, " in finds()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "model": tiny_model}, sort_keys=False))
    old = {name: {k: v for k, v in row.items() if k not in ("settings", "fingerprint")} for name, row in rows.items()}
    path.write_text(json.dumps(old))  # rows from before rows recorded their settings: reused, one warning
    setfit.main([*argv, "--contrastive-lr", "1e-4"])
    out, err = capsys.readouterr()
    assert json.loads(path.read_text()) == old and err.count("warning: ") == 1
    assert f"warning: {path}: 2 row(s) written before rows recorded their settings, reused unchecked" in err
    assert out.count("finished before rows recorded their settings, not trained again") == 2


def test_tapt_encoder_is_deterministic(tmp_path, tiny_model):
    """Two TAPT runs with the same settings give the same encoder: the MLM head's transform, which the checkpoint
    lacks, was drawn from the unseeded global generator, so each run started from another head."""
    import torch
    from safetensors.torch import load_file

    tapt = load_benchmark("tapt_stage")
    args = tapt.parse_args(["--mlm-steps", "2", "--head-steps", "1", "--mlm-batch", "2"])
    texts = [f"post {i} on hockey scores and the space shuttle's launch" for i in range(6)]
    runs = [tapt.tapt_encoder(tiny_model, texts, texts[:2], args, 16, tmp_path / name) for name in "ab"]
    assert runs[0]["loss_random_head"] == runs[1]["loss_random_head"] and runs[0]["loss_after"] == runs[1]["loss_after"]
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_throughput_needs_two_steps_and_known_methods(monkeypatch, capsys):
    """One step has no time between optimizer steps: a usage error, not a StatisticsError from each worker; an
    unknown method a usage error, not a KeyError."""
    import pytest

    tt = load_benchmark("train_throughput")
    for argv, message in ((["--steps", "1"], "--steps 1: at least 2"),
                          (["--methods", "full,qlora"], "--methods: unknown ['qlora']; choose from full,lora")):
        monkeypatch.setattr("sys.argv", ["train_throughput.py", *argv])
        with pytest.raises(SystemExit) as exit_:
            tt.main()
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_selection_quality_smallest_run(tmp_path, monkeypatch, capsys):
    """Probe mode, 2 methods x 1 budget x 2 seeds on a 150-document subsample: each method's delta to random."""
    import json

    from soupline.select import dealrec

    sq = load_benchmark()
    sq.ROOT = tmp_path  # the embedding cache goes to tmp_path/data/cache
    monkeypatch.setattr(dealrec, "effort_scores", dealrec.effort_scores)  # main memoises it: undone after the test
    monkeypatch.setattr(dealrec, "scores", dealrec.scores)  # and the scores
    out = tmp_path / "sq"
    monkeypatch.setattr("sys.argv", ["selection_quality.py", "--max-examples", "150", "--methods", "random", "kmeans",
                                     "--budgets", "0.1", "--seeds", "0", "1", "--pools", "corpus", "--out", str(out)])
    sq.main()
    rows = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["method"], r["seed"]) for r in rows) == [("full-pool", -1), ("kmeans", 0), ("kmeans", 1),
                                                             ("random", 0), ("random", 1)]
    assert out.with_suffix(".png").exists() and not out.with_suffix(".partial.json").exists()
    assert "| kmeans | 10% |" in capsys.readouterr().out


def test_selection_quality_counts_repeated_picks_and_passes_dedup():
    """A cell's row counts the picks that repeat another pick's text; `--dedup 1.0` (select.dedup_threshold, which
    the benchmark had no way to set) leaves none."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.arange(40) % 2
    pool = ([f"text {i % 20}" for i in range(40)], y, np.vstack([x, x]))  # every text twice
    split = (["a", "b"], np.array([0, 1]), x[:2])
    corpus, cell = {"validation": split, "test": split}, load_benchmark().run_cell
    default = cell("random", pool, split, 0.75, 0, ["x", "y"], corpus, False)
    assert default["repeated_picks"] >= 10 and default["repeated_picks_conflicting_labels"] == 0  # 30 of 20 texts
    assert cell("random", pool, split, 0.5, 0, ["x", "y"], corpus, False, dedup=1.0)["repeated_picks"] == 0
    with pytest.raises(SouplineError, match=r"only 20 pool example\(s\) remain .*select.dedup_threshold=1.0"):
        cell("random", pool, split, 0.75, 0, ["x", "y"], corpus, False, dedup=1.0)


def test_selection_quality_memoises_effort_by_every_argument(monkeypatch):
    """The effort cache keys on the texts, labels and every other argument, positional or by name."""
    from soupline.select import dealrec

    calls = []
    monkeypatch.setattr(dealrec, "effort_scores", lambda texts, labels, *args, **kwargs: calls.append(kwargs) or 1)
    load_benchmark().cache_effort()
    for c in (1.0, 1.0, 2.0):
        dealrec.effort_scores(["a", "b"], [0, 1], "names", probe_c=c)
    assert calls == [{"probe_c": 1.0}, {"probe_c": 2.0}]


def test_selection_quality_memoises_dealrec_scores_across_sampling_settings(monkeypatch):
    """DEALRec's scores are computed once per pool and scoring settings: variants of its coverage sampling share
    them (each recomputed the surrogate fit and influence solve in every cell), a scoring setting does not."""
    from soupline.select import base, dealrec

    calls = []
    monkeypatch.setattr(dealrec, "scores", lambda pool, seed, cfg: calls.append(cfg) or (np.arange(4.0), {"a": 1}))
    load_benchmark().cache_scores()
    pool = base.SelectionInput(embeddings=np.eye(4, dtype=np.float32), labels=np.array([0, 0, 1, 1]),
                               label_names=["x", "y"])
    for spec in ("strata=5", "strata_by=count,coverage_by_label=equal,hard_prune=0.25", "surrogate_c=2"):
        sel = dealrec.select(pool, 2, 0, base.method_config(f"dealrec:effort_weight=0,{spec}")[1])
        assert len(sel.indices) == 2
    assert [c.surrogate_c for c in calls] == [1.0, 2.0]


def fake_selection_quality(monkeypatch, calls: list):
    """selection_quality with no corpus, selector or model: a cell scores 0.5 + seed / 100, the full pool 0.9, and
    each fit is logged in `calls` (a reused cell is not)."""
    sq = load_benchmark()
    split = ([f"t{i}" for i in range(20)], np.arange(20) % 2, np.eye(20, 4))
    monkeypatch.setattr(sq, "load_corpus", lambda *args: (["x", "y"], dict.fromkeys(("pool", "validation", "test"),
                                                                                     split)))
    monkeypatch.setattr(sq, "run_cell", lambda method, pool, target, b, seed, *args: calls.append((method, seed)) or {
        "accuracy": 0.5 + seed / 100, "macro_f1": 0.5 + seed / 100, "select_seconds": 0.0, "budget": 2,
        "repeated_picks": 0, "repeated_picks_conflicting_labels": 0})
    monkeypatch.setattr(sq, "fit_and_score", lambda *args: calls.append(("full-pool",)) or (0.9, 0.9))
    return sq


def run_selection_quality(sq, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr("sys.argv", ["selection_quality.py", "--no-effort-cache", "--pools", "corpus", "--budgets",
                                     "0.1", "--seeds", "0", "1", *argv])
    sq.main()


def test_selection_quality_reuse_refuses_cells_made_with_other_settings(tmp_path, monkeypatch, capsys):
    """Each row records its cell's settings; --reuse takes a cell only if they are this run's, and else stops before
    any work with one line naming the file and what differs: a select setting, a `train` default the fine-tunes read
    (by its field, or by its part's fingerprint for a setting no field shows). It mixed them silently."""
    import json

    import soupline.config
    from soupline.config import TrainParams

    calls: list = []
    sq = fake_selection_quality(monkeypatch, calls)
    first = tmp_path / "first"
    run = ["--finetune", "--methods", "random", "dealrec", "--out"]
    run_selection_quality(sq, monkeypatch, *run, str(first))
    rows = json.loads(first.with_suffix(".json").read_text())
    assert len(rows) == 5 and len(calls) == 5 and all(set(r["fingerprint"]) >= {"data", "fit"} for r in rows)
    assert rows[1]["settings"]["fit.epochs"] == 6 and rows[1]["settings"]["select.dedup"] is None
    reuse = ["--reuse", f"{first}.json:full-pool,random,dealrec", "--out", str(tmp_path / "again")]
    calls.clear()
    run_selection_quality(sq, monkeypatch, *run[:-1], *reuse)
    assert calls == [] and json.loads((tmp_path / "again.json").read_text()) == rows  # same settings: all reused
    bare = tmp_path / "bare.json"  # rows from before a readable field was added: the fingerprints decide
    bare.write_text(json.dumps([{**r, "settings": {}} for r in rows]))
    run_selection_quality(sq, monkeypatch, *run[:-1], "--reuse", f"{bare}:full-pool,random,dealrec", "--out",
                          str(tmp_path / "bare_out"))
    assert calls == []

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            run_selection_quality(sq, monkeypatch, *run[:-1], *argv, *reuse)
        assert exit_.value.code == 2 and calls == []
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert refused("--dedup", "1.0").endswith(
        f"--reuse {first}.json: its random, dealrec cells were made with other settings than this run's: "
        "select.dedup null there, 1.0 here; leave those methods out of the file's list to run them again")

    class Shorter(TrainParams):
        epochs: int = 5

    monkeypatch.setattr(soupline.config, "TrainParams", Shorter)
    assert "its full-pool, random, dealrec cells were made with other settings than this run's: fit.epochs 6 " \
           "there, 5 here;" in refused()

    class Decayed(TrainParams):
        weight_decay: float = 0.1

    monkeypatch.setattr(soupline.config, "TrainParams", Decayed)
    assert ": fit settings (fingerprint " in refused()


def test_selection_quality_reuse_methods_per_file_and_old_rows_with_a_warning(tmp_path, monkeypatch, capsys):
    """`--reuse FILE:methods` gives a file its own list (--reuse-methods for a file without one), so random's cells
    come from a file whose DEALRec cells are an old rule's and DEALRec's from another; rows from before rows recorded
    their settings are taken with a warning naming the file, and an old probe-mode full-pool reference is refused in
    fine-tune mode (it was silently fit again)."""
    import json

    def cells(method: str, f1: float) -> list[dict]:
        return [{"pool": "bbcnews", "method": method, "budget": 0.1, "seed": s, "accuracy": f1, "macro_f1": f1,
                 "select_seconds": 0.0, "count": 2} for s in (0, 1)]

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps([{"pool": "bbcnews", "method": "full-pool", "model": "probe", "budget": 1.0, "seed": -1,
                                "accuracy": 0.9, "macro_f1": 0.9, "select_seconds": 0.0},
                               *cells("random", 0.6), *cells("dealrec", 0.1)]))
    new.write_text(json.dumps(cells("dealrec", 0.7)))
    calls: list = []
    sq = fake_selection_quality(monkeypatch, calls)
    argv = ["--methods", "random", "dealrec", "--reuse", str(old), f"{new}:dealrec", "--reuse-methods", "full-pool",
            "random", "--out", str(tmp_path / "mixed")]
    run_selection_quality(sq, monkeypatch, *argv)
    rows = json.loads((tmp_path / "mixed.json").read_text())
    assert calls == [] and [(r["method"], r["macro_f1"]) for r in rows[1:]] == [("random", 0.6)] * 2 + [
        ("dealrec", 0.7)] * 2
    err = capsys.readouterr().err
    assert f"warning: --reuse {old}: 3 cell(s) written before cells recorded their settings" in err
    assert f"warning: --reuse {new}: 2 cell(s) written before" in err
    with pytest.raises(SystemExit):
        run_selection_quality(sq, monkeypatch, "--finetune", *argv)
    assert f"--reuse {old}: its full-pool cells were made with other settings than this run's: full-pool model " \
           "probe there, fine-tune here;" in capsys.readouterr().err and calls == []


def test_selection_quality_reuse_lists_parse_variants_and_name_a_missing_file(tmp_path):
    """A variant's own commas stay in it (`gotd:rounds=1,label_weight=0` is one method, `dnc:q=column:score` too)."""
    sq, path = load_benchmark(), tmp_path / "a.json"
    path.write_text("[]")
    specs = sq.reuse_specs([str(path), f"{path}:full-pool,gotd:rounds=1,label_weight=0,random,dnc:q=column:score"],
                           ["random"])
    assert specs == [(str(path), ["random"]),
                     (str(path), ["full-pool", "gotd:rounds=1,label_weight=0", "random", "dnc:q=column:score"])]
    with pytest.raises(SouplineError, match=r"--reuse .*b\.json:random: no such file"):
        sq.reuse_specs([str(tmp_path / "b.json:random")], [])
    with pytest.raises(SouplineError, match="an empty method name"):
        sq.reuse_specs([f"{path}:random,"], [])


def test_selection_quality_report_averages_only_the_seeds_asked_for(tmp_path, monkeypatch, capsys):
    """The table's means are over --seeds alone (a reused file may hold more: they were averaged in), and
    --report-only refuses a .json without one of the cells asked for."""
    import json

    sq, out = load_benchmark(), tmp_path / "sq"
    out.with_suffix(".json").write_text(json.dumps(
        [{"pool": "bbcnews", "method": "full-pool", "budget": 1.0, "seed": -1, "accuracy": 0.9, "macro_f1": 0.9}]
        + [{"pool": "bbcnews", "method": "random", "budget": 0.1, "seed": s, "accuracy": f1, "macro_f1": f1,
            "select_seconds": 0.0} for s, f1 in ((0, 0.5), (1, 0.6), (2, 0.9))]))
    argv = ["selection_quality.py", "--report-only", "--pools", "corpus", "--methods", "random", "--budgets", "0.1",
            "--out", str(out), "--seeds"]
    monkeypatch.setattr("sys.argv", [*argv, "0", "1"])
    sq.main()
    assert "| random | 10% | 0.5500 | 0.5500 | 0.0500 |" in out.with_suffix(".md").read_text()
    assert len(json.loads(out.with_suffix(".json").read_text())) == 4  # the .json keeps every row
    monkeypatch.setattr("sys.argv", [*argv, "0", "5"])
    with pytest.raises(SystemExit):
        sq.main()
    assert "lacks 1 cell(s) of this run's --pools x --methods x --budgets x --seeds, e.g. bbcnews random 10% seed 5" \
        in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", [*argv[:-2], str(tmp_path / "none"), "--seeds", "0"])
    with pytest.raises(SystemExit):
        sq.main()
    assert "none.json does not exist: run without --report-only first" in capsys.readouterr().err


def test_selection_quality_report_orders_budgets_whatever_order_they_ran_in(tmp_path, monkeypatch):
    """A run with --budgets 0.02 0.1 0.01 (the cells it wanted first) tabulates and plots 1 / 2 / 10 % in that order:
    the plot's lines joined the budgets in the run's order, back and forth along the axis."""
    import json

    from soupline import plots

    sq, out, figures = load_benchmark(), tmp_path / "sq", []
    out.with_suffix(".json").write_text(json.dumps(
        [{"pool": "bbcnews", "method": "full-pool", "budget": 1.0, "seed": -1, "accuracy": 0.9, "macro_f1": 0.9}]
        + [{"pool": "bbcnews", "method": "random", "budget": b, "seed": 0, "accuracy": f1, "macro_f1": f1,
            "select_seconds": 0.0} for b, f1 in ((0.02, 0.6), (0.1, 0.8), (0.01, 0.5))]))
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi: figures.append(fig))
    monkeypatch.setattr("sys.argv", ["selection_quality.py", "--report-only", "--pools", "corpus", "--methods",
                                     "random", "--budgets", "0.02", "0.1", "0.01", "--seeds", "0", "--out", str(out)])
    sq.main()
    line = figures[0].axes[0].lines[0]
    assert line.get_xdata().tolist() == [1.0, 2.0, 10.0] and line.get_ydata().tolist() == [0.5, 0.6, 0.8]
    md = out.with_suffix(".md").read_text()
    assert md.index("| random | 1% |") < md.index("| random | 2% |") < md.index("| random | 10% |")


def reuse_commands() -> list[str]:
    """The README's and docs/'s selection_quality commands that reuse the repository's .json files."""
    import re

    from tests.test_benchmark_targets import ROOT

    text = "".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    return sorted({c for c in re.findall(r"`python benchmarks/selection_quality\.py ([^`]*--reuse docs/[^`]*)`", text)
                   if "<" not in c})


class ReachedTheCorpus(Exception):
    """What a stubbed `load_corpus` raises: the run got past its checks to its first work."""


@pytest.mark.parametrize("command", reuse_commands())
def test_selection_quality_reuse_commands_of_the_docs_pass_the_settings_check(command, monkeypatch):
    """The docs' .json files predate recorded settings: the commands written next to them still take their cells
    (with a warning), up to the corpus, the first work a run does."""
    import shlex

    from soupline.select import dealrec
    from tests.test_benchmark_targets import ROOT

    sq = load_benchmark()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(dealrec, "effort_scores", dealrec.effort_scores)  # main memoises them: undone after the test
    monkeypatch.setattr(dealrec, "scores", dealrec.scores)

    def load_corpus(*args):
        raise ReachedTheCorpus

    monkeypatch.setattr(sq, "load_corpus", load_corpus)
    monkeypatch.setattr("sys.argv", ["selection_quality.py", *shlex.split(command)])
    with pytest.raises(ReachedTheCorpus):
        sq.main()


def test_dealrec_picks_statistics_flag_a_mislabelled_outlier():
    """dealrec_picks' statistics on a toy pool: the text labelled unlike its cluster is the one flagged as disagreeing
    with its neighbours and the farthest from its label's centroid; a selection holding it counts it in each share."""
    dp = load_benchmark("dealrec_picks")
    rng = np.random.default_rng(0)
    emb = np.vstack([rng.normal([1, 0], 0.05, (8, 2)), rng.normal([0, 1], 0.05, (8, 2))]).astype(np.float32)
    y = np.repeat([0, 1], 8)
    y[0] = 1  # in label 0's cluster
    x, dist, disagree = dp.pool_geometry(emb, y)
    assert disagree.tolist() == [True] + [False] * 15 and dist.argmax() == 0
    score = np.r_[1.0, np.linspace(0, 0.5, 15)]
    top = score >= np.quantile(score, 0.9)
    stats = dp.pick_stats(np.array([0, 1, 9]), score, 50, x, y, dist, disagree, top)
    assert stats["top10_share"] == stats["knn_disagree"] == 1 / 3
    assert np.isclose(stats["label_tv"], 7 / 16 - 1 / 3)  # label 0: 7 of 16 in the pool, 1 of 3 picks
    assert stats["strata_nonempty"] == 16 and stats["strata_picked"] == 3


def test_cli_latency_smallest_run(capsys):
    """The commands that need no project, once each, against the `python -c pass` baseline of the same run."""
    from tests.test_benchmark_targets import ROOT

    cl = load_benchmark("cli_latency")
    cl.main(["--root", str(ROOT), "--repeats", "1", "--only", "soupline --"])
    rows = [line.rsplit(None, 3) for line in capsys.readouterr().out.splitlines()[3:]]
    assert [r[0] for r in rows] == ["python -c pass", "python -c 'import torch'", "soupline --help",
                                    "soupline --version"]
    assert rows[0][3] == "1.0" and all(r[2] == "s" for r in rows)  # seconds, then the ratio to the baseline


def test_cli_latency_against_a_baseline_commit(capsys):
    """--baseline REV times each command under REV's code too (git archive), interleaved, and prints the ratio."""
    from tests.test_benchmark_targets import ROOT

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    load_benchmark("cli_latency").main(["--repeats", "1", "--only", "soupline --help", "--baseline", "HEAD"])
    rows = [line.rsplit(None, 5) for line in capsys.readouterr().out.splitlines()[3:]]
    assert [r[0] for r in rows] == ["python -c pass", "python -c 'import torch'", "soupline --help"]
    assert all(r[2] == r[4] == "s" and float(r[5]) > 0 for r in rows)  # HEAD's seconds, this tree's, the ratio


def test_dedup_speed_smallest_run(capsys):
    """Both searches keep the same points, and the ratio is printed against the baseline of the same run."""
    load_benchmark("dedup_speed").main(["--n", "600", "--dim", "16", "--repeats", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("default / baseline: ") and out[-1].endswith("same points kept: True")


def test_embed_cache_keys_smallest_run(capsys):
    """Both sides name the same cache files, and the ratio is printed against the baseline of the same run."""
    load_benchmark("embed_cache_keys").main(["--n", "50", "--chars", "20", "--repeats", "1"])
    out = capsys.readouterr().out.splitlines()
    assert "default / baseline" in out[-1] and "same file names: True" in out[-1]


def test_gotd_chunk_smallest_run(capsys):
    """Both chunk sizes pick the same points on a pool above max_pool_for_ot, and the ratio is printed against the
    baseline of the same run."""
    load_benchmark("gotd_chunk").main(["--n", "3000", "--target", "200", "--dim", "16", "--max-pool-for-ot", "1000"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("default / baseline: ") and out[-1].endswith("same points picked: True")


def test_gotd_solver_smallest_run(capsys):
    """The baseline commit's GOT-D (git show) and this tree's pick the same points, on a pool above max_pool_for_ot
    (20,000: the c-transform path) and under select.stratify, and the ratio is printed against it in the same run."""
    from tests.test_benchmark_targets import ROOT

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    gs = load_benchmark("gotd_solver")
    gs.main(["--n", "20300", "--target", "30", "--dim", "8", "--seeds", "0", "1"])
    gs.main(["--n", "600", "--target", "60", "--dim", "16", "--stratify", "label"])
    out = capsys.readouterr().out.splitlines()
    assert all(line.startswith("this / baseline: ") and line.endswith("same points picked: True")
               for line in (out[4], out[-1]))


@pytest.mark.parametrize("head", [[], ["--head-init", "random", "--learning-rate", "0.2"]])
def test_lpft_head_cache_smallest_run(capsys, head):
    """The sweep trained with and without the head cache (a random head's: its starting model's probe) gives the same
    weights and train_info.json; the ratio is printed against the baseline of the same run."""
    load_benchmark("lpft_head_cache").main(["--model", "tiny", "--examples", "20", "--val", "10", "--steps", "1",
                                            "--max-length", "16", *head])
    out = capsys.readouterr().out.splitlines()
    assert "baseline / default" in out[-4] and out[-2].startswith("  baseline: init_model ")
    assert out[-1] == "  weights identical on both sides: True; train_info.json identical: True"


@pytest.mark.parametrize("other", [[], ["--other-columns", "2", "--baseline", "83d0b20"], ["--baseline", "HEAD"]])
def test_prepare_speed_smallest_run(capsys, other):
    """The baseline commit's data.py (git show) and this tree's read the same frame and write the same splits, labels
    and summary from each format, its odd rows included (blank but for invisible characters, line breaks, copies
    but for case and Unicode form), with columns soupline does not read too; a baseline whose data.py reads files
    through its own soupline/tables.py (HEAD) too."""
    from tests.test_benchmark_targets import ROOT

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    load_benchmark("prepare_speed").main(["--n", "1000", "--repeats", "1", *other])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out[1::2]] == ["parquet", "csv", "jsonl"]
    assert all(line.endswith("same frame: True, same outputs: True") for line in out[2::2])


@pytest.mark.parametrize("name, argv, says", [
    ("gotd_chunk", ["--repeats", "0"], "--repeats 0: at least 1"),
    ("gotd_solver", ["--baseline", "no-such-rev"], "--baseline no-such-rev: fatal: "),
    ("gotd_solver", ["--seeds", "-1"], "--seeds -1: a seed is at least 0"),
    ("dedup_speed", ["--n", "-5"], "--n -5: at least 1"),
    ("dedup_speed", ["--threshold", "2"], "--threshold 2.0: a cosine similarity in (0, 1]"),
    ("cli_latency", ["--repeats", "0"], "--repeats 0: at least 1"),
    ("cli_latency", ["--root", "/no/such/project"], "--root /no/such/project: not a soupline project"),
    ("cli_latency", ["--only", "zzz"], "--only zzz: matches none of"),
    ("dvc_status_speed", ["--repeats", "0"], "--repeats 0: at least 1"),
    ("dvc_status_speed", ["--root", "/no/such/project"], "--root /no/such/project: not a soupline project"),
    ("embed_cache_keys", ["--chars", "0"], "--chars 0: at least 1"),
    ("embed_throughput", ["--n", "0"], "--n 0: at least 1"),
    ("inference_speed", ["--repeats", "0"], "--repeats 0: at least 1"),
    ("inference_speed", ["--baseline", "no-such-rev"], "--baseline no-such-rev: fatal: "),
    ("inference_speed", ["--root", "/no/such/project"], "--root /no/such/project: not a soupline project"),
    ("lpft_head_cache", ["--steps", "0"], "--steps 0: at least 1"),
    ("lpft_head_cache", ["--learning-rate", "0"], "--learning-rate 0.0: above 0"),
    ("prepare_speed", ["--n", "5"], "--n 5: at least 100"),
    ("prepare_speed", ["--other-columns", "-1"], "--other-columns -1: at least 0"),
    ("rdrop_stage", ["--alphas", "1", "-1"], "--alphas -1: a KL weight is at least 0"),
    ("self_training_stage", ["--multiples", "2", "0"], "--multiples 0: above 0"),
    ("self_training_stage", ["--default-steps", "240", "0"], "--default-steps 0: at least 1"),
    ("tapt_stage", ["--mlm-probability", "1"], "--mlm-probability 1: a fraction in (0, 1)"),
    ("window_stage", ["--windows", "0"], "--windows 0: at least 1"),
    ("window_stage", ["--max-length", "256"], "--max-length 256: with --score only, and at least 8"),
    ("window_stage", ["--score", "/no/such/ingredient"], "--score /no/such/ingredient: not a finished ingredient"),
    ("tapt_stage", ["--head-steps", "-1"], "--head-steps -1: at least 0"),
    ("prepare_speed", ["--baseline", "no-such-rev"], "--baseline no-such-rev: fatal: "),
    ("selection_speed", ["--methods", "foo"], "--methods: unknown ['foo']; choose from"),
    ("selection_speed", ["--budget", "0"], "--budget 0.0: a fraction of the pool in (0, 1]"),
    ("selection_speed", ["--sizes", "0"], "--sizes [0]: pools of at least 100 points"),
])
def test_benchmarks_refuse_bad_arguments_in_one_line(name, argv, says, capsys, monkeypatch):
    """Each was a traceback (KeyError, StatisticsError, FileNotFoundError, a numpy error), a ratio of NaN points, or a
    'failed' row and exit 0."""
    monkeypatch.setattr("sys.argv", [f"{name}.py", *argv])  # the scripts whose main() reads sys.argv
    main = load_benchmark(name).main
    with pytest.raises(SystemExit) as stopped:
        main(argv) if main.__code__.co_argcount else main()
    assert stopped.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]


def test_noop_hashing_leaves_a_run_that_ran_a_stage_out():
    """A timed `soupline run` or `status` that ran a stage (session 53: the first baseline run ran prepare again)
    is no no-op: `ran` names it, so its time is left out of the medians, not counted as hashing."""
    ran = load_benchmark("noop_hashing").ran
    run = "prepare: {'pool': 63}\nprepare: note: corpus.jsonl is outside\nembed: up to date\n" \
          "train: lr0.005-seed0: up to date\ntrain: lr0.01-seed0: 6 steps on 19 examples\n" \
          "soup: up to date (as dvc.lock records it)\ndvc: outputs recorded in dvc.lock (`dvc status` is clean)\n"
    assert ran(run) == ["prepare", "train"]
    status = "prepare   up to date\nembed     no run recorded from these params and inputs\n" \
             "select    up to date with the outputs on disk now (runs if embed changes them)\n"
    assert ran(status) == ["embed"]
    assert ran(status.replace("no run recorded from these params and inputs", "up to date")
               + "everything is up to date\n") == []


@pytest.mark.slow
def test_copied_workspace_smallest_run(capsys):
    """Each case's first `soupline run` in a copy is timed against a no-op in the workspace, and none runs a stage."""
    load_benchmark("copied_workspace").main(["--hidden", "32", "--repeats", "1"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in out] == ["original", "copy", "other home", "other home, no DVC"]
    assert all(line.endswith("ran: nothing") and "/ original" in line for line in out), out


def test_a_benchmark_prints_a_user_error_as_one_line(tmp_path):
    """From the command line a benchmark ends a user error (here a --model that does not exist) as the CLI does: one
    `error: ` line and exit status 2, where its `main` raised a traceback; every benchmark's entry point does so."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    missing = tmp_path / "no-such-model"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "embed_truncation_count.py"), "--model",
                           str(missing)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: model path '{missing}' does not exist; set `model` to an existing "
                                        "folder or the built-in 'all-MiniLM-L6-v2'"]
    scripts = [p for p in sorted((ROOT / "benchmarks").glob("*.py")) if 'if __name__ == "__main__":' in p.read_text()]
    assert len(scripts) >= 20
    assert [p.name for p in scripts if "exit_on_user_error(main)" not in p.read_text()] == []


def test_exit_on_user_error_keeps_a_bug_s_traceback(capsys):
    """Only user errors become one line: anything else is a bug and keeps its traceback."""
    from soupline.errors import exit_on_user_error

    def bad_input():
        raise SouplineError("budget 9 is larger than the pool (3); lower select.budget")

    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(bad_input)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: budget 9 is larger than the pool (3); lower select.budget\n"
    with pytest.raises(ZeroDivisionError):
        exit_on_user_error(lambda: 1 / 0)


def test_bf16_speed_times_both_precisions_and_needs_two_steps(tiny_model, monkeypatch, capsys):
    bs = load_benchmark("bf16_speed")
    assert all(bs.measure(tiny_model, precision, 3) > 0 for precision in ("fp32", "bf16"))
    monkeypatch.setattr("sys.argv", ["bf16_speed.py", "--steps", "1"])
    with pytest.raises(SystemExit) as exit_:
        bs.main()
    assert exit_.value.code == 2 and "--steps 1: at least 2" in capsys.readouterr().err


def test_bf16_speed_passes_a_worker_s_user_error_on_as_its_one_line(monkeypatch, capsys):
    """A --models entry that is no model: the worker's `error:` line and exit status 2, not 'failed:' + its stderr."""
    bs = load_benchmark("bf16_speed")
    monkeypatch.setattr("sys.argv", ["bf16_speed.py", "--models", "./no/such/model", "--steps", "2", "--repeats", "1"])
    with pytest.raises(SouplineError, match=r"^model path './no/such/model' does not exist"):
        bs.main()


def test_a_worker_that_fails_without_a_line_shows_its_failure():
    """Exit status 2 with no stderr at all (no `error:` line to pass on) is a failure naming the worker, not an
    IndexError from reading the missing line."""
    tt = load_benchmark("train_throughput")
    with pytest.raises(SystemExit, match="^quiet worker failed:"):
        tt.worker_result([sys.executable, "-c", "import sys; sys.exit(2)"], "quiet worker")
