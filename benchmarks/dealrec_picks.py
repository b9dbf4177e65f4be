"""What DEALRec's coverage sampling picks, against random: why it loses to random on balanced pools.

    python benchmarks/dealrec_picks.py                                  # bbcnews and its skewed pool
    python benchmarks/dealrec_picks.py --corpus 20newsgroups --max-examples 6000 --pools corpus
    python benchmarks/dealrec_picks.py --methods random dealrec dealrec:strata_by=quantile

Same pools, selection inputs and effort settings as `selection_quality.py` (probe mode). For each method,
budget and seed it records, averaged over seeds: how many score strata are non-empty and how many of them
receive picks; the share of picks among the pool's top 10 % of DEALRec scores; the total-variation distance
between the picks' label shares and the pool's; the picks' mean cosine distance to their label's centroid
(over the pool); the share of picks whose label disagrees with the majority of their 10 nearest pool
neighbours; and the share of picks with a near-duplicate (cosine >= 0.95) among the other picks. Pool values
of the same statistics are printed first. Writes `<out>.md` and `<out>.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import selection_quality as sq  # noqa: E402  (the benchmark's pools, inputs and effort cache)

STATS = ["strata_nonempty", "strata_picked", "top10_share", "label_tv", "centroid_dist", "knn_disagree", "dup_share"]


def pool_geometry(emb: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit embeddings, each example's cosine distance to its label's centroid, and whether its label
    disagrees with the majority of its 10 nearest pool neighbours."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centroids = np.stack([x[y == c].mean(0) for c in range(y.max() + 1)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    dist = 1 - np.einsum("nd,nd->n", x, centroids[y])
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :10]
    majority = np.array([np.bincount(row, minlength=y.max() + 1).argmax() for row in y[nn]])
    return x, dist, majority != y


def pick_stats(idx, score, strata, x, y, dist, disagree, top10) -> dict:
    """The statistics of one selection `idx` (positions into the pool)."""
    lo, hi = score.min(), score.max()
    bins = np.minimum(((score - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    labels = y.max() + 1
    pool_share = np.bincount(y, minlength=labels) / len(y)
    pick_share = np.bincount(y[idx], minlength=labels) / len(idx)
    sims = x[idx] @ x[idx].T
    np.fill_diagonal(sims, -1)
    return {"strata_nonempty": len(np.unique(bins)), "strata_picked": len(np.unique(bins[idx])),
            "top10_share": float(top10[idx].mean()), "label_tv": float(0.5 * np.abs(pick_share - pool_share).sum()),
            "centroid_dist": float(dist[idx].mean()), "knn_disagree": float(disagree[idx].mean()),
            "dup_share": float((sims.max(1) >= 0.95).mean()) if len(idx) > 1 else 0.0}


def main() -> None:
    from soupline import select
    from soupline.artifacts import write_json, write_text
    from soupline.config import TrainParams
    from soupline.models import resolve_model
    from soupline.select import dealrec

    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["random", "dealrec"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--corpus", default="bbcnews")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--pools", nargs="+", choices=sq.POOLS, default=list(sq.POOLS))
    parser.add_argument("--out", default="/tmp/dealrec_picks")
    args = parser.parse_args()
    sq.cache_effort()
    sq.cache_scores()
    names, corpus = sq.load_corpus(args.corpus, args.max_examples)
    rows, lines = [], []
    for kind in args.pools:
        texts, y, emb = corpus["pool"] if kind == "corpus" else sq.skew(corpus["pool"])
        pool_name = sq.pool_id(args.corpus, kind)
        inp = select.SelectionInput(embeddings=emb, labels=y, label_names=names, texts=texts,
                                    extras={"model_path": resolve_model("all-MiniLM-L6-v2"),
                                            "train": TrainParams(max_length=64), "device": "cpu"})
        default = dealrec.DealRecConfig()
        score, _ = dealrec.scores(inp, 0, default)
        top10 = score >= np.quantile(score, 0.9)
        x, dist, disagree = pool_geometry(emb, y)
        everyone = pick_stats(np.arange(len(y)), score, default.strata, x, y, dist, disagree, top10)
        q = np.quantile(score, [0.1, 0.5, 0.9, 0.99])
        lines.append(f"{pool_name}: {len(y)} examples; DEALRec score min {score.min():.3f} p10 {q[0]:.3f} median "
                     f"{q[1]:.3f} p90 {q[2]:.3f} p99 {q[3]:.3f} max {score.max():.3f}; pool: " +
                     ", ".join(f"{k} {v:.3f}" for k, v in everyone.items()))
        lines.append("top-10 % scores' label shares vs the pool's: " + ", ".join(
            f"{names[c]} {np.mean(y[top10] == c):.2f}/{np.mean(y == c):.2f}" for c in range(len(names))))
        for method in args.methods:
            name, cfg = select.method_config(method)
            for b in args.budgets:
                budget = select.resolve_budget(b, len(y))
                cells = [pick_stats(select.run_method(name, inp, budget, seed, cfg, "none").indices, score,
                                    default.strata, x, y, dist, disagree, top10) for seed in args.seeds]
                row = {"pool": pool_name, "method": method, "budget": b,
                       **{k: float(np.mean([c[k] for c in cells])) for k in STATS}}
                rows.append(row)
                print(" ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    table = ["| pool | method | budget | " + " | ".join(STATS) + " |", "|" + "---|" * (3 + len(STATS))]
    table += [f"| {r['pool']} | {r['method']} | {r['budget']:.0%} | " + " | ".join(f"{r[k]:.3f}" for k in STATS) + " |"
              for r in rows]
    write_json(Path(args.out).with_suffix(".json"), rows)
    write_text(Path(args.out).with_suffix(".md"), "\n".join(lines + [""] + table) + "\n")
    print("\n".join(lines + table))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
