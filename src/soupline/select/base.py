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

What `run_method` does before and around a method lives in its own modules: the budget and its per-label
quotas in `select/quotas.py`, the near-duplicates it removes from the candidates in `select/dedup.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from soupline.errors import SouplineError
from soupline.select.dedup import dedup_candidates, heldout_twins, loosen, repeated_picks, repeats_note
from soupline.select.quotas import SPARED, STRATIFY, label_quotas

if typing.TYPE_CHECKING:
    import pandas as pd


def _types(annotation: Any) -> set:
    """The types a field's annotation is made of: `list[int] | None` -> {int, NoneType}."""
    args = typing.get_args(annotation)
    return set().union(*map(_types, args)) if args else {annotation}


FLOAT32_MAX = float(np.finfo(np.float32).max)

# What every library soupline seeds takes (numpy's default_rng refuses a negative seed, faiss a 32-bit overflow):
# a bad seed is the one params line, not a traceback from the first stage that draws with it.
Seed = Annotated[int, Field(ge=0, lt=2**31)]


class ParamsSection(BaseModel):
    """A section of params.yaml: unknown keys are errors, not ignored; .nan, .inf and booleans are no numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """YAML reads unquoted true/false as booleans, which pydantic takes as the numbers 1 and 0
        (`train.epochs=true`: one epoch); a number setting refuses them instead."""
        kinds = _types(cls.model_fields[info.field_name].annotation)
        if not kinds & {int, float} or kinds & {bool, Any}:
            return v
        if isinstance(v, bool):
            raise ValueError("expects a number, not a boolean")
        if isinstance(v, list) and any(isinstance(x, bool) for x in v):
            raise ValueError("expects numbers, not booleans (YAML reads unquoted true/false as a boolean)")
        return v

    @field_validator("*")
    @classmethod
    def _float32_range(cls, v: Any, info: ValidationInfo) -> Any:
        """torch and faiss compute in float32, where a setting above its largest number is inf: a learning rate of
        1e300 was a RuntimeError traceback from the optimizer's first step, and a GOT-D `label_weight` of 1e300 made
        the costs inf and the error a false "the pool and target coincide". A count (int) is not a float32, and a
        field with an upper bound says its own. Judged on the value pydantic made (after it): a quoted number
        ("1e39", which pydantic reads as one) passed the check on the raw value."""
        field = cls.model_fields[info.field_name]
        kinds = _types(field.annotation)
        if float not in kinds or kinds & {int, bool, Any} or any(hasattr(m, "lt") or hasattr(m, "le")
                                                                  for m in field.metadata):
            return v
        if any(isinstance(x, float) and abs(x) > FLOAT32_MAX for x in (v if isinstance(v, list) else [v])):
            raise ValueError(f"is beyond float32's range (+-{FLOAT32_MAX:.3g}), in which torch and faiss compute; "
                             "give a number within it")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_empty_text(cls, v: Any, info: ValidationInfo) -> Any:
        """An empty name is no name: `prepare.source: ''` (or a split file, `select.gotd.target`) read the path '',
        the working directory, as a data folder (the project root: every data file under it)."""
        kinds = _types(cls.model_fields[info.field_name].annotation)
        if str in kinds and (v == "" or isinstance(v, list) and "" in v):
            raise ValueError("is empty; give a value" + (", or null" if type(None) in kinds else ""))
        return v


class MethodConfig(ParamsSection):
    """Base of every method's params sub-section (`select.<method>`)."""

    def uses_model(self) -> bool:
        """Whether the method, with these settings, runs the base model (`extras` model_path): only then does the
        select stage check the model, seconds of imports (transformers' model classes) that a method on the
        embeddings alone does not need."""
        return False

    def uses_device(self) -> bool:
        """Whether the method runs torch on the device (`extras` device): only then does the select stage pick it
        (importing torch). A method that runs the base model does."""
        return self.uses_model()

    def train_settings(self, train: Any, budget: int | None = None) -> dict[str, Any]:
        """The `train` settings (of a `TrainParams`) the method reads with these settings: select's key holds these,
        not every train key dvc.yaml lists for select, so a train edit re-runs only the selections it changes.
        `budget`: the selection's size when known (a method that trains on part of it may key its schedule as the
        steps that gives). None here: a method on the embeddings alone reads no train setting."""
        return {}


def data_columns(split: pd.DataFrame) -> dict[str, np.ndarray]:
    """A split's per-example data columns (prepare.keep_columns): all but its text and label."""
    return {c: split[c].to_numpy() for c in split.columns if c not in ("text", "label")}


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
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # per-example data columns (`data_columns`)
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


def check_name(registry: dict, name: str, what: str) -> None:
    """A name about to be registered as a `what` in `registry`: a lowercase identifier not yet taken (peft's
    `register_peft_method` rule), or a ValueError."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{what} name must be lowercase identifier, got {name!r}")
    if name in registry:
        raise ValueError(f"{what} {name!r} is already registered")


def register(name: str, config: type[MethodConfig], scores: ScoresFn | None = None,
             quotas: QuotasFn | None = None) -> Callable[[SelectFn], SelectFn]:
    """Register `fn(pool, budget, seed, cfg) -> Selection` under `name` (lowercase, unique); `scores(pool,
    seed, cfg) -> (per-example scores, info)` is what `fn` reads from `pool.prescores` when they are given;
    `quotas(pool, {label id: count}, seed, cfg) -> Selection` selects under select.stratify instead of `fn`
    run once per label."""
    check_name(REGISTRY, name, "selection method")

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


class LabelWarnings:
    """The warnings a method gives inside each label under select.stratify, said once per kind (numbers aside) with
    the labels that gave it: dnc's "k above the budget" came once per label, 100 lines at 100 labels."""

    def __init__(self):
        self.said: dict[tuple, list[tuple[str, str]]] = {}

    @contextlib.contextmanager
    def inside(self, label: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", append=True)  # every label's, but what a filter ignores stays ignored
            yield
        for w in caught:
            kind = (w.category, re.sub(r"\d+(\.\d+)?", "#", str(w.message)))
            self.said.setdefault(kind, []).append((label, str(w.message)))

    def warn(self) -> None:
        for (category, _), [(label, message), *others] in self.said.items():
            also = [repr(other) for other, _ in others]
            warnings.warn(f"label {label!r}: {message}" + (
                f" (likewise for {len(also)} other label(s): {', '.join(also[:10])}{' ...' if len(also) > 10 else ''})"
                if also else ""), category, stacklevel=4)


def per_label(name: str, pool: SelectionInput, candidates: np.ndarray, quotas: dict[int, int], seed: int,
              cfg: MethodConfig) -> Selection:
    """The method run inside each label on its quota (its `scores`, when it has them, taken on all candidates)."""
    scored: dict[str, Any] = {}
    if (scores_fn := REGISTRY[name].scores) is not None:  # across labels, once
        scores, scored = scores_fn(pool.subset(candidates), seed, cfg)
        pool = dataclasses.replace(pool, prescores=np.full(pool.n, np.nan))
        pool.prescores[candidates] = scores
    parts, said = [], LabelWarnings()
    for label, quota in quotas.items():
        members = candidates[pool.labels[candidates] == label]  # quota <= len(members) by construction
        with said.inside(pool.label_names[label]):
            part = REGISTRY[name].fn(pool.for_label(label, members), quota, seed, cfg)
        parts.append((members[np.asarray(part.indices, dtype=np.int64)], part.scores,
                      {pool.label_names[label]: part.info}))
    said.warn()
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
        if not np.isfinite(heldout).all():  # a NaN row matches nothing, an inf row everything: a silent miscount
            raise SouplineError("validation or test embeddings contain NaN or inf; re-run the embed stage")
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
                          f"{len(left_out)} label(s) {left_out[:10]}; raise select.budget"
                          f"{', or set select.stratify: balanced,' if stratify == 'label' else ''} to train on every "
                          "label",
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
    if pool.texts is not None:
        warn_repeated_picks(pool, idx, sel.info, dedup_threshold)
    return Selection(idx, scores, sel.info)


def warn_repeated_picks(pool: SelectionInput, idx: np.ndarray, info: dict[str, Any],
                        dedup_threshold: float | None) -> None:
    """Count in `info` (`repeated_picks`, `repeated_picks_conflicting_labels`) and warn, in one line, when the picks
    `idx` hold exact copies of one text: its copies tie on every score, so any method can spend its budget twice on
    one text (on bbcnews, whose pool repeats 53 texts, GOT-D's default picks 8 repeats in 156 at 10 %)."""
    repeats, conflicts = repeated_picks(pool.texts, pool.labels, idx)
    if not repeats:
        return
    info.update(repeated_picks=repeats, repeated_picks_conflicting_labels=conflicts)
    warnings.warn(repeats_note(info, dedup_threshold), stacklevel=3)
