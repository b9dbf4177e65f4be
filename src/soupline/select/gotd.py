"""GOT-D (Kang et al., ICLR 2024): pick the candidates that nudge the pool toward a target set.

Fine-tuning on D_U moves the model's data distribution toward D_U; to first order the OT distance
to the target changes by <D_U, dOT/dD_S>, so the best candidates are those with the most negative
gradient of OT(pool, target) w.r.t. their probability mass. That gradient is the pool-side dual
potential f of one entropic OT problem (POT, log-domain Sinkhorn), calibrated to f_i - mean f.
Cost = 1 - cosine. Pools larger than `max_pool_for_ot` are solved on a seeded subsample and f is
extended to every pool point in chunks with the entropic c-transform of the target potential g:
f(x) = -eps * log sum_j b_j exp((g_j - c(x, y_j)) / eps), exact for the subsample's dual.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from soupline.errors import SouplineError
from soupline.select.base import MethodConfig, Selection, SelectionInput, register


class GotdConfig(MethodConfig):
    eps: float | None = Field(None, gt=0, description="entropic regularisation; null: eps_scale x median cost")
    eps_scale: float = Field(0.05, gt=0, description="eps relative to the median pool-target cost")
    max_iter: int = Field(2000, ge=10, description="Sinkhorn iterations at most")
    max_pool_for_ot: int = Field(20000, ge=100, description="pool points in the OT solve; the rest get "
                                 "their potential from the c-transform")
    label_weight: float = Field(0.0, ge=0, description="add this cost when pool and target labels differ "
                                "(needs a labelled target; 0: label-blind, as in the paper)")
    chunk: int = Field(8192, ge=1, description="pool rows per c-transform chunk")


def _cost(x: np.ndarray, y: np.ndarray, x_labels, y_labels, label_weight: float) -> np.ndarray:
    cost = 1.0 - x.astype(np.float64) @ y.astype(np.float64).T
    if label_weight and x_labels is not None and y_labels is not None:
        cost += label_weight * (x_labels[:, None] != y_labels[None, :])
    return cost


def dual_potentials(pool: SelectionInput, seed: int, cfg: GotdConfig) -> tuple[np.ndarray, float]:
    """f (one value per pool point, defined up to a constant) and the eps used."""
    import ot
    from scipy.special import logsumexp

    y = pool.target_embeddings
    if y is None or len(y) == 0:
        raise SouplineError("GOT-D needs a non-empty target set (the validation split, or select.gotd target "
                            "embeddings); the target has no rows")
    if not np.isfinite(y).all():
        raise SouplineError("target embeddings contain NaN or inf; re-run the embed stage")
    y_labels = pool.target_labels if cfg.label_weight else None
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(pool.n, cfg.max_pool_for_ot, replace=False)) if pool.n > cfg.max_pool_for_ot \
        else np.arange(pool.n)
    cost = _cost(pool.embeddings[sub], y, pool.labels[sub], y_labels, cfg.label_weight)
    eps = cfg.eps or cfg.eps_scale * float(np.median(cost))
    a, b = np.full(len(sub), 1.0 / len(sub)), np.full(len(y), 1.0 / len(y))
    _, log = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=cfg.max_iter, stopThr=1e-9, log=True)
    g = eps * np.asarray(log["log_v"])
    if len(sub) == pool.n:
        return eps * np.asarray(log["log_u"]), eps
    f = np.empty(pool.n)
    for start in range(0, pool.n, cfg.chunk):
        rows = slice(start, start + cfg.chunk)
        c = _cost(pool.embeddings[rows], y, pool.labels[rows], y_labels, cfg.label_weight)
        f[rows] = -eps * logsumexp((g[None, :] - c) / eps + np.log(b)[None, :], axis=1)
    return f, eps


@register("gotd", GotdConfig)
def select(pool: SelectionInput, budget: int, seed: int, cfg: GotdConfig) -> Selection:
    f, eps = dual_potentials(pool, seed, cfg)
    grad = pool.n / max(pool.n - 1, 1) * (f - f.mean())  # calibrated gradient w.r.t. each candidate's mass
    idx = np.argsort(grad, kind="stable")[:budget]
    return Selection(idx, -grad[idx], {"eps": eps, "target_size": int(len(pool.target_embeddings)),
                                       "ot_pool_size": int(min(pool.n, cfg.max_pool_for_ot))})
