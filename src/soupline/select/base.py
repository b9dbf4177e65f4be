"""The Selector contract: what every selection method receives, returns, and how it registers.

A method is one module: a pydantic config class (its `select.<name>` sub-section of
params.yaml, unknown keys rejected) and a function decorated with `@register("<name>",
Config)`. `select/__init__.py` imports each module once; that import is the registration.
Methods never read files: everything they need arrives in `SelectionInput`.

A method whose scores compare examples across labels (DEALRec's surrogate and target model) also
registers `scores=`: under `select.stratify` the method runs
inside each label, where such a score is constant, so `run_method` scores the whole candidate
pool once and hands each label's run its slice in `SelectionInput.prescores`. A method whose steps
need every label at once (dnc's refinement: its proxy model learns from the whole selection so far)
registers `quotas=` instead: under `select.stratify` it receives the per-label quotas and spends
them itself.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from soupline.errors import SouplineError


def _types(annotation: Any) -> set:
    """The types a field's annotation is made of: `list[int] | None` -> {int, NoneType}."""
    args = typing.get_args(annotation)
    return set().union(*map(_types, args)) if args else {annotation}


class ParamsSection(BaseModel):
    """A section of params.yaml: unknown keys are errors, not ignored; .nan, .inf and booleans are no numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """YAML reads unquoted yes/no/on/off/true/false as booleans, which pydantic takes as the numbers 1 and 0
        (`train.epochs=yes`: one epoch); a number setting refuses them instead."""
        kinds = _types(cls.model_fields[info.field_name].annotation)
        if not kinds & {int, float} or kinds & {bool, Any}:
            return v
        if isinstance(v, bool):
            raise ValueError("expects a number, not a boolean")
        if isinstance(v, list) and any(isinstance(x, bool) for x in v):
            raise ValueError("expects numbers, not booleans (YAML reads unquoted yes/no/on/off as a boolean)")
        return v


class MethodConfig(ParamsSection):
    """Base of every method's params sub-section (`select.<method>`)."""

    def uses_model(self) -> bool:
        """Whether the method, with these settings, runs the base model or torch (`extras` model_path and device):
        only then does the select stage check the model and pick the device, seconds of imports (torch,
        transformers' model classes) that a method on the embeddings alone does not need."""
        return False

    def train_settings(self, train: Any) -> dict[str, Any]:
        """The `train` settings (of a `TrainParams`) the method reads with these settings: select's key holds these,
        not every train key dvc.yaml lists for select, so a train edit re-runs only the selections it changes. None
        here: a method on the embeddings alone reads no train setting."""
        return {}


@dataclass
class SelectionInput:
    """Everything a selector may use. Optional fields are filled when a method needs them."""

    embeddings: np.ndarray  # (n, d) float32, L2-normalised
    labels: np.ndarray  # (n,) int64 label ids
    label_names: list[str]
    texts: list[str] | None = None
    target_embeddings: np.ndarray | None = None  # GOT-D target set (validation by default)
    target_labels: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # settings a method needs (base model, train params)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # per-example data columns (prepare.keep_columns)
    prescores: np.ndarray | None = None  # the method's `scores` on the whole pool, when run per label
    label: str | None = None  # the label whose examples these are, when a method runs on its quota (select.stratify)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    def subset(self, idx: np.ndarray) -> "SelectionInput":
        """The pool restricted to rows `idx` (the target set and extras unchanged)."""
        return SelectionInput(self.embeddings[idx], self.labels[idx], self.label_names,
                              [self.texts[i] for i in idx] if self.texts is not None else None,
                              self.target_embeddings, self.target_labels, self.extras,
                              {name: values[idx] for name, values in self.columns.items()},
                              self.prescores[idx] if self.prescores is not None else None, self.label)

    def for_label(self, label: int, idx: np.ndarray) -> "SelectionInput":
        """The pool rows `idx` (all of label `label`) and, when the target set is labelled (the validation
        split) and holds texts of that label, only those: inside one label, GOT-D then moves toward that
        label's target texts, not toward the other labels' (an unlabelled target file stays whole)."""
        sub = self.subset(idx)
        sub.label = self.label_names[label]
        if self.target_labels is not None and (same := np.asarray(self.target_labels) == label).any():
            sub.target_embeddings, sub.target_labels = self.target_embeddings[same], self.target_labels[same]
        return sub

    def train_settings(self):
        """The pipeline's `train` params (extras["train"]), or their defaults when the caller passed none:
        selectors that score with the target model score the model `train` starts from."""
        from soupline.config import TrainParams  # here: soupline.config imports this registry

        return self.extras.get("train") or TrainParams()


@dataclass
class Selection:
    """Chosen pool indices with one score per chosen example, plus method info. A method may return them in
    any order; `run_method` returns them sorted, once it has checked they are unique, `budget` many, in the pool."""

    indices: np.ndarray
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


SelectFn = Callable[[SelectionInput, int, int, MethodConfig], Selection]
ScoresFn = Callable[[SelectionInput, int, MethodConfig], tuple[np.ndarray, dict]]
QuotasFn = Callable[[SelectionInput, dict[int, int], int, MethodConfig], Selection]


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    fn: SelectFn
    scores: ScoresFn | None = None  # per-example scores that need the other labels (see the module docstring)
    quotas: QuotasFn | None = None  # spends per-label quotas in one run (see the module docstring)


REGISTRY: dict[str, Method] = {}


def register(name: str, config: type[MethodConfig], scores: ScoresFn | None = None,
             quotas: QuotasFn | None = None) -> Callable[[SelectFn], SelectFn]:
    """Register `fn(pool, budget, seed, cfg) -> Selection` under `name` (lowercase, unique); `scores(pool,
    seed, cfg) -> (per-example scores, info)` is what `fn` reads from `pool.prescores` when they are given;
    `quotas(pool, {label id: count}, seed, cfg) -> Selection` selects under select.stratify instead of `fn`
    run once per label."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"selection method name must be lowercase identifier, got {name!r}")
    if name in REGISTRY:
        raise ValueError(f"selection method {name!r} is already registered")

    def wrap(fn: SelectFn) -> SelectFn:
        REGISTRY[name] = Method(name, config, fn, scores, quotas)
        return fn

    return wrap


def method_config(spec: str) -> tuple[str, MethodConfig]:
    """`name` or `name:key=value,...` (values parsed as YAML, as `dvc exp run -S` would) -> (registered
    name, its config with those keys set); the benchmarks' way to name a variant on the command line."""
    import yaml

    name, _, sets = spec.partition(":")
    if name not in REGISTRY:
        raise SouplineError(f"unknown selection method {name!r}; known: {', '.join(sorted(REGISTRY))}")
    pairs = [kv.split("=", 1) for kv in sets.split(",")] if sets else []
    if any(len(p) != 2 for p in pairs):
        raise SouplineError(f"method spec {spec!r}: write name or name:key=value,key=value")
    overrides = dict(pairs)
    return name, REGISTRY[name].config(**{k: yaml.safe_load(v) for k, v in overrides.items()})


def minmax(v: np.ndarray) -> np.ndarray:
    """v scaled to [0, 1] (all zeros when v is constant)."""
    v = np.asarray(v, dtype=np.float64)
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


def loosen(setting: str, value: float) -> str:
    """How to let more examples through the cosine threshold `setting` (a params path) set to `value`: raise it or
    turn it off, or, at 1.0, where it drops exact copies only and cannot be raised, turn it off."""
    return f"raise {setting} or set it to null" if value < 1 else \
        f"set {setting} to null (at 1.0 it drops exact copies only)"


def resolve_budget(budget: int | float, pool_size: int) -> int:
    """A fraction in (0, 1] of the pool or an absolute count -> a count in [1, pool_size]."""
    if isinstance(budget, float):
        count = int(round(budget * pool_size))
        if count < 1:
            raise SouplineError(
                f"select.budget={budget} of a pool of {pool_size} is less than one example; "
                f"raise the fraction or give a count"
            )
    else:
        count = budget
    if count > pool_size:
        raise SouplineError(
            f"select.budget={budget} asks for {count} examples but the pool has only {pool_size}; "
            f"lower select.budget"
        )
    return count


DEDUP_MAX_PAIRS = 1 << 24


def dedup_candidates(x: np.ndarray, threshold: float, max_pairs: int = DEDUP_MAX_PAIRS) -> np.ndarray:
    """Indices kept after dropping every point with cosine >= threshold to an earlier kept point.

    The neighbours are searched for a block of rows at a time (at most `max_pairs` / n rows, and only
    the rows still kept), so memory stays bounded when a pool has many near-copies: searching every
    row at once held every pair within the threshold (a block of 10,000 copies of one text: 10^8 pairs,
    1.2 GB; 23 GB at 56,000 similar texts)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    dropped = np.zeros(len(x), dtype=bool)
    step = max(1, int(max_pairs) // max(1, len(x)))
    for start in range(0, len(x), step):
        rows = np.arange(start, min(len(x), start + step))
        rows = rows[~dropped[rows]]  # a dropped row's neighbours are never used
        if not len(rows):
            continue
        lims, _, nbrs = index.range_search(x[rows], float(threshold) - 1e-6)
        for j, i in enumerate(rows):
            if not dropped[i]:
                near = nbrs[lims[j]:lims[j + 1]]
                dropped[near[near > i]] = True
    return np.flatnonzero(~dropped)


def nearest_cosine(x: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """Each pool point's cosine to its nearest held-out point (rows L2-normalised)."""
    import faiss

    index = faiss.IndexFlatIP(heldout.shape[1])
    index.add(np.ascontiguousarray(heldout, dtype=np.float32))
    sims, _ = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return sims[:, 0]


def heldout_twins(x: np.ndarray, heldout: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the pool points with cosine >= threshold to some held-out point (a validation or test
    text): training on such a copy makes the held-out score measure memory, not generalisation."""
    return nearest_cosine(x, heldout) >= float(threshold) - 1e-6


SPARED = "spared_for_quota"  # the info key of a label's run that a pruning setting left short of its quota


def quota_cut(pool: SelectionInput, budget: int, drop: int, setting: str, error: str) -> tuple[int, dict[str, Any]]:
    """How many of the `drop` examples a method's pruning `setting` (e.g. 'select.dealrec.hard_prune=0.1') would
    remove may go, and the info that says when fewer do. All go while `budget` examples remain. Else, run on the
    whole pool it raises `error`; run on one label's quota (select.stratify: under `balanced` a label smaller than
    its share has all it holds as its quota, so any pruning leaves it short) only `pool.n - budget` go, and the
    info records it under `SPARED`, which `per_label` gathers into one warning for all labels."""
    if pool.n - drop >= budget:
        return drop, {}
    if pool.label is None:
        raise SouplineError(error)
    return pool.n - budget, {SPARED: {"setting": setting, "would_leave": pool.n - drop, "of": pool.n,
                                      "quota": budget}}


def largest_remainder(weights: np.ndarray, total: int, caps: np.ndarray | None = None) -> np.ndarray:
    """Integers proportional to `weights` that sum to `total` exactly (largest-remainder rounding).

    Shares are floored and the leftover units go to the largest remainders (ties: lowest index).
    With `caps`, no part exceeds its cap: full parts keep their cap and the rest is split again
    over the parts with room (zero-weight parts are used only when nothing else has room).
    """
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.full(len(weights), int(total)) if caps is None else np.asarray(caps, dtype=np.int64)
    if total > caps.sum():
        raise ValueError(f"cannot place {total} units into parts holding {int(caps.sum())}")
    quota = np.zeros(len(weights), dtype=np.int64)
    active = caps > 0
    remaining = int(total)
    while remaining > 0:
        w = np.where(active, weights, 0.0)
        if w.sum() <= 0:
            w = active.astype(np.float64)
        share = remaining * w / w.sum()
        part = np.floor(share).astype(np.int64)
        part[np.argsort(-(share - part), kind="stable")[:remaining - int(part.sum())]] += 1
        room = caps - quota
        over = part > room
        if not over.any():
            quota += part
            break
        quota[over] = caps[over]
        remaining -= int(room[over].sum())
        active &= ~over
    return quota


STRATIFY = ("none", "label", "balanced")


def label_quotas(labels: np.ndarray, budget: int, balanced: bool = False) -> dict[int, int]:
    """Budget split over labels (largest remainders): in proportion to their pool counts, or with
    `balanced` equally, a label smaller than its share giving all it has and the rest going to the
    labels with room. No quota exceeds its label's size; labels whose quota is 0 are left out.
    """
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    weights = np.ones(len(present)) if balanced else counts[present]
    quota = largest_remainder(weights, budget, caps=counts[present])
    return {int(c): int(q) for c, q in zip(present, quota) if q > 0}


def per_label(name: str, pool: SelectionInput, candidates: np.ndarray, quotas: dict[int, int], seed: int,
              cfg: MethodConfig) -> Selection:
    """The method run inside each label on its quota (its `scores`, when it has them, taken on all candidates)."""
    scored: dict[str, Any] = {}
    if (scores_fn := REGISTRY[name].scores) is not None:  # across labels, once
        scores, scored = scores_fn(pool.subset(candidates), seed, cfg)
        pool = dataclasses.replace(pool, prescores=np.full(pool.n, np.nan))
        pool.prescores[candidates] = scores
    parts = []
    for label, quota in quotas.items():
        members = candidates[pool.labels[candidates] == label]  # quota <= len(members) by construction
        part = REGISTRY[name].fn(pool.for_label(label, members), quota, seed, cfg)
        parts.append((members[np.asarray(part.indices, dtype=np.int64)], part.scores,
                      {pool.label_names[label]: part.info}))
    info = {k: v for p in parts for k, v in p[2].items()}
    spared = {label: part[SPARED] for label, part in info.items() if SPARED in part}
    if spared:  # one warning for all labels (a method prunes with one setting), not one line per label
        said = [f"{label!r} ({s['would_leave']} of {s['of']}, quota {s['quota']})" for label, s in spared.items()]
        warnings.warn(f"{next(iter(spared.values()))['setting']} would leave fewer examples than the quota of "
                      f"{len(said)} label(s): {', '.join(said[:10])}{' ...' if len(said) > 10 else ''}; those "
                      "labels drop only what their quota leaves over", stacklevel=3)
    return Selection(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     {"per_label": info, **({SPARED: list(spared)} if spared else {}),
                      **({"scored_across_labels": scored} if scores_fn is not None else {})})


def run_method(name: str, pool: SelectionInput, budget: int, seed: int, cfg: MethodConfig,
               stratify: str = "none", dedup_threshold: float | None = None,
               heldout: np.ndarray | None = None, heldout_threshold: float | None = None) -> Selection:
    """Run a registered method (optionally per label, optionally without near-duplicates of each
    other or of the `heldout` embeddings) and check its result honours the contract."""
    if name not in REGISTRY:
        raise SouplineError(f"unknown selection method {name!r}; choose one of {sorted(REGISTRY)}")
    if stratify not in STRATIFY:
        raise SouplineError(f"select.stratify={stratify!r} is not one of {', '.join(map(repr, STRATIFY))}")
    if not np.isfinite(pool.embeddings).all():
        raise SouplineError("pool embeddings contain NaN or inf; re-run the embed stage")
    if not 1 <= budget <= pool.n:
        raise SouplineError(f"select.budget asks for {budget} examples but the pool has {pool.n}; "
                            "give a budget between 1 and the pool size")
    candidates = np.arange(pool.n)
    if dedup_threshold is not None:
        candidates = dedup_candidates(pool.embeddings, dedup_threshold)
    twins = 0
    if heldout_threshold is not None and heldout is not None and len(heldout):
        twin = heldout_twins(pool.embeddings[candidates], heldout, heldout_threshold)
        candidates, twins = candidates[~twin], int(twin.sum())
    set_ = {k: v for k, v in (("dedup_threshold", dedup_threshold), ("heldout_dedup_threshold", heldout_threshold))
            if v is not None}
    filters = ", ".join(f"select.{k}={v}" for k, v in set_.items())
    fixes = ", ".join(loosen(f"select.{k}", v) for k, v in set_.items())
    if len(candidates) < budget:
        raise SouplineError(f"only {len(candidates)} pool example(s) remain after removing near-duplicates ("
                            f"{filters}), fewer than the budget {budget}; {fixes}, or lower select.budget")
    gone = [pool.label_names[c] for c in np.setdiff1d(pool.labels, pool.labels[candidates])]
    if gone:  # under every stratify mode: quotas are split over the labels that are left
        warnings.warn(f"removing near-duplicates ({filters}) leaves no example of {len(gone)} label(s) {gone[:10]}: "
                      f"no model trained on the selection can predict them; {fixes}", stacklevel=2)
    if stratify != "none":
        quotas = label_quotas(pool.labels[candidates], budget, balanced=stratify == "balanced")
        if left_out := [pool.label_names[c] for c in np.unique(pool.labels[candidates]) if c not in quotas]:
            warnings.warn(f"select.stratify={stratify}: a budget of {budget} gives no example to "
                          f"{len(left_out)} label(s) {left_out[:10]}; raise select.budget to train on every label",
                          stacklevel=2)
        if (quotas_fn := REGISTRY[name].quotas) is not None:
            part = quotas_fn(pool.subset(candidates), quotas, seed, cfg)
            sel = Selection(candidates[np.asarray(part.indices, dtype=np.int64)], part.scores, part.info)
        else:
            sel = per_label(name, pool, candidates, quotas, seed, cfg)
        sel.info["quotas"] = {pool.label_names[k]: v for k, v in quotas.items()}
    elif len(candidates) < pool.n:
        part = REGISTRY[name].fn(pool.subset(candidates), budget, seed, cfg)
        sel = Selection(candidates[np.asarray(part.indices, dtype=np.int64)], part.scores, part.info)
    else:
        sel = REGISTRY[name].fn(pool, budget, seed, cfg)
    if dedup_threshold is not None or heldout_threshold is not None:
        sel.info.update(candidates_after_dedup=int(len(candidates)), heldout_twins_excluded=twins,
                        labels_removed_by_dedup=gone)
    idx = np.asarray(sel.indices, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    idx, scores = idx[order], np.asarray(sel.scores, dtype=np.float64)[order]
    if len(np.unique(idx)) != len(idx) or len(idx) != budget:
        raise SouplineError(f"method {name!r} returned {len(np.unique(idx))} distinct examples, not {budget}")
    if len(idx) and (idx[0] < 0 or idx[-1] >= pool.n):
        raise SouplineError(f"method {name!r} returned indices outside the pool")
    return Selection(idx, scores, sel.info)
