"""DEALRec (Lin et al., SIGIR 2024): influence on a cheap surrogate + effort on the target model + coverage.

Influence: a multinomial logistic regression on the frozen embeddings stands in for the model;
score(s) = grad L(s)^T H^-1 v with v the mean training gradient and H the damped Hessian of the
mean loss, the first-order change of the total training loss if s were removed (higher =
removing it hurts more). Per-example gradients are closed form, (p - onehot(y)) outer [x, 1];
u = H^-1 v is solved once, exactly by Cholesky while (d + 1) x classes is small, else by
conjugate gradients on Hessian-vector products from torch.func (vjp of grad). Effort: the norm of each
example's loss gradient with respect to the target model's trainable parameters (the classifier
head, head + last transformer layer, or everything `train` trains: all weights but the frozen word
embeddings for full fine-tuning, the LoRA adapters + head for LoRA), in batches, from one backward
pass of activation gradients per batch (grad_norms.py: no per-example gradient is formed).
The target model is the one `train` starts from (its pooling; with LP-FT, the default, its head is
a probe on the pool's features). The spec's "fresh head" would carry no signal for soupline's
model: a random small head on unit-norm features gives every example nearly the same gradient.
Both scores are min-max normalised and combined as influence + lambda * effort. Coverage (paper
Alg. 2): the score range is cut into equal-width strata and the budget spread over them, smallest
stratum first, so easy and hard examples are both kept. By default this runs inside each label over
its own scores, the budget split equally over labels by the same rule (`coverage_by_label: equal`): over
the whole pool the sparse top strata, taken whole, were on a balanced pool mostly texts whose label
disagrees with their neighbours', below random (docs/dealrec_coverage_by_label.md). `score: el2n` swaps
in the surrogate's EL2N, which makes the CCS baseline.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import Field

from soupline.errors import SouplineError
from soupline.select.base import MethodConfig, Selection, SelectionInput, minmax, register
from soupline.select.quotas import label_quotas, quota_cut


class DealRecConfig(MethodConfig):
    score: Literal["influence_effort", "el2n"] = Field(
        "influence_effort", description="what is stratified: influence + lambda x effort (DEALRec), or the "
        "surrogate's EL2N ||p - onehot(y)|| (CCS baseline, no target model needed)")
    effort_weight: float = Field(0.5, ge=0, description="lambda: score = influence + lambda x effort, both "
                                 "min-max normalised (0: influence only, no target model needed)")
    effort_params: Literal["head", "last_layer", "trainable"] = Field(
        "head", description="target-model parameters whose per-example gradient norm is the effort: the "
        "classifier head, head + last transformer layer, or what train.method trains (full: every weight but "
        "frozen word embeddings; lora: the adapters + head); cost and memory grow in that order")
    effort_batch_size: int = Field(32, ge=1, description="texts per effort batch (one forward + backward pass)")
    surrogate_c: float = Field(1.0, gt=0, description="inverse L2 strength of the surrogate logistic regression")
    damping: float = Field(0.01, gt=0, description="added to the surrogate Hessian's diagonal before solving")
    solver: Literal["auto", "cholesky", "cg"] = Field(
        "auto", description="H u = v: dense Cholesky, conjugate gradients with torch.func HVPs, or auto "
        "(Cholesky when (d + 1) x classes <= dense_max_params)")
    dense_max_params: int = Field(1024, ge=1, description="largest surrogate size solved densely by solver: auto")
    cg_max_iter: int = Field(500, ge=1, description="conjugate-gradient iterations at most")
    cg_tol: float = Field(1e-8, gt=0, description="conjugate-gradient relative residual tolerance")
    hard_prune: float = Field(0.0, ge=0, lt=1, description="first drop this fraction of the highest scores "
                              "(released code: 0.1; not in the paper's algorithm)")
    hard_prune_within: Literal["pool", "label"] = Field(
        "pool", description="hard_prune's top scores: of the whole pool, or of each label (its own top fraction: "
        "a rare label's examples, which score high on a skewed pool, are not all pruned first)")
    # below 2^31: each score's stratum is an int64 (10^19 strata was an OverflowError traceback)
    strata: int = Field(50, ge=1, lt=2**31, description="K: equal-width score strata for coverage-enhanced sampling")
    strata_by: Literal["width", "count"] = Field(
        "width", description="strata of equal score width (the paper's), or min(strata, budget) strata of equal "
        "counts (score quantiles: score-stratified random sampling, no stratum a handful of outliers taken whole)")
    coverage_by_label: Literal["none", "proportional", "equal"] = Field(
        "equal", description="coverage sampling inside each label over its own scores, the budget split over labels "
        "equally (CCS's rule with the labels as strata: a label smaller than its share gives all it has) or in "
        "proportion to the pool; or over the whole pool's scores (none: the paper's, below random on balanced pools, "
        "where its sparse top strata are mostly texts whose label disagrees with their neighbours')")

    def uses_model(self) -> bool:
        return self.score != "el2n" and self.effort_weight > 0  # the effort pass

    def train_settings(self, train: Any, budget: int | None = None) -> dict[str, Any]:
        """What `effort_scores` reads of `train` to build the model train starts from (none without the effort pass);
        `head_init_seed` only where the head it draws survives, as in `TrainParams.unread_settings`."""
        if not self.uses_model():
            return {}
        read = ["pooling", "head_init", "max_length"]
        lora = self.effort_params == "trainable" and train.method == "lora"
        if train.head_init != "probe" or train.pooling == "cls" or lora:  # else LP-FT's probe replaces the head
            read.append("head_init_seed")  # it draws (`cls`: and the layers a checkpoint lacks; LoRA: its adapters)
        if self.effort_params == "trainable":  # the parameters finetune trains
            # under LoRA peft trains the adapters and the head alone: freeze_embeddings changes nothing there
            read += ["method"] + (["lora"] if lora else ["freeze_embeddings"])
        return train.model_dump(mode="json", include=set(read))


def surrogate_probs(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fit softmax regression; (probabilities, one-hot labels, weights (C, d+1)) over the labels present.

    None when the pool has a single label (every gradient is zero then). Two labels: sklearn fits one logit, whose
    penalty on the logit difference is twice a two-class softmax's (the softmax optimum splits it +-v/2 between its
    rows), so it is fit at 2C, the softmax's optimum at C, and written as that softmax with a zero first row (a
    shift of both logits: the same probabilities). Before session 41 a binary pool's surrogate was the softmax at
    C/2, which moved half its examples to another of 50 score strata.

    Solved to the optimum the influence formula assumes (zero mean gradient): Newton-CG to a gradient
    of 1e-8 in float64. sklearn's defaults (lbfgs to 1e-4, in the embeddings' float32) stopped 4 % of
    the influence range away from it on 20newsgroups, at a point that moved with the BLAS thread
    count, so 1 and 2 threads picked 5 % of the examples differently (float64 alone: equal to 1e-14).
    """
    from sklearn.linear_model import LogisticRegression

    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        return None
    x = x.astype(np.float64)
    binary = len(classes) == 2
    lr = LogisticRegression(C=2 * c if binary else c, solver="newton-cg", tol=1e-8, max_iter=1000).fit(x, y_idx)
    w = np.hstack([lr.coef_, lr.intercept_[:, None]])
    if binary:
        w = np.vstack([np.zeros_like(w), w])
    return lr.predict_proba(x), np.eye(len(classes))[y_idx], w


def augment(x: np.ndarray) -> np.ndarray:
    """[x, 1]: the bias is the last input column."""
    return np.hstack([x.astype(np.float64), np.ones((len(x), 1))])


def dense_hessian(p: np.ndarray, xa: np.ndarray, damping: float) -> np.ndarray:
    """Hessian of the mean softmax cross-entropy in the (class, input) layout, plus damping * I.

    Block (c, c') = Xa^T diag(p_c (delta_cc' - p_c')) Xa / n.
    """
    n, k = p.shape
    d = xa.shape[1]
    h = np.zeros((k, d, k, d))
    for c in range(k):
        for c2 in range(c, k):
            w = p[:, c] * ((c == c2) - p[:, c2])
            h[c, :, c2, :] = (xa * w[:, None]).T @ xa / n
            h[c2, :, c, :] = h[c, :, c2, :].T
    h = h.reshape(k * d, k * d)
    h[np.diag_indices_from(h)] += damping
    return h


def solve_influence(p: np.ndarray, onehot: np.ndarray, w: np.ndarray, xa: np.ndarray, damping: float,
                    solver: str, dense_max: int, cg_max_iter: int, cg_tol: float) -> tuple[np.ndarray, dict]:
    """u = H^-1 v, v = mean per-example gradient; returns u as (C, d+1) and solver facts."""
    n = len(xa)
    v = ((p - onehot).T @ xa / n).ravel()  # mean of (p_i - e_yi) outer [x_i, 1]
    use_dense = solver == "cholesky" or (solver == "auto" and w.size <= dense_max)
    if use_dense:
        from scipy.linalg import cho_factor, cho_solve

        u = cho_solve(cho_factor(dense_hessian(p, xa, damping)), v)
        return u.reshape(w.shape), {"solver": "cholesky"}
    import torch
    from scipy.sparse.linalg import LinearOperator, cg
    from torch.func import grad, vjp

    xt = torch.from_numpy(xa)
    yt = torch.from_numpy(onehot.argmax(1))
    theta = torch.from_numpy(w.ravel().copy())

    def loss(t):
        logits = xt @ t.view(w.shape).T
        return torch.nn.functional.cross_entropy(logits, yt) + 0.5 * damping * (t @ t)

    _, pullback = vjp(grad(loss), theta)  # H is symmetric, so the vjp of the gradient is the HVP

    def hvp(vec):
        return pullback(torch.from_numpy(np.asarray(vec, dtype=np.float64).ravel()))[0].numpy()

    iters = [0]

    def count(_):
        iters[0] += 1

    op = LinearOperator((w.size, w.size), matvec=hvp, dtype=np.float64)
    u, status = cg(op, v, rtol=cg_tol, atol=0.0, maxiter=cg_max_iter, callback=count)
    residual = float(np.linalg.norm(hvp(u) - v) / max(np.linalg.norm(v), 1e-300))
    return u.reshape(w.shape), {"solver": "cg", "cg_iterations": iters[0], "cg_relative_residual": residual,
                                "cg_converged": status == 0}


def influence_scores(x: np.ndarray, y: np.ndarray, cfg: DealRecConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(influence, EL2N) per example from the surrogate; zeros when the pool has one label. With `score: el2n`
    the influence is not used and not solved for (zeros): its H u = v solve was a fifth of the select stage."""
    fit = surrogate_probs(x, y, cfg.surrogate_c)
    if fit is None:
        return np.zeros(len(x)), np.zeros(len(x)), {"surrogate": "skipped: one label"}
    p, onehot, w = fit
    if cfg.score == "el2n":
        return np.zeros(len(x)), np.linalg.norm(p - onehot, axis=1), {}
    xa = augment(x)
    u, info = solve_influence(p, onehot, w, xa, cfg.damping, cfg.solver, cfg.dense_max_params, cfg.cg_max_iter,
                              cfg.cg_tol)
    if info.get("cg_converged") is False:  # said only in selection.json before: the scores were used all the same
        warnings.warn(f"select.dealrec: conjugate gradients stopped at cg_max_iter={cfg.cg_max_iter} with a relative "
                      f"residual of {info['cg_relative_residual']:.2g}, above cg_tol={cfg.cg_tol:g}, so the influence "
                      "scores follow an approximate H^-1 v; raise select.dealrec.cg_max_iter, or damping (a larger "
                      "damping converges faster)", stacklevel=2)
    residual = p - onehot
    influence = np.einsum("nd,nd->n", residual @ u, xa)  # <(p - e_y) outer [x, 1], u> without forming it
    return influence, np.linalg.norm(residual, axis=1), info


def trainable_names(model, which: str) -> list[str]:
    """Parameter names of the classifier head (+ the last transformer layer for `last_layer`; every
    parameter that requires a gradient for `trainable`)."""
    from soupline.train import head_of

    if which == "trainable":
        return [n for n, p in model.named_parameters() if p.requires_grad]
    head = {id(p) for p in head_of(model)[1].parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in head]
    if which == "last_layer":
        pattern = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")
        layers = [int(m.group(1)) for n, _ in model.named_parameters() if (m := pattern.search(n))]
        if not layers:
            raise SouplineError(f"cannot find the transformer layers of {type(model).__name__}; "
                                "use select.dealrec.effort_params=head")
        last = f".{max(layers)}."
        names += [n for n, _ in model.named_parameters() if (m := pattern.search(n)) and m.group(0).endswith(last)]
    return names


def effort_scores(texts: list[str], labels: np.ndarray, label_names: list[str], model_path: str,
                  train: Any, which: str, batch_size: int, device: str, probe_c: float = 1.0) -> np.ndarray:
    """Per-example ||d loss / d phi|| of the model `train` (a `TrainParams`) starts from (soupline's
    classifier with its pooling; head drawn with its head_init_seed, then, for `head_init: probe` as in
    LP-FT, a logistic-regression probe (C = `probe_c`) fit on the head's input features over these
    texts; for `trainable`, word embeddings frozen and LoRA applied as `train` would).

    Norms come from `grad_norms.GradNorms`: one backward pass per batch, no per-example gradients
    formed. `head`: over the head alone, on the head's input features from one no-grad pass.
    `last_layer` / `trainable`: over the whole model, texts batched by length with their attention mask.
    """
    import torch

    from soupline.classifier import init_model
    from soupline.evaluate import collate, tokenize
    from soupline.models import load_tokenizer
    from soupline.probe import fit_at
    from soupline.select.grad_norms import GradNorms
    from soupline.train import PROBE_NEEDS, apply_lora, head_of, head_features, set_head

    if which == "trainable" and train.method == "probe":
        raise SouplineError("select.dealrec.effort_params=trainable: train.method is probe, which trains no model "
                            "weights; use effort_params: head")
    model = init_model(model_path, label_names, train.head_init_seed, train.pooling)
    model.to(device).eval()
    tok = load_tokenizer(model_path)
    encoded = tokenize(tok, list(texts), train.max_length)
    needs = ("select.dealrec.effort_params=head", "use effort_params: last_layer or trainable") \
        if which == "head" else PROBE_NEEDS
    features = head_features(model, tok, encoded, batch_size, device, needs) \
        if which == "head" or train.head_init == "probe" else None
    if train.head_init == "probe":
        set_head(model, fit_at(features, np.asarray(labels), len(label_names), probe_c))
    if which == "trainable":  # the parameters `finetune` trains, set up as it does
        if train.method == "lora":  # peft freezes every weight but the adapters and the head
            model = apply_lora(model, train.lora, train.head_init_seed).to(device).eval()
        elif train.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
    y = torch.as_tensor(labels, device=device)
    out = np.zeros(len(texts))

    if which == "head":  # on the features already computed: no pass through the encoder
        _, head = head_of(model)
        norms_of = GradNorms(head, {n for n, _ in head.named_parameters()})
        x = torch.as_tensor(features, device=device)
        for start in range(0, len(texts), batch_size):
            rows = np.arange(start, min(len(texts), start + batch_size))
            out[rows] = norms_of(lambda: head(x[rows]), y[rows]).cpu().numpy()
        norms_of.check(lambda: head(x[:1]), y[:1], float(out[0]))
        return out

    norms_of = GradNorms(model, set(trainable_names(model, which)))
    order = np.argsort([len(r["input_ids"]) for r in encoded], kind="stable")  # similar lengths, little padding
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = collate(tok, [encoded[i] for i in rows], device)
        out[rows] = norms_of(lambda: model(**batch).logits, y[rows]).cpu().numpy()
    first = collate(tok, [encoded[order[0]]], device)
    norms_of.check(lambda: model(**first).logits, y[order[:1]], float(out[order[0]]))
    return out


def coverage_sample(scores: np.ndarray, budget: int, strata: int, rng: np.random.Generator,
                    by: str = "width") -> tuple[np.ndarray, dict]:
    """Paper Alg. 2: K equal-width strata over the score range; smallest stratum first, each gets
    min(its size, floor(remaining budget / strata left)) drawn uniformly. Returns positions into `scores`.

    `by="count"`: min(K, budget) strata of equal counts by score rank, so each gets an equal share; the few units
    left over go to strata in a seeded random order (in index order, the tie rule above, they would all go to the
    highest-score strata)."""
    lo, hi = scores.min(), scores.max()
    if by == "count":  # ranks cut into runs of n / K (ties broken by position: deterministic)
        bins = np.empty(len(scores), dtype=np.int64)
        bins[np.argsort(scores, kind="stable")] = np.arange(len(scores)) * min(strata, budget) // len(scores)
    else:
        bins = np.zeros(len(scores), dtype=np.int64) if hi <= lo else \
            np.minimum(((scores - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)  # the top value falls inside
    # the non-empty strata in order, from one sort: a pass per stratum (strata x pool) ran for minutes or hours
    # where strata far exceeded the pool (`strata: 100000` on 50,000 texts), though at most `pool` are non-empty
    by_stratum = np.argsort(bins, kind="stable")
    groups = np.split(by_stratum, np.flatnonzero(np.diff(bins[by_stratum])) + 1)
    tie = rng.permutation(len(groups)) if by == "count" else range(len(groups))
    order = sorted(range(len(groups)), key=lambda i: (len(groups[i]), tie[i]))
    chosen, left = [], budget
    for rank, i in enumerate(order):
        take = min(left // (len(order) - rank), len(groups[i]))
        chosen.append(rng.choice(groups[i], size=take, replace=False))
        left -= take
    return np.concatenate(chosen), {"non_empty_strata": len(groups)}


def scores(pool: SelectionInput, seed: int, cfg: DealRecConfig) -> tuple[np.ndarray, dict]:
    """The score that coverage sampling stratifies: influence (+ lambda x effort), or EL2N."""
    influence, el2n, info = influence_scores(pool.embeddings, pool.labels, cfg)
    if cfg.score == "el2n":
        score = el2n
    elif cfg.effort_weight > 0:
        if pool.texts is None or not pool.extras.get("model_path"):
            raise SouplineError("select.dealrec effort needs the pool texts and the base model; set "
                                "select.dealrec.effort_weight=0 or score=el2n")
        effort = effort_scores(pool.texts, pool.labels, pool.label_names, pool.extras["model_path"],
                               pool.train_settings(), cfg.effort_params, cfg.effort_batch_size,
                               pool.extras.get("device", "cpu"), cfg.surrogate_c)
        score = minmax(influence) + cfg.effort_weight * minmax(effort)
        info["effort_params"] = cfg.effort_params
    else:
        score = minmax(influence)
    return score, info


def prune_groups(labels: np.ndarray, cfg: DealRecConfig, by_label: bool) -> tuple[list[np.ndarray], list[int]]:
    """The groups hard_prune cuts from (each label's examples, or the whole pool) and how many it drops of each."""
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)] if by_label else [np.arange(len(labels))]
    return groups, [int(np.floor(cfg.hard_prune * len(group))) for group in groups]


def prune_refusal(cfg: DealRecConfig, left: int, budget: int) -> str:
    """The line that refuses a hard_prune leaving `left` examples, fewer than the `budget` of an unstratified pool."""
    return (f"select.dealrec.hard_prune={cfg.hard_prune} leaves {left} examples, fewer than the budget {budget}; "
            "lower hard_prune")


def check_hard_prune(labels: np.ndarray, budget: int, cfg: DealRecConfig, stratify: str) -> None:
    """`select`'s refusal of a hard_prune that leaves fewer examples than the budget, from the pool's labels alone:
    doctor and the drivers say it before embed, where it came only from the select stage. Under select.stratify
    each quota keeps its budget (no refusal); near-duplicate removal only shrinks what is left."""
    if cfg.hard_prune > 0 and stratify == "none":
        left = len(labels) - sum(prune_groups(labels, cfg, cfg.hard_prune_within == "label")[1])
        if left < budget:
            raise SouplineError(prune_refusal(cfg, left, budget))


def label_coverage(score: np.ndarray, labels: np.ndarray, names: list[str], keep: np.ndarray, budget: int,
                   rng: np.random.Generator, cfg: DealRecConfig) -> tuple[np.ndarray, dict]:
    """Coverage sampling inside each label over its own scores (of the `keep` positions), the budget split over the
    labels by `label_quotas`: in proportion to their counts, or equally (smallest first, capped by their size)."""
    quotas = label_quotas(labels[keep], budget, balanced=cfg.coverage_by_label == "equal")
    chosen, non_empty = [], 0
    for label, quota in quotas.items():
        members = keep[labels[keep] == label]
        pos, info = coverage_sample(score[members], quota, cfg.strata, rng, cfg.strata_by)
        chosen.append(members[pos])
        non_empty += info["non_empty_strata"]
    return np.sort(np.concatenate(chosen)), {"non_empty_strata": non_empty,
                                             "label_quotas": {names[k]: v for k, v in quotas.items()}}


@register("dealrec", DealRecConfig, scores=scores)
def select(pool: SelectionInput, budget: int, seed: int, cfg: DealRecConfig) -> Selection:
    """Coverage-enhanced sampling over the scores (of the whole pool under select.stratify: `pool.prescores`)."""
    score, info = (pool.prescores, {}) if pool.prescores is not None else scores(pool, seed, cfg)
    keep = np.arange(pool.n)
    if cfg.hard_prune > 0:  # per label: each label's own top scores (a quota under select.stratify is one label)
        groups, cuts = prune_groups(pool.labels, cfg, cfg.hard_prune_within == "label" and pool.label is None)
        drop, spared = quota_cut(pool, budget, sum(cuts), f"select.dealrec.hard_prune={cfg.hard_prune}",
                                 prune_refusal(cfg, pool.n - sum(cuts), budget))
        cuts = cuts if not spared else [drop]  # a quota keeps its budget: only pool.n - budget go
        keep = np.sort(np.concatenate([group[np.argsort(-score[group], kind="stable")[cut:]]
                                       for group, cut in zip(groups, cuts)]))
        info.update(pruned=drop, **spared)
    rng = np.random.default_rng(seed)
    if cfg.coverage_by_label == "none" or pool.label is not None:  # a quota under select.stratify is one label
        pos, strata_info = coverage_sample(score[keep], budget, cfg.strata, rng, cfg.strata_by)
        idx = keep[pos]
    else:
        idx, strata_info = label_coverage(score, pool.labels, pool.label_names, keep, budget, rng, cfg)
    # the score stratified: `influence_effort` with no effort weight is influence alone, which its info said it was not
    used = "influence" if cfg.score == "influence_effort" and not cfg.effort_weight else cfg.score
    return Selection(idx, score[idx], {"score": used, **info, **strata_info})
