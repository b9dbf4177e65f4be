"""train: fine-tune one ingredient (one learning rate x seed of the sweep) on the selection."""

from __future__ import annotations

from soupline.artifacts import read_json, sha256_obj
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.models import pick_device, resolve_model
from soupline.train import finetune
from tasks.common import label_ids, main, read_labels, read_split, require
from tasks.layout import Layout


def ingredient_name(lr: float, seed: int) -> str:
    return f"lr{lr}-seed{seed}"  # str(float), exactly as dvc.yaml renders ${item.lr}


def ingredient_names(params: Params) -> list[str]:
    return [ingredient_name(lr, s) for lr in params.train.learning_rates for s in params.train.seeds]


def run(params: Params, layout: Layout, lr: float, seed: int, progress: bool = True) -> dict:
    if lr not in params.train.learning_rates or seed not in params.train.seeds:
        raise SouplineError(f"lr={lr:g} seed={seed} is not in the sweep train.learning_rates x train.seeds")
    names = read_labels(layout)
    sel = read_json(require(layout.selection, "select"))
    pool, val = read_split(layout, "pool"), read_split(layout, "validation")
    chosen = pool.iloc[sel["indices"]]
    name = ingredient_name(lr, seed)
    # The resume checkpoint is keyed on everything that shapes training: a changed config never resumes it.
    key = sha256_obj({"train": params.train.model_dump(), "model": params.model, "indices": sel["indices"],
                      "pool": sel["pool_hash"], "lr": lr, "seed": seed})[:12]
    info = finetune(resolve_model(params.model), names, chosen["text"].tolist(), label_ids(chosen["label"], names),
                    val["text"].tolist(), label_ids(val["label"], names), params.train, lr, seed,
                    layout.ingredients / name, layout.checkpoints / f"{name}-{key}.pt",
                    layout.curves / name, pick_device(params.device), progress, fingerprint=key)
    print(f"train: {name}: {info['steps']} steps on {info['examples']} examples, "
          f"val acc {info['val_accuracy']:.4f}, {info['train_seconds']:.0f}s")
    return info


if __name__ == "__main__":
    main("train", run, **{"--lr": {"type": float, "required": True}, "--seed": {"type": int, "required": True}})
