"""Screen (issue 7): R-Drop in the default recipe's fine-tune, paired with the default recipe.

    python benchmarks/rdrop_stage.py                            # 20newsgroups (3,000 docs), 10 %, seed 0, alpha 1
    python benchmarks/rdrop_stage.py --alphas 1 4

Liang et al. 2021 ("R-Drop: Regularized Dropout for Neural Networks"): each micro-batch goes through the model twice,
so under two dropout masks; the loss is the mean of the two cross-entropies plus alpha x the symmetric KL divergence
between the two predictive distributions, which pulls the sub-models that dropout samples toward one prediction. Both
arms train on the same selection (recipe_quality.py's workspace: the same prepare, embed and kmeans pick), LP-FT
head, learning rate, seed, data order and steps; only the loss differs (`soupline.train.batch_loss`, swapped for the
R-Drop arm's run). Results go to the workspace's study cells folder, rdrop-results.json (an arm finished under these
settings is not trained again; one finished under others stops the run: `run_screen`) and the table is printed;
docs/recipe_quality_20newsgroups_remedies.md reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    from setfit_stage import screen_parser

    p = screen_parser(__doc__)
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
    from setfit_stage import run_screen

    from soupline import train as train_module

    args = parse_args(argv)

    def train_arm(arm: str, cell) -> tuple[dict, dict]:
        loss = train_module.batch_loss if alphas[arm] is None else rdrop_loss(alphas[arm])
        with mock.patch.object(train_module, "batch_loss", loss):
            return cell.fit(cell.model, arm), {}

    alphas = {"default": None, **{f"rdrop{alpha:g}": alpha for alpha in args.alphas}}
    run_screen(args, "rdrop", {arm: {"alpha": alpha} for arm, alpha in alphas.items()}, train_arm)


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
