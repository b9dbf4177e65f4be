"""The Selector contract: what every selection method receives, returns, and how it registers.

A method is one module: a pydantic config class (its `select.<name>` sub-section of
params.yaml, unknown keys rejected) and a function decorated with `@register("<name>",
Config)`. `select/__init__.py` imports each module once; that import is the registration.
Methods never read files: everything they need arrives in `SelectionInput`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict

from soupline.errors import SouplineError


class MethodConfig(BaseModel):
    """Base of every method's params sub-section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class SelectionInput:
    """Everything a selector may use. Optional fields are filled when a method needs them."""

    embeddings: np.ndarray  # (n, d) float32, L2-normalised
    labels: np.ndarray  # (n,) int64 label ids
    label_names: list[str]
    texts: list[str] | None = None
    target_embeddings: np.ndarray | None = None  # GOT-D target set (validation by default)
    target_labels: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # callbacks/columns a method needs

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class Selection:
    """Chosen pool indices (unique, sorted) with one score per chosen example, plus method info."""

    indices: np.ndarray
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


SelectFn = Callable[[SelectionInput, int, int, MethodConfig], Selection]


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    fn: SelectFn


REGISTRY: dict[str, Method] = {}


def register(name: str, config: type[MethodConfig]) -> Callable[[SelectFn], SelectFn]:
    """Register `fn(pool, budget, seed, cfg) -> Selection` under `name` (lowercase, unique)."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"selection method name must be lowercase identifier, got {name!r}")
    if name in REGISTRY:
        raise ValueError(f"selection method {name!r} is already registered")

    def wrap(fn: SelectFn) -> SelectFn:
        REGISTRY[name] = Method(name, config, fn)
        return fn

    return wrap


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


def run_method(name: str, pool: SelectionInput, budget: int, seed: int, cfg: MethodConfig) -> Selection:
    """Run a registered method and check its result honours the contract."""
    if name not in REGISTRY:
        raise SouplineError(f"unknown selection method {name!r}; choose one of {sorted(REGISTRY)}")
    if not np.isfinite(pool.embeddings).all():
        raise SouplineError("pool embeddings contain NaN or inf; re-run the embed stage")
    sel = REGISTRY[name].fn(pool, budget, seed, cfg)
    idx = np.asarray(sel.indices, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    idx, scores = idx[order], np.asarray(sel.scores, dtype=np.float64)[order]
    if len(np.unique(idx)) != len(idx) or len(idx) != budget:
        raise SouplineError(f"method {name!r} returned {len(np.unique(idx))} distinct examples, not {budget}")
    if len(idx) and (idx[0] < 0 or idx[-1] >= pool.n):
        raise SouplineError(f"method {name!r} returned indices outside the pool")
    return Selection(idx, scores, sel.info)
