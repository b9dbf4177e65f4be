"""Recipe quality: linear probe vs plain fine-tune vs the default recipe vs LP-FT (+ greedy soup), per budget.

    python benchmarks/recipe_quality.py                                   # 20newsgroups (3,000 docs), 1 seed
    python benchmarks/recipe_quality.py --corpus bbcnews --seeds 0 1 2
    python benchmarks/recipe_quality.py --budgets 0.01 0.1 --recipes default random-head --no-full
    python benchmarks/recipe_quality.py --report-only                      # table + plot from finished cells
    python benchmarks/recipe_quality.py --budgets 0.05 0.1 --recipes default llrd smooth --no-full \
        --out docs/recipe_quality_20newsgroups_remedies                   # a screen, apart from the full table
    python benchmarks/recipe_quality.py --model /path/to/larger-model     # another base model, kept apart

Each (budget, seed, recipe) is a cell of `tasks/study.py` (select -> train -> soup -> evaluate)
in a workspace under data/bench/recipe-<corpus>/, so finished cells are cached and an
interrupted run resumes. The selection is the pipeline's default method (`select.method`),
seeded per cell; all recipes of one (budget, seed) train on the same selection. Recipes
(each 2 ingredients: the default learning rates x 1 seed, or 2 seeds for `plain`):

- `plain`: what a new user writes: Hugging Face's `AutoModelForSequenceClassification` ([CLS]
  head), random head, one learning rate for head and body, 3 epochs, no step floor, 128 tokens.
- `cls`: soupline's recipe before mean pooling (session 3's default): [CLS] head, random head,
  head learning rate, step floor, 64 tokens.
- `random-head`: the default with `train.head_init: random` (no LP-FT).
- `default`: params.yaml's `train` section as shipped (LP-FT on the mean-pooled, unit-norm
  text vector, 128 tokens).
- `llrd`, `smooth`: the default with one few-sample fine-tuning remedy (Zhang et al. 2021),
  `train.layer_lr_decay: 0.8` (each lower layer's rate x 0.8) or `train.label_smoothing: 0.1`, one
  ingredient (lr 1e-4: compare it with the default's lr 1e-4 ingredient in the cell's cell.json;
  docs/recipe_quality_20newsgroups_remedies.md).
- `bf16`: the default under bfloat16 autocast (`train.precision: bf16`; weights stay fp32): what it costs in
  accuracy for the time it saves, on a CPU with bf16 instructions (AVX512-BF16, AMX) or a GPU.

Every cell also reports the linear probe on frozen sentence embeddings of the same
selection (evaluate's reference). `--full` adds the default recipe on the whole pool.
Scores: the best ingredient by validation, and the greedy soup. Writes docs/recipe_quality_<corpus>.{md,json,png};
the report checks issue 7's targets and keeps a hand-written `## Reading` section across rewrites.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {
    "plain": ["train.pooling=cls", "train.head_init=random", "train.head_learning_rate=null", "train.epochs=3",
              "train.min_steps=0", "train.learning_rates=[1.0e-4]", "train.seeds=[0, 1]"],
    "cls": ["train.pooling=cls", "train.head_init=random", "train.max_length=64", "train.seeds=[0]"],
    "random-head": ["train.head_init=random", "train.seeds=[0]"],
    "default": ["train.seeds=[0]"],
    "llrd": ["train.layer_lr_decay=0.8", "train.learning_rates=[1.0e-4]", "train.seeds=[0]"],
    "smooth": ["train.label_smoothing=0.1", "train.learning_rates=[1.0e-4]", "train.seeds=[0]"],
    "bf16": ["train.precision=bf16", "train.seeds=[0]"],
}


DEFAULT_MAX_EXAMPLES = 3000


def title(corpus: str, sizes: dict[str, int], max_examples: int, model: str | None) -> str:
    """The report's title: the corpus, its prepared split sizes and whether they are a subsample, and the base model
    when `--model` names one (params.yaml's otherwise)."""
    total = sum(sizes.values())
    kind = f"a {max_examples:,}-document subsample" if 0 < max_examples <= total else "the whole corpus"
    return (f"# Recipe quality on {corpus} ({kind}: pool {sizes['pool']:,}, validation {sizes['validation']:,}, "
            f"test {sizes['test']:,})" + (f", base model {model}" if model else ""))


def size_tag(max_examples: int) -> str:
    """'' for the default subsample, '_all' for the whole corpus, '_<n>' otherwise: keeps runs apart."""
    if max_examples == DEFAULT_MAX_EXAMPLES:
        return ""
    return "_all" if max_examples == 0 else f"_{max_examples}"


def model_tag(model: str | None) -> str:
    """'' for params.yaml's model, else '_<the folder's or hub id's last part>': another base model's cells and
    report are kept apart from the default model's."""
    if model is None:
        return ""
    return "_" + re.sub(r"[^a-z0-9.]+", "-", Path(model.rstrip("/")).name.lower()).strip("-")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="20newsgroups")
    p.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES,
                   help="stratified subsample of the corpus (0: all); a non-default size gets its own workspace "
                        "and docs file (suffix _all or _<n>)")
    p.add_argument("--model", help="base model instead of params.yaml's (a local HF folder or a hub id, as "
                   "params' `model`); gets its own workspace and docs file (suffix _<its last path part>)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--full", action=argparse.BooleanOptionalAction, default=True, help="full-pool reference")
    p.add_argument("--out", type=Path, help="the report's path without suffix (default docs/recipe_quality_<corpus>"
                   "[_all|_<n>]): a screen of a few recipes written apart from the full table")
    p.add_argument("--report-only", action="store_true", help="table + plot from the finished cells on disk "
                   "(whatever code version ran them); run nothing")
    return p.parse_args(argv)


def cell_params(base: list[str], recipe: str, budget, seed: int):
    from soupline import config

    return config.load(ROOT / "params.yaml", base + RECIPES[recipe] + [f"select.budget={budget}",
                                                                       f"select.seed={seed}", "soup.methods=[greedy]"])


def summarise(results: list[dict]) -> list[dict]:
    """Mean over seeds per (budget, recipe): best ingredient by validation (and its sd over seeds), greedy soup,
    probe; train seconds."""
    from soupline.evaluate import best_ingredient

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["budget"], r["recipe"]), []).append(r)
    rows = []
    for (budget, recipe), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], list(RECIPES).index(kv[0][1]))):
        row = {"budget": budget, "recipe": recipe, "seeds": len(rs), "examples": rs[0]["examples"],
               "train_seconds": float(np.mean([r["seconds"].get("train", 0.0) for r in rs]))}
        for metric in ("accuracy", "macro_f1"):
            best = [r["models"][best_ingredient(r["models"])][metric] for r in rs]
            row[f"ingredient_{metric}"] = float(np.mean(best))
            row[f"ingredient_{metric}_sd"] = float(np.std(best, ddof=1)) if len(best) > 1 else 0.0
            # a one-ingredient sweep makes no soup: its greedy soup is that ingredient
            row[f"soup_{metric}"] = float(np.mean([r["models"].get("soup:greedy", r["models"][best_ingredient(
                r["models"])])[metric] for r in rs]))
            row[f"probe_{metric}"] = float(np.mean([r["models"]["probe"][metric] for r in rs]))
        rows.append(row)
    return rows


def targets(rows: list[dict], full: dict | None) -> list[str]:
    """Issue 7's targets for the default recipe, from the seed-averaged rows: >= the probe in accuracy and
    macro-F1 at every budget, greedy soup >= the best ingredient by validation (test accuracy), and at 10 %
    >= 0.95 x the full-pool fine-tune's accuracy (when the full-pool cell ran)."""
    rows = [r for r in rows if r["recipe"] == "default"]
    if not rows:
        return []

    def verdict(misses: list[str]) -> str:
        return "**met**" if not misses else "**missed** at " + ", ".join(misses)

    below_probe = [f"{r['budget']:.0%} ({m} {r[f'ingredient_{m}'] - r[f'probe_{m}']:+.4f})"
                   for r in rows for m in ("accuracy", "macro_f1") if r[f"ingredient_{m}"] < r[f"probe_{m}"]]
    below_best = [f"{r['budget']:.0%} ({r['soup_accuracy'] - r['ingredient_accuracy']:+.4f})"
                  for r in rows if r["soup_accuracy"] < r["ingredient_accuracy"]]
    out = [f"- default >= probe in accuracy and macro-F1 at every budget: {verdict(below_probe)}",
           f"- greedy soup >= the best ingredient by validation (test accuracy) at every budget: {verdict(below_best)}"]
    tenth = next((r for r in rows if r["budget"] == 0.1), None)
    if full and tenth:
        ratio = tenth["ingredient_accuracy"] / full["ingredient_accuracy"]
        out.append(f"- at 10 %, accuracy >= 0.95 x the full-pool fine-tune: {tenth['ingredient_accuracy']:.4f} / "
                   f"{full['ingredient_accuracy']:.4f} = {ratio:.3f} x, **{'met' if ratio >= 0.95 else 'missed'}**")
    return out


def plot(rows: list[dict], full: dict | None, path: Path, corpus: str) -> None:
    from soupline.plots import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    budgets = sorted({r["budget"] for r in rows if r["budget"] != 1.0})
    for ax, metric in zip(axes, ("accuracy", "macro_f1")):
        probe = [np.mean([r[f"probe_{metric}"] for r in rows if r["budget"] == b]) for b in budgets]
        ax.plot([100 * b for b in budgets], probe, "k:", marker="x", label="linear probe")
        for recipe in RECIPES:
            rs = [r for r in rows if r["recipe"] == recipe and r["budget"] in budgets]
            if rs:
                ax.plot([100 * r["budget"] for r in rs], [r[f"ingredient_{metric}"] for r in rs], marker="o",
                        label=f"{recipe} (best ingredient)")
                if recipe == "default":
                    ax.plot([100 * r["budget"] for r in rs], [r[f"soup_{metric}"] for r in rs], marker="D",
                            ls="--", label="default greedy soup")
        if full:
            ax.axhline(full[f"ingredient_{metric}"], color="gray", ls="--", lw=1, label="full pool (default)")
        ax.set_xscale("log")
        ax.set_xlabel("budget (% of the pool)")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{corpus}: fine-tuning recipes vs a linear probe")
    save_figure(fig, path)


def write_report(results: list[dict], sizes: dict[str, int], args, tag: str) -> list[str]:
    """The table (json + markdown, keeping the report's hand-written reading) and the plot of the finished cells;
    returns the markdown's lines. A run of the full-pool cell alone has no budget to plot: it writes no plot."""
    from soupline.artifacts import write_json, write_text
    from soupline.report import keep_handwritten, md_table

    rows = summarise(results)
    full = next((r for r in rows if r["budget"] == 1.0), None)
    rows = [r for r in rows if r["budget"] != 1.0]
    base_path = args.out or ROOT / "docs" / f"recipe_quality_{args.corpus}{tag}"
    out, stem = base_path.parent, base_path.name
    if rows:
        plot(rows, full, out / f"{stem}.png", args.corpus)
    write_json(out / f"{stem}.json", {"rows": rows, "full_pool": full, "argv": sys.argv[1:]})
    cols = ["budget", "examples", "recipe", "seeds", "ingredient_accuracy", "ingredient_accuracy_sd",
            "ingredient_macro_f1", "soup_accuracy", "soup_macro_f1", "probe_accuracy", "probe_macro_f1",
            "train_seconds"]
    lines = [title(args.corpus, sizes, args.max_examples, args.model), "",
             f"Command: `python benchmarks/recipe_quality.py {shlex.join(sys.argv[1:])}`"]
    if rows:
        lines += ["", md_table(cols, [[str(r[c]) if c == "budget" else r[c] for c in cols] for r in rows])]
    if full:
        lines += ["", f"Full pool ({full['examples']} examples, default recipe, best ingredient): accuracy "
                      f"{full['ingredient_accuracy']:.4f}, macro-F1 {full['ingredient_macro_f1']:.4f}, "
                      f"{full['train_seconds']:.0f} s of training."]
    if rows:
        lines += ["", f"![recipes vs probe]({stem}.png)"]
    if checks := targets(rows, full):
        lines += ["", "## Issue targets (default recipe, mean over seeds)", "", *checks]
    report = out / f"{stem}.md"
    lines += keep_handwritten(report)
    write_text(report, "\n".join(lines) + "\n")
    return lines


def main(argv=None) -> None:
    from soupline import config
    from soupline.artifacts import read_json
    from tasks import study
    from tasks.layout import Layout
    from tasks.pipeline import run_stage

    args = parse_args(argv)
    tag = size_tag(args.max_examples) + model_tag(args.model)
    layout = Layout(ROOT / "data" / "bench" / f"recipe-{args.corpus}{tag.replace('_', '-')}")
    base = [f"prepare.source={args.corpus}"] + ([f"prepare.max_examples={args.max_examples}"]
                                                if args.max_examples else []) + ([f"model={args.model}"]
                                                                                 if args.model else [])
    shared = config.load(ROOT / "params.yaml", base)
    if not args.report_only:
        for stage in ("prepare", "embed"):
            run_stage(stage, shared, layout)
    grid = [(r, b, s) for b in args.budgets for s in args.seeds for r in args.recipes]
    if args.full:
        grid.append(("default", 1.0, args.seeds[0]))
    results = []
    for recipe, budget, seed in grid:
        params = cell_params(base, recipe, budget, seed)
        name = f"{recipe}-b{budget}-s{seed}"
        key = study.cell_key(params, layout)
        path = layout.study_cells / name / "cell.json"
        if args.report_only:  # whatever code version ran the cell
            result = json.loads(path.read_text()) if path.exists() else None
        else:
            result = study.cached_cell(name, layout, key) or study.run_cell(name, params, layout, key)
        if result is not None:
            results.append({**result, "recipe": recipe})
            print(f"{name}: " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in result["models"].items()),
                  flush=True)
    if not results or not (layout.prepared / "summary.json").exists():  # nothing to report: keep the docs as they are
        raise SystemExit(f"error: no finished cells (or no prepared split) under {layout.root}; run without "
                         "--report-only first: --report-only rewrites the report from finished cells")
    sizes = read_json(layout.prepared / "summary.json")["sizes"]
    print("\n".join(write_report(results, sizes, args, tag)))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
