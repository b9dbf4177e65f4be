"""Uniform random selection: the baseline every other method must beat."""

from __future__ import annotations

import numpy as np

from soupline.select.base import MethodConfig, Selection, SelectionInput, register


class RandomConfig(MethodConfig):
    pass


@register("random", RandomConfig)
def select(pool: SelectionInput, budget: int, seed: int, cfg: RandomConfig) -> Selection:
    rng = np.random.default_rng(seed)
    idx = rng.choice(pool.n, size=budget, replace=False)
    return Selection(idx, np.ones(budget), {})
