"""Screen (issue 7): R-Drop in the default recipe's fine-tune, paired with the default recipe.

    python benchmarks/rdrop_stage.py                            # 20newsgroups (3,000 docs), 10 %, seed 0, alpha 1
    python benchmarks/rdrop_stage.py --alphas 1 4

Liang et al. 2021 ("R-Drop: Regularized Dropout for Neural Networks"): each micro-batch goes through the model twice,
so under two dropout masks; the loss is the mean of the two cross-entropies plus alpha x the symmetric KL divergence
between the two predictive distributions, which pulls the sub-models that dropout samples toward one prediction. Both
arms train on the same selection (recipe_quality.py's workspace: the same prepare, embed and kmeans pick), LP-FT
head, learning rate, seed, data order and steps; only the loss differs (`soupline.train.batch_loss`, swapped for the
R-Drop arm's run). Results go to the workspace's study cells folder, rdrop-results.json (a finished arm is not trained
again) and the table is printed; docs/recipe_quality_20newsgroups_remedies.md reads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="20newsgroups")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1])
    p.add_argument("--seed", type=int, default=0, help="selection seed (select.seed)")
    p.add_argument("--lr", type=float, default=2.0e-4, help="the fine-tune's learning rate (the default sweep's best "
                   "by validation at 5 and 10 %% in the remedies screen)")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0], help="R-Drop's KL weights, one arm each")
    args = p.parse_args(argv)
    if min(args.alphas) < 0:  # the KL term would reward the two passes for disagreeing
        p.error(f"--alphas {min(args.alphas):g}: a KL weight is at least 0")
    return args


def rdrop_loss(alpha: float):
    """`soupline.train.batch_loss` under R-Drop: two passes (two dropout masks), the mean of their cross-entropies
    plus alpha x (KL(p1 || p2) + KL(p2 || p1)) / 2, each summed over the micro-batch as batch_loss sums (the
    default's unweighted loss: a class-weighted KL term is not defined here)."""
    import torch

    f = torch.nn.functional

    def loss(model, batch: dict, targets, weights, label_smoothing: float, autocast):
        with autocast:
            first, second = model(**batch).logits.float(), model(**batch).logits.float()
        ce = [f.cross_entropy(z, targets, weight=weights, reduction="sum", label_smoothing=label_smoothing)
              for z in (first, second)]
        p, q = f.log_softmax(first, -1), f.log_softmax(second, -1)
        kl = f.kl_div(q, p, reduction="sum", log_target=True) + f.kl_div(p, q, reduction="sum", log_target=True)
        return (ce[0] + ce[1]) / 2 + alpha * kl / 2

    return loss


def main(argv=None) -> None:
    from recipe_quality import cell_params
    from setfit_stage import test_scores

    from soupline import config
    from soupline import train as train_module
    from soupline.artifacts import read_json, write_json
    from soupline.report import md_table
    from tasks.common import base_model, label_ids, read_labels, read_selection, read_split
    from tasks.layout import Layout
    from tasks.pipeline import run_stage
    from tasks.study import cell_layout

    args = parse_args(argv)
    layout = Layout(ROOT / "data" / "bench" / f"recipe-{args.corpus}")
    base = [f"prepare.source={args.corpus}", "prepare.max_examples=3000"]
    for stage in ("prepare", "embed"):
        run_stage(stage, config.load(ROOT / "params.yaml", base), layout)
    results_path = layout.study_cells / "rdrop-results.json"
    results = read_json(results_path) if results_path.exists() else {}
    names = read_labels(layout)
    pool, val, test = (read_split(layout, s) for s in ("pool", "validation", "test"))
    for budget in args.budgets:
        params = cell_params(base, "default", budget, args.seed)
        cfg = params.train.model_copy(update={"learning_rates": [args.lr]})
        cell = cell_layout(layout, f"rdrop-b{budget}-s{args.seed}")
        run_stage("select", params, cell)
        idx = read_selection(cell)["indices"]
        texts, y = pool["text"].iloc[idx].tolist(), label_ids(pool["label"], names)[idx]
        for alpha in [None, *args.alphas]:
            arm = "default" if alpha is None else f"rdrop{alpha:g}"
            name = f"b{budget}-s{args.seed}-lr{args.lr:g}-{arm}"
            if name in results:
                continue
            loss = train_module.batch_loss if alpha is None else rdrop_loss(alpha)
            with mock.patch.object(train_module, "batch_loss", loss):
                info = train_module.finetune(base_model(params), names, texts, y, val["text"].tolist(),
                                             label_ids(val["label"], names), cfg, args.lr, 0, cell.root / arm,
                                             cell.root / f"{arm}.ckpt", device="cpu", progress=False)
            results[name] = {"budget": budget, "examples": len(idx), "arm": arm, "lr": args.lr,
                             **test_scores(cell.root / arm, test["text"].tolist(), label_ids(test["label"], names),
                                           names, cfg.max_length),
                             "val_accuracy": info["val_accuracy"], "probe_val_accuracy": info["probe"]["val_accuracy"],
                             "train_seconds": info["train_seconds"]}
            write_json(results_path, results)
            print(name, results[name], flush=True)
    cols = ["budget", "examples", "arm", "lr", "accuracy", "macro_f1", "val_accuracy", "probe_val_accuracy",
            "train_seconds"]
    print(md_table(cols, [[r[c] for c in cols] for r in results.values()]))


if __name__ == "__main__":
    main()
