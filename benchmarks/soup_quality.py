"""Soup quality: best ingredient vs uniform / greedy / TIES / DARE / learned soups, 8 ingredients, 3 selection seeds.

    python benchmarks/soup_quality.py                          # bbcnews, kmeans at 10 %, lrs {1e-4, 2e-4} x seeds 0-3
    python benchmarks/soup_quality.py --seeds 0 --train-seeds 0 1    # a quick look

Each selection seed is one cell of `tasks/study.py` (select -> train the sweep -> soup ->
evaluate) in data/bench/soup-<corpus>/, so finished cells are cached. The best ingredient is
chosen by validation accuracy, as a user would choose it without the soups. Greedy soup is
>= the best ingredient on validation by construction; the table shows what happens on test, and how many
ingredients greedy kept. Writes docs/soup_quality.{md,json} (atomically), keeping the report's hand-written
`## Reading` section across rewrites.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOUPS = ["uniform", "greedy", "ties", "dare", "learned"]


def main(argv=None) -> None:
    from soupline import config
    from soupline.artifacts import write_json, write_text
    from soupline.evaluate import best_ingredient
    from soupline.report import keep_handwritten
    from tasks import study
    from tasks.layout import Layout
    from tasks.pipeline import run_stage

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="bbcnews")
    p.add_argument("--method", default="kmeans")
    p.add_argument("--budget", default="0.1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="selection seeds")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--report-only", action="store_true", help="report the finished cells on disk (whatever "
                   "code version ran them); run nothing")
    args = p.parse_args(argv)

    layout = Layout(ROOT / "data" / "bench" / f"soup-{args.corpus}")
    base = [f"prepare.source={args.corpus}", f"select.method={args.method}", f"select.budget={args.budget}",
            f"train.seeds=[{', '.join(map(str, args.train_seeds))}]", f"soup.methods=[{', '.join(SOUPS)}]"]
    shared = config.load(ROOT / "params.yaml", base)
    if not args.report_only:
        for stage in ("prepare", "embed"):
            run_stage(stage, shared, layout)
    rows = []
    for seed in args.seeds:
        params = config.load(ROOT / "params.yaml", base + [f"select.seed={seed}"])
        name = f"{args.method}-b{args.budget}-s{seed}"
        if args.report_only:
            path = layout.study_cells / name / "cell.json"
            if not path.exists():
                continue
            cell = json.loads(path.read_text())
        else:
            key = study.cell_key(params, layout)
            cell = study.cached_cell(name, layout, key) or study.run_cell(name, params, layout, key)
        models = cell["models"]
        ingredients = {k: v for k, v in models.items() if v["kind"] == "ingredient"}
        best = best_ingredient(models)
        row = {"seed": seed, "ingredients": len(ingredients), "best_by_val": best,
               "best_ingredient": ingredients[best]["accuracy"],
               "best_ingredient_val": ingredients[best]["val_accuracy"],
               "oracle_ingredient": max(v["accuracy"] for v in ingredients.values()),
               "mean_ingredient": float(np.mean([v["accuracy"] for v in ingredients.values()])),
               "train_seconds": cell["seconds"].get("train", 0.0), "soup_seconds": cell["seconds"].get("soup", 0.0)}
        for s in SOUPS:
            row[s], row[f"{s}_val"] = models[f"soup:{s}"]["accuracy"], models[f"soup:{s}"]["val_accuracy"]
        row["greedy_kept"] = len(models["soup:greedy"]["ingredients"])
        rows.append(row)
        print(json.dumps(row), flush=True)

    if not rows:  # --report-only before any cell of these seeds finished: keep the docs as they are
        raise SystemExit(f"error: no finished cells for selection seeds {args.seeds} under {layout.root}; run "
                         "without --report-only first: --report-only rewrites the report from finished cells")
    cols = ["best_ingredient", "oracle_ingredient", "mean_ingredient"] + SOUPS
    mean = {c: float(np.mean([r[c] for r in rows])) for c in cols}
    command = shlex.join(["python", "benchmarks/soup_quality.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"# Soup quality on {args.corpus} ({args.method}, budget {args.budget}, "
             f"{rows[0]['ingredients']} ingredients per seed)", "", f"Command: `{command}`", "",
             "Test accuracy. best ingredient = chosen by validation accuracy; oracle = best on test (not selectable "
             "in practice).", "",
             "| selection seed | " + " | ".join(cols) + " | greedy val - best ingredient val | greedy kept |",
             "|" + "---|" * (len(cols) + 3)]
    lines += [f"| {r['seed']} | " + " | ".join(f"{r[c]:.4f}" for c in cols)
              + f" | {r['greedy_val'] - r['best_ingredient_val']:+.4f} | {r['greedy_kept']} of {r['ingredients']} |"
              for r in rows]
    lines += ["| mean | " + " | ".join(f"{mean[c]:.4f}" for c in cols) + " | | |"]
    report = ROOT / "docs" / "soup_quality.md"
    lines += keep_handwritten(report)
    write_json(ROOT / "docs" / "soup_quality.json", {"rows": rows, "mean": mean})
    write_text(report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
