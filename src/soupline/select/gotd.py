"""GOT-D (Kang et al., ICLR 2024): pick the candidates that nudge the pool toward a target set.

Fine-tuning on D_U moves the model's data distribution toward D_U; to first order the OT distance
to the target changes by <D_U, dOT/dD_S>, so the best candidates are those with the most negative
gradient of OT(pool, target) w.r.t. their probability mass. That gradient is the pool-side dual
potential f of one entropic OT problem (POT, log-domain Sinkhorn), calibrated to f_i - mean f.
Cost = 1 - cosine. Pools larger than `max_pool_for_ot` are solved on a seeded subsample and f is
extended to every pool point in chunks with the entropic c-transform of the target potential g:
f(x) = -eps * log sum_j b_j exp((g_j - c(x, y_j)) / eps), exact for the subsample's dual.
Target sets above `max_target` are subsampled too. The solve runs on POT's torch backend, on
`extras["device"]` (GPU when the pipeline has one), in float64 for small problems, float32 else.
The target set is the validation split, or the texts of `target` (a file), which the select stage
reads with `read_target` and embeds like the pool; the method itself never reads files.

`rounds > 1` (our extension) spends the budget in rounds, Frank-Wolfe style: the first round is
the paper's rule; each later round re-solves OT from the nudged distribution (1 - w) pool +
w picks-so-far, w = nudge x (picks so far / budget), and takes the unpicked candidates whose
potential (the c-transform of the new target potential, the gradient for mass added at a point)
is lowest. The first-order rule holds for a small step; one big step piles the whole budget where
the target is denser than the pool, which on a pool drawn from the target's own distribution is
mostly sampling noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from soupline.errors import SouplineError
from soupline.select.base import MethodConfig, Selection, SelectionInput, register


class GotdConfig(MethodConfig):
    eps: float | None = Field(None, gt=0, description="entropic regularisation; null: eps_scale x median cost")
    eps_scale: float = Field(0.05, gt=0, description="eps relative to the median pool-target cost")
    max_iter: int = Field(2000, ge=10, description="Sinkhorn iterations at most")
    tol: float = Field(1e-5, gt=0, description="Sinkhorn stops when the target marginal's relative L2 error "
                       "||P^T 1 - b|| / ||b|| is below this")
    max_pool_for_ot: int = Field(20000, ge=100, description="pool points in the OT solve; the rest get "
                                 "their potential from the c-transform")
    max_target: int = Field(5000, ge=1, description="target points in the OT problem; a larger target set "
                            "is subsampled (seeded)")
    label_weight: float = Field(0.0, ge=0, description="add this cost when pool and target labels differ "
                                "(needs a labelled target; 0: label-blind, as in the paper)")
    chunk: int = Field(8192, ge=1, description="pool rows per c-transform chunk")
    rounds: int = Field(1, ge=1, description="spend the budget in this many rounds, re-solving OT from the "
                        "pool nudged toward the picks so far (1: the paper's one-shot rule)")
    nudge: float = Field(0.9, gt=0, lt=1, description="rounds > 1: weight w of the picks in the nudged source "
                         "distribution (1 - w) pool + w picks, reached as the budget is spent")
    target: str | None = Field(None, description="a .jsonl/.csv/.parquet file or datasets folder whose "
                               "`target_text_column` is the target set (unlabelled); null: the validation split")
    target_text_column: str = Field("text", description="column of `target` holding the texts")


def read_target(path: str | Path, text_column: str = "text") -> list[str]:
    """The non-empty texts of a target file (select.gotd.target); one-line errors when it has none."""
    import pandas as pd

    from soupline.data import read_table

    where = f"select.gotd.target {str(path)!r}"
    frame = read_table(path)
    if isinstance(frame, dict):
        raise SouplineError(f"{where} is a datasets folder with splits {sorted(frame)}; point it at one split")
    if text_column not in frame.columns:
        raise SouplineError(f"{where} has no text column {text_column!r}; its columns are {list(frame.columns)} "
                            "(set select.gotd.target_text_column)")
    texts = [str(t) for t in frame[text_column] if not pd.isna(t) and str(t).strip()]
    if not texts:
        raise SouplineError(f"{where} has no text: column {text_column!r} is empty in all {len(frame)} rows; "
                            "give a file with target texts or set select.gotd.target to null (validation split)")
    return texts


def cost_matrix(x, y, x_labels=None, y_labels=None, label_weight: float = 0.0):
    """1 - cosine between L2-normalised rows (+ label_weight where labels differ); torch tensors."""
    cost = 1.0 - x @ y.T
    if label_weight:
        cost = cost + label_weight * (x_labels[:, None] != y_labels[None, :]).to(cost.dtype)
    return cost


def sinkhorn_potentials(cost, eps: float, a=None, b=None, max_iter: int = 2000, tol: float = 1e-5):
    """Dual potentials (F, G) of entropic OT in POT's convention, plan = exp((F_i + G_j - C_ij) / eps).

    F is the gradient of the entropic OT value with respect to the source masses a, up to a
    constant that cancels along mass-preserving changes. Uniform masses unless given.
    """
    import ot
    import torch

    n, m = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device) if a is None else a
    b = torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device) if b is None else b
    norm_b = float(torch.linalg.norm(b))
    _, log = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=max_iter, stopThr=tol * norm_b,
                         log=True, warn=False)
    err = float(log["err"][-1]) / norm_b
    info = {"iterations": int(log["niter"]) + 1, "marginal_error": err, "converged": err < tol}
    return eps * log["log_u"], eps * log["log_v"], info


def c_transform(g, cost, eps: float):
    """Pool-side potential of each cost row from the target potential G (POT convention: G holds eps log b)."""
    import torch

    return -eps * torch.logsumexp((g[None, :] - cost) / eps, dim=1)


def solve(pool: SelectionInput, seed: int, cfg: GotdConfig,
          picked: np.ndarray | None = None, weight: float = 0.0) -> tuple[np.ndarray, float, dict[str, Any]]:
    """f for every pool point (defined up to a constant), the eps used, and solver facts.

    With `picked`, the source is the nudged distribution (1 - weight) subsample + weight picked, and
    f is the c-transform of its target potential for every pool point.
    """
    import torch

    y = pool.target_embeddings
    if cfg.target is not None and pool.extras.get("target_source") != cfg.target:
        raise SouplineError(f"select.gotd.target={cfg.target!r} is set but the select stage passed another target "
                            "set (extras['target_source'] must name that file); set select.gotd.target to null")
    if y is None or len(y) == 0:
        raise SouplineError("GOT-D needs a non-empty target set (the validation split, or select.gotd target "
                            "embeddings); the target has no rows")
    if not np.isfinite(y).all():
        raise SouplineError("target embeddings contain NaN or inf; re-run the embed stage")
    if y.shape[1] != pool.embeddings.shape[1]:
        raise SouplineError(f"target embeddings have {y.shape[1]} dimensions, the pool {pool.embeddings.shape[1]}; "
                            "embed both with the same model")
    if cfg.label_weight and pool.target_labels is None:
        raise SouplineError("select.gotd.label_weight > 0 needs a labelled target set; set it to 0")
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(pool.n, cfg.max_pool_for_ot, replace=False)) if pool.n > cfg.max_pool_for_ot \
        else np.arange(pool.n)
    tgt = np.sort(rng.choice(len(y), cfg.max_target, replace=False)) if len(y) > cfg.max_target \
        else np.arange(len(y))
    device = pool.extras.get("device", "cpu")
    dtype = torch.float64 if len(sub) * len(tgt) <= 1 << 22 else torch.float32  # exact when small, lean when big
    tensor = lambda a, dt=dtype: torch.as_tensor(np.ascontiguousarray(a), device=device).to(dt)  # noqa: E731
    x_all, y_t = tensor(pool.embeddings), tensor(y[tgt])
    xl_all = tensor(pool.labels, torch.int64) if cfg.label_weight else None
    yl = tensor(np.asarray(pool.target_labels)[tgt], torch.int64) if cfg.label_weight else None

    def cost(rows: np.ndarray):
        r = torch.as_tensor(rows, device=device)
        return cost_matrix(x_all[r], y_t, xl_all[r] if xl_all is not None else None, yl, cfg.label_weight)

    if picked is None:
        c_sub = cost(sub)
        eps = cfg.eps or cfg.eps_scale * float(torch.median(c_sub))
        if eps <= 0:
            raise SouplineError("the median pool-target cost is 0 (the pool and target coincide), so eps would be "
                                "0; set select.gotd.eps")
        f_sub, g, info = sinkhorn_potentials(c_sub, eps, max_iter=cfg.max_iter, tol=cfg.tol)
        del c_sub
        if len(sub) == pool.n:
            f = f_sub.double().cpu().numpy()
    else:  # a later round: `select` passes the first round's eps as cfg.eps
        eps = cfg.eps
        source = np.union1d(sub, picked)
        a = np.zeros(len(source))
        a[np.searchsorted(source, sub)] += (1 - weight) / len(sub)
        a[np.searchsorted(source, picked)] += weight / len(picked)
        _, g, info = sinkhorn_potentials(cost(source), eps, a=tensor(a), max_iter=cfg.max_iter, tol=cfg.tol)
    if picked is not None or len(sub) < pool.n:
        f = np.empty(pool.n)
        for start in range(0, pool.n, cfg.chunk):
            rows = np.arange(start, min(pool.n, start + cfg.chunk))
            f[rows] = c_transform(g, cost(rows), eps).double().cpu().numpy()
    info.update(target_size=int(len(y)), target_in_ot=int(len(tgt)),
                ot_pool_size=int(len(sub) if picked is None else len(source)))
    return f, eps, info


def dual_potentials(pool: SelectionInput, seed: int, cfg: GotdConfig) -> tuple[np.ndarray, float]:
    """f (one value per pool point, defined up to a constant) and the eps used."""
    f, eps, _ = solve(pool, seed, cfg)
    return f, eps


@register("gotd", GotdConfig)
def select(pool: SelectionInput, budget: int, seed: int, cfg: GotdConfig) -> Selection:
    rounds = min(cfg.rounds, budget)
    picked, scores, iterations = np.empty(0, dtype=np.int64), [], []
    for size in budget // rounds + (np.arange(rounds) < budget % rounds):
        f, eps, info = solve(pool, seed, cfg, picked if len(picked) else None, cfg.nudge * len(picked) / budget)
        cfg = cfg.model_copy(update={"eps": eps})  # later rounds reuse it: no second cost matrix + median
        grad = pool.n / max(pool.n - 1, 1) * (f - f.mean())  # calibrated gradient w.r.t. each candidate's mass
        grad[picked] = np.inf
        take = np.argsort(grad, kind="stable")[:size]
        picked, scores = np.concatenate([picked, take]), scores + [-grad[take]]
        iterations.append(info["iterations"])
    return Selection(picked, np.concatenate(scores), {"eps": eps, **info, "rounds": rounds,
                                                      "iterations_per_round": iterations})
