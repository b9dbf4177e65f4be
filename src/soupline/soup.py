"""Weight souping: average fine-tuned ingredients that share one initialisation.

`uniform` is the plain mean (Wortsman et al. 2022). `greedy` walks the ingredients in order
of validation accuracy and keeps one only if the soup's validation accuracy does not drop
(`strict=True`: only if it rises, as in the paper's released code). `ties` and `dare` are
presets of one generalised task arithmetic over task vectors tau_t = theta_t - theta_base
(as in mergekit): DARE drops each delta entry with probability p and rescales by 1/(1-p);
TIES keeps the top-k % magnitudes of each task vector (per tensor), elects a sign per entry
and averages the entries that agree with it. State dicts are plain `{name: tensor}`; I/O of
models stays in the stage (tasks/soup.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from soupline.errors import SouplineError


def load_state(model_dir: str | Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("model*.safetensors"))  # HF weights and shards, not head_init
    if not files:
        raise SouplineError(f"{model_dir} has no .safetensors weights; re-run the train stage")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def check_compatible(dirs: list[Path], states: list[dict]) -> None:
    """Same architecture, parameter names, shapes and label set, or one clear error."""
    ref_cfg = json.loads((dirs[0] / "config.json").read_text())
    for d, s in zip(dirs[1:], states[1:]):
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("architectures") != ref_cfg.get("architectures"):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: different architectures "
                                f"{cfg.get('architectures')} vs {ref_cfg.get('architectures')}")
        if cfg.get("id2label") != ref_cfg.get("id2label"):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: different label sets")
        if s.keys() != states[0].keys() or any(s[k].shape != states[0][k].shape for k in s):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: parameter names or shapes differ "
                                "(different base models?)")


def shared_head_init(dirs: list[Path]) -> dict:
    """The head every ingredient started from (random or LP-FT probe): one, or the ingredients cannot be souped."""
    from safetensors.torch import load_file

    heads = []
    for d in dirs:
        if not (d / "head_init.safetensors").exists():
            raise SouplineError(f"{d} has no head_init.safetensors (trained by an older soupline); re-run train")
        heads.append(load_file(str(d / "head_init.safetensors")))
    for d, h in zip(dirs[1:], heads[1:]):
        if h.keys() != heads[0].keys() or any(not h[k].equal(heads[0][k]) for k in h):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: their heads start from different "
                                "initialisations (train.head_init / head_init_seed or selection differ)")
    return heads[0]


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
    import torch

    if top_k is not None and not 0 < top_k <= 100:
        raise SouplineError(f"TIES top-k must be in (0, 100] percent, got {top_k}")
    if not 0 <= drop < 1:
        raise SouplineError(f"DARE drop probability must be in [0, 1), got {drop}")
    missing = [k for k in states[0] if k not in base]
    if missing:
        raise SouplineError(f"the base model lacks {len(missing)} ingredient tensors (e.g. {missing[0]!r}); "
                            "ingredients were not fine-tuned from this base model")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = ref
            continue
        b = base[key].to(torch.float64)
        tau = torch.stack([s[key].to(torch.float64) - b for s in states])
        if drop > 0:
            keep = torch.rand(tau.shape, generator=gen, dtype=torch.float64) >= drop
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
