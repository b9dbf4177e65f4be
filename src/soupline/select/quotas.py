"""How a selection budget becomes counts: the whole budget (`resolve_budget`), its split over labels under
`select.stratify` (`label_quotas`, by `largest_remainder`), and how many examples a method's pruning may take from
a label's quota (`quota_cut`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from soupline.errors import SouplineError

if TYPE_CHECKING:
    from soupline.select.base import SelectionInput  # base runs methods on these quotas: it imports this module


def resolve_budget(budget: int | float, pool_size: int, key: str = "select.budget") -> int:
    """A fraction in (0, 1] of the pool or an absolute count -> a count in [1, pool_size]; `key` is the setting the
    error names (a study's budgets are `study.budgets[i]`)."""
    if isinstance(budget, float):
        count = int(round(budget * pool_size))
        if count < 1:
            raise SouplineError(
                f"{key}={budget} of a pool of {pool_size} is less than one example; "
                f"raise the fraction or give a count"
            )
    else:
        count = budget
    if count > pool_size:
        raise SouplineError(
            f"{key}={budget} asks for {count} examples but the pool has only {pool_size}; "
            f"lower {key}"
        )
    return count


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
    Whole-number weights (label counts) are split in integers: in floats, equal remainders such as 32 x 20 / 140 and
    25 x 20 / 140 (both 4/7) came out a few ulps apart, and ties went to whichever rounded up.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if np.all(weights == np.round(weights)) and weights.sum() * max(int(total), 1) < 2**62:
        weights = weights.astype(np.int64)
    caps = np.full(len(weights), int(total)) if caps is None else np.asarray(caps, dtype=np.int64)
    if total > caps.sum():
        raise ValueError(f"cannot place {total} units into parts holding {int(caps.sum())}")
    quota = np.zeros(len(weights), dtype=np.int64)
    active = caps > 0
    remaining = int(total)
    while remaining > 0:
        w = np.where(active, weights, 0)
        if w.sum() <= 0:
            w = active.astype(weights.dtype)
        if w.dtype.kind == "i":
            part, rest = np.divmod(remaining * w, w.sum())  # the remainders as exact fractions of w.sum()
        else:
            share = remaining * w / w.sum()
            part = np.floor(share).astype(np.int64)
            rest = share - part
        part[np.argsort(-rest, kind="stable")[:remaining - int(part.sum())]] += 1
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

    Ties go to the larger label (then the lower id): under `balanced` the units left over once every label has its
    equal share, and a budget below the number of labels, go to the labels with the most pool examples (the ones
    the test split holds most of), not to the first label names in sorted order (`01`, `7` and `Health` before
    `sports`, as before session 35).
    """
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    present = present[np.argsort(-counts[present], kind="stable")]  # larger labels first: they win ties
    weights = np.ones(len(present)) if balanced else counts[present]
    quota = largest_remainder(weights, budget, caps=counts[present])
    return {int(c): int(q) for c, q in sorted(zip(present, quota)) if q > 0}
