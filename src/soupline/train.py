"""Fine-tuning one ingredient: a classifier from the base model, trained on the selection.

Every ingredient starts from the same weights (pretrained body + a head drawn with
`head_init_seed`), so ingredients of a sweep can be souped. Training length is
max(epochs x steps-per-epoch, min_steps), so a tiny selection still gets enough updates.
The data order of epoch e is a function of (seed, e) and the RNG state is checkpointed, so a
run killed and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from soupline.artifacts import atomic_dir, atomic_path, write_json
from soupline.evaluate import collate, predict_logits, tokenize


def init_model(model_path: str, label_names: list[str], head_init_seed: int):
    """The shared starting point of every ingredient (and the base of task vectors)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected, not news
    torch.manual_seed(head_init_seed)
    return AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)})


def total_steps(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    return max(epochs * math.ceil(n / batch_size), min_steps)


def _batch_order(n: int, batch_size: int, seed: int, steps: int) -> list[np.ndarray]:
    """Index batches for all steps: epoch e is a permutation seeded by (seed, e)."""
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[i:i + batch_size] for i in range(0, n, batch_size))
        epoch += 1
    return out[:steps]


def _optimizer(model, lr: float, head_lr: float | None, weight_decay: float):
    """AdamW; no decay on biases/LayerNorm; the freshly initialised head may get its own, higher lr."""
    import torch

    head = {id(p) for p in _head(model).parameters()}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "LayerNorm" in name or "bias" in name
            rate = head_lr if head_lr and id(p) in head else lr
            groups.setdefault((rate, 0.0 if no_decay else weight_decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": r, "weight_decay": wd} for (r, wd), ps in groups.items()])


def _head(model):
    """The classification head of a HF sequence classifier (`classifier`, `score`, ...)."""
    for name in ("classifier", "score", "classification_head", "head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def finetune(model_path: str, label_names: list[str], train_texts: list[str], train_labels: np.ndarray,
             val_texts: list[str], val_labels: np.ndarray, cfg: Any, lr: float, seed: int,
             out_dir: str | Path, ckpt_path: str | Path, curves_dir: str | Path | None = None,
             device: str = "cpu", progress: bool = True) -> dict:
    """Train one ingredient; write it in HF layout to out_dir (atomically) and return its info.

    `cfg` is a `TrainParams`. A checkpoint is written to `ckpt_path` every
    `cfg.checkpoint_every` steps and removed once the ingredient is saved. Training curves
    go to `curves_dir` in dvclive's format.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    tok = AutoTokenizer.from_pretrained(model_path)
    model = init_model(model_path, label_names, cfg.head_init_seed).to(device)
    if cfg.freeze_embeddings:  # a few hundred texts touch few vocabulary rows; weight decay would erode the rest
        model.get_input_embeddings().weight.requires_grad_(False)
    train_enc = tokenize(tok, train_texts, cfg.max_length)
    val_enc = tokenize(tok, val_texts, cfg.max_length)
    y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    steps = total_steps(len(train_enc), cfg.batch_size, cfg.epochs, cfg.min_steps)
    batches = _batch_order(len(train_enc), cfg.batch_size, seed, steps)
    per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    # Validation costs a forward pass over it: each epoch only when early stopping needs it.
    eval_every = cfg.eval_every or (per_epoch if cfg.early_stopping_patience else steps)
    opt = _optimizer(model, lr, cfg.head_learning_rate, cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * steps), steps)

    state = {"step": 0, "history": [], "best_acc": -1.0, "best_step": 0, "best_weights": None, "stale": 0}
    resumed_from = 0
    torch.manual_seed(seed)
    ckpt_path = Path(ckpt_path)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        torch.set_rng_state(ck["rng"])
        state = ck["state"]
        resumed_from = state["step"]
        print(f"train: resumed from step {state['step']} ({ckpt_path})")

    def evaluate_val() -> float:
        logits = predict_logits(model, tok, val_enc, cfg.batch_size * 2, device)
        return float((logits.argmax(1) == val_labels).mean())

    start = time.perf_counter()
    bar = tqdm(total=steps, initial=state["step"], desc=f"train lr={lr:g} seed={seed}", unit="step",
               disable=not progress)
    while state["step"] < steps:
        model.train()
        idx = batches[state["step"]]
        batch = collate(tok, [train_enc[i] for i in idx], device)
        loss = model(**batch, labels=y[idx].to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        record = {"step": state["step"], "train_loss": float(loss.detach())}
        bar.update(1)
        if state["step"] % eval_every == 0 or state["step"] == steps:
            acc = record["val_accuracy"] = evaluate_val()
            if acc > state["best_acc"]:
                state.update(best_acc=acc, best_step=state["step"], stale=0)
                if cfg.early_stopping_patience:
                    state["best_weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state["stale"] += 1
        state["history"].append(record)
        if cfg.early_stopping_patience and state["stale"] >= cfg.early_stopping_patience:
            print(f"train: early stop at step {state['step']} (best val acc {state['best_acc']:.4f} "
                  f"at step {state['best_step']})")
            break
        if state["step"] % cfg.checkpoint_every == 0 and state["step"] < steps:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "rng": torch.get_rng_state(), "state": state}, tmp)
    bar.close()
    if state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
    final_acc = state["best_acc"] if state["best_weights"] is not None else evaluate_val()
    info = {"lr": lr, "seed": seed, "steps": state["step"], "planned_steps": steps, "examples": len(train_enc),
            "val_accuracy": final_acc, "best_step": state["best_step"], "resumed_from_step": resumed_from,
            "train_seconds": round(time.perf_counter() - start, 2)}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(Path(tmp) / "train_info.json", info)
    if curves_dir is not None:
        with atomic_dir(curves_dir) as tmp:
            write_curves(tmp, state["history"], info)
    ckpt_path.unlink(missing_ok=True)
    return info


def write_curves(live_dir: Path, history: list[dict], info: dict) -> None:
    """Training curves in dvclive's format (read by `dvc plots show` / `dvc exp show`)."""
    from dvclive import Live

    os.environ.setdefault("DVCLIVE_LOGLEVEL", "WARNING")
    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None) as live:
        for rec in history:
            live.step = rec["step"]
            for key, value in rec.items():
                if key != "step":
                    live.log_metric(key.replace("_", "/", 1), value)
        live.summary = {k: info[k] for k in ("val_accuracy", "steps", "train_seconds")}
