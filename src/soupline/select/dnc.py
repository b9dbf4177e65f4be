"""Diversify-and-Conquer (Yu et al. 2024): kMQ sampling plus iterative refinement of cluster weights.

kMQ clusters the pool (faiss k-means), gives each cluster a share of the budget in proportion
to its size and draws inside a cluster by softmax(quality / temperature), so the selection
covers the space while preferring clean examples (quality: kNN label agreement, text length, or
a numeric column of the user's data). Iterative refinement spends the budget in `rounds`; after
each round a model is trained on what is selected so far (`scorer: proxy`, logistic regression
on the frozen embeddings, seconds; or `scorer: finetune`, the train stage's model fine-tuned
with its settings, minutes) and each cluster's weight is multiplied by that model's mean
cross-entropy on up to `holdout_per_cluster` of its not-yet-selected examples: clusters the
model still gets wrong receive more of the next round. Weights, quotas and scores of every
round go to `Selection.info["rounds"]`. At most budget // k rounds run: a round smaller than k
cannot reach every cluster, so a tiny first round leaves labels out and the proxy, trained on
those few picks alone, steers the rest of the budget by them.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from soupline.errors import SouplineError
from soupline.select.base import LabelWarnings, MethodConfig, Selection, SelectionInput, minmax, register
from soupline.select.quotas import largest_remainder
from soupline.select.kmeans import FaissCount, kmeans_centroids

AUTO_K_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # k grid for k: auto, as fractions of the budget
QUALITY = ("knn_agreement", "uniform", "length")  # and column:<name>


class DnCConfig(MethodConfig):
    k: int | Literal["auto"] | None = Field(
        None, description="clusters: a count, 'auto' (best silhouette on a subsample over k = budget/32 .. "
        "budget/2), or null for round(budget/8), at least the number of labels in the pool and at most its size "
        "(under select.stratify: per label, from its quota and its pool)")
    niter: FaissCount = Field(25, description="k-means iterations")
    nredo: FaissCount = Field(1, description="k-means restarts; the best objective is kept")
    cluster_budget: Literal["proportional", "equal"] = Field(
        "proportional", description="a cluster's share of a round before weighting: its size (paper) or "
        "equal shares (released code); shares never exceed what a cluster has left")
    q: str = Field(
        "knn_agreement", description="quality score inside a cluster: knn_agreement (share of the `knn` nearest "
        "pool neighbours with the same label), uniform (none), length (log text length) or column:<name> (a "
        "numeric column of your data, carried with prepare.keep_columns: higher = better); scaled to [0, 1]")
    knn: int = Field(10, ge=1, description="neighbours for q: knn_agreement")
    knn_exact_max: int = Field(50_000, ge=0, description="q: knn_agreement searches neighbours exactly in "
                               "pools up to this size (n^2 work), approximately in larger ones (k-means cells)")
    knn_probes: int = Field(8, ge=1, description="approximate search: the cells (of about sqrt(pool) points) "
                            "each cell's points search, nearest first (more: closer to exact, slower)")
    temperature: float = Field(0.25, gt=0, description="draw probability inside a cluster is "
                               "softmax(q / temperature), without replacement; q lies in [0, 1]")
    rounds: int = Field(3, ge=1, description="iterative refinement rounds, each spending budget/rounds "
                        "(1: static kMQ); at most budget // k, so every round can reach every cluster")
    holdout_per_cluster: int = Field(32, ge=1, description="not-yet-selected examples per cluster on "
                                     "which the proxy's cross-entropy is measured")
    weight_floor: float = Field(1e-3, gt=0, lt=1, description="cluster weights never drop below this "
                                "(then renormalised), so no cluster starves")
    scorer: Literal["proxy", "finetune"] = Field(
        "proxy", description="model scoring the clusters after each round: proxy (logistic regression on the "
        "frozen embeddings, seconds) or finetune (the train stage's model and settings, its first learning rate, "
        "fine-tuned on the selection so far; minutes a round)")
    proxy_c: float = Field(1.0, gt=0, description="inverse L2 strength of the proxy logistic regression")
    silhouette_sample: int = Field(2000, ge=50, description="k: auto clusters and scores this many "
                                   "random pool points per candidate k")

    @field_validator("k", mode="before")
    @classmethod
    def _count_or_auto(cls, v: Any) -> Any:
        if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("k must be a count >= 1, 'auto' or null")

    @field_validator("q")
    @classmethod
    def _known_quality(cls, v: str) -> str:
        if v in QUALITY or (v.startswith("column:") and v[len("column:"):].strip()):
            return v
        raise ValueError(f"q must be one of {', '.join(QUALITY)} or column:<name>, got {v!r}")

    def uses_model(self) -> bool:
        return self.scorer == "finetune"

    def quality_column(self) -> str | None:
        """The data column `q: column:<name>` names (spaces around the name dropped), else None."""
        return self.q[len("column:"):].strip() if self.q.startswith("column:") else None

    def train_settings(self, train: Any, budget: int | None = None) -> dict[str, Any]:
        """scorer: finetune trains as an ingredient does (`key_settings`, less `self_training`), at the first learning
        rate, on the selection so far: fewer texts than the `budget`. Where `epochs` passes over the budget's texts
        take no more than `min_steps`, every round's scorer trains min_steps steps: the schedule is keyed as that
        count and its warm-up, as an ingredient's is (`train.epochs: 6 -> 5` re-ran minutes of scoring into the same
        selection)."""
        if self.scorer != "finetune":
            return {}
        from soupline.train import total_steps, warmup_steps

        settings = {**train.key_settings(), "learning_rates": train.learning_rates[:1]}
        settings.pop("self_training", None)  # the scorer trains on the selection so far, never on pseudo-labels
        if budget is not None and total_steps(budget, train.batch_size * train.grad_accumulation, train.epochs,
                                              train.min_steps) == train.min_steps:
            settings |= {"epochs": None, "min_steps": None, "steps": train.min_steps, "warmup_ratio": None,
                         "warmup_steps": warmup_steps(train.warmup_ratio, train.min_steps)}
        return settings


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (L2) of every row."""
    import faiss  # here, not at the top: `soupline.config` imports every method for its params section

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


def cell_knn(x: np.ndarray, k: int, seed: int, probes: int) -> np.ndarray:
    """Approximate k nearest neighbours (inner product) of every row among all rows, in near-linear time.

    faiss k-means cuts the pool into about sqrt(n) cells (seeded, 10 iterations on up to 64 points per
    cell); the rows of each cell search the rows of the `probes` cells whose centroids lie nearest
    its own (its own first) exactly, one BLAS block per cell (faiss.knn). n * probes * sqrt(n) * d
    work instead of n^2 d; a neighbour outside those cells is missed. Missing slots are -1.
    """
    import faiss

    n, d = x.shape
    nlist = max(1, int(np.sqrt(n)))
    # min_points_per_centroid only silences faiss's stderr line "please provide at least 39 x nlist training
    # points", printed for every pool under 1,521 rows (a small pool with knn_exact_max set below it)
    km = faiss.Kmeans(d, nlist, niter=10, seed=seed, min_points_per_centroid=1, max_points_per_centroid=64,
                      verbose=False)
    km.train(x)
    cell = assign(x, km.centroids)
    near = km.index.search(km.centroids, min(probes, nlist))[1]
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(nlist + 1))
    members = [order[bounds[c]:bounds[c + 1]] for c in range(nlist)]
    out = np.full((n, k), -1, dtype=np.int64)
    for c, rows in enumerate(members):
        if len(rows):
            db = np.concatenate([members[j] for j in near[c] if j >= 0])
            found = min(k, len(db))
            out[rows, :found] = db[faiss.knn(x[rows], x[db], found, metric=faiss.METRIC_INNER_PRODUCT)[1]]
    return out


def knn_agreement(x: np.ndarray, y: np.ndarray, k: int, exact_max: int = 50_000, probes: int = 8,
                  seed: int = 0) -> np.ndarray:
    """Share of each point's k nearest pool neighbours (inner product, self excluded) with its label.

    Pools up to `exact_max` rows search exactly (faiss flat index, n^2 d work: about a minute at 100k on 2
    cores, over an hour at 1M); larger ones search approximately with `cell_knn`.
    """
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.ones(n)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if n <= exact_max:
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        nbrs = index.search(x, k + 1)[1]
    else:
        nbrs = cell_knn(x, k + 1, seed, probes)
    # Drop the point itself wherever it appears (exact duplicates may outrank it), else the last one;
    # slots the approximate search left empty (-1) do not count.
    not_self = nbrs != np.arange(n)[:, None]
    keep = np.argsort(~not_self, axis=1, kind="stable")[:, :k]
    nbrs = np.take_along_axis(nbrs, keep, axis=1)
    found = nbrs >= 0
    agree = (y[np.where(found, nbrs, 0)] == y[:, None]) & found
    return agree.sum(axis=1) / np.maximum(found.sum(axis=1), 1)


def column_quality(columns: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The pool's numeric data column `name` (of its `columns`, higher = better) as quality, scaled to [0, 1]."""
    if name in ("text", "label"):
        raise SouplineError(f"select.dnc.q=column:{name}: the {name} is no numeric score; name a numeric column of "
                            "your data, carried into the splits with prepare.keep_columns")
    if name not in columns:
        near = difflib.get_close_matches(name, list(columns), n=1)
        fix = (f"did you mean column:{near[0]}?" if near
               else f"carry it from your data with prepare.keep_columns: [{name}]")
        raise SouplineError(f"select.dnc.q=column:{name}: the pool has no column {name!r} (it has "
                            f"{sorted(columns) or 'none'}); {fix}")
    try:
        v = np.asarray(columns[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise SouplineError(f"select.dnc.q=column:{name}: column {name!r} is not numeric; give a number per "
                            "example (higher = better)") from None
    if bad := int((~np.isfinite(v)).sum()):
        raise SouplineError(f"select.dnc.q=column:{name}: {bad} of {len(v)} values are missing, NaN or infinite; "
                            "fill them in your data")
    if len(v) > 1 and v.min() == v.max():
        warnings.warn(f"select.dnc.q=column:{name}: column {name!r} holds one value ({v[0]:g}) for every pool "
                      "example, so it prefers none: the draw inside a cluster is uniform", stacklevel=2)
    return minmax(v)


def quality(pool: SelectionInput, cfg: DnCConfig, seed: int) -> np.ndarray:
    """The in-cluster quality score q of every pool example."""
    if cfg.q == "uniform":
        return np.zeros(pool.n)
    if cfg.q == "length":
        if pool.texts is None:
            raise SouplineError("select.dnc.q=length needs the pool texts; use q: knn_agreement or uniform")
        return minmax(np.log1p([len(t) for t in pool.texts]))
    if (name := cfg.quality_column()) is not None:
        return column_quality(pool.columns, name)
    return knn_agreement(pool.embeddings, pool.labels, cfg.knn, cfg.knn_exact_max, cfg.knn_probes, seed)


def choose_k(pool: SelectionInput, budget: int, seed: int, cfg: DnCConfig) -> tuple[int, dict]:
    """The number of clusters and, for k: auto, the silhouette of each candidate."""
    n_labels = len(np.unique(pool.labels))
    default = max(round(budget / 8), n_labels, 1)
    if isinstance(cfg.k, int):
        if cfg.k > pool.n:
            warnings.warn(f"select.dnc.k={cfg.k} is more than the {pool.n} pool example(s) it clusters (one label's "
                          f"under select.stratify); using k={pool.n}", stacklevel=2)
        if budget < min(cfg.k, pool.n):
            warnings.warn(f"select.dnc.k={min(cfg.k, pool.n)} is more than the budget of {budget} it spends (one "
                          f"label's quota under select.stratify): at most {budget} clusters get an example and "
                          "refinement runs one round; set k to at most the budget (null: budget/8)", stacklevel=2)
        return min(cfg.k, pool.n), {}
    if cfg.k is None:
        return min(default, pool.n), {}
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sample = rng.choice(pool.n, size=min(pool.n, cfg.silhouette_sample), replace=False)
    xs = pool.embeddings[np.sort(sample)]
    grid = sorted({int(np.clip(round(budget * f), max(2, n_labels), len(xs) - 1)) for f in AUTO_K_FRACTIONS})
    scores: dict[int, float] = {}
    for k in grid:
        if not 2 <= k < len(xs):
            continue
        lab = assign(xs, kmeans_centroids(xs, k, seed, cfg.niter, cfg.nredo))
        if len(np.unique(lab)) >= 2:
            scores[k] = float(silhouette_score(xs, lab))
    if not scores:
        return min(default, pool.n), {}
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, {"silhouette": {str(k): round(s, 6) for k, s in scores.items()}}


def holdout(cluster: np.ndarray, selected: np.ndarray, k: int, per_cluster: int,
            rng: np.random.Generator) -> np.ndarray:
    """Up to `per_cluster` not-yet-selected pool examples of every cluster, drawn at random."""
    held = []
    for j in range(k):
        free = np.flatnonzero((cluster == j) & ~selected)
        held.append(free if len(free) <= per_cluster else rng.choice(free, per_cluster, replace=False))
    return np.concatenate(held).astype(np.int64)


def proxy_gold_proba(pool: SelectionInput, chosen: np.ndarray, held: np.ndarray, cfg: DnCConfig,
                     seed: int) -> tuple[np.ndarray, None]:
    """p(gold label) of the `held` examples under a logistic regression fit on the `chosen` embeddings;
    0 for a label the proxy never saw. No training to fail (None), as `finetune_gold_proba`'s second value."""
    from sklearn.linear_model import LogisticRegression

    proxy = LogisticRegression(C=cfg.proxy_c, max_iter=1000).fit(pool.embeddings[chosen], pool.labels[chosen])
    proba = proxy.predict_proba(pool.embeddings[held])
    col = {int(label): i for i, label in enumerate(proxy.classes_)}
    return np.array([proba[r, col[int(label)]] if int(label) in col else 0.0
                     for r, label in enumerate(pool.labels[held])]), None


def finetune_gold_proba(pool: SelectionInput, chosen: np.ndarray, held: np.ndarray, cfg: DnCConfig,
                        seed: int) -> tuple[np.ndarray, str | None]:
    """p(gold label) of the `held` texts under the train stage's model fine-tuned on the `chosen` texts
    (train settings, first learning rate, the selection seed), as the paper trains the real model
    between rounds; and why that training failed (`training_failed`), or None."""
    import tempfile

    from scipy.special import log_softmax

    from soupline.classifier import load_classifier
    from soupline.evaluate import predict_logits, tokenize
    from soupline.models import load_tokenizer
    from soupline.train import finetune

    train, validation = pool.train_settings(), pool.extras.get("validation")
    if pool.texts is None or not pool.extras.get("model_path") or validation is None:
        raise SouplineError("select.dnc.scorer=finetune needs the pool texts, the base model and the validation "
                            "split (the select stage passes them); use select.dnc.scorer: proxy")
    if train.method == "probe":
        raise SouplineError("select.dnc.scorer=finetune fine-tunes the train stage's model, but train.method is "
                            "probe; use select.dnc.scorer: proxy (a probe on the embeddings)")
    device = pool.extras.get("device", "cpu")
    with tempfile.TemporaryDirectory(prefix="soupline-dnc-") as tmp:
        out = Path(tmp) / "model"
        info = finetune(pool.extras["model_path"], pool.label_names, [pool.texts[i] for i in chosen],
                        pool.labels[chosen], validation[0], validation[1], train, train.learning_rates[0], seed, out,
                        Path(tmp) / "ckpt", device=device, progress=False)
        tok = load_tokenizer(out)
        model = load_classifier(out).to(device)
        logits = predict_logits(model, tok, tokenize(tok, [pool.texts[i] for i in held], train.max_length),
                                train.batch_size * 2, device).astype(np.float64)
    return np.exp(log_softmax(logits, axis=1)[np.arange(len(held)), pool.labels[held]]), info.get("failed")


SCORERS = {"proxy": proxy_gold_proba, "finetune": finetune_gold_proba}


def cluster_losses(pool: SelectionInput, cluster: np.ndarray, selected: np.ndarray, k: int, cfg: DnCConfig,
                   seed: int, rng: np.random.Generator) -> tuple[np.ndarray | None, str | None]:
    """Mean cross-entropy per cluster, on held-out (unselected) examples, of the `cfg.scorer` model
    trained on the selection so far (None while the selection has a single label), and why that model's
    training failed (None: it did not, or nothing was trained)."""
    if len(np.unique(pool.labels[selected])) < 2:
        return None, None
    held = holdout(cluster, selected, k, cfg.holdout_per_cluster, rng)
    losses = np.zeros(k)
    if len(held) == 0:
        return losses, None
    p_gold, failed = SCORERS[cfg.scorer](pool, np.flatnonzero(selected), held, cfg, seed)
    ce = -np.log(np.clip(p_gold, 1e-12, 1.0))  # a label the proxy never saw costs about 27.6 nats
    counts = np.bincount(cluster[held], minlength=k)
    np.divide(np.bincount(cluster[held], weights=ce, minlength=k), counts, out=losses, where=counts > 0)
    return losses, failed


def draw(members: np.ndarray, q: np.ndarray, size: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """`size` members drawn without replacement with probability softmax(q / temperature)."""
    logits = q[members] / temperature
    p = np.maximum(np.exp(logits - logits.max()), np.finfo(np.float64).tiny)  # tiny temperatures stay drawable
    return rng.choice(members, size=size, replace=False, p=p / p.sum())


def refine(pool: SelectionInput, cluster: np.ndarray, groups: list[np.ndarray], budgets: list[int], q: np.ndarray,
           seed: int, cfg: DnCConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """kMQ with iterative refinement: the selected mask and one log entry per round.

    `groups` are sets of cluster ids, each spending its own budget (the whole pool: one group; under
    select.stratify: each label's clusters, its quota). Each round every group spends its share over its
    clusters by weight x size; between rounds one model, trained on the whole selection so far, scores every
    cluster, and each group's weights move toward its clusters with the highest loss."""
    # every group's clusters, not cluster.max() + 1: k-means on copies of one text leaves clusters empty, the last too
    k = sum(len(g) for g in groups)
    sizes = np.bincount(cluster, minlength=k)
    base = sizes.astype(np.float64) if cfg.cluster_budget == "proportional" else (sizes > 0).astype(np.float64)
    weights = np.zeros(k)
    for g in groups:
        weights[g] = 1.0 / len(g)
    selected = np.zeros(pool.n, dtype=bool)
    log: list[dict[str, Any]] = []
    # a round smaller than a group's k leaves clusters out of the proxy's data
    rounds = max(1, min([cfg.rounds] + [b // len(g) for g, b in zip(groups, budgets)]))
    if rounds < cfg.rounds and not (isinstance(cfg.k, int) and any(b < len(g) for g, b in zip(groups, budgets))):
        b, g = min(zip(budgets, groups), key=lambda bg: bg[0] // len(bg[1]))  # (a k set above a budget warned)
        spent = f"a budget of {b} over k={len(g)} clusters" if len(groups) == 1 else \
            f"the tightest label's quota, {b} over its k={len(g)} clusters (select.stratify),"
        warnings.warn(f"select.dnc.rounds={cfg.rounds}: {rounds} round(s) run, as a round gives each cluster an "
                      f"example and {spent} has room for {b // len(g)}; raise select.budget"
                      f"{' or lower select.dnc.k' if len(g) > 1 else ''} for more rounds", stacklevel=2)
    spends = [largest_remainder(np.ones(rounds), b) for b in budgets]
    for r in range(rounds):
        entry: dict[str, Any] = {"round": r + 1, "budget": int(sum(s[r] for s in spends))}
        if r > 0:
            losses, failed = cluster_losses(pool, cluster, selected, k, cfg, seed, rng)
            if failed:  # a model that learned nothing scores a cluster by its labels alone, not by what it gets wrong
                from soupline.train import rates

                train = pool.train_settings()
                entry["scorer_failed"] = failed
                warnings.warn(f"select.dnc.scorer=finetune: round {r + 1}'s scorer, fine-tuned on the "
                              f"{int(selected.sum())} examples selected so far, failed training "
                              f"({rates(train.learning_rates[0], train)}): {failed}; its cluster scores steer round "
                              f"{r + 1} all the same; lower train.learning_rates (the first rate is the scorer's) or "
                              "train.head_learning_rate, or use select.dnc.scorer: proxy", stacklevel=2)
            if losses is None or losses.sum() <= 0:
                entry["update"] = "skipped: the selection so far has one label" if losses is None else "skipped"
            else:
                for g in (g for g in groups if losses[g].sum() > 0):
                    w = weights[g] * losses[g] / losses[g].sum()
                    w = np.maximum(w / w.sum(), cfg.weight_floor)
                    weights[g] = w / w.sum()
                entry["cluster_scores"] = np.round(losses, 6).tolist()
        left = np.bincount(cluster[~selected], minlength=k)
        quotas = np.zeros(k, dtype=np.int64)
        for g, spend in zip(groups, spends):
            quotas[g] = largest_remainder(weights[g] * base[g], int(spend[r]), caps=left[g])
        for j in np.flatnonzero(quotas):
            members = np.flatnonzero((cluster == j) & ~selected)
            selected[draw(members, q, int(quotas[j]), cfg.temperature, rng)] = True
        entry["weights"] = np.round(weights, 6).tolist()
        entry["quotas"] = quotas.tolist()
        log.append(entry)
    return selected, log


def select_with_quotas(pool: SelectionInput, quotas: dict[int, int], seed: int, cfg: DnCConfig) -> Selection:
    """dnc under select.stratify: each label is clustered on its own (k from its quota) and spends its quota,
    while the refinement between rounds runs across labels, as without quotas: the scorer learns from the
    whole selection so far (inside one label it would have a single class and nothing to score), and q is
    measured on the whole pool (neighbour agreement inside one label is 1 everywhere)."""
    rng = np.random.default_rng(seed)
    q = quality(pool, cfg, seed)
    keep = np.flatnonzero(np.isin(pool.labels, list(quotas)))  # labels the quotas leave out take no part
    sub = pool.subset(keep)
    cluster = np.zeros(sub.n, dtype=np.int64)
    groups, per_label, said = [], {}, LabelWarnings()
    for label, quota in quotas.items():
        members = np.flatnonzero(sub.labels == label)
        own = sub.subset(members)
        with said.inside(pool.label_names[label]):
            k, k_info = choose_k(own, quota, seed, cfg)
        offset = sum(len(g) for g in groups)
        cluster[members] = offset + assign(own.embeddings, kmeans_centroids(own.embeddings, k, seed, cfg.niter,
                                                                            cfg.nredo))
        groups.append(np.arange(offset, offset + k))
        per_label[pool.label_names[label]] = {"k": k, **k_info,
                                              "cluster_sizes": np.bincount(cluster[members] - offset, minlength=k)
                                              .tolist()}
    said.warn()
    selected, log = refine(sub, cluster, groups, list(quotas.values()), q[keep], seed, cfg, rng)
    idx = keep[selected]
    return Selection(idx, q[idx], {"q": cfg.q, "scorer": cfg.scorer, "per_label": per_label, "rounds": log})


@register("dnc", DnCConfig, quotas=select_with_quotas)
def select(pool: SelectionInput, budget: int, seed: int, cfg: DnCConfig) -> Selection:
    rng = np.random.default_rng(seed)
    k, k_info = choose_k(pool, budget, seed, cfg)
    cluster = assign(pool.embeddings, kmeans_centroids(pool.embeddings, k, seed, cfg.niter, cfg.nredo))
    q = quality(pool, cfg, seed)
    selected, log = refine(pool, cluster, [np.arange(k)], [budget], q, seed, cfg, rng)
    idx = np.flatnonzero(selected)
    info = {"k": k, **k_info, "q": cfg.q, "scorer": cfg.scorer,
            "cluster_sizes": np.bincount(cluster, minlength=k).tolist(), "rounds": log}
    return Selection(idx, q[idx], info)
