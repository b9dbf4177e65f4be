"""train: fine-tune every ingredient of the sweep (train.learning_rates x train.seeds x train.sweep).

`train.method: probe` instead fits one ingredient, `linear-probe`: logistic regression on the
embed stage's embeddings of the selection (C chosen on validation), the baseline a fine-tune
has to beat, as a model of the run (evaluated, reported, compared in a study) with no soups.

An ingredient is trained only when its folder is missing or was built from other inputs: each
`train_info.json` records a key over the train section of that ingredient, the base model, the
selection and the library's source, so adding a seed to the sweep trains just the new
ingredients, under `dvc repro` as under `soupline run`. Folders of ingredients no longer in the
sweep are removed. `--ingredient NAME` trains one (the Prefect flow runs one task each).
"""

from __future__ import annotations

import shutil
import time

from soupline.artifacts import TIMING_FILE, atomic_dir, file_sizes, read_json, sha256_obj, source_digest, write_json
from soupline.config import Ingredient, Params
from soupline.errors import SouplineError
from soupline.models import pick_device
from soupline.probe import PROBE_FILE, score
from soupline.train import HISTORY_FILE, finetune, write_curves, write_sweep_curves
from tasks.common import base_model, label_ids, main, read_embedding, read_labels, read_split, require, selection_probe
from tasks.layout import Layout


def ingredient_names(params: Params) -> list[str]:
    return [ing.name for ing in params.train.ingredients()]


def training_key(params: Params, ing: Ingredient, selection: dict) -> str:
    """Everything that shapes this ingredient's training (the resume checkpoint is keyed on it too)."""
    train = ing.train.model_dump(mode="json", exclude={"learning_rates", "seeds", "sweep"})
    extra = {"embed": params.embed.model_dump(mode="json")} if ing.train.method == "probe" else {}
    return sha256_obj({"train": train, "model": params.model, "indices": selection["indices"],
                       "pool": selection["pool_hash"], "lr": ing.lr, "seed": ing.seed, **extra})[:12]


def build_record(key: str) -> dict:
    """What train_info.json's `build` holds: an ingredient is up to date while this is unchanged."""
    return {"key": key, "library": source_digest()}


def fit_probe_ingredient(params: Params, layout: Layout, ing: Ingredient, selection: dict, key: str) -> dict:
    """train.method: probe: logistic regression on the embed stage's embeddings of the selection."""
    start = time.perf_counter()
    names = read_labels(layout)
    val = read_split(layout, "validation")
    probe = selection_probe(params, layout, names)
    val_logits = probe.logits(read_embedding(layout, "validation"))
    y_val = label_ids(val["label"], names)
    info = {"method": "probe", "C": probe.C, "examples": len(selection["indices"]), "steps": 0,
            "val_accuracy": score(val_logits, y_val, "accuracy"), "val_macro_f1": score(val_logits, y_val, "macro_f1"),
            "embed": {"model": params.model, "max_length": params.embed.max_length},  # what its inputs are
            "build": build_record(key)}
    timing = {"train_seconds": round(time.perf_counter() - start, 2)}
    with atomic_dir(layout.ingredients / ing.name) as tmp:
        probe.save(tmp / PROBE_FILE)
        info["files"] = file_sizes(tmp)
        write_json(tmp / "train_info.json", info)
        write_json(tmp / TIMING_FILE, timing)
    return {**info, **timing}


def is_built(layout: Layout, name: str, key: str) -> bool:
    """Built from these inputs, and still whole: every file it was saved with, at its size."""
    folder = layout.ingredients / name
    if not (folder / "train_info.json").exists():
        return False
    info = read_json(folder / "train_info.json")
    return info.get("build") == build_record(key) and info.get("files") == file_sizes(folder, ("train_info.json",))


def restore_curves(layout: Layout, name: str) -> str:
    """Rewrite a built ingredient's curves folder from its history.json when the folder is gone (deleted by
    hand: nothing else would bring it back, short of retraining); what was done, for the stage's line."""
    history = layout.ingredients / name / HISTORY_FILE
    if (layout.curves / name).exists() or not history.exists():  # a probe has no curves
        return ""
    with atomic_dir(layout.curves / name) as tmp:
        write_curves(tmp, read_json(history))
    return " (its curves rewritten from its history.json)"


def unbuilt(params: Params, layout: Layout) -> list[str]:
    """The sweep's ingredients that are missing or were built from other inputs (all of them without a selection)."""
    if not layout.selection.exists():
        return ingredient_names(params)
    selection = read_json(layout.selection)
    return [i.name for i in params.train.ingredients() if not is_built(layout, i.name, training_key(params, i, selection))]


def train_one(params: Params, layout: Layout, ing: Ingredient, selection: dict, key: str,
              progress: bool = True) -> dict:
    if ing.train.method == "probe":
        info = fit_probe_ingredient(params, layout, ing, selection, key)
        print(f"train: {ing.name}: C {info['C']:g} on {info['examples']} examples, val acc {info['val_accuracy']:.4f}")
        return info
    names = read_labels(layout)
    pool, val = read_split(layout, "pool"), read_split(layout, "validation")
    chosen = pool.iloc[selection["indices"]]
    info = finetune(base_model(params), names, chosen["text"].tolist(), label_ids(chosen["label"], names),
                    val["text"].tolist(), label_ids(val["label"], names), ing.train, ing.lr, ing.seed,
                    layout.ingredients / ing.name, layout.checkpoints / f"{ing.name}-{key}.pt",
                    layout.curves / ing.name, pick_device(params.device), progress, fingerprint=key,
                    extra_info={"build": build_record(key)})
    print(f"train: {ing.name}: {info['steps']} steps on {info['examples']} examples, "
          f"val acc {info['val_accuracy']:.4f}, {info['train_seconds']:.0f}s")
    return info


def run(params: Params, layout: Layout, ingredient: str | None = None, progress: bool = True) -> dict:
    """Train the ingredients that are not built yet (all of them, or just `ingredient`); name -> train_info."""
    sweep = {ing.name: ing for ing in params.train.ingredients()}
    if ingredient is not None and ingredient not in sweep:
        raise SouplineError(f"ingredient {ingredient!r} is not in the sweep; its ingredients: {list(sweep)}")
    selection = read_json(require(layout.selection, "select"))
    out = {}
    for name, ing in sweep.items():
        if ingredient is not None and name != ingredient:
            continue
        key = training_key(params, ing, selection)
        if is_built(layout, name, key):
            print(f"train: {name}: up to date{restore_curves(layout, name)}")
            out[name] = read_json(layout.ingredients / name / "train_info.json")
        else:
            out[name] = train_one(params, layout, ing, selection, key, progress)
    if ingredient is None:
        for folder in (layout.ingredients, layout.curves):
            for stale in folder.iterdir() if folder.exists() else []:
                if stale.is_dir() and stale.name not in sweep and not stale.name.startswith("."):
                    shutil.rmtree(stale)
        write_sweep_curves(layout.curves, list(sweep))
        # Every ingredient of the sweep is built: what is left are checkpoints of runs stopped under other
        # params or sweeps (model + optimizer state, hundreds of MB each on the default model).
        for stale in layout.checkpoints.glob("*.pt"):
            stale.unlink()
    return out


if __name__ == "__main__":
    main("train", run, **{"--ingredient": {"default": None, "help": "train only this ingredient of the sweep"}})
