"""GOT-D (Kang et al., ICLR 2024): pick the candidates that nudge the pool toward a target set.

Fine-tuning on D_U moves the model's data distribution toward D_U; to first order the OT distance
to the target changes by <D_U, dOT/dD_S>, so the best candidates are those with the most negative
gradient of OT(pool, target) w.r.t. their probability mass. That gradient is the pool-side dual
potential f of one entropic OT problem (Sinkhorn in torch: POT's matrix scaling, its iterations on a kernel
built once per solve, on a shifted cost; POT's log domain when that leaves float range), calibrated to
f_i - mean f. Cost = 1 - cosine.
Pools larger than `max_pool_for_ot` are solved on a seeded subsample and f is extended to every pool
point in chunks with the entropic c-transform of the target potential g:
f(x) = -eps * log sum_j b_j exp((g_j - c(x, y_j)) / eps), exact for the subsample's dual.
Target sets above `max_target` are subsampled too. The solve runs on `extras["device"]` (GPU when
the pipeline has one), in float64 for small problems, float32 else. The target set is the
validation split, or the texts of `target` (a file), which the select stage reads with
`read_target` and embeds like the pool; the method itself never reads files.

Three defaults go beyond the paper (`rounds: 1, target_copy_threshold: null, label_weight: 0` is the paper's rule):
- `rounds: 16` spends the budget in rounds, Frank-Wolfe style: the first round is the paper's rule;
  each later round re-solves OT (warm-started) from the nudged distribution (1 - w) pool + w
  picks-so-far, w = nudge x (picks so far / budget), and takes the unpicked candidates whose
  potential (the c-transform of the new target potential) is lowest. The first-order rule holds for
  a small step; one big step piles the whole budget where the target is denser than the pool, which
  on a pool drawn from the target's own distribution is mostly sampling noise.
- `target_copy_threshold: 0.95`: a candidate that nearly copies a target text has the most negative
  potential of all, so the paper's rule takes such copies first; they teach nothing the target
  lacks and, with the validation split as target, leak into early stopping and greedy soup.
- `label_weight: null`: with the validation split as target, pool-target pairs whose labels differ cost
  AUTO_LABEL_WEIGHT more (after OTDD / LAVA), so a label's picks move toward its own validation texts;
  a target file has no labels and stays label-blind.
On bbcnews (docs/selection_quality.md) the one-shot rule loses to random on the balanced pool.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from soupline.errors import SouplineError
from soupline.select.base import MethodConfig, Selection, SelectionInput, register
from soupline.select.dedup import loosen, nearest_cosine, within
from soupline.select.quotas import quota_cut


AUTO_LABEL_WEIGHT = 0.1  # label_weight: null with a labelled target (docs/gotd_defaults.md, session 36)


class GotdConfig(MethodConfig):
    eps: float | None = Field(None, gt=0, description="entropic regularisation; null: eps_scale x median cost")
    eps_scale: float = Field(0.05, gt=0, description="eps relative to the median pool-target 1 - cosine "
                             "(the label term of `label_weight` left out)")
    max_iter: int = Field(2000, ge=10, description="Sinkhorn iterations at most")
    tol: float = Field(1e-5, gt=0, description="Sinkhorn stops when the target marginal's relative L2 error "
                       "||P^T 1 - b|| / ||b|| is below this")
    max_pool_for_ot: int = Field(20000, ge=100, description="pool points in the OT solve; the rest get "
                                 "their potential from the c-transform")
    max_target: int = Field(5000, ge=1, description="target points in the OT problem; a larger target set "
                            "is subsampled (seeded)")
    label_weight: float | None = Field(
        None, ge=0, description="add this cost when pool and target labels differ (> 0 needs a labelled target); "
        f"null: {AUTO_LABEL_WEIGHT} when the target is labelled (the validation split), 0 for a `target` file; "
        "0: label-blind, as in the paper")
    chunk: int = Field(1024, ge=1, description="pool rows per chunk of costs and c-transform (1024 x 5000 float32: "
                       "20 MB, which the allocator reuses; 8192-row chunks were mapped and unmapped by the kernel "
                       "each time: 1.7x the select time of a 60k pool)")
    cost_cache_mb: float = Field(1024, ge=0, description="rounds > 1: keep the whole pool-target cost matrix in "
                                 "memory across rounds when it takes at most this many MB; else keep as many of its "
                                 "rows as fit (with the OT subsample's) and recompute the others in chunks each round")
    rounds: int = Field(16, ge=1, description="spend the budget in this many rounds, re-solving OT from the "
                        "pool nudged toward the picks so far (1: the paper's one-shot rule)")
    nudge: float = Field(0.5, gt=0, lt=1, description="rounds > 1: weight w of the picks in the nudged source "
                         "distribution (1 - w) pool + w picks, reached as the budget is spent")
    target_copy_threshold: float | None = Field(
        0.95, gt=0, le=1, description="never pick a candidate whose cosine to some target text is >= this (a near-"
        "copy: its potential is the most negative, it adds nothing the target lacks, and with the validation split "
        "as target it leaks into early stopping and greedy soup); null: allow copies, as in the paper")
    target: str | None = Field(None, description="a .jsonl/.csv/.parquet file or datasets folder whose "
                               "`target_text_column` is the target set (unlabelled); null: the validation split")
    target_text_column: str = Field("text", description="column of `target` holding the texts")

    def uses_model(self) -> bool:
        return self.target is not None  # a target file is embedded with the base model

    def uses_device(self) -> bool:
        return True  # the OT solve runs on the device (torch), with or without the base model


def read_target(path: str | Path, text_column: str = "text") -> list[str]:
    """The non-empty texts of a target file (select.gotd.target); one-line errors when it has none."""
    from soupline.data import blank
    from soupline.tables import read_table

    where = f"select.gotd.target {str(path)!r}"
    frame = read_table(path, (text_column,), "select.gotd.target")
    if isinstance(frame, dict):
        raise SouplineError(f"{where} is a folder of splits {sorted(frame)}; point it at one split")
    if text_column not in frame.columns:
        raise SouplineError(f"{where} has no text column {text_column!r}; its columns are {list(frame.columns)} "
                            "(set select.gotd.target_text_column)")
    column = frame[text_column]
    texts = column[column.notna()].astype(str)
    texts = texts[~blank(texts)].tolist()
    if not texts:
        found = (f"column {text_column!r} is empty or blank in each of its {len(frame)} row(s) (blank lines are "
                 "not rows)") if len(frame) else "it has no rows"
        raise SouplineError(f"{where} has no text: {found}; give a file with target texts or set "
                            "select.gotd.target to null (validation split)")
    return texts


def cost_matrix(x, y, x_labels=None, y_labels=None, label_weight: float = 0.0):
    """1 - cosine between L2-normalised rows (+ label_weight where labels differ); torch tensors."""
    cost = 1.0 - x @ y.T
    if label_weight:
        cost = cost + label_weight * (x_labels[:, None] != y_labels[None, :]).to(cost.dtype)
    return cost


def sinkhorn_potentials(cost, eps: float, a=None, b=None, max_iter: int = 2000, tol: float = 1e-5, init=None,
                        overwrite: bool = False):
    """Dual potentials (F, G) of entropic OT in POT's convention, plan = exp((F_i + G_j - C_ij) / eps).

    F is the gradient of the entropic OT value with respect to the source masses a, up to a
    constant that cancels along mass-preserving changes. Uniform masses unless given; `init`:
    (F, G) to start from (a nearby problem's solution). Solved by POT's matrix-scaling iterations
    (two matrix-vector products per iteration) on the cost shifted so every row and column has a
    zero, so exp(-C / eps) never underflows a whole row or column; the shifts go back into F and
    G. If the scalings still leave float range, it re-solves in the log domain (POT `sinkhorn_log`,
    several passes over the matrix per iteration, always stable). It also stops, `stalled`, where the marginal
    error no longer falls (float32's rounding floor, above `tol` on a large problem). `overwrite`: the caller no
    longer needs `cost`, so it is shifted in place: one matrix fewer at the peak (the matrix scaling holds two more:
    exp(-C / eps) and that over the source masses).
    """
    import torch

    n, m = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device) if a is None else a
    b = torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device) if b is None else b
    norm_b = float(torch.linalg.norm(b))
    row = cost.amin(1)  # amin, not min(): the same values without the indices, 15x faster over dim 0 on CPU
    shifted = cost.sub_(row[:, None]) if overwrite else cost - row[:, None]
    col = shifted.amin(0)
    shifted -= col[None, :]
    warm = None if init is None else ((init[0] - row) / eps, (init[1] - col) / eps)
    solver = "sinkhorn"
    log, done, err, stalled = _sinkhorn_blocks(a, b, shifted, eps, "sinkhorn", max_iter, tol * norm_b, warm)
    log_u, log_v = torch.log(log["u"]), torch.log(log["v"])
    err /= norm_b
    broke = err >= tol and not stalled and done < max_iter  # the scalings broke: it stopped early
    if broke or not (torch.isfinite(log_u).all() and torch.isfinite(log_v).all()):
        solver = "sinkhorn_log"
        log, done, err, stalled = _sinkhorn_blocks(a, b, shifted, eps, "sinkhorn_log", max_iter, tol * norm_b, warm)
        log_u, log_v = log["log_u"], log["log_v"]
        err /= norm_b
    info = {"iterations": done, "marginal_error": err, "converged": err < tol, "stalled": stalled, "solver": solver}
    return eps * log_u + row, eps * log_v + col, info


def _sinkhorn_blocks(a, b, cost, eps: float, method: str, max_iter: int, stop: float, warm, block: int = 100):
    """Sinkhorn `method` in blocks of `block` iterations, each warm-started from the last one's scalings, until
    the marginal error is below `stop`, the scalings break, `max_iter` iterations are spent, or a block lowers the
    error by under 1 % (from the best before it; the first block, from its first check): it has reached the floor of
    the float's rounding (float32 on a large problem stalls there above `tol`, and ran all `max_iter` iterations in
    every GOT-D round). `sinkhorn_log` is POT's; `sinkhorn` is POT's matrix scaling (`_scaling`) on a kernel built
    once per solve. Returns (POT's log of the last block, iterations, marginal error, stalled)."""
    import ot
    import torch

    if method == "sinkhorn":
        kernel = (cost / -eps).exp_()  # POT's exp(M / (-reg)), in place
        over_a = (1 / a).reshape(-1, 1) * kernel

        def solve(size, warm):
            return _scaling(b, kernel, over_a, size, stop, warm)
    else:
        def solve(size, warm):
            return ot.sinkhorn(a, b, cost, eps, method=method, numItermax=size, stopThr=stop, log=True, warn=False,
                               warmstart=warm)[1]
    done, best = 0, float("inf")
    while True:
        size = min(block, max_iter - done)
        log = solve(size, warm)
        done += int(log["niter"]) + 1
        errs = [float(e) for e in log["err"]]
        if not errs or errs[-1] < stop or int(log["niter"]) < size - 1 or done >= max_iter:
            return log, done, errs[-1] if errs else float("inf"), False
        prior, new = (best, errs) if best < float("inf") else (errs[0], errs[1:])  # a warm start may start stalled
        if new and min(new) > 0.99 * prior:
            return log, done, errs[-1], True
        best = min(prior, *new)
        warm = (log["log_u"], log["log_v"]) if method == "sinkhorn_log" else (torch.log(log["u"]), torch.log(log["v"]))


def _scaling(b, kernel, over_a, size: int, stop: float, warm) -> dict:
    """`size` iterations of POT's `sinkhorn_knopp`, its arithmetic step for step (the same scalings to the bit), on
    `kernel` = exp(-C / eps) and `over_a` = kernel / a, built once per solve: POT builds both, and the plan it
    returns, in each call, which took longer than the 10-30 iterations of a warm-started GOT-D round. `warm`: log
    scalings, or None for POT's start. Returns POT's log (err, niter, u, v)."""
    import torch

    if warm is None:
        u = torch.ones(len(kernel), dtype=kernel.dtype, device=kernel.device) / len(kernel)
        v = torch.ones(len(b), dtype=kernel.dtype, device=kernel.device) / len(b)
    else:
        u, v = torch.exp(warm[0]), torch.exp(warm[1])
    errs = []
    for it in range(size):
        kt_u = torch.matmul(kernel.T, u)
        new_v = b / kt_u
        new_u = 1.0 / torch.matmul(over_a, new_v)
        if (kt_u == 0).any() or not (torch.isfinite(new_u).all() and torch.isfinite(new_v).all()):
            break  # out of float range: POT keeps the last scalings and stops
        u, v = new_u, new_v
        if it % 10 == 0:  # POT checks the target marginal every 10th iteration
            errs.append(torch.linalg.norm(torch.einsum("i,ij,j->j", u, kernel, v) - b))
            if errs[-1] < stop:
                break
    return {"err": errs, "niter": it, "u": u, "v": v}


def c_transform(g, cost, eps: float, rows: int | None = None):
    """Pool-side potential of each cost row from the target potential G (POT convention: G holds eps log b); `rows`
    at a time (None: all), so the temporaries stay small on a large cost matrix."""
    import torch

    rows = rows or max(len(cost), 1)
    return -eps * torch.cat([torch.logsumexp((g[None, :] - cost[i:i + rows]) / eps, dim=1)
                             for i in range(0, len(cost), rows)])


def checked_target(pool: SelectionInput, cfg: GotdConfig) -> np.ndarray:
    """The target set's embeddings, after the checks that make a bad target one clear line."""
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
        raise SouplineError("select.gotd.label_weight > 0 needs a labelled target set, and a select.gotd.target file "
                            "is read as texts only (a label column there is not used); set it to 0 (or null: "
                            "label-aware with the validation split as target, label-blind with a target file)")
    return y


def label_weight(pool: SelectionInput, cfg: GotdConfig) -> float:
    """The label term's weight: `label_weight`, or with null AUTO_LABEL_WEIGHT when the target has labels (the
    validation split) and 0 when it has none (a `target` file). Label-blind OT, as in the paper, spends a skewed
    pool's smallest budgets on majority-label points near the minority labels' targets (8 picks at 1 % of the
    skewed bbcnews pool: 5 business articles); a small weight keeps the picks on their own labels' side."""
    if cfg.label_weight is not None:
        return cfg.label_weight
    return AUTO_LABEL_WEIGHT if pool.target_labels is not None else 0.0


class Transport:
    """One GOT-D problem, kept across rounds: the pool and target tensors, the OT subsample and its
    cost matrix (computed once: the whole pool's cost cache, or the subsample's and as many other rows as fit in
    `cost_cache_mb`), eps, and the last solution (the next round's warm start)."""

    def __init__(self, pool: SelectionInput, y: np.ndarray, seed: int, cfg: GotdConfig):
        """`y`: the target embeddings, as `checked_target` returns them."""
        import torch

        rng = np.random.default_rng(seed)
        cfg = cfg.model_copy(update={"label_weight": label_weight(pool, cfg)})
        self.pool, self.cfg, self.target_size = pool, cfg, len(y)
        self.sub = np.sort(rng.choice(pool.n, cfg.max_pool_for_ot, replace=False)) if pool.n > cfg.max_pool_for_ot \
            else np.arange(pool.n)
        tgt = np.sort(rng.choice(len(y), cfg.max_target, replace=False)) if len(y) > cfg.max_target \
            else np.arange(len(y))
        self.device = pool.extras.get("device", "cpu")
        self.dtype = torch.float64 if len(self.sub) * len(tgt) <= 1 << 22 else torch.float32  # exact when small
        self.x, self.y = self.tensor(pool.embeddings), self.tensor(y[tgt])
        self.x_labels = self.tensor(pool.labels, torch.int64) if cfg.label_weight else None
        self.y_labels = self.tensor(np.asarray(pool.target_labels)[tgt], torch.int64) if cfg.label_weight else None
        cache = cfg.rounds > 1 and pool.n * len(tgt) * self.x.element_size() / 2**20 <= cfg.cost_cache_mb
        self.rest = np.setdiff1d(np.arange(pool.n), self.sub)  # the pool rows outside the OT subsample
        self.c_all = self.cached_costs(np.arange(pool.n)) if cache else None
        # a pool too large for the cache keeps the cost of whole chunks of `rest` that fit beside the subsample's, so
        # a round recomputes only the others (all of them before: 140k pool x 2k target, 5.3 -> 3.0 CPU s a round)
        fit = 0 if cache or cfg.rounds == 1 else \
            int(cfg.cost_cache_mb * 2**20 // (len(tgt) * self.x.element_size())) - len(self.sub)
        self.c_rest = self.cached_costs(self.rest[:max(fit, 0) // cfg.chunk * cfg.chunk])
        self.sub_rows = torch.as_tensor(self.sub, device=self.device)
        # the subsample's cost kept across rounds: the cache itself when the subsample is the whole pool; None when
        # the cache holds its rows, which each round gathers into the fresh copy its solve shifts in place anyway
        self.c_sub = (self.c_all if not len(self.rest) else None) if cache else self.cost(self.sub)
        self.eps = cfg.eps or cfg.eps_scale * self.median_feature_cost()
        if self.eps <= 0:
            target = "its validation texts" if pool.target_labels is not None else "the target file"
            where = (f"the pool of label {pool.label!r} and {target} coincide; select.stratify runs GOT-D inside "
                     "each label" if pool.label is not None else "the pool and target coincide")
            raise SouplineError(f"the median pool-target cost is 0 ({where}), so eps would be 0; set "
                                "select.gotd.eps")
        self.g = self.f_sub = None  # the target potential of the last solve and its c-transform on the subsample

    def median_feature_cost(self) -> float:
        """Median 1 - cosine over the OT subsample and the target, without the label term: eps sets the
        smoothing on the embedding geometry, so `label_weight` changes the cost, not the smoothing (with the
        term inside the median, most pairs differ in label and eps would grow with the weight)."""
        import torch

        cfg = self.cfg
        cost, fresh = self.source_cost(np.empty(0, dtype=np.int64))
        if cfg.label_weight:  # in row chunks, into one copy (the label term of all pairs took three more matrices)
            cost = cost if fresh else cost.clone()
            for i in range(0, len(cost), cfg.chunk):
                rows = self.sub_rows[i:i + cfg.chunk]
                cost[i:i + cfg.chunk] -= cfg.label_weight * (self.x_labels[rows][:, None] != self.y_labels[None, :]
                                                             ).to(cost.dtype)
        return float(torch.median(cost))

    def cached_costs(self, rows: np.ndarray):
        """The cost matrix of pool `rows`, filled chunk by chunk into one tensor: joining the chunks (torch.cat) held
        it twice, the process's peak (+763 MiB at a 100k pool x 2k target in float32)."""
        import torch

        chunk = self.cfg.chunk
        costs = torch.empty((len(rows), len(self.y)), dtype=self.dtype, device=self.device)
        for i in range(0, len(rows), chunk):
            costs[i:i + chunk] = self.cost(rows[i:i + chunk])
        return costs

    def source_cost(self, outside: np.ndarray):
        """The cost rows of the subsample, then of the pool rows `outside` it, and whether they are a fresh copy
        (the solve may shift it in place): the kept subsample cost itself when nothing is outside and it is kept,
        else one new matrix, the subsample's rows copied from the kept cost or gathered from the cache."""
        import torch

        if self.c_sub is not None and not len(outside):
            return self.c_sub, False
        n_sub = len(self.sub)
        cost = torch.empty((n_sub + len(outside), len(self.y)), dtype=self.dtype, device=self.device)
        if self.c_sub is None:
            torch.index_select(self.c_all, 0, self.sub_rows, out=cost[:n_sub])
        else:
            cost[:n_sub] = self.c_sub
        if len(outside):
            cost[n_sub:] = self.cost(outside)
        return cost, True

    def tensor(self, a, dtype=None):
        import torch

        return torch.as_tensor(np.ascontiguousarray(a), device=self.device).to(dtype or self.dtype)

    def cost(self, rows: np.ndarray):
        import torch

        r = torch.as_tensor(rows, device=self.device)
        return cost_matrix(self.x[r], self.y, self.x_labels[r] if self.x_labels is not None else None,
                           self.y_labels, self.cfg.label_weight)

    def potentials(self, picked: np.ndarray | None = None, weight: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
        """f for every pool point (defined up to a constant) and solver facts.

        The source is the subsample, or with `picked` the nudged distribution (1 - weight) subsample
        + weight picked; f is the c-transform of the solved target potential: the gradient of the OT
        value for mass added at each pool point.
        """
        import torch

        cfg, n_sub = self.cfg, len(self.sub)
        nudged = picked is not None and len(picked) > 0
        outside = np.setdiff1d(picked, self.sub) if nudged else np.empty(0, dtype=np.int64)
        source = np.concatenate([self.sub, outside])
        cost, fresh = self.source_cost(outside)
        if not nudged:
            a = np.full(n_sub, 1.0 / n_sub)
        else:
            a = np.zeros(len(source))
            a[:n_sub] = (1 - weight) / n_sub
            where = np.argsort(source, kind="stable")
            a[where[np.searchsorted(source[where], picked)]] += weight / len(picked)
        a = self.tensor(a)
        init = None
        if self.g is not None:  # warm start: the last target potential and its c-transform on this source
            f_source = self.f_sub if not len(outside) else \
                torch.cat([self.f_sub, c_transform(self.g, cost[n_sub:], self.eps, cfg.chunk)])
            init = (self.eps * torch.log(a) + f_source, self.g)
        _, self.g, info = sinkhorn_potentials(cost, self.eps, a=a, max_iter=cfg.max_iter, tol=cfg.tol, init=init,
                                              overwrite=fresh)  # a fresh copy is not used again
        if self.c_sub is None:  # the cache's rows in order, in chunks of its own memory (no gathered copies)
            f_all = c_transform(self.g, self.c_all, self.eps, cfg.chunk)
            self.f_sub, f = f_all[self.sub_rows], f_all.double().cpu().numpy()
        else:
            self.f_sub = c_transform(self.g, self.c_sub, self.eps, cfg.chunk)  # also the next round's warm start
            f = np.empty(self.pool.n)
            f[self.sub] = self.f_sub.double().cpu().numpy()
            kept = len(self.c_rest)  # whole chunks of `rest`: each row's f the same to the bit as from its chunk's cost
            if kept:
                f[self.rest[:kept]] = c_transform(self.g, self.c_rest, self.eps, cfg.chunk).double().cpu().numpy()
            for start in range(kept, len(self.rest), cfg.chunk):  # the subsample is kept only when costs are not cached
                rows = self.rest[start:start + cfg.chunk]
                f[rows] = c_transform(self.g, self.cost(rows), self.eps).double().cpu().numpy()
        info.update(target_size=int(self.target_size), target_in_ot=int(len(self.y)), ot_pool_size=int(len(source)))
        return f, info


def dual_potentials(pool: SelectionInput, seed: int, cfg: GotdConfig) -> tuple[np.ndarray, float]:
    """f (one value per pool point, defined up to a constant) and the eps used: the paper's one solve."""
    problem = Transport(pool, checked_target(pool, cfg), seed, cfg)
    return problem.potentials()[0], problem.eps


def target_copies(pool: SelectionInput, y: np.ndarray, budget: int, cfg: GotdConfig) -> tuple[np.ndarray, dict]:
    """Mask of the candidates within `target_copy_threshold` cosine of a target text `y` (none when null), and info.
    Too many copies for the budget is an error; under select.stratify a label excludes only its nearest copies,
    down to its quota (`quota_cut`)."""
    if cfg.target_copy_threshold is None:
        return np.zeros(pool.n, dtype=bool), {}
    setting = f"select.gotd.target_copy_threshold={cfg.target_copy_threshold}"
    near = nearest_cosine(pool.embeddings, y)
    copies = int(within(near, cfg.target_copy_threshold).sum())
    drop, spared = quota_cut(pool, budget, copies, setting,
                             f"{setting} leaves {pool.n - copies} of {pool.n} candidates (the rest nearly copy a "
                             f"target text), fewer than the budget {budget}; "
                             f"{loosen('select.gotd.target_copy_threshold', cfg.target_copy_threshold)}, or lower "
                             "select.budget")
    mask = np.zeros(pool.n, dtype=bool)
    mask[np.argsort(-near, kind="stable")[:drop]] = True  # the nearest copies
    return mask, spared


@register("gotd", GotdConfig)
def select(pool: SelectionInput, budget: int, seed: int, cfg: GotdConfig) -> Selection:
    y = checked_target(pool, cfg)
    borrowed = {}
    if pool.label is not None and pool.target_labels is not None \
            and pool.label_names.index(pool.label) not in np.asarray(pool.target_labels):
        # `for_label` kept the whole validation split: this label's picks move toward the other labels' texts
        warnings.warn("select.stratify: no validation text has this label, so GOT-D moves its picks toward the other "
                      "labels' validation texts (its examples nearest them); add validation examples of it, or set "
                      "select.gotd.target to a file of target texts", stacklevel=2)
        borrowed = {"target_of_other_labels": True}
    copies, spared = target_copies(pool, y, budget, cfg)
    problem = Transport(pool, y, seed, cfg)
    rounds = min(cfg.rounds, budget)
    picked, scores, solves = np.empty(0, dtype=np.int64), [], []
    for size in budget // rounds + (np.arange(rounds) < budget % rounds):
        f, info = problem.potentials(picked, cfg.nudge * len(picked) / budget)
        grad = pool.n / max(pool.n - 1, 1) * (f - f.mean())  # calibrated gradient w.r.t. each candidate's mass
        grad[copies] = np.inf  # copies stay in the pool's distribution, they are just never picked
        grad[picked] = np.inf
        take = np.argsort(grad, kind="stable")[:size]
        picked, scores = np.concatenate([picked, take]), scores + [-grad[take]]
        solves.append(info)
    # every round's solve, not the last one's: a round that ran out of iterations is not `converged`
    unconverged = [r + 1 for r, s in enumerate(solves) if not s["converged"]]
    short = [s["marginal_error"] for s in solves if not s["converged"] and not s["stalled"]]
    if short:  # still falling when max_iter ran out (a stalled solve sits at float rounding: nothing to gain)
        warnings.warn(f"select.gotd: Sinkhorn used all max_iter={cfg.max_iter} iterations without converging in "
                      f"{len(short)} of {rounds} round(s) (marginal error up to {max(short):.2g}, tol {cfg.tol:g}), "
                      "so the picks follow approximate potentials; raise select.gotd.max_iter, or eps / eps_scale "
                      "(a larger eps converges faster)", stacklevel=2)
    info.update(converged=not unconverged, stalled=any(s["stalled"] for s in solves),
                marginal_error=max(s["marginal_error"] for s in solves),
                **({"unconverged_rounds": unconverged} if rounds > 1 and unconverged else {}))
    return Selection(picked, np.concatenate(scores), {"eps": problem.eps, "label_weight": problem.cfg.label_weight,
                                                      **info, "rounds": rounds,
                                                      "iterations_per_round": [s["iterations"] for s in solves],
                                                      "target_copies_excluded": int(copies.sum()), **spared,
                                                      **borrowed})
