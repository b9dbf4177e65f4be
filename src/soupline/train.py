"""Fine-tuning one ingredient: a classifier from the base model, trained on the selection.

Every ingredient starts from the same weights (pretrained body + a head drawn with
`head_init_seed`), so ingredients of a sweep can be souped. Training length is
max(epochs x steps-per-epoch, min_steps), so a tiny selection still gets enough updates.
The data order of epoch e is a function of (seed, e) and the RNG state is checkpointed, so a
run killed and resumed ends with the same weights as one that never stopped.

`train.method: lora` trains peft LoRA adapters (and the head); the adapters are merged into the
body (W + (alpha / r) B A) before the ingredient is saved, so soups and evaluation see plain
models; the unmerged adapter is kept in `adapter/` beside it. `train.head_init: probe` is LP-FT:
the head starts as a logistic-regression probe on its own input features, fit on the selection.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from soupline import interrupt
from soupline.artifacts import (atomic_dir, atomic_path, file_digests, read_json, write_json, write_text,
                                write_timing)
from soupline.classifier import init_model
from soupline.errors import SouplineError
from soupline.evaluate import collate, predict_logits, tokenize
from soupline.models import load_tokenizer
from soupline.probe import Probe, fit_probe, score


def total_steps(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Optimizer steps: `epochs` passes over n examples in batches of batch_size, at least min_steps."""
    return max(epochs * math.ceil(n / batch_size), min_steps)


def warmup_steps(ratio: float, steps: int) -> int:
    """The warm-up's optimizer steps: `ratio` of `steps`, rounded down (an ingredient's key holds this count)."""
    return int(ratio * steps)


def eval_interval(cfg: Any, examples: int, steps: int) -> int:
    """Optimizer steps between validation passes of `steps` on `examples` texts (`cfg`, a `TrainParams`):
    `eval_every`, or with 0 one epoch's steps when early stopping needs them, else the last step alone (validation
    costs a forward pass over it). Past the last step, the last step alone: an ingredient's key holds this count."""
    per_epoch = math.ceil(examples / (cfg.batch_size * cfg.grad_accumulation))
    return min(cfg.eval_every or (per_epoch if cfg.early_stopping_patience else steps), steps)


PROBE_NEEDS = ("train.head_init: probe", "use head_init: random")
# LP-FT's features in batches of one size, not train.batch_size x 2 (32 at the default 16): a batch's shape moves
# the features' last bits, so a sweep over batch_size gave its ingredients heads that differed by 1e-9, which soup
# refused as different initialisations
HEAD_FEATURE_BATCH = 32


def head_features(model, tokenizer, encoded: list[dict], batch_size: int, device: str,
                  needs: tuple[str, str] = PROBE_NEEDS) -> np.ndarray:
    """What the classification head receives (the mean-pooled text vector, or BERT's pooled [CLS]), in eval mode.
    `needs`: what asks for them and its alternative, for the line a head without one vector per text gets."""
    import torch

    name, head = head_of(model)
    if not isinstance(getattr(head, "original_module", head), torch.nn.Linear):  # LoRA's: peft's trained copy of it
        raise SouplineError(_not_linear(needs, model, name, head))
    seen: list = []
    hook = head.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().float().cpu()))
    try:
        predict_logits(model, tokenizer, encoded, batch_size, device)
    finally:
        hook.remove()
    if seen[0].ndim != 2:  # GPT-2, Llama, ...: a score per token, the last text token's read afterwards
        raise SouplineError(_per_token(needs, model, name))
    order = np.argsort([-len(r["input_ids"]) for r in encoded], kind="stable")  # predict_logits' batch order
    out = np.empty((len(encoded), seen[0].shape[1]), dtype=np.float32)
    out[order] = torch.cat(seen).numpy()
    return out


def _not_linear(needs: tuple[str, str], model, name: str, head) -> str:
    return (f"{needs[0]} needs a single Linear head; {type(model).__name__}.{name} is a {type(head).__name__}; "
            f"{needs[1]}")


def _per_token(needs: tuple[str, str], model, name: str) -> str:
    return (f"{needs[0]} needs one vector per text at the head, but {type(model).__name__}.{name} scores every token; "
            f"{needs[1]}, or train.pooling: mean_normalized")


def _probe_on_cls_head(train: Any) -> bool:
    """Whether one ingredient's settings start Hugging Face's `cls` head as LP-FT's probe."""
    return train.method != "probe" and train.pooling == "cls" and train.head_init == "probe"


def check_head_init(model_path: str, train: Any) -> None:
    """`head_features`' line, before any stage runs (`check_layers`), when LP-FT's probe cannot start a
    `pooling: cls` head (RoBERTa's and ELECTRA's two-layer heads, a decoder's score per token): on a skeleton of the
    model on the meta device, no weights read. A model the meta device cannot run is left to train's own check."""
    if not any(_probe_on_cls_head(i.train) for i in train.ingredients()):
        return
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        with torch.device("meta"):  # eager attention, no mask: the SDPA mask's checks read values, meta has none
            model = AutoModelForSequenceClassification.from_config(
                AutoConfig.from_pretrained(model_path, num_labels=2), attn_implementation="eager")
    except (ValueError, KeyError, TypeError):  # no sequence-classification class: train's own load says so
        return
    name, head = head_of(model)
    if not isinstance(head, torch.nn.Linear):
        raise SouplineError(_not_linear(PROBE_NEEDS, model, name, head))

    class Seen(Exception):
        pass

    def stop(_, args):
        raise Seen(args[0].ndim)

    hook = head.register_forward_pre_hook(stop)
    try:
        model(input_ids=torch.zeros((1, 4), dtype=torch.long, device="meta"))
    except Seen as seen:
        if seen.args[0] != 2:
            raise SouplineError(_per_token(PROBE_NEEDS, model, name)) from None
    except Exception:  # noqa: BLE001 - an op the meta device lacks: the first ingredient's check says it
        pass
    finally:
        hook.remove()


def init_head_from_probe(model, tokenizer, train_enc: list[dict], y: np.ndarray, val_enc: list[dict],
                         y_val: np.ndarray, batch_size: int, device: str, metric: str,
                         cache: str | Path | None = None) -> dict:
    """LP-FT's first step: fit a probe on the head's input features and make it the head. `cache`: a file the probe
    is read from when it is there and written to (atomically) when not, for a key that holds every input of the fit:
    the ingredients of a sweep start from one head, whose features (a forward pass over the selection and the
    validation split) each ingredient computed again, a tenth of an ingredient's time on bbcnews at 10 %."""
    from safetensors import SafetensorError

    probe = cached(cache, lambda: fit_probe(head_features(model, tokenizer, train_enc, batch_size, device), y,
                                            head_features(model, tokenizer, val_enc, batch_size, device), y_val,
                                            model.config.num_labels, metric),
                   Probe.load, lambda fitted, tmp: fitted.save(tmp), (OSError, SafetensorError))
    set_head(model, probe)
    return {"C": probe.C, f"val_{metric}": round(probe.val_score, 4)}


def cached(cache: str | Path | None, compute: Callable[[], Any], load: Callable[[Path], Any],
           save: Callable[[Any, Path], None], unreadable: tuple[type[Exception], ...]) -> Any:
    """What `load` reads from the file `cache` when it is there, else `compute()`, which `save(value, path)` writes
    there (atomically) when `cache` is given: a file keyed on every input of the value, which the ingredients of a
    sweep share (LP-FT's head, a random head's starting score). A file `load` fails on with one of `unreadable` (cut
    short, damaged) is computed again: a cache only saves work."""
    if cache is not None and Path(cache).exists():
        try:
            return load(Path(cache))
        except unreadable:
            pass
    value = compute()
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            save(value, tmp)
    return value


def set_head(model, probe: Probe) -> None:
    """Copy a probe's weight and bias into the model's Linear head."""
    import torch

    _, head = head_of(model)
    if tuple(head.weight.shape) != probe.weight.shape:
        raise SouplineError(f"probe weights {probe.weight.shape} do not fit the head {tuple(head.weight.shape)}: "
                            "the probe and the model must share one label set")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.weight).to(head.weight))
        head.bias.copy_(torch.from_numpy(probe.bias).to(head.bias))


def fresh_modules(model) -> dict[str, Any]:
    """The model's top-level modules with weights outside the pretrained encoder: the head, and what a
    sequence classifier puts before it (DistilBERT's pre_classifier, DeBERTa's pooler). They start untrained,
    so LoRA trains them in full: frozen, they would stay as drawn."""
    encoder = getattr(model, "prefix", None) or model.base_model_prefix  # MeanPoolClassifier's, else HF's
    fresh = {n: m for n, m in model.named_children() if n != encoder and next(m.parameters(), None) is not None}
    params = dict(model.named_parameters())
    for key in getattr(model, "soupline_drawn", ()):  # inside the encoder, the layers its checkpoint lacks
        if key.startswith(f"{encoder}.") and key in params:
            name = key.rsplit(".", 1)[0]  # bert.pooler.dense.weight -> bert.pooler.dense
            fresh[name] = model.get_submodule(name)
    return fresh


def adaptable_layers(model, skip: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, module) of every layer LoRA can adapt outside the modules of `skip`: torch Linear layers and
    GPT-2's Conv1D (a Linear with its weight stored transposed, which peft adapts too)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    skipped = {id(m) for module in skip.values() for m in module.modules()}
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, Conv1D)) and id(m) not in skipped]


def targeted(name: str, target_modules: list[str]) -> bool:
    """Whether peft adapts the module `name` (its full name in the model) for this list of target names: a name
    equal to it or ending it after a dot (`query` and `attention.self.query` both reach
    `bert.encoder.layer.0.attention.self.query`), the rule of peft's `check_target_module_exists`."""
    return any(name == t or name.endswith(f".{t}") for t in target_modules)


def lora_targets(model, lora: Any) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """(the modules LoRA trains in full, the layers it adapts) for `lora` (train.lora) on `model`; one line when the
    target names miss, name the head, or the rank exceeds a layer. Reads shapes only: a model on the meta device
    does (`check_lora`)."""
    fresh = fresh_modules(model)
    # a top-level module (the head) a target name reaches; a layer inside the encoder that the checkpoint lacks
    # (`soupline_drawn`) is left out of the targets instead (peft's exclude_modules): `dense` still adapts BERT's
    # other dense layers, as on a checkpoint with its pooler (and on the meta skeleton `check_lora` builds)
    clash = sorted(name for name, module in fresh.items() if "." not in name and any(
        targeted(f"{name}.{n}".rstrip("."), lora.target_modules) for n, _ in module.named_modules()))
    if clash:
        raise SouplineError(f"train.lora.target_modules {lora.target_modules} names the classification head or a "
                            f"layer on top of the encoder ({', '.join(clash)}), which LoRA trains in full, not "
                            "through adapters; list encoder layers only, by names these modules do not use")
    layers = adaptable_layers(model, fresh)
    targets = [(n, m) for n, m in layers if targeted(n, lora.target_modules)]
    names = sorted({n.split(".")[-1] for n, _ in layers})
    unknown = [t for t in lora.target_modules if not any(targeted(n, [t]) for n, _ in layers)]
    if targets and unknown:  # peft adapts the names it finds and skips the rest: a typo left one layer kind unadapted
        raise SouplineError(f"train.lora.target_modules {lora.target_modules}: {', '.join(unknown)} "
                            f"name{'s' * (len(unknown) == 1)} no Linear layer of this {model.config.model_type} "
                            f"model, whose Linear layers are named {', '.join(names)}; correct or drop "
                            f"{'it' if len(unknown) == 1 else 'them'}")
    if not targets:
        queries, values = [n for n in names if n.startswith("q")], [n for n in names if n.startswith("v")]
        fused = [n for n in names if "qkv" in n.lower() or n in ("c_attn", "query_key_value")]  # GPT-2, NeoX, Phi-3
        hint = (f"train.lora.target_modules=[{queries[0]},{values[0]}]" if len(queries) == len(values) == 1
                else f"train.lora.target_modules=[{fused[0]}]" if len(fused) == 1
                else "train.lora.target_modules to the attention's projections among them")
        raise SouplineError(f"train.lora.target_modules {lora.target_modules} match no Linear layer of this "
                            f"{model.config.model_type} model, whose Linear layers are named {', '.join(names)}; "
                            f"set {hint}")
    smallest = min(min(m.weight.shape) for _, m in targets)
    if lora.r > smallest:
        raise SouplineError(f"train.lora.r={lora.r} is larger than the smallest adapted layer ({smallest}); "
                            f"a rank above {smallest} adds nothing: use r <= {smallest}")
    return fresh, targets


def check_lora(model_path: str, train: Any) -> None:
    """`lora_targets`' lines for every LoRA setting of `train` (a TrainParams, its sweep included), before the first
    ingredient trains and in `soupline doctor`: on a skeleton of the model on the meta device (no weights read), with
    two labels (the head's size checks nothing)."""
    settings = {json.dumps([i.train.pooling, i.train.lora.model_dump()]): i.train for i in train.ingredients()
                if i.train.method == "lora"}
    for cfg in settings.values():
        lora_targets(_skeleton(model_path, cfg.pooling), cfg.lora)


def check_layer_decay(model_path: str, train: Any) -> None:
    """`layer_lr_factors`' line for every `layer_lr_decay` below 1 in `train` (its sweep included), before the first
    ingredient trains and in `soupline doctor`, on the model's skeleton: a model without numbered layers (ALBERT's
    one shared layer) was refused by the train stage only, after prepare, embed and select had run."""
    settings = {(i.train.pooling, i.train.layer_lr_decay) for i in train.ingredients()
                if i.train.method != "probe" and i.train.layer_lr_decay != 1.0}
    for pooling, decay in sorted(settings):
        layer_lr_factors(_skeleton(model_path, pooling), decay)


def _skeleton(model_path: str, pooling: str):
    """The classifier train builds on `model_path` for `pooling` (two labels: the head's size checks nothing), on the
    meta device: its layers and names, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from soupline.classifier import POOLING_KEY, mean_pool_class

    hf_logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(model_path, num_labels=2)
    with torch.device("meta"):
        if pooling == "cls":
            return AutoModelForSequenceClassification.from_config(config)
        setattr(config, POOLING_KEY, pooling)
        return mean_pool_class()(config)


def needs_layer_check(train: Any) -> bool:
    """Whether an ingredient of `train` (a TrainParams, its sweep included) asks for what `check_layers`
    checks: LoRA, the LP-FT head under `pooling: cls`, or layer-wise learning-rate decay."""
    return any(i.train.method == "lora" or _probe_on_cls_head(i.train)
               or (i.train.method != "probe" and i.train.layer_lr_decay != 1.0) for i in train.ingredients())


def check_layers(model_path: str, train: Any) -> None:
    """`check_lora`'s, `check_head_init`'s and `check_layer_decay`'s lines: what the train stage would refuse in the
    model's layers (LoRA targets, LP-FT's head, LLRD's layers), before any work (`soupline doctor`, the drivers, the
    train stage)."""
    check_lora(model_path, train)
    check_head_init(model_path, train)
    check_layer_decay(model_path, train)


def apply_lora(model, lora: Any, seed: int):
    """Wrap the classifier in peft LoRA adapters (A drawn with `seed`, shared by the sweep); the head (and
    any other module on top of the encoder) trained in full."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    fresh, targets = lora_targets(model, lora)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`: a FutureWarning about peft, not the run
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        torch.random.default_generator.manual_seed(seed)  # peft draws A on the CPU, then moves it to the layer
        return get_peft_model(model, LoraConfig(
            task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, modules_to_save=sorted(fresh),
            exclude_modules=sorted(n for n in fresh if "." in n) or None,
            fan_in_fan_out=all(isinstance(m, Conv1D) for _, m in targets)))


def check_precision(precision: str, device: str, asked: str | None = None) -> None:
    """fp16 needs CUDA (CPU has no fp16 kernels worth using): one line on another `device` (`asked`: the `device`
    param it was picked from, named in the line when it differs: `auto`)."""
    if precision == "fp16" and not str(device).startswith("cuda"):
        picked = f" (device: {asked} runs on the CPU here)" if asked not in (None, device) else ""
        raise SouplineError(f"train.precision: fp16 needs a CUDA device{picked}; use bf16 or fp32 on CPU")


def cpu_bf16_instructions() -> str | None:
    """The bfloat16 instructions this CPU has (`AMX`, `AVX512-BF16`), on which bf16 autocast runs native kernels so
    `train.precision: bf16` may train faster (doctor says so); None without them (autocast then converts in software).
    Read with torch's own probes (`torch.cpu._is_*_supported`: private, so a torch without them reads as None)."""
    import torch

    for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        if getattr(torch.cpu, probe, lambda: False)():
            return name
    return None


def check_device(device: str, train: Any = None) -> None:
    """A CUDA `device` this machine lacks, or `train.precision: fp16` (in `train`, a TrainParams, or its sweep) on a
    device that is not CUDA, in one line before a driver runs its first stage (`soupline run`, the flows and
    `soupline study` ran prepare, embed and select, and restored ingredients, before a stage that loads a model said
    so), and before the train stage sets any ingredient aside (under `dvc repro`). `auto` and `cpu` need no check,
    and no torch import, unless fp16 is asked for."""
    fp16 = train is not None and any(i.train.precision == "fp16" and i.train.method != "probe"
                                     for i in train.ingredients())
    if device.startswith("cuda") or fp16:
        from soupline.models import pick_device

        picked = pick_device(device)  # a CUDA device this machine lacks: its one line
        if fp16:
            check_precision("fp16", picked, device)


def _autocast(precision: str, device: str):
    """Mixed precision as asked; fp16 needs CUDA (CPU has no fp16 kernels worth using)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    check_precision(precision, device)
    return torch.autocast(kind, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def class_weights(y: np.ndarray, num_labels: int):
    """Balanced loss weights n / (labels_present x count); labels absent from y get weight 1."""
    import torch

    counts = np.bincount(y, minlength=num_labels).astype(np.float64)
    present = counts > 0
    w = np.ones(num_labels)
    w[present] = len(y) / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def _batch_order(n: int, batch_size: int, seed: int, steps: int, labels: np.ndarray | None = None) -> list[np.ndarray]:
    """`steps` index batches: epoch e is a permutation seeded by (seed, e). With `labels`
    (class-balanced sampling), epoch e instead draws n indices with replacement, each label
    equally likely: P(i) = 1 / (labels present x count of i's label)."""
    p = None
    if labels is not None:
        counts = np.bincount(labels)
        p = 1.0 / (np.count_nonzero(counts) * counts[labels])
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n) if p is None else rng.choice(n, size=n, replace=True, p=p / p.sum())
        out.extend(perm[i:i + batch_size] for i in range(0, n, batch_size))
        epoch += 1
    return out[:steps]


LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")  # BERT, Llama, GPT-2, T5-style names


def layer_lr_factors(model, decay: float) -> dict[str, float]:
    """Each parameter's learning-rate factor under layer-wise decay (LLRD): the top transformer layer x 1, each layer
    below x `decay` once more, the embeddings x decay ** layers; what sits above the layers (pooler, final norm, head)
    x 1. A few hundred texts move the lower, more general layers least (Zhang et al. 2021, few-sample fine-tuning)."""
    names = [n for n, _ in model.named_parameters()]
    index = {n: int(m.group(1)) for n in names if (m := LAYER_INDEX.search(n))}
    if not index:
        raise SouplineError(f"train.layer_lr_decay: {type(model).__name__} has no numbered transformer layers "
                            "(encoder.layer.N, layers.N, h.N) to decay over; set train.layer_lr_decay: 1")
    layers = max(index.values()) + 1
    return {n: decay ** (layers - 1 - index[n]) if n in index else decay ** layers if "embed" in n else 1.0
            for n in names}


def _optimizer(model, lr: float, head_lr: float | None, weight_decay: float, layer_decay: float = 1.0):
    """AdamW; no decay on biases/LayerNorm; the freshly initialised head may get its own, higher lr; with
    `layer_decay` < 1 the body's rate falls layer by layer downwards (`layer_lr_factors`)."""
    import torch

    head = {id(p) for p in head_of(model)[1].parameters()}
    factors = layer_lr_factors(model, layer_decay) if layer_decay != 1.0 else {}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "LayerNorm" in name or "bias" in name
            rate = head_lr if head_lr and id(p) in head else lr * factors.get(name, 1.0)
            groups.setdefault((rate, 0.0 if no_decay else weight_decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": r, "weight_decay": wd} for (r, wd), ps in groups.items()])


def lr_schedule(opt, schedule: str, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then linear decay to 0, half-cosine decay to 0, or constant.

    The formulas of transformers' `get_scheduler` (linear, cosine, constant_with_warmup), same floats:
    importing it loads transformers.trainer_utils and with it peft, 5 s in every train process.
    """
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        if schedule == "linear":
            return max(0.0, float(total - step) / float(max(1, total - warmup)))
        if schedule == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def head_of(model) -> tuple[str, Any]:
    """(attribute name, module) of a HF sequence classifier's head (`classifier`, `score`, ...)."""
    for name in ("classifier", "score", "classification_head", "head"):
        if hasattr(model, name):
            return name, getattr(model, name)
    raise SouplineError(f"cannot find the classification head of {type(model).__name__}")


def save_checkpoint(path: Path, fingerprint: str, model, opt, sched, scaler, device: str, state: dict) -> None:
    """What a resumed run needs to end with the weights of a run that never stopped (`load_checkpoint` reads it):
    the model, optimizer, schedule and grad-scaler states, the RNG states, the training loop's `state`, and the
    `fingerprint` of what it trains."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file: its OSError reaches `writing`
        # on CUDA, dropout draws from the GPU's generator: without its state a resumed run would repeat
        # the first steps' masks and end with other weights than a run that never stopped
        gpu = {"cuda_rng": torch.cuda.get_rng_state(device)} if str(device).startswith("cuda") else {}
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "scaler": scaler.state_dict(), "rng": torch.get_rng_state(), **gpu, "state": state,
                    "fingerprint": fingerprint}, fh)


def load_checkpoint(path: Path, fingerprint: str, model, opt, sched, scaler, device: str) -> dict:
    """Put `save_checkpoint`'s states back into model, opt, sched, scaler and the RNGs; returns the training loop's
    state. One line, the file kept, when it cannot be read or was written for another `fingerprint`."""
    import torch

    try:  # a damaged file, not a killed write; torch's unpickler raises whatever the bytes lead it to
        # (UnpicklingError, EOFError, RuntimeError, ValueError for a text file, ...).
        # On the CPU: load_state_dict puts weights and optimizer moments on the model's device, while the best
        # weights stay a CPU copy (not a second model on the GPU) and AdamW's `step` counters stay CPU scalars,
        # as in a run that never stopped (moved to the GPU, each step would .item() every one of them)
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict):
            raise pickle.UnpicklingError(f"holds a {type(ck).__name__}, not a training checkpoint")
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else "no detail"
        raise SouplineError(f"checkpoint {path} cannot be read ({type(err).__name__}: {first}); delete it "
                            "to start this ingredient over") from None
    if ck.get("fingerprint") != fingerprint:
        raise SouplineError(f"checkpoint {path} was written by a different train config or selection; "
                            "delete it to start over, or restore the config it came from")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng"])  # both generators take CPU ByteTensors
    if "cuda_rng" in ck and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    return ck["state"]


def rates(lr: float, cfg: Any) -> str:
    """`learning rate 0.02, head 0.002`: the rates a line about a training gone wrong names; under LoRA the adapters'
    too (`TrainParams.body_rate`): `learning rate 0.0002 (adapters 0.001: x train.lora.learning_rate_scale)`."""
    body = cfg.body_rate(lr)
    return (f"learning rate {lr:g}" + (f" (adapters {body:g}: x train.lora.learning_rate_scale)" if body != lr else "")
            + ("" if cfg.head_learning_rate is None else f", head {cfg.head_learning_rate:g}"))


def _diverged(name: str, step: int, loss: float, lr: float, cfg: Any) -> str:
    """The line for a loss that is no longer a number: the step would write NaN into every weight, and the
    ingredient would train on to a constant model that validation, the soups and evaluate score as if it were one."""
    return (f"train {name}: the loss is {loss} at step {step} ({rates(lr, cfg)}): training diverged; "
            "lower train.learning_rates (or train.head_learning_rate), or raise train.warmup_ratio")


def majority_score(y_val: np.ndarray, metric: str) -> float:
    """What a constant model, the validation split's most frequent label for every text, scores in `metric`: the
    most a model that predicts one label can score (where a too-high learning rate leaves one)."""
    from soupline.evaluate import macro_f1

    counts = np.bincount(y_val)
    if metric == "accuracy":
        return float(counts.max() / len(y_val))
    return macro_f1(np.full(len(y_val), counts.argmax()), y_val)


LOSS_RISE = 1.1  # a loss that rose: a tenth above the first step's; a flat one's batches differ by a few percent


def training_failed(losses: list[float], start: float | None, end: float, chance: float, metric: str,
                    features: tuple[float, float] | None = None) -> str | None:
    """Why one ingredient's training clearly failed though its loss stayed a number (a learning rate too high but
    finite: the loss climbs and stays high, every prediction one label), or None. Failed: it ends no better on
    validation than `chance` (`majority_score`) while it started above it (`start`: LP-FT's probe head; a random
    head starts near chance, and a tiny model can sit there throughout), while its loss over the last quarter of
    the steps is above the first step's, the starting model's, by `LOSS_RISE` (training that works brings it down;
    without the margin a tiny model's flat loss, 1.10 to 1.10, rose), or while the features its head reads lost
    what told the labels apart (`features`: `feature_probes`' start and end)."""
    if end > chance or not losses:
        return None
    first, last = losses[0], float(np.mean(losses[-math.ceil(len(losses) / 4):]))
    why = []
    if start is not None and start > chance:
        why.append(f"down from {start:.4f} at its start")
    if last > LOSS_RISE * first:
        why.append(f"its training loss rose from {first:.3g} at step 1 to {last:.3g} over the last quarter of steps")
    if features is not None and features[1] <= chance < features[0]:
        why.append(f"a linear probe on the features its head reads scores {features[1]:.4f}, down from "
                   f"{features[0]:.4f} on the starting model's: they no longer tell the labels apart")
    return (f"its validation {metric} ended at {end:.4f}, no better than predicting the majority label "
            f"({chance:.4f}), " + " and ".join(why)) if why else None


def features_probe(model, tokenizer, train_enc: list[dict], y: np.ndarray, val_enc: list[dict], y_val: np.ndarray,
                   device: str, metric: str) -> float | None:
    """The validation score of a linear probe (`fit_probe`) on the features `model`'s head reads, or None for a
    head that reads no single vector per text (a two-layer head, a decoder's score per token)."""
    try:
        x = head_features(model, tokenizer, train_enc, HEAD_FEATURE_BATCH, device)
        x_val = head_features(model, tokenizer, val_enc, HEAD_FEATURE_BATCH, device)
    except SouplineError:
        return None
    return fit_probe(x, y, x_val, y_val, model.config.num_labels, metric).val_score


def feature_probes(model, start_model: Callable[[], Any], tokenizer, train_enc: list[dict], y: np.ndarray,
                   val_enc: list[dict], y_val: np.ndarray, device: str, metric: str,
                   chance: float, cache: str | Path | None = None) -> tuple[float, float] | None:
    """`features_probe` of the starting model (`start_model` builds it) and of the trained `model`, when the trained
    one's is no better than `chance`, else None. A random head's training wrecked by a too-high rate and one that
    has not learned yet (a tiny model in a few steps) both end at the majority label, their loss near the entropy
    of the label shares: only the first left the head features that a probe cannot separate (all-MiniLM-L6-v2 on
    28 bbcnews texts at 5e-3 or 2e-2: 0.225, the majority share, from 0.70; the tiny test model: 1.0 from 1.0).
    `cache`: a JSON file the starting model's score is read from when it is there and written to when not, for a key
    that holds every input of it (`init_head_from_probe`'s): every ingredient of a sweep starts from one model, which
    each one ending at chance loaded and probed again."""
    end = features_probe(model, tokenizer, train_enc, y, val_enc, y_val, device, metric)
    if end is None or end > chance:
        return None
    start = cached(cache, lambda: features_probe(start_model(), tokenizer, train_enc, y, val_enc, y_val, device,
                                                 metric),
                   lambda path: float(read_json(path)["features_probe"]),
                   lambda score, tmp: tmp.write_text(json.dumps({"features_probe": score})),
                   (OSError, ValueError, TypeError, KeyError))
    return start, end


def failed_line(name: str, failed: str, lr: float, cfg: Any, soups: list[str]) -> str:
    """The warning for an ingredient `training_failed` (its train_info.json `failed`): the run goes on and its
    numbers are honest, but the ingredient is a model that learned nothing, which some soups average in."""
    averaged = [s for s in soups if s in ("uniform", "ties", "dare")]  # greedy keeps it only if validation rises
    soups_too = ""
    if averaged:
        named = " and ".join(filter(None, [", ".join(averaged[:-1]), averaged[-1]]))
        soups_too = f"; the {named} soup{'s average' if len(averaged) > 1 else ' averages'} it in"
    return (f"train {name}: training failed ({rates(lr, cfg)}): {failed}; lower train.learning_rates (or "
            f"train.head_learning_rate){soups_too}")


def batch_loss(model, batch: dict, targets, weights, label_smoothing: float, autocast):
    """One micro-batch's cross-entropy, summed over its examples (`weights`: `class_weights`' or None). Apart from
    `finetune` so that a benchmark can screen another loss in the same training loop (benchmarks/rdrop_stage.py)."""
    import torch

    with autocast:
        logits = model(**batch).logits
    return torch.nn.functional.cross_entropy(logits.float(), targets, weight=weights, reduction="sum",
                                             label_smoothing=label_smoothing)


def finetune(model_path: str, label_names: list[str], train_texts: list[str], train_labels: np.ndarray,
             val_texts: list[str], val_labels: np.ndarray, cfg: Any, lr: float, seed: int,
             out_dir: str | Path, ckpt_path: str | Path, curves_dir: str | Path | None = None,
             device: str = "cpu", progress: bool = True, fingerprint: str = "", extra_info: dict | None = None,
             head_cache: str | Path | None = None, schedule_examples: int | None = None,
             extra_files: dict[str, Any] | None = None, name: str | None = None) -> dict:
    """Train one ingredient; write it in HF layout to out_dir (atomically) and return its info.

    `cfg` is a `TrainParams`; `lr` is the sweep's rate (the body's; under LoRA its adapters' is `cfg.body_rate(lr)`).
    A checkpoint is written to `ckpt_path` every
    `cfg.checkpoint_every` optimizer steps and removed once the ingredient is saved; it records
    `fingerprint` (a hash of everything that shapes training), and resuming a checkpoint with
    another fingerprint is an error. Training curves go to `curves_dir` in dvclive's format.
    `extra_info` is added to the ingredient's `train_info.json`. With early stopping the ingredient is the weights
    of the best validation pass, step 0's (the starting model) among them. `head_cache`: the file the ingredients of
    a sweep share: LP-FT's probe head (`init_head_from_probe`), or with a random head the starting model's features
    probe score (`feature_probes`). `schedule_examples`: the count of texts the schedule (steps, warm-up, evaluation
    interval) is computed on, when not the training texts' (self-training's students: the selection's alone, so that
    pseudo-labels cost no steps). `extra_files`: file name -> JSON value, written into the folder (and its digests).
    `name`: what its lines and progress bar call it (default: out_dir's name; self-training's teacher, trained in a
    folder of its own, is `teacher (<ingredient>)`).
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    metric, name = cfg.early_stopping_metric, name or Path(out_dir).name
    autocast = _autocast(cfg.precision, device)
    tok = load_tokenizer(model_path)
    model = init_model(model_path, label_names, cfg.head_init_seed, cfg.pooling).to(device)
    train_enc = tokenize(tok, train_texts, cfg.max_length)
    val_enc = tokenize(tok, val_texts, cfg.max_length)
    y_np, y_val = np.asarray(train_labels), np.asarray(val_labels)
    probe_info = None
    if cfg.head_init == "probe":
        probe_info = init_head_from_probe(model, tok, train_enc, y_np, val_enc, y_val, HEAD_FEATURE_BATCH, device,
                                          metric, head_cache)
    head_name, head = head_of(model)
    head_init = {f"{head_name}.{k}": v.detach().cpu().clone().contiguous() for k, v in head.state_dict().items()}
    if cfg.freeze_embeddings:  # a few hundred texts touch few vocabulary rows; weight decay would erode the rest
        model.get_input_embeddings().weight.requires_grad_(False)
    if cfg.method == "lora":
        model = apply_lora(model, cfg.lora, cfg.head_init_seed)
    y = torch.as_tensor(y_np, dtype=torch.long)
    weights = class_weights(y_np, len(label_names)).to(device) if cfg.class_weighting == "balanced" else None
    micro = cfg.grad_accumulation
    scheduled = len(train_enc) if schedule_examples is None else schedule_examples
    steps = total_steps(scheduled, cfg.batch_size * micro, cfg.epochs, cfg.min_steps)
    batches = _batch_order(len(train_enc), cfg.batch_size * micro, seed, steps,  # one per optimizer step
                           y_np if cfg.class_weighting == "sampled" else None)
    eval_every = eval_interval(cfg, scheduled, steps)
    opt = _optimizer(model, cfg.body_rate(lr), cfg.head_learning_rate, cfg.weight_decay, cfg.layer_lr_decay)
    sched = lr_schedule(opt, cfg.schedule, warmup_steps(cfg.warmup_ratio, steps), steps)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")

    state = {"step": 0, "history": [], "best_score": -1.0, "best_step": 0, "best_weights": None, "best_record": None,
             "stale": 0, "seconds": 0.0}  # seconds: training time of the runs before this one (a resume)
    resumed_from = 0
    torch.manual_seed(seed)
    ckpt_path = Path(ckpt_path)
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, fingerprint, model, opt, sched, scaler, device)
        resumed_from = state["step"]
        print(f"train: {name}: resumed from step {state['step']} ({ckpt_path})")

    def evaluate_val(precision: str = cfg.precision) -> dict[str, float]:
        """Validation accuracy and macro-F1 from one forward pass."""
        with _autocast(precision, device):
            logits = predict_logits(model, tok, val_enc, cfg.batch_size * 2, device)
        return {f"val_{m}": score(logits, y_val, m) for m in ("accuracy", "macro_f1")}

    start, spent = time.perf_counter(), state["seconds"]
    if cfg.early_stopping_patience and state["step"] == 0:
        # The start is a candidate too: under LP-FT it is the probe on frozen features, which fine-tuning on a tiny
        # selection can end below. One validation pass, in eval mode: no random draw, so the steps that follow (and
        # a resumed run, whose checkpoint holds this record and these weights) are what they were without it.
        record = {"step": 0, **evaluate_val()}
        state["history"].append(record)
        state.update(best_score=record[f"val_{metric}"], best_record=record,
                     best_weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    # closed on the way out of a Ctrl-C too: left to the garbage collector, the bar drew itself again after the
    # command's `interrupted; ...` line, so that a progress bar, not the line, was the last thing on screen
    with tqdm(total=steps, initial=state["step"], desc=f"train {name}", unit="step",
              disable=not progress) as bar:
        while state["step"] < steps:
            interrupt.check()
            model.train()
            total = 0.0
            step_batch = batches[state["step"]]
            # the (weighted) mean loss of the whole step: each micro-batch's sum over the step's total weight
            norm = len(step_batch) if weights is None else weights[y[step_batch].to(device)].sum()
            for idx in np.array_split(step_batch, min(micro, len(step_batch))):
                batch = collate(tok, [train_enc[i] for i in idx], device)
                loss = batch_loss(model, batch, y[idx].to(device), weights, cfg.label_smoothing, autocast) / norm
                scaler.scale(loss).backward()
                total += float(loss.detach())
            if not math.isfinite(total) and not scaler.is_enabled():  # fp16's scaler skips such a step itself
                raise SouplineError(_diverged(name, state["step"] + 1, total, lr, cfg))
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if scaler.get_scale() >= scale:  # fp16 skips the step of a gradient with inf/NaN: the schedule waits too
                sched.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            record = {"step": state["step"], "train_loss": total}
            bar.update(1)
            if state["step"] % eval_every == 0 or state["step"] == steps:
                record.update(evaluate_val())
                value = record[f"val_{metric}"]
                if value > state["best_score"]:
                    state.update(best_score=value, best_step=state["step"], stale=0, best_record=record)
                    if cfg.early_stopping_patience:
                        state["best_weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                else:
                    state["stale"] += 1
            state["history"].append(record)
            if cfg.early_stopping_patience and state["stale"] >= cfg.early_stopping_patience and state["step"] < steps:
                print(f"train: {name}: early stop at step {state['step']} (best val {metric} "
                      f"{state['best_score']:.4f} at step {state['best_step']})")
                break
            if state["step"] % cfg.checkpoint_every == 0 and state["step"] < steps:
                state["seconds"] = spent + time.perf_counter() - start
                save_checkpoint(ckpt_path, fingerprint, model, opt, sched, scaler, device, state)
    if state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
        final, kept = state["best_record"], state["best_step"]
    else:  # no early stopping: the last step was just evaluated, and its weights are kept
        final, kept = state["history"][-1], state["step"]
    if cfg.precision != "fp32":  # recorded in fp32, as the soup stage measures the soups greedy weighs against it
        final = {**final, **evaluate_val("fp32")}
    info = {"lr": lr, "seed": seed, "method": cfg.method, "pooling": cfg.pooling, "head_init": cfg.head_init,
            "steps": state["step"], "planned_steps": steps, "examples": len(train_enc),
            "val_accuracy": final["val_accuracy"], "val_macro_f1": final["val_macro_f1"],
            "best_step": kept,  # the step whose weights the ingredient is
            **({"adapter_lr": cfg.body_rate(lr)} if cfg.method == "lora" else {})}  # lr x lora.learning_rate_scale
    timing = {"train_seconds": round(spent + time.perf_counter() - start, 2),  # a resumed run: the time before too
              "resumed_from_step": resumed_from}
    if probe_info:
        info["probe"] = probe_info
    chance = majority_score(y_val, metric)
    features = None  # LP-FT's start is its probe's score; a random head's, what a probe on its features scores
    if probe_info is None and final[f"val_{metric}"] <= chance:
        features = feature_probes(model, lambda: init_model(model_path, label_names, cfg.head_init_seed,
                                                            cfg.pooling).to(device),
                                  tok, train_enc, y_np, val_enc, y_val, device, metric, chance, head_cache)
    failed = training_failed([r["train_loss"] for r in state["history"] if "train_loss" in r],
                             probe_info[f"val_{metric}"] if probe_info else None, final[f"val_{metric}"], chance,
                             metric, features)
    if failed:
        info["failed"] = failed
    info.update(extra_info or {})
    # The curves first, the ingredient last: the ingredient folder is what marks the training done, so a run
    # killed between the two writes trains again (and rewrites the curves) instead of keeping another run's curves.
    if curves_dir is not None:
        with atomic_dir(curves_dir) as tmp:
            write_curves(tmp, state["history"])
    with atomic_dir(out_dir) as tmp:
        if cfg.method == "lora":  # peft wrote the base model's absolute path into adapter_config.json (`cls`)
            model.get_base_model().name_or_path = None
            for adapter in model.peft_config.values():
                adapter.base_model_name_or_path = None
            model.save_pretrained(Path(tmp) / "adapter")
            (Path(tmp) / "adapter" / "README.md").unlink()  # and into a blank model card: the folder names no path
            model = model.merge_and_unload()
        model.save_pretrained(tmp)
        tok.model_max_length = cfg.max_length  # the folder says how many tokens it reads (`soupline predict`, HF)
        tok.save_pretrained(tmp)
        save_file(head_init, str(Path(tmp) / "head_init.safetensors"))
        write_json(Path(tmp) / HISTORY_FILE, state["history"])  # the curves, rewritable should they be deleted
        for file_name, value in (extra_files or {}).items():
            write_json(Path(tmp) / file_name, value)
        info["files"] = file_digests(tmp)  # what a whole ingredient holds (a deleted weights file is no ingredient)
        write_json(Path(tmp) / "train_info.json", info)
        write_timing(Path(tmp), timing)  # apart: the same training makes the same train_info.json
    ckpt_path.unlink(missing_ok=True)
    return {**info, **timing}


HISTORY_FILE = "history.json"  # in an ingredient folder: its training records, one per step (write_curves reads them)


def write_curves(live_dir: Path, history: list[dict]) -> None:
    """Training curves in dvclive's format (`plots/metrics/{train,val}/*.tsv`, read by `dvc plots show`).

    Written by dvclive's own metric writer (`dvclive.plots.Metric`, what `Live.log_metric` calls), not by a `Live`:
    that looks for a DVC repository from the working directory and `dvc init`s the git repository around it when
    there is none (or fails in one without commits), and writes a `metrics.json` summary, which dvc.yaml's curves
    folder must not hold (the summary is the ingredient's `train_info.json`)."""
    from dvclive.plots import Metric

    metrics: dict[str, Metric] = {}
    for rec in history:
        for key, value in rec.items():
            if key != "step":
                name = curve_name(key)
                metric = metrics.setdefault(name, Metric(name, Path(live_dir) / "plots"))
                metric.step = rec["step"]
                metric.dump(value)


def curve_name(key: str) -> str:
    """A history record's key -> its curve's dvclive name: `val_macro_f1` -> `val/macro_f1`."""
    return key.replace("_", "/", 1)


def curve_files(history: list[dict]) -> list[str]:
    """The files `write_curves` writes for `history`, relative to its folder."""
    names = dict.fromkeys(curve_name(key) for rec in history for key in rec if key != "step")
    return [f"plots/metrics/{name}.tsv" for name in names]


SWEEP_CURVES = ("train/loss", "val/accuracy", "val/macro_f1")  # dvc.yaml's top-level plots read these


def write_sweep_curves(curves_dir: Path, names: list[str]) -> None:
    """One file per metric with every ingredient's curve (`train_loss.tsv`, ...), for one chart per metric.

    DVC draws each file of a folder as its own chart (three per ingredient); these long-format files
    (`step`, the metric, `ingredient`) are what dvc.yaml plots instead, with the `ingredients` template
    (.dvc/plots/ingredients.json: one line per ingredient). Read from each ingredient's dvclive files; an
    ingredient whose files are missing is left out (a probe's are its one point at step 0)."""
    curves_dir = Path(curves_dir)
    curves_dir.mkdir(parents=True, exist_ok=True)
    for metric in SWEEP_CURVES:
        split, field = metric.split("/")
        lines = [f"step\t{field}\tingredient"]
        for name in names:
            tsv = curves_dir / name / "plots" / "metrics" / split / f"{field}.tsv"
            if tsv.exists():
                header, *rows = [row.split("\t") for row in tsv.read_text(encoding="utf-8").splitlines() if row]
                step, value = header.index("step"), header.index(field)
                lines += [f"{row[step]}\t{row[value]}\t{name}" for row in rows]
        write_text(curves_dir / f"{split}_{field}.tsv", "\n".join(lines) + "\n")
