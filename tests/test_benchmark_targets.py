"""The selection-quality benchmark's target check: the README's headline is read off it, so a wrong
sign or a wrong noise band would report a miss as met. And the recipe benchmark's run naming: a
whole-corpus run must not overwrite the subsample's cached cells or docs. And the contrastive screen's pairs, and
the R-Drop screen's loss."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str = "selection_quality"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_tell_met_missed_and_noise():
    sq = load_benchmark()
    args = Namespace(corpus="c", methods=["random", "dnc", "dealrec", "gotd"], budgets=[0.02, 0.05],
                     pools=["corpus", "skewed"])
    mean, noise = {}, {}
    for pool in ("c", "c-skewed"):
        for b in args.budgets:
            mean[pool, "random", b] = (0.5, 0.50)
            mean[pool, "dnc", b] = (0.6, 0.60)
            mean[pool, "dealrec", b] = (0.5, 0.50)
            mean[pool, "gotd", b] = (0.5, 0.56 if b == 0.02 else 0.54)
            for m in args.methods:
                noise[pool, m, b] = 0.02
    mean["c", "dealrec", 0.05] = (0.4, 0.49)     # below random, inside the 0.02 band
    mean["c-skewed", "dealrec", 0.02] = (0.4, 0.45)  # below random, beyond it
    lines = sq.targets(mean, noise, args)
    by_method = {line.split()[1]: line for line in lines if ">= random" in line}
    assert "**met**" in by_method["dnc"] and "**met**" in by_method["gotd"]
    dealrec = by_method["dealrec"]
    assert "**missed**" in dealrec
    assert "c 5% (-0.0100 ± 0.0200)" in dealrec
    assert "c-skewed 2% (-0.0500 ± 0.0200, beyond noise)" in dealrec
    skewed = [line for line in lines if "skewed pool" in line]
    assert skewed[0].endswith("+6.0 points, **met**") and skewed[1].endswith("+4.0 points, **missed**")


def test_targets_need_random_to_compare():
    sq = load_benchmark()
    args = Namespace(corpus="c", methods=["dnc", "gotd"], budgets=[0.02], pools=["corpus", "skewed"])
    assert sq.targets({}, {}, args) == []


def test_targets_judge_only_the_pools_run():
    """`--pools corpus` runs no skewed pool, so the skewed-pool GOT-D margin is not reported (not a KeyError)."""
    sq = load_benchmark()
    args = Namespace(corpus="c", methods=["random", "gotd"], budgets=[0.02, 0.1], pools=["corpus"])
    mean = {("c", m, b): (0.5, f1) for b in args.budgets for m, f1 in (("random", 0.50), ("gotd", 0.49))}
    noise = {("c", m, b): 0.02 for b in args.budgets for m in args.methods}
    lines = sq.targets(mean, noise, args)
    assert len(lines) == 1 and lines[0].startswith("- gotd >= random (macro-F1, mean over seeds) at every budget on c:")
    assert "**missed** at c 2% (-0.0100 ± 0.0200), c 10% (-0.0100 ± 0.0200)" in lines[0]


def test_report_only_table_is_over_the_seeds_asked(tmp_path, monkeypatch):
    """`--report-only --seeds 0 1` over a .json that also holds a seed-2 cell (kept for a later run's reuse):
    the table's means are over seeds 0 and 1, as its header says, and the .json keeps the seed-2 cell."""
    sq = load_benchmark()
    monkeypatch.setattr("sys.argv", ["selection_quality.py", "--report-only"])
    args = Namespace(corpus="c", methods=["random", "dealrec"], budgets=[0.05], seeds=[0, 1], pools=["corpus"],
                     finetune=True, stratify="none", dedup=None)
    cell = {"pool": "c", "budget": 0.05, "select_seconds": 0.0, "repeated_picks": 0}
    rows = [{"pool": "c", "method": "full-pool", "model": "fine-tune", "budget": 1.0, "seed": -1,
             "accuracy": 0.99, "macro_f1": 0.99, "select_seconds": 0.0},
            *({**cell, "method": m, "seed": s, "accuracy": 0.9, "macro_f1": 0.9} for m in args.methods for s in (0, 1)),
            {**cell, "method": "random", "seed": 2, "accuracy": 0.1, "macro_f1": 0.1}]
    sq.write_outputs(rows, args, tmp_path / "r")
    report = (tmp_path / "r.md").read_text()
    assert "| random | 5% | 0.9000 | 0.9000 | 0.0000 |" in report
    assert "dealrec >= random (macro-F1, mean over seeds) at every budget on c: **met**" in report
    assert len(json.loads((tmp_path / "r.json").read_text())) == len(rows)


def test_recipe_runs_of_different_sizes_stay_apart():
    rq = load_benchmark("recipe_quality")
    tags = {rq.size_tag(n) for n in (rq.DEFAULT_MAX_EXAMPLES, 0, 6000)}
    assert tags == {"", "_all", "_6000"}


def recipe_row(budget, ingredient, soup, probe, recipe="default"):
    return {"budget": budget, "recipe": recipe, "ingredient_accuracy": ingredient, "ingredient_macro_f1": ingredient,
            "soup_accuracy": soup, "probe_accuracy": probe, "probe_macro_f1": probe}


def test_recipe_targets_tell_met_and_missed():
    rq = load_benchmark("recipe_quality")
    rows = [recipe_row(0.01, 0.50, 0.49, 0.52), recipe_row(0.1, 0.90, 0.91, 0.80),
            recipe_row(0.01, 0.10, 0.10, 0.52, recipe="plain")]  # other recipes are not judged
    full = {"ingredient_accuracy": 0.93}
    probe, soup, ratio = rq.targets(rows, full)
    assert probe.endswith("**missed** at 1% (accuracy -0.0200), 1% (macro_f1 -0.0200)")
    assert soup.endswith("**missed** at 1% (-0.0100)")
    assert ratio.endswith("0.9000 / 0.9300 = 0.968 x, **met**")
    assert rq.targets(rows, {"ingredient_accuracy": 0.96})[2].endswith("0.938 x, **missed**")
    assert len(rq.targets(rows, None)) == 2  # no full-pool cell, no ratio line


def test_a_one_ingredient_recipe_is_its_own_greedy_soup():
    """`llrd` and `smooth` train one ingredient, and a sweep of one makes no soup: the summary reads the ingredient
    as its soup (it raised KeyError: 'soup:greedy' after the cells had trained)."""
    rq = load_benchmark("recipe_quality")

    def model(kind, acc):
        return {"kind": kind, "accuracy": acc, "macro_f1": acc, "val_accuracy": acc}

    cell = {"budget": 0.1, "examples": 210, "seconds": {"train": 1.0}, "recipe": "llrd",
            "models": {"lr0.0001-seed0": model("ingredient", 0.7), "probe": model("reference", 0.6)}}
    [row] = rq.summarise([cell])
    assert row["soup_accuracy"] == row["ingredient_accuracy"] == 0.7 and row["probe_macro_f1"] == 0.6


def test_benchmark_reports_keep_their_handwritten_reading(tmp_path):
    from soupline.report import keep_handwritten

    report = tmp_path / "r.md"
    assert keep_handwritten(report) == []
    report.write_text("# old table\n\n| a |\n\n## Reading (hand-written)\n\n- a finding\n")
    assert keep_handwritten(report) == ["", "## Reading (hand-written)", "", "- a finding"]
    report.write_text("# generated only\n")
    assert keep_handwritten(report) == []


def test_recipe_report_title_says_whole_corpus_or_subsample_and_the_model():
    rq = load_benchmark("recipe_quality")
    bbc = {"pool": 1558, "validation": 222, "test": 445}  # 2,225 documents: a 3,000 cap takes them all
    assert rq.title("bbcnews", bbc, 3000, None) == ("# Recipe quality on bbcnews (the whole corpus: pool 1,558, "
                                                    "validation 222, test 445)")
    assert rq.title("bbcnews", bbc, 0, None).startswith("# Recipe quality on bbcnews (the whole corpus")
    assert rq.title("20newsgroups", {"pool": 2100, "validation": 300, "test": 600}, 3000, "all-mpnet-base-v2") == (
        "# Recipe quality on 20newsgroups (a 3,000-document subsample: pool 2,100, validation 300, test 600), "
        "base model all-mpnet-base-v2")


def test_setfit_pairs_are_balanced_labelled_and_seeded():
    """The contrastive screen's pairs: half same-label (target 1) and half different-label (0), never a text with
    itself, the same for the same seed; a label with one example anchors only negatives (no positive to draw)."""
    sf = load_benchmark("setfit_stage")
    y = np.array([0, 0, 0, 1, 1, 2])  # label 2: one example
    a, b, t = sf.pairs(y, 400, seed=0)
    assert t.mean() == 0.5 and ((y[a] == y[b]) == (t == 1)).all() and (a != b).all()
    assert not ((y[a] == 2) & (t == 1)).any()
    assert all((x == z).all() for x, z in zip((a, b, t), sf.pairs(y, 400, seed=0)))


def test_windows_are_each_texts_spans_in_order_the_first_the_truncated_text(tiny_model):
    """The window screen's windows: spans of the text's characters in order, the first one the tokens the recipe's
    truncation keeps, each at most max_length tokens, neighbours sharing `overlap` tokens, at most `limit` a text;
    an overlap a window cannot hold is one line."""
    from soupline.evaluate import tokenize
    from soupline.models import load_tokenizer

    ws, tok = load_benchmark("window_stage"), load_tokenizer(tiny_model)
    texts = ["short post", " ".join(f"word{i}" for i in range(60))]  # 120 tokens: 4 windows of 30
    spans, owner = ws.windows(tok, texts, 32, 0, None)
    assert owner[0] == 0 and spans[0] == "short post" and (np.diff(owner) >= 0).all()
    long = [s for s, o in zip(spans, owner) if o == 1]
    assert len(long) > 2 and "".join(long).replace(" ", "") == texts[1].replace(" ", "")  # all of it, once
    assert tokenize(tok, long[:1], 32) == tokenize(tok, texts[1:], 32)
    assert max(len(r["input_ids"]) for r in tokenize(tok, spans, 64)) <= 32
    shared = ws.windows(tok, texts[1:], 32, 10, None)[0]
    ids = [r["input_ids"][1:-1] for r in tokenize(tok, shared, 32)]
    assert all(a[-10:] == b[:10] for a, b in zip(ids, ids[1:]))
    assert np.bincount(ws.windows(tok, texts, 32, 0, 2)[1]).tolist() == [1, 2]
    with pytest.raises(SystemExit, match="--overlap 30: below the 30 tokens a window holds"):
        ws.windows(tok, texts, 32, 30, None)


def test_self_training_random_control_is_class_balanced_and_seeded():
    """The random control's pick: per true label count // labels rows, all of a label that has fewer; the same
    seed the same rows, another seed others."""
    st = load_benchmark("self_training_stage")
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    rows = st.random_pick(labels, 12, 3, 0)
    assert np.bincount(labels[rows]).tolist() == [4, 4, 2] and (np.diff(rows) > 0).all()
    assert (st.random_pick(labels, 12, 3, 0) == rows).all() and (st.random_pick(labels, 12, 3, 1) != rows).any()


def test_rdrop_loss_is_the_mean_cross_entropy_plus_alpha_times_the_symmetric_kl():
    """The R-Drop screen's loss on two known passes (summed over the micro-batch, as soupline's batch_loss): the
    mean of the two cross-entropies plus alpha x the mean of KL(p1 || p2) and KL(p2 || p1); two equal passes (no
    dropout) leave soupline's plain cross-entropy."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    import torch

    from soupline.train import batch_loss

    rd = load_benchmark("rdrop_stage")
    first, second = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 2.0]])
    targets = np.array([0, 2])

    def model(*passes):
        logits = iter(torch.tensor(z, dtype=torch.float32) for z in passes)
        return lambda **batch: SimpleNamespace(logits=next(logits))

    def log_softmax(z):
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = log_softmax(first), log_softmax(second)
    ce = -(lp[[0, 1], targets].sum() + lq[[0, 1], targets].sum()) / 2
    kl = ((np.exp(lp) * (lp - lq)).sum() + (np.exp(lq) * (lq - lp)).sum()) / 2
    t = torch.tensor(targets)
    got = rd.rdrop_loss(4.0)(model(first, second), {}, t, None, 0.0, nullcontext())
    assert float(got) == pytest.approx(ce + 4.0 * kl, rel=1e-5)
    same = rd.rdrop_loss(4.0)(model(first, first), {}, t, None, 0.0, nullcontext())
    assert float(same) == pytest.approx(float(batch_loss(model(first), {}, t, None, 0.0, nullcontext())), rel=1e-6)


def test_a_report_of_the_full_pool_cell_alone_has_no_plot_and_says_the_full_pool(tmp_path):
    """`--budgets 1.0` runs only the full-pool cell: no budget row to plot (the log axis raised a matplotlib
    traceback after the cell had trained); the report is the full-pool line."""
    rq = load_benchmark("recipe_quality")
    model = {"kind": "ingredient", "accuracy": 0.875, "macro_f1": 0.87, "val_accuracy": 0.88}
    cell = {"budget": 1.0, "examples": 2100, "seconds": {"train": 7313.0}, "recipe": "default",
            "models": {"lr0.0001-seed0": model, "probe": {**model, "kind": "reference", "accuracy": 0.8}}}
    args = Namespace(out=tmp_path / "full", corpus="c", max_examples=0, model=None)
    lines = rq.write_report([cell], {"pool": 2100, "validation": 300, "test": 600}, args, "")
    assert "Full pool (2100 examples, default recipe, best ingredient): accuracy 0.8750" in "\n".join(lines)
    assert not (tmp_path / "full.png").exists() and not any(".png" in line or "|" in line for line in lines)
    assert json.loads((tmp_path / "full.json").read_text())["rows"] == []
