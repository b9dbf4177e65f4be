"""Weight souping: average fine-tuned ingredients that share one initialisation.

`uniform` is the plain mean (Wortsman et al. 2022). `greedy` walks the ingredients in order
of validation accuracy and keeps one only if the soup's validation accuracy does not drop
(`strict=True`: only if it rises, as in the paper's released code). `ties` and `dare` are
presets of one generalised task arithmetic over task vectors tau_t = theta_t - theta_base
(as in mergekit): DARE drops each delta entry with probability p and rescales by 1/(1-p);
TIES keeps the top-k % magnitudes of each task vector (per tensor), elects a sign per entry
and averages the entries that agree with it.

States are read-only mappings `{name: tensor}`: plain dicts, or `LazyState`, which reads each
tensor from an ingredient's safetensors files when it is accessed and keeps nothing. Every soup
works tensor by tensor and ingredient by ingredient, so with lazy states it holds one model's
worth of output (written into `into`, e.g. the evaluation model's own state dict, when given),
greedy one more (the kept soup), ties/dare the base model, plus a few float64 copies of the
tensor at hand: the same whatever the number of ingredients. The results equal the earlier
all-in-memory implementation (tests/soup_reference.py). I/O of models stays in the stage
(tasks/soup.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Callable

from soupline.errors import SouplineError


def _weight_files(model_dir: str | Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("model*.safetensors"))  # HF weights and shards, not head_init
    if not files:
        raise SouplineError(f"{model_dir} has no .safetensors weights; re-run the train stage")
    return files


def load_state(model_dir: str | Path) -> dict:
    """Every tensor of a model folder, in memory."""
    from safetensors.torch import load_file

    state: dict = {}
    for f in _weight_files(model_dir):
        state.update(load_file(str(f)))
    return state


def _safe_open(path: Path):
    from safetensors import safe_open

    try:  # pread: tensor bytes are read into fresh memory, no mapped file pages left resident
        return safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors before the backend option (< 0.7): mmap
        return safe_open(str(path), framework="pt", device="cpu")


class LazyState(Mapping):
    """A model folder's safetensors weights as a read-only mapping: names and shapes come from the
    file headers; a tensor is read from disk each time it is accessed, and not kept.

    Keys are in `load_state`'s order (file by file, by offset), so seeded merges draw the same
    masks as on the in-memory state.
    """

    def __init__(self, model_dir: str | Path):
        self.path = Path(model_dir)
        self._handles = [_safe_open(f) for f in _weight_files(model_dir)]
        self._where: dict = {}
        self.shapes: dict = {}
        for h in self._handles:
            for key in (h.offset_keys() if hasattr(h, "offset_keys") else h.keys()):
                self._where[key] = h
                self.shapes[key] = tuple(h.get_slice(key).get_shape())

    def __getitem__(self, key: str):
        return self._where[key].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __repr__(self) -> str:
        return f"LazyState({str(self.path)!r}, {len(self)} tensors)"


def _shapes(state: Mapping) -> dict:
    return state.shapes if isinstance(state, LazyState) else {k: tuple(v.shape) for k, v in state.items()}


def _output(into: MutableMapping | None) -> tuple[MutableMapping, Callable]:
    """Where a soup goes: a new dict, or copied tensor by tensor into `into`'s own tensors."""
    if into is None:
        out: dict = {}
        return out, out.__setitem__

    def put(key, value):
        if key not in into:
            raise SouplineError(f"the model souped into has no tensor {key!r}; it is not the ingredients' architecture")
        into[key].copy_(value)

    return into, put


def check_compatible(dirs: list[Path], states: Sequence[Mapping]) -> None:
    """Same architecture, parameter names, shapes and label set, or one clear error (reads no weights
    of lazy states: shapes come from the safetensors headers)."""
    ref_cfg = json.loads((dirs[0] / "config.json").read_text())
    ref_shapes = _shapes(states[0])
    for d, s in zip(dirs[1:], states[1:]):
        cfg = json.loads((d / "config.json").read_text())
        if cfg.get("architectures") != ref_cfg.get("architectures"):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: different architectures "
                                f"{cfg.get('architectures')} vs {ref_cfg.get('architectures')}")
        if cfg.get("id2label") != ref_cfg.get("id2label"):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: different label sets")
        if _shapes(s) != ref_shapes:
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


def uniform(states: Sequence[Mapping], into: MutableMapping | None = None) -> MutableMapping:
    """Element-wise mean of the floating-point tensors (integer buffers taken from the first).

    Tensor by tensor: a float64 running sum over the ingredients, read one at a time.
    """
    import torch

    out, put = _output(into)
    for k in states[0]:
        v = states[0][k]
        if v.is_floating_point():
            acc = v.to(torch.float64, copy=True)
            for s in states[1:]:
                acc += s[k].double()
            v = acc.div_(len(states)).to(v.dtype)
        put(k, v)
    return out


def greedy(states: Sequence[Mapping], val_scores: list[float], evaluate: Callable[[Mapping], float],
           strict: bool = False, into: MutableMapping | None = None) -> tuple[dict, list[int], list[dict]]:
    """Greedy soup. Returns (soup, indices of kept ingredients, one log record per candidate).

    Holds the soup so far (the running mean of the kept ingredients) and builds each candidate
    from it and one ingredient, read tensor by tensor; with `into` (e.g. the evaluation model's
    state dict) the candidate is written there and `evaluate` receives `into` itself.
    """
    order = sorted(range(len(states)), key=lambda i: -val_scores[i])
    kept = [order[0]]
    first = states[order[0]]
    # own copies when they will be overwritten in place; otherwise the first ingredient's tensors as they are
    soup = {k: v.clone() if into is not None and not isinstance(first, LazyState) else v for k, v in first.items()}
    best = val_scores[order[0]]
    log = [{"ingredient": order[0], "val_accuracy": best, "kept": True}]
    for i in order[1:]:
        n = len(kept)
        cand, put = _output(into)
        for k, v in soup.items():
            put(k, (v.double() * n + states[i][k].double()).div(n + 1).to(v.dtype) if v.is_floating_point() else v)
        score = evaluate(cand)
        keep = score > best if strict else score >= best
        log.append({"ingredient": i, "val_accuracy": score, "kept": keep})
        if keep:
            best = score
            kept.append(i)
            if into is None:
                soup = cand
            else:
                for k, v in soup.items():
                    v.copy_(into[k])
    return soup, sorted(kept), log


def _task_vector(x, b, drop: float, gen, threshold=None):
    """One ingredient's (dropped) task vector, in float64; trimmed to |tau| >= threshold when given."""
    import torch

    tau = x.to(torch.float64, copy=True)
    tau -= b
    if drop > 0:
        keep = torch.rand(tau.shape, generator=gen, dtype=torch.float64) >= drop
        tau = tau.mul_(keep).div_(1 - drop)
    if threshold is not None:
        tau.mul_(tau.abs() >= threshold)
    return tau


def _top_k_threshold(tau, top_k: float):
    """The magnitude of the k-th largest entry, k = top_k % of the tensor (at least 1)."""
    flat = tau.reshape(-1).abs()
    k = max(1, int(round(flat.shape[0] * top_k / 100)))
    return flat.kthvalue(flat.shape[0] - k + 1).values


def task_arithmetic(states: Sequence[Mapping], base: Mapping, top_k: float | None = None, elect_sign: bool = False,
                    drop: float = 0.0, scale: float = 1.0, seed: int = 0,
                    into: MutableMapping | None = None) -> MutableMapping:
    """theta_base + scale * merge(tau_1..tau_n), tensor by tensor and ingredient by ingredient.

    top_k: keep this % of each task vector's entries by magnitude (TIES trim); elect_sign: keep
    only entries agreeing with sign(sum of deltas) and average those (TIES disjoint mean);
    drop: DARE drop probability p in [0, 1), survivors rescaled by 1/(1-p).

    Memory: a few float64 copies of one tensor, whatever the number of ingredients. Electing the
    sign needs the sum of all task vectors first, so TIES reads each ingredient's tensor twice
    (the second pass replays the DARE masks from the same generator state and reuses the
    per-ingredient trim thresholds).
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
    trim = top_k is not None and top_k < 100
    gen = torch.Generator().manual_seed(seed)
    out, put = _output(into)
    for key in states[0]:
        ref = states[0][key]
        if not ref.is_floating_point():
            put(key, ref)
            continue
        dtype, b = ref.dtype, base[key].to(torch.float64, copy=True)
        masks_from = gen.get_state()
        total, thresholds = None, []
        for t, s in enumerate(states):
            x, ref = (ref if t == 0 else s[key]), None
            tau = _task_vector(x, b, drop, gen)
            del x
            if trim:
                thresholds.append(_top_k_threshold(tau, top_k))
                tau.mul_(tau.abs() >= thresholds[-1])
            total = tau if total is None else total.add_(tau)
        del tau
        if elect_sign:
            masks_after = gen.get_state()
            gen.set_state(masks_from)
            sign = torch.sign(total).to(torch.int8)
            del total
            kept_sum, count = torch.zeros_like(b), torch.zeros(b.shape, dtype=torch.int32)
            for t, s in enumerate(states):
                tau = _task_vector(s[key], b, drop, gen, thresholds[t] if trim else None)
                agree = (torch.sign(tau) == sign) & (tau != 0)
                kept_sum += tau.mul_(agree)
                count += agree
            del tau, agree, sign
            gen.set_state(masks_after)
            merged = kept_sum.div_(count.clamp_(min=1))
        else:
            merged = total.div_(len(states))
        put(key, b.add_(merged.mul_(scale)).to(dtype))
    return out
