"""Weight souping: average fine-tuned ingredients that share one initialisation.

`uniform` is the plain mean (Wortsman et al. 2022). `greedy` walks the ingredients in order
of validation accuracy and keeps one only if the soup's validation accuracy rises, as in the
paper's released code (`strict=False`: also on a tie, as in the paper's text; on a validation
split of a few hundred texts ties are common and carry no evidence). `ties` and `dare` are
presets of one generalised task arithmetic over task vectors tau_t = theta_t - theta_base
(as in mergekit; the presets are `soup_methods.ties_preset` and `dare_preset`): DARE drops
each delta entry with probability p and rescales by 1/(1-p); TIES keeps the top-k % magnitudes
of each task vector (per tensor), elects a sign per entry and averages the entries that agree
with it.

States are read-only mappings `{name: tensor}`: plain dicts, or `LazyState`, which reads a
tensor (or some of its rows) from an ingredient's safetensors files when asked and keeps
nothing. Every soup works tensor by tensor, in blocks of rows, reading the ingredients one at a
time: with lazy states it holds one model's worth of output (written into `into`, e.g. the
evaluation model's own state dict, when given), greedy one more (the kept soup), ties/dare the
base model, plus float64 temporaries of one row block (`BLOCK_ELEMENTS`) and, for the TIES trim,
one float64 buffer the size of the tensor at hand: nothing grows with the number of
ingredients but DARE's mask generators (5 KB each). The results equal the all-in-memory
implementation in tests/soup_reference.py (the earlier one, with DARE's masks drawn per
ingredient as here). I/O of models stays in the stage (tasks/soup.py).
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Callable

from soupline.classifier import POOLING_KEY
from soupline.errors import SouplineError


def weight_files(model_dir: str | Path) -> list[Path]:
    """A model folder's weight files (HF weights and shards, not head_init.safetensors); one line when there are none."""
    files = sorted(Path(model_dir).glob("model*.safetensors"))
    if not files:
        raise SouplineError(f"{model_dir} has no .safetensors weights; re-run the train stage")
    return files


def load_state(model_dir: str | Path) -> dict:
    """Every tensor of a model folder, in memory."""
    from safetensors.torch import load_file

    state: dict = {}
    for f in weight_files(model_dir):
        state.update(load_file(str(f)))
    return state


def state_digest(state: Mapping) -> str:
    """A hash of a state dict's names, dtypes, shapes and bytes: equal for the same weights, to the bit (sha256:
    0.2 s for all-MiniLM-L6-v2's 91 MB, a fiftieth of its forward pass over 200 texts of 128 tokens on 2 cores)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in state.items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class _SafetensorsFile:
    """One .safetensors file: the header parsed once, tensor bytes (or a block of rows) read with
    pread into fresh memory. safetensors' own reader either maps the file (mmap: every page
    touched stays resident, and counted in RSS, while the handle is open) or, with its pread
    backend (safetensors >= 0.7), reads row slices slowly (a tensor in 12 row slices: 10x one
    whole-tensor read)."""

    def __init__(self, path: Path):
        import struct
        import sys

        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)
        try:
            (size,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, size, 8))
            if sys.byteorder != "little":
                raise ValueError("big-endian host")
        except (ValueError, struct.error) as err:
            self.close()
            raise SouplineError(f"{path} is not a readable .safetensors file ({err}); re-run the train stage") from err
        header.pop("__metadata__", None)
        self.data_start = 8 + size
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if os.fstat(self.fd).st_size < self.data_start + end:  # cut short: found here, not by a later reader
            self.close()
            raise SouplineError(f"{path} is truncated; re-run the train stage")
        self.entries = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))  # load_file's order

    def close(self) -> None:
        self._closer()

    def read(self, key: str, index=Ellipsis):
        """tensor[index] where index is `...` or a step-1 slice of the first dimension."""
        import torch

        entry = self.entries[key]
        shape = list(entry["shape"])
        name = _DTYPES.get(entry["dtype"])
        if name is None:  # rarer dtypes (float8, wider unsigned): safetensors reads them
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return f.get_tensor(key)[index].clone()
        begin, end = entry["data_offsets"]
        if index is not Ellipsis and shape:
            rows = range(shape[0])[index]
            if rows.step != 1:
                raise ValueError("only contiguous row blocks are read")
            row_bytes = (end - begin) // shape[0]
            begin, end = begin + rows.start * row_bytes, begin + rows.stop * row_bytes
            shape[0] = len(rows)
        buf = torch.empty(end - begin, dtype=torch.uint8)
        view, offset = memoryview(buf.numpy()), self.data_start + begin
        while len(view):
            got = os.preadv(self.fd, [view], offset)
            if got <= 0:
                raise SouplineError(f"{self.path} is truncated (tensor {key!r}); re-run the train stage")
            view, offset = view[got:], offset + got
        return buf.view(getattr(torch, name)).reshape(shape)


class LazyState(Mapping):
    """A model folder's safetensors weights as a read-only mapping: names, shapes and dtypes come
    from the file headers; a tensor, or a block of its rows (`rows`), is read from disk each time
    it is asked for, into fresh memory, and not kept.

    Keys are in `load_state`'s order (file by file, by offset), so seeded merges draw the same
    masks as on the in-memory state.
    """

    def __init__(self, model_dir: str | Path):
        self.path = Path(model_dir)
        self._files = [_SafetensorsFile(f) for f in weight_files(model_dir)]
        self._where: dict = {}
        for f in self._files:
            for key in f.entries:
                self._where[key] = f
        self.shapes = {k: tuple(f.entries[k]["shape"]) for k, f in self._where.items()}

    def __getitem__(self, key: str):
        return self._where[key].read(key)

    def rows(self, key: str, index):
        """tensor[index] for a slice of the first dimension (or `...`), reading only those rows."""
        return self._where[key].read(key, index)

    def dtype(self, key: str):
        import torch

        name = _DTYPES.get(self._where[key].entries[key]["dtype"])
        return getattr(torch, name) if name else self[key].dtype

    def close(self) -> None:
        for f in self._files:
            f.close()

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


# Large tensors are processed in blocks of whole rows (first dimension) of about this many
# elements, summed over the ingredients a block holds at once: the float64 temporaries of a soup
# stay a few tens of MB however large the tensor or the number of ingredients.
BLOCK_ELEMENTS = 1 << 20


def _blocks(shape: tuple, n: int) -> list:
    """Indices covering a tensor of this shape in row blocks sized for n ingredients at once."""
    if not shape:
        return [...]
    row = 1
    for d in shape[1:]:
        row *= d
    step = max(1, BLOCK_ELEMENTS // max(1, n * row))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)] or [slice(0, 0)]


def _rows(state: Mapping, key: str, index):
    """state[key][index], reading only those rows of a lazy state (a view of an in-memory one)."""
    return state.rows(key, index) if isinstance(state, LazyState) else state[key][index]


def _meta(state: Mapping, key: str) -> tuple:
    if isinstance(state, LazyState):
        return state.shapes[key], state.dtype(key)
    t = state[key]
    return tuple(t.shape), t.dtype


class _Output:
    """Where a soup goes: new tensors in a dict, or copied block by block into `into`'s own tensors."""

    def __init__(self, into: MutableMapping | None):
        self.into = into
        self.map = {} if into is None else into

    def tensor(self, key: str, shape: tuple, dtype):
        import torch

        if self.into is None:
            self.map[key] = torch.empty(shape, dtype=dtype)
            return self.map[key]
        if key not in self.into or tuple(self.into[key].shape) != tuple(shape):
            raise SouplineError(f"the model souped into has no tensor {key!r} of shape {tuple(shape)}; "
                                "it is not the ingredients' architecture")
        return self.into[key]


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
        if cfg.get(POOLING_KEY) != ref_cfg.get(POOLING_KEY):  # same weights' shapes, a different function of them
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: different train.pooling "
                                f"({cfg.get(POOLING_KEY) or 'cls'} vs {ref_cfg.get(POOLING_KEY) or 'cls'})")
        if _shapes(s) != ref_shapes:
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: parameter names or shapes differ "
                                "(different base models?)")


def shared_head_init(dirs: list[Path]) -> dict:
    """The head every ingredient started from (random or LP-FT probe): one (equal to float rounding: the first
    ingredient's is returned), or the ingredients cannot be souped."""
    import torch
    from safetensors.torch import load_file

    heads = []
    for d in dirs:
        if not (d / "head_init.safetensors").exists():
            raise SouplineError(f"{d} has no head_init.safetensors (trained by an older soupline); re-run train")
        heads.append(load_file(str(d / "head_init.safetensors")))
    for d, h in zip(dirs[1:], heads[1:]):  # to float rounding: an LP-FT probe fit on a GPU's features and on a CPU's
        if h.keys() != heads[0].keys() or any(h[k].shape != heads[0][k].shape or not torch.allclose(
                h[k].float(), heads[0][k].float(), rtol=1e-4, atol=1e-5) for k in h):
            raise SouplineError(f"cannot soup {d.name} with {dirs[0].name}: their heads start from different "
                                "initialisations (train.head_init / head_init_seed or selection differ)")
    return heads[0]


def uniform(states: Sequence[Mapping], into: MutableMapping | None = None) -> MutableMapping:
    """Element-wise mean of the floating-point tensors (integer buffers taken from the first).

    Block by block: a float64 running sum over the ingredients, read one at a time.
    """
    import torch

    out = _Output(into)
    for k in states[0]:
        shape, dtype = _meta(states[0], k)
        dst = out.tensor(k, shape, dtype)
        if not dtype.is_floating_point:
            dst.copy_(states[0][k])
            continue
        for idx in _blocks(shape, 2):
            acc = _rows(states[0], k, idx).to(torch.float64, copy=True)
            for s in states[1:]:
                acc += _rows(s, k, idx).double()
            dst[idx] = acc.div_(len(states)).to(dtype)
    return out.map


def greedy(states: Sequence[Mapping], val_scores: list[float], evaluate: Callable[[Mapping], float],
           strict: bool = True, into: MutableMapping | None = None) -> tuple[dict, list[int], list[dict]]:
    """Greedy soup. Returns (soup, indices of kept ingredients, one log record per candidate).

    Holds the soup so far (the running mean of the kept ingredients) and builds each candidate
    from it and one ingredient, read block by block; with `into` (e.g. the evaluation model's
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
        out = _Output(into)
        for k, v in soup.items():
            dst = out.tensor(k, tuple(v.shape), v.dtype)
            if not v.is_floating_point():
                dst.copy_(v)
                continue
            for idx in _blocks(tuple(v.shape), 2):
                dst[idx] = (v[idx].double() * n + _rows(states[i], k, idx).double()).div(n + 1).to(v.dtype)
        score = evaluate(out.map)
        keep = score > best if strict else score >= best
        log.append({"ingredient": i, "val_accuracy": score, "kept": keep})
        if keep:
            best = score
            kept.append(i)
            if into is None:
                soup = out.map
            else:
                for k, v in soup.items():
                    v.copy_(into[k])
    return soup, sorted(kept), log


def dare_generators(seed: int, n: int) -> list:
    """One torch generator per ingredient for the DARE masks, seeded from (seed, ingredient index) by
    numpy's SeedSequence spawn: ingredient t's masks depend on the seed and t only, not on n.

    Ingredient t's mask of each floating-point tensor, in key order, is
    `torch.rand(shape, dtype=float64, generator=gens[t]) >= drop`. torch's CPU generator draws
    float64 entries one at a time in row-major order, so drawing a tensor's mask in row blocks, one
    after the other, gives the same mask as one draw (tests/test_train_soup.py checks this for
    several block sizes): the masks do not depend on the block size.
    """
    import numpy as np
    import torch

    return [torch.Generator().manual_seed(int(child.generate_state(1, np.uint64)[0]))
            for child in np.random.SeedSequence(seed).spawn(n)]


def _task_vector(x, b, drop: float, gen):
    """One ingredient's block of task vector in float64, DARE-dropped (the block's mask drawn from gen)."""
    import torch

    tau = x.to(torch.float64, copy=True)
    tau -= b
    if drop > 0:
        keep = torch.rand(tau.shape, generator=gen, dtype=torch.float64) >= drop
        tau = tau.mul_(keep).div_(1 - drop)
    return tau


def task_arithmetic(states: Sequence[Mapping], base: Mapping, top_k: float | None = None, elect_sign: bool = False,
                    drop: float = 0.0, scale: float = 1.0, seed: int = 0,
                    into: MutableMapping | None = None) -> MutableMapping:
    """theta_base + scale * merge(tau_1..tau_n), tensor by tensor, in row blocks.

    top_k: keep this % of each task vector's entries by magnitude (TIES trim); elect_sign: keep
    only entries agreeing with sign(sum of deltas) and average those (TIES disjoint mean);
    drop: DARE drop probability p in [0, 1), survivors rescaled by 1/(1-p).

    The DARE masks come from one generator per ingredient (`dare_generators`), each consumed block
    by block through a tensor and tensor by tensor in key order, so every block is merged across the
    ingredients with their masks drawn on the spot. The TIES trim threshold is per ingredient and
    tensor, so with top_k a first pass reads every ingredient's tensor and selects the threshold in
    place in one float64 buffer of the tensor's size (the one temporary that grows with the largest
    tensor); with drop too, it draws the masks as it goes, and the generators' states at the
    tensor's start are kept and restored so the merge pass draws the same masks. Mask memory is
    one generator state (5 KB) per ingredient, two while trimming (80 KB at 8 ingredients),
    whatever the block count. The earlier single generator kept a state per ingredient and row
    block (n^2 growth: 4 MB for all-MiniLM's word embeddings at 8 ingredients, 58 MB at 32);
    benchmarks/soup_memory.py, dare at 8 ingredients: soup peak 130 MB now vs 137 MB then.
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
    trim = top_k is not None and top_k < 100
    n = len(states)
    gens = dare_generators(seed, n) if drop > 0 else [None] * n
    out = _Output(into)
    for key in states[0]:
        shape, dtype = _meta(states[0], key)
        dst = out.tensor(key, shape, dtype)
        if not dtype.is_floating_point:
            dst.copy_(states[0][key])
            continue
        base_t = base[key]
        blocks = _blocks(shape, n)
        thresholds: list = [None] * n
        if trim:
            # Everything kept through this pass is allocated before it: long-lived small allocations
            # between block-sized transient ones would fragment the heap (hundreds of MB resident).
            numel = base_t.numel()
            magnitudes = np.empty(numel, dtype=np.float64)
            starts = [g.get_state() for g in gens] if drop > 0 else []
            for t, s in enumerate(states):
                pos = 0
                for idx in blocks:
                    tau = _task_vector(_rows(s, key, idx), base_t[idx].double(), drop, gens[t]).reshape(-1)
                    magnitudes[pos:pos + tau.numel()] = tau.abs_().numpy()
                    pos += tau.numel()
                # the (numel - k + 1)-th smallest magnitude: kthvalue, selected in place
                k = max(1, int(round(numel * top_k / 100)))
                magnitudes.partition(numel - k)
                thresholds[t] = float(magnitudes[numel - k])
            del magnitudes
            for g, start in zip(gens, starts):  # the merge pass draws this tensor's masks again
                g.set_state(start)
        for idx in blocks:
            b = base_t[idx].to(torch.float64, copy=True)
            taus = []
            for t, s in enumerate(states):
                tau = _task_vector(_rows(s, key, idx), b, drop, gens[t])
                if trim:
                    tau.mul_(tau.abs() >= thresholds[t])
                taus.append(tau)
            tau = torch.stack(taus)
            del taus
            if elect_sign:
                sign = torch.sign(tau.sum(0))
                agree = (torch.sign(tau) == sign) & (tau != 0)
                merged = (tau * agree).sum(0) / agree.sum(0).clamp(min=1)
            else:
                merged = tau.mean(0)
            dst[idx] = (b + scale * merged).to(dtype)
    return out.map
