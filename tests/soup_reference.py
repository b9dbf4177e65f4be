"""The in-memory soups as they were before streaming (soupline.soup at 8dd7e07), kept as the reference.

Verbatim but for DARE's masks, since redefined: ingredient t's mask of each tensor is the next draw of
its own generator (seeded as `soupline.soup.dare_generators` documents, built here on its own so that a
seeding bug there fails the comparison), no longer a slice of one draw for all ingredients.

The streaming functions in `soupline.soup` must give the same soups (tests/test_train_soup.py),
and benchmarks/soup_memory.py measures them against these: every ingredient loaded at once,
one float64 stack of all ingredients per tensor.
"""

from __future__ import annotations

from typing import Callable

from soupline.errors import SouplineError


def uniform(states: list[dict]) -> dict:
    """Element-wise mean of the floating-point tensors (integer buffers taken from the first)."""
    out = {}
    for k, v in states[0].items():
        out[k] = sum(s[k].double() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
    return out


def greedy(states: list[dict], val_scores: list[float], evaluate: Callable[[dict], float],
           strict: bool = False) -> tuple[dict, list[int], list[dict]]:
    """Greedy soup. Returns (soup, indices of kept ingredients, one log record per candidate)."""
    order = sorted(range(len(states)), key=lambda i: -val_scores[i])
    kept = [order[0]]
    soup, best = states[order[0]], val_scores[order[0]]
    log = [{"ingredient": order[0], "val_accuracy": best, "kept": True}]
    for i in order[1:]:
        n = len(kept)
        cand = {k: (v.double() * n + states[i][k].double()).div(n + 1).to(v.dtype) if v.is_floating_point() else v
                for k, v in soup.items()}
        score = evaluate(cand)
        keep = score > best if strict else score >= best
        log.append({"ingredient": i, "val_accuracy": score, "kept": keep})
        if keep:
            soup, best = cand, score
            kept.append(i)
    return soup, sorted(kept), log


def task_arithmetic(states: list[dict], base: dict, top_k: float | None = None, elect_sign: bool = False,
                    drop: float = 0.0, scale: float = 1.0, seed: int = 0) -> dict:
    """theta_base + scale * merge(tau_1..tau_n), tensor by tensor (memory: one tensor's deltas at a time).

    top_k: keep this % of each task vector's entries by magnitude (TIES trim); elect_sign: keep
    only entries agreeing with sign(sum of deltas) and average those (TIES disjoint mean);
    drop: DARE drop probability p in [0, 1), survivors rescaled by 1/(1-p).
    """
    import numpy as np
    import torch

    if top_k is not None and not 0 < top_k <= 100:
        raise SouplineError(f"TIES top-k must be in (0, 100] percent, got {top_k}")
    if not 0 <= drop < 1:
        raise SouplineError(f"DARE drop probability must be in [0, 1), got {drop}")
    missing = [k for k in states[0] if k not in base]
    if missing:
        raise SouplineError(f"the base model lacks {len(missing)} ingredient tensors (e.g. {missing[0]!r}); "
                            "ingredients were not fine-tuned from this base model")
    gens = [torch.Generator().manual_seed(int(child.generate_state(1, np.uint64)[0]))
            for child in np.random.SeedSequence(seed).spawn(len(states))]  # one per ingredient
    out = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = ref
            continue
        b = base[key].to(torch.float64)
        tau = torch.stack([s[key].to(torch.float64) - b for s in states])
        if drop > 0:
            keep = torch.stack([torch.rand(ref.shape, generator=g, dtype=torch.float64) for g in gens]) >= drop
            tau = tau * keep / (1 - drop)
        if top_k is not None and top_k < 100:
            flat = tau.reshape(len(states), -1).abs()
            k = max(1, int(round(flat.shape[1] * top_k / 100)))
            threshold = flat.kthvalue(flat.shape[1] - k + 1, dim=1).values
            tau = tau * (tau.abs() >= threshold.view(-1, *[1] * (tau.ndim - 1)))
        if elect_sign:
            sign = torch.sign(tau.sum(0))
            agree = (torch.sign(tau) == sign) & (tau != 0)
            merged = (tau * agree).sum(0) / agree.sum(0).clamp(min=1)
        else:
            merged = tau.mean(0)
        out[key] = (b + scale * merged).to(ref.dtype)
    return out
