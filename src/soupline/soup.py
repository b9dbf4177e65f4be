"""Weight souping: average fine-tuned ingredients that share one initialisation.

`uniform` is the plain mean (Wortsman et al. 2022). `greedy` walks the ingredients in order
of validation accuracy and keeps one only if the soup's validation accuracy does not drop
(`strict=True`: only if it rises, as in the paper's released code). State dicts are plain
`{name: tensor}`; I/O of models stays in the stage (tasks/soup.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from soupline.errors import SouplineError


def load_state(model_dir: str | Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
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
