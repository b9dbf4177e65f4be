"""train: fine-tune every ingredient of the sweep (train.learning_rates x train.seeds x train.sweep).

`train.method: probe` instead fits one ingredient, `linear-probe`: logistic regression on the
embed stage's embeddings of the selection (C chosen on validation), the baseline a fine-tune
has to beat, as a model of the run (evaluated, reported, compared in a study) with no soups.

An ingredient is trained only when its folder is missing or was built from other inputs: each
`train_info.json` records a key over the train section of that ingredient, the base model, the
selection and the train stage's code (`keys.code_digest`), so adding a seed to the sweep trains just the new
ingredients, under `dvc repro` as under `soupline run`. An ingredient replaced (its key changed) or
dropped from the sweep is moved to data/cache/ingredients/<key>/ rather than deleted, and moved back when
its key comes back (a param changed and changed back): the newest `train.keep_replaced` of them, and every one
shelved since the cache was last pruned (`shelf.prune`), as DVC's run-cache does for whole stages, per ingredient. `--ingredient NAME` trains one (the
Prefect flow runs one task each).
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
import zipfile
from collections.abc import Collection
from pathlib import Path

import numpy as np

from soupline.artifacts import atomic_dir, file_digests, read_json, sha256_file, sha256_obj, write_json, write_timing
from soupline.config import Ingredient, Params, SelfTrainingParams
from soupline.errors import SouplineError
from soupline.models import pick_device
from soupline.probe import PROBE_FILE, log_loss, score
from soupline.train import (HISTORY_FILE, cached, check_device, check_layers, curve_files, eval_interval,
                            failed_line, finetune, total_steps, warmup_steps, write_curves, write_sweep_curves)
from tasks.common import (base_model, label_ids, main, probe_data, read_labels, read_selection, read_split, require,
                          selection_probe, whole_record)
from tasks import shelf
from tasks.keys import code_digest, model_content, model_spelling
from tasks.layout import Layout


def ingredient_names(params: Params) -> list[str]:
    return [ing.name for ing in params.train.ingredients()]


KEY = re.compile(r"[0-9a-f]{12}")  # what training_key returns


def validation_and_labels(layout: Layout) -> str:
    """training_key's `validation`: the validation split's hash, as it picks the probe head's C, the best checkpoint
    and the scores greedy soup starts from, and the label ids (labels.json: a declared label order or a declared
    label without examples changes the model's outputs though no row changes)."""
    return sha256_obj({"validation": sha256_file(require(layout.split("validation"), "prepare")),
                       "labels": read_labels(layout)})


def probe_inputs(layout: Layout) -> str:
    """The content of the embeddings `train.method: probe` is fit on (the pool's and validation's): embed settings
    alone missed vectors an embed run wrote otherwise (its code edited, its cache cleared), and the probe fit on the
    old ones stayed "up to date", scored on the new test embeddings."""
    return sha256_obj({s: sha256_file(require(layout.embedding(s), "embed")) for s in ("pool", "validation")})


def training_key(params: Params, ing: Ingredient, selection: dict, validation: str,
                 embedded: str | None = None) -> str:
    """Everything that shapes this ingredient's training (the resume checkpoint is keyed on it too): its settings,
    the selection and pool, `validation_and_labels`, a model folder by its content (`model_content`: other weights
    saved there train again); for the probe, `embedded` (`probe_inputs`) and a model folder's path too
    (`model_spelling`): its train_info.json names the folder `soupline predict` embeds new texts with, and a probe
    kept "up to date" after the folder moved named the old path, where predict found no model."""
    extra = {"embeddings": embedded} if ing.train.method == "probe" else {}
    if extra and model_content(params.model):  # the keys of a probe on the built-in model or a hub id as they were
        extra["path"] = model_spelling(params.model)
    return sha256_obj({"train": trained_settings(ing, len(selection["indices"])),
                       **_trained_on(params, ing, selection, validation), **extra})[:12]


def head_key(params: Params, ing: Ingredient, selection: dict, validation: str) -> str:
    """The key of LP-FT's probe head (train.head_init: probe), and of a random head's starting model probed
    (`head_file`): what its fit reads, the same for every ingredient of a sweep (learning rates, seeds and the other
    axes change no input of it), so it is fitted once per sweep. No
    device, as `training_key` holds none (CPU's and CUDA's floats agree within tolerance): a sweep built on one device
    and extended on another (a new seed, a Prefect worker with a GPU) fitted the head again there, and its new
    ingredients started from another head than the ones they are souped with."""
    t = ing.train
    return sha256_obj({**_trained_on(params, ing, selection, validation),
                       "head": {"pooling": t.pooling, "max_length": t.max_length, "head_init_seed": t.head_init_seed,
                                "metric": t.early_stopping_metric},
                       "code": code_digest("train")})[:12]


def _trained_on(params: Params, ing: Ingredient, selection: dict, validation: str) -> dict:
    """What every model of the sweep is fitted from, in `training_key` and `head_key`: the base model (a folder by
    its content), the selection and its pool, `validation_and_labels`, and a self-training student's pseudo-labels
    as what makes them (the teacher's key and the multiple): another teacher or multiple trains (and fits LP-FT's
    head) again, and with self-training off the keys are as they were before it existed."""
    out = {"model": model_content(params.model) or params.model, "indices": selection["indices"],
           "pool": selection["pool_hash"], "validation": validation}
    if multiple := ing.train.self_training.multiple:
        out["pseudo_labels"] = {"multiple": multiple, "teacher": teacher_key(params, selection, validation)}
    return out


def teacher_of(params: Params) -> Ingredient:
    """Self-training's teacher: the sweep's first ingredient with self-training off, so its key is the one that
    ingredient has in a run without it (one built there is the teacher; a later run without self-training gets the
    teacher back from the ingredient cache)."""
    first = params.train.ingredients()[0]
    return Ingredient(first.name, first.lr, first.seed,
                      first.train.model_copy(update={"self_training": SelfTrainingParams()}))


def teacher_key(params: Params, selection: dict, validation: str) -> str:
    """The training key of self-training's teacher (`teacher_of`): its folder in the ingredient cache, its resume
    checkpoint's name, what its students' keys hold of it."""
    return training_key(params, teacher_of(params), selection, validation)


def trained_settings(ing: Ingredient, examples: int) -> dict:
    """`Ingredient.key_settings` with the settings training reads through a count of steps on `examples` texts as
    that count, so a spelling of the same schedule trains nothing: epochs and min_steps as `total_steps` (`epochs:
    6 -> 5` where min_steps wins), warmup_ratio as its warm-up steps (0.1 -> 0.12 of 40 steps: 4 both), and
    eval_every, read only with early stopping, as the steps between evaluations (0: one epoch's; past the last step:
    the last step alone)."""
    settings, t = ing.key_settings(), ing.train
    if t.method == "probe":
        return settings
    steps = total_steps(examples, t.batch_size * t.grad_accumulation, t.epochs, t.min_steps)
    out = {**settings, "epochs": None, "min_steps": None, "steps": steps,
           "warmup_ratio": None, "warmup_steps": warmup_steps(t.warmup_ratio, steps)}
    if "eval_every" in settings:
        out["eval_every"] = eval_interval(t, examples, steps)
    return out


def sweep_trained(params: Params, layout: Layout) -> dict[str, dict] | None:
    """Ingredient name -> its `trained_settings` on the selection in place (what soup's and evaluate's keys hold of
    the sweep); None without a selection."""
    try:
        examples = len(read_selection(layout)["indices"])
    except SouplineError:
        return None
    return trained_sweep(params, examples)


def trained_sweep(params: Params, examples: int) -> dict[str, dict]:
    """Ingredient name -> its `trained_settings` on `examples` selected texts."""
    return {ing.name: trained_settings(ing, examples) for ing in params.train.ingredients()}


def build_record(key: str) -> dict:
    """What train_info.json's `build` holds: an ingredient is up to date while this is unchanged (its inputs' key and
    the train stage's code: an edit to report.py or the command line retrains nothing)."""
    return {"key": key, "code": code_digest("train")}


def fit_probe_ingredient(params: Params, layout: Layout, ing: Ingredient, selection: dict, key: str) -> dict:
    """train.method: probe: logistic regression on the embed stage's embeddings of the selection.

    Its curves are one point at step 0 (it takes no optimizer step): its cross-entropy on the selection and its
    validation scores, so dvc.yaml's curve charts have a row to draw (DVC lists a chart without rows as nothing
    under `dvc plots show --json`) and `dvc plots diff` puts the probe beside a fine-tune's curves."""
    start = time.perf_counter()
    names = read_labels(layout)
    x, y, x_val, y_val = data = probe_data(layout, names)  # read once: the fit, its loss and its validation scores
    probe = selection_probe(params, layout, names, data)
    val_logits = probe.logits(x_val)
    history = [{"step": 0, "train_loss": log_loss(probe.logits(x), y),
                "val_accuracy": score(val_logits, y_val, "accuracy"),
                "val_macro_f1": score(val_logits, y_val, "macro_f1")}]
    info = {"method": "probe", "C": probe.C, "examples": len(selection["indices"]), "steps": 0,
            "val_accuracy": history[0]["val_accuracy"], "val_macro_f1": history[0]["val_macro_f1"],
            "embed": {"model": params.model, "max_length": params.embed.max_length},  # what its inputs are
            "labels": names,  # its outputs' names, in order: the folder says them wherever it is copied
            "build": build_record(key)}
    timing = {"train_seconds": round(time.perf_counter() - start, 2)}
    with atomic_dir(layout.curves / ing.name) as tmp:  # the curves first, the ingredient last, as `finetune` does
        write_curves(tmp, history)
    with atomic_dir(layout.ingredients / ing.name) as tmp:
        probe.save(tmp / PROBE_FILE)
        write_json(tmp / HISTORY_FILE, history)  # the curves, rewritable should they be deleted
        info["files"] = file_digests(tmp)
        write_json(tmp / "train_info.json", info)
        write_timing(tmp, timing)
    return {**info, **timing}


def is_whole(folder: Path, key: str, verify: bool = False) -> bool:
    """Built from the inputs `key` stands for, by this code, and still whole: every file it was saved
    with, at its size, and with `verify` its content (`whole_record`; a cached folder may be damaged any way: the run
    trains the ingredient again rather than failing)."""
    info = whole_record(folder, "train_info.json", verify)
    return info is not None and info.get("build") == build_record(key)


def is_intact(folder: Path, key: str) -> bool:
    """`is_whole`, content checked: what a run keeps in place or moves back from the cache as built."""
    return is_whole(folder, key, verify=True)


def is_built(layout: Layout, name: str, key: str) -> bool:
    return is_whole(layout.ingredients / name, key)


def shelve(layout: Layout, folder: Path) -> None:
    """Move an ingredient's folder to the ingredient cache under its key (`shelf.shelve`)."""
    key = shelf.recorded_key(folder / "train_info.json", ("build", "key"), KEY)
    shelf.shelve(folder, layout.ingredient_cache, key, is_whole)


def unshelve(layout: Layout, name: str, key: str) -> bool:
    """Move the cached ingredient built from `key` into place as `name`, with its curves; False when the
    cache holds none whole."""
    if not shelf.holds(layout.ingredient_cache, key, is_intact):
        return False
    shutil.rmtree(layout.curves / name, ignore_errors=True)  # the replaced ingredient's, before its successor moves in
    shelf.unshelve(layout.ingredient_cache, key, layout.ingredients / name, is_whole)
    restore_curves(layout, name)  # (a run stopped before this rewrites them next time, as for a deleted folder)
    return True


def curves_gone(layout: Layout, name: str) -> bool:
    """Whether the ingredient in place has a history.json but its curves folder is gone or lacks a file it should
    hold (`curve_files`: deleted by hand)."""
    history, folder = layout.ingredients / name / HISTORY_FILE, layout.curves / name
    if not history.exists():
        return False
    return not folder.exists() or not all((folder / f).exists() for f in curve_files(read_json(history)))


def restore_curves(layout: Layout, name: str) -> bool:
    """Rewrite a built ingredient's curves folder from its history.json when the folder or a file of it is gone
    (deleted by hand: nothing else would bring it back, short of retraining); whether it did."""
    if not curves_gone(layout, name):
        return False
    with atomic_dir(layout.curves / name) as tmp:
        write_curves(tmp, read_json(layout.ingredients / name / HISTORY_FILE))
    return True


def sweep_keys(params: Params, layout: Layout, selection: dict, validation: str) -> dict[str, str]:
    """Ingredient name -> its training key, for every ingredient of the sweep."""
    embedded = probe_inputs(layout) if params.train.method == "probe" else None
    return {i.name: training_key(params, i, selection, validation, embedded) for i in params.train.ingredients()}


# in the head cache: LP-FT's heads, a random head's start scores, self-training's teacher's predictions
HEAD_FILES = ("*.safetensors", "*.start.json", "*.teacher.npy")


def head_file(params: Params, ing: Ingredient, selection: dict, validation: str) -> str:
    """The head cache's file a fine-tuned ingredient reads (`head_key`): LP-FT's probe head, or with a random head
    the starting model's features probe score, which judges whether its training failed (`feature_probes`)."""
    key = head_key(params, ing, selection, validation)
    return f"{key}.safetensors" if ing.train.head_init == "probe" else f"{key}.start.json"


def sweep_heads(params: Params, selection: dict, validation: str) -> set[str]:
    """The head cache's files the sweep's fine-tuned ingredients read (`head_file`): one per sweep and head_init,
    and with self-training its teacher's predictions (`predictions_file`) and the head the teacher trains from: a
    teacher stopped mid-training resumes on it (`soupline cache --gc` deleted it, and LP-FT fitted it again)."""
    teacher = ({predictions_file(params, selection, validation), head_file(params, teacher_of(params), selection,
                                                                           validation)}
               if params.train.self_training.multiple else set())
    return teacher | {head_file(params, ing, selection, validation) for ing in params.train.ingredients()
                      if ing.train.method != "probe"}


PSEUDO_LABELS = "pseudo_labels.json"  # in a self-training student's folder: the pseudo-labels it trained on
TEACHER = ".teacher"  # the folder self-training's teacher trains in before it goes to the ingredient cache


def predictions_file(params: Params, selection: dict, validation: str) -> str:
    """The head cache's file of self-training's teacher's softmax over the pool's unselected texts, keyed as LP-FT's
    head is (`head_key`): the teacher's key (the pool, the selection, max_length) and the train stage's code, which a
    teacher's build holds too (predictions of a teacher built by other code are not read): a re-run (another
    multiple) predicts nothing again, and the students share it as they share their head."""
    key = teacher_key(params, selection, validation)
    return f"{sha256_obj({'teacher': key, 'code': code_digest('train')})[:12]}.teacher.npy"


def teacher_folder(params: Params, layout: Layout, selection: dict, validation: str, progress: bool) -> Path:
    """Where self-training's teacher is (`teacher_of`): the ingredient in place or in the ingredient cache built
    from its key (by a run without self-training, or an earlier one with it), else trained now, as that ingredient
    would be, and put in the ingredient cache (`shelve`), whence a run without self-training restores it."""
    teacher, key = teacher_of(params), teacher_key(params, selection, validation)
    for folder in (layout.ingredients / teacher.name, layout.ingredient_cache / key):
        if is_intact(folder, key):
            return folder
    if not is_intact(layout.ingredients / TEACHER, key):  # else trained by a run stopped before it was shelved
        print(f"train: self-training: the teacher, {teacher.name} on the selection alone (soups leave it out)")
        train_one(params, layout, Ingredient(TEACHER, teacher.lr, teacher.seed, teacher.train), selection, key,
                  validation, progress)
    # its history.json rewrites them where it is restored (`restore_curves`)
    shutil.rmtree(layout.curves / TEACHER, ignore_errors=True)
    shelve(layout, layout.ingredients / TEACHER)
    return layout.ingredient_cache / key


def pseudo_labelled(params: Params, layout: Layout, selection: dict, validation: str, progress: bool = True,
                    say: bool = True) -> dict:
    """Self-training's pseudo-labels, the record each student keeps as pseudo_labels.json: the teacher, the pool rows
    picked (`soupline.self_training.pseudo_labels`: per predicted label the most confident, train.self_training.
    multiple x the selection's size in all), their labels, the teacher's confidence in each, and their agreement with
    the pool's own labels (a diagnostic the report prints; the pick reads no pool label). The teacher's softmax is
    read from the head cache when a run predicted it (`predictions_file`), else the teacher (`teacher_folder`)
    predicts the unselected texts once. `say`: warn when the teacher's predictions give fewer than asked."""
    # here: soup, evaluate and report import this module
    from soupline.self_training import check_count, pseudo_labels, teacher_probs

    multiple = params.train.self_training.multiple
    pool, names = read_split(layout, "pool"), read_labels(layout)
    rest = np.setdiff1d(np.arange(len(pool)), selection["indices"])
    if not rest.size:
        raise SouplineError(f"train.self_training.multiple={multiple:g} pseudo-labels the pool's unselected texts, "
                            f"and the selection holds all {len(pool)} of them; lower select.budget or set "
                            "train.self_training.multiple=0")
    size = len(selection["indices"])
    check_count(multiple, size, len(names))
    teacher = teacher_of(params)

    def predict():
        folder, start = teacher_folder(params, layout, selection, validation, progress), time.perf_counter()
        probs = teacher_probs(folder, pool["text"].iloc[rest].tolist(), teacher.train.max_length,
                              params.evaluate.batch_size, pick_device(params.device))
        print(f"train: self-training: the teacher labelled {len(rest)} unselected pool texts in "
              f"{time.perf_counter() - start:.0f}s")
        return probs

    def load(path: Path) -> np.ndarray:
        probs = np.load(path)
        if probs.shape != (len(rest), len(names)):
            raise ValueError(f"{path}: {probs.shape}, not {(len(rest), len(names))}")  # damaged: predicted again
        return probs

    def save(probs: np.ndarray, tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, probs)

    probs = cached(layout.head_cache / predictions_file(params, selection, validation), predict, load, save,
                   (OSError, ValueError))
    asked = round(multiple * size)
    rows, labels = pseudo_labels(probs, asked)
    if say and len(rows) < asked // len(names) * len(names):  # not the remainder the even split leaves
        warnings.warn(f"train.self_training.multiple={multiple:g} asks for {asked} pseudo-labels, "
                      f"{asked // len(names)} per label; the teacher's predictions of the {len(rest)} unselected texts "
                      f"give {len(rows)} (a label predicted fewer times gives what it has): the students train on "
                      "those")
    truth = label_ids(pool["label"].iloc[rest[rows]], names)
    return {"teacher": {"ingredient": teacher.name, "key": teacher_key(params, selection, validation)},
            "multiple": multiple, "asked": asked, "kept": len(rows), "unselected": len(rest),
            "agreement": round(float((truth == labels).mean()), 4) if len(rows) else None,
            "rows": rest[rows].tolist(), "labels": [names[i] for i in labels],
            "confidences": probs[rows, labels].tolist()}


def teach(params: Params, layout: Layout, progress: bool = True) -> None:
    """Self-training's teacher trained (or found) and its predictions cached, before the students' concurrent
    tasks (flows/pipeline.py), each of which would otherwise train it; nothing when no student is to be trained."""
    if students_to_train(params, layout):
        pseudo_labelled(params, layout, read_selection(layout), validation_and_labels(layout), progress)


def students_to_train(params: Params, layout: Layout) -> bool:
    """Whether a self-training student is to be trained (not built, nor in the ingredient cache): only then is the
    teacher's prediction read (`teach`)."""
    return bool(params.train.self_training.multiple and set(unbuilt(params, layout)) - set(restorable(params, layout)))


def teacher_task_key(params: Params, layout: Layout) -> str:
    """The Prefect flow's teacher task's cache key: what its predictions' file name holds (`predictions_file`: the
    teacher's training key, on content, and the train stage's code), so another multiple or sweep finds it cached."""
    name = predictions_file(params, read_selection(layout), validation_and_labels(layout))
    return f"soupline-teacher-{name.removesuffix('.teacher.npy')}"


def teacher_outputs(params: Params, layout: Layout) -> str:
    """What the flow's teacher task leaves its students: the content of the teacher's predictions in the head cache
    (`predictions_file`), or, while none is there, whether a student is to be trained (`teach` predicts only then).
    Its cache record counts while this is as it wrote it: predictions deleted (`soupline cache --clear heads`) that a
    student then needs are made again in that task, not by each concurrent student."""
    path = layout.head_cache / predictions_file(params, read_selection(layout), validation_and_labels(layout))
    if path.is_file():
        return sha256_obj({"predictions": sha256_file(path)})
    return sha256_obj({"predictions": None, "needed": students_to_train(params, layout)})


def _keys(params: Params, layout: Layout) -> dict[str, str | None]:
    """Ingredient name -> its training key (None without a selection, splits or a probe's embeddings: nothing can be
    built yet)."""
    try:
        return sweep_keys(params, layout, read_selection(layout), validation_and_labels(layout))
    except SouplineError:
        return dict.fromkeys(ingredient_names(params))


def keep_copies(params: Params, layout: Layout) -> list[str]:
    """Put a copy of each built ingredient of the sweep on the shelf (`shelf.keep_copy`: hard links), for a run that
    dvc.lock does not record (`soupline run key=value`): `dvc exp run` starts with a forced `dvc checkout` of
    dvc.lock's outputs, which put the ingredients it records back over these, and the experiment of the same
    values then trained every one again; the next train run moves the copy back, or drops it (`shelf.forget`)
    finding the ingredient in place. The names kept."""
    kept = []
    for name, key in _keys(params, layout).items():
        if key is not None and is_intact(layout.ingredients / name, key):
            shelf.keep_copy(layout.ingredients / name, layout.ingredient_cache, key)
            kept.append(name)
    return kept


def unbuilt(params: Params, layout: Layout) -> list[str]:
    """The sweep's ingredients that are missing or were built from other inputs (all of them without a selection)."""
    return [name for name, key in _keys(params, layout).items() if key is None or not is_built(layout, name, key)]


def restorable(params: Params, layout: Layout) -> list[str]:
    """The unbuilt ingredients the ingredient cache holds (restored, not trained, by the next run)."""
    return [name for name, key in _keys(params, layout).items()
            if key is not None and not is_built(layout, name, key) and is_whole(layout.ingredient_cache / key, key)]


def renamed(params: Params, layout: Layout) -> list[str]:
    """The unbuilt ingredients whose model is in place under another name: the folder of an ingredient outside the
    sweep, built from the same key (a sweep axis added or dropped renames it); the next run sets it aside and
    restores it under its new name, training nothing."""
    keys = _keys(params, layout)
    strays = {shelf.recorded_key(folder / "train_info.json", ("build", "key"), KEY): folder
              for folder in _stray_folders(layout.ingredients, list(keys))}
    return [name for name, key in keys.items() if key is not None and key in strays
            and not is_built(layout, name, key) and is_whole(strays[key], key)]


def resumable(params: Params, layout: Layout) -> tuple[list[str], list[str]]:
    """The unbuilt ingredients with the checkpoint of a run from these inputs that was stopped (Ctrl-C, a kill): the
    next run resumes them from there; and those whose checkpoint is not a whole zip archive, as torch.save writes one
    (cut short or damaged by hand, not by a kill: writes are atomic): the next run stops on it
    (`soupline.train.load_checkpoint`), so `soupline status` says so. A cheap look at the archive's directory, not a
    load."""
    keys = _keys(params, layout)
    found = [(name, zipfile.is_zipfile(path)) for name, key in keys.items()
             if key is not None and not is_built(layout, name, key)
             and (path := found_checkpoint(layout, name, key, keys)).is_file()]
    return [name for name, whole in found if whole], [name for name, whole in found if not whole]


def teacher_resumable(params: Params, layout: Layout) -> bool:
    """Whether self-training's teacher was stopped mid-training (Ctrl-C, a kill) with a checkpoint the next run
    resumes from (`teacher_folder`): `soupline status` says so, as it does of an ingredient's."""
    if not params.train.self_training.multiple:
        return False
    try:
        selection, validation = read_selection(layout), validation_and_labels(layout)
    except SouplineError:
        return False
    return checkpoint_path(layout, TEACHER, teacher_key(params, selection, validation)).is_file()


def checkpoint_path(layout: Layout, name: str, key: str) -> Path:
    """Where training ingredient `name` from inputs `key` (`training_key`) keeps its resume checkpoint."""
    return layout.checkpoints / f"{name}-{key}.pt"


def found_checkpoint(layout: Layout, name: str, key: str, sweep: Collection[str]) -> Path:
    """`checkpoint_path`, or the checkpoint of the same key under the name of an ingredient outside the `sweep` (a
    sweep axis added or dropped renames an ingredient whose model is the same, `set_aside_strays`): the key is the
    model's, not the name's, so that run resumes as well (never another sweep member's: it may be training now)."""
    own = checkpoint_path(layout, name, key)
    if own.is_file():
        return own
    return next((p for p in sorted(layout.checkpoints.glob(f"*-{key}.pt"))
                 if p.is_file() and p.name.removesuffix(f"-{key}.pt") not in sweep), own)


def missing_curves(params: Params, layout: Layout) -> list[str]:
    """The sweep's built ingredients whose curves folder, or a file of it, is gone (`curves_gone`): the next train
    run rewrites it from their history.json (`restore_curves`), training nothing."""
    return [name for name, key in _keys(params, layout).items()
            if key is not None and is_built(layout, name, key) and curves_gone(layout, name)]


def stray_curves(params: Params, layout: Layout) -> list[str]:
    """Curves folders of ingredients outside the sweep (left by a run with other params that stopped before
    train's end, `dvc exp apply` or `git checkout`: git does not delete what its new HEAD does not track): the next
    train run removes them."""
    return sorted(p.name for p in _stray_folders(layout.curves, [ing.name for ing in params.train.ingredients()]))


def train_one(params: Params, layout: Layout, ing: Ingredient, selection: dict, key: str, validation: str,
              progress: bool = True, pseudo: dict | None = None) -> dict:
    """Train ingredient `ing` into its folder; `pseudo`: a self-training student's pseudo-labels (`pseudo_labelled`),
    trained on with the selection for the steps the selection alone gets (compute-neutral: the measured setting).
    Self-training's teacher (`TEACHER`) is named in its lines as `teacher (<the ingredient it is>)`."""
    shown = f"teacher ({teacher_of(params).name})" if ing.name == TEACHER else ing.name
    if ing.train.method == "probe":
        info = fit_probe_ingredient(params, layout, ing, selection, key)
        print(f"train: {ing.name}: C {info['C']:g} on {info['examples']} examples, val acc {info['val_accuracy']:.4f}")
        return info
    names = read_labels(layout)
    pool, val = read_split(layout, "pool"), read_split(layout, "validation")
    chosen = pool.iloc[selection["indices"]]
    texts, labels, extra = chosen["text"].tolist(), label_ids(chosen["label"], names), {}
    if pseudo is not None:
        texts += pool["text"].iloc[pseudo["rows"]].tolist()
        labels = np.concatenate([labels, label_ids(pseudo["labels"], names)])
        extra = {"self_training": {k: v for k, v in pseudo.items() if k not in ("rows", "labels", "confidences")}}
    ckpt = checkpoint_path(layout, ing.name, key)
    if (found := found_checkpoint(layout, ing.name, key, ingredient_names(params))) != ckpt:
        found.replace(ckpt)  # a run stopped under the ingredient's old name: resumed under its new one
    info = finetune(base_model(params), names, texts, labels,
                    val["text"].tolist(), label_ids(val["label"], names), ing.train, ing.lr, ing.seed,
                    layout.ingredients / ing.name, ckpt,
                    layout.curves / ing.name, pick_device(params.device), progress, fingerprint=key,
                    extra_info={"build": build_record(key), **extra},
                    head_cache=layout.head_cache / head_file(params, ing, selection, validation),
                    schedule_examples=len(chosen), extra_files={PSEUDO_LABELS: pseudo} if pseudo else None,
                    name=shown)
    steps = f"{info['steps']} steps"
    if info["steps"] < info["planned_steps"]:
        steps = (f"{info['steps']} of {info['planned_steps']} steps (stopped early, the weights of step "
                 f"{info['best_step']})")
    elif info.get("best_step", info["steps"]) < info["steps"]:  # early stopping's best, its patience not used up
        steps += f" (the weights of step {info['best_step']}, the best on validation)"
    print(f"train: {shown}: {steps} on {info['examples']} examples, "
          f"val acc {info['val_accuracy']:.4f}, {info['train_seconds']:.0f}s")
    if failed := info.get("failed"):
        # one ingredient, or self-training's teacher: no soup holds it
        soups = params.soup.methods if len(params.train.ingredients()) > 1 and ing.name != TEACHER else []
        warnings.warn(failed_line(shown, failed, ing.lr, ing.train, soups), stacklevel=2)
    return info


def run(params: Params, layout: Layout, ingredient: str | None = None, progress: bool = True) -> dict:
    """Train the ingredients that are not built yet (all of them, or just `ingredient`); name -> train_info."""
    sweep = {ing.name: ing for ing in params.train.ingredients()}
    if ingredient is not None and ingredient not in sweep:
        raise SouplineError(f"ingredient {ingredient!r} is not in the sweep; its ingredients: {list(sweep)}")
    selection = read_selection(layout)
    validation = validation_and_labels(layout)  # once, for every ingredient's key
    keys = sweep_keys(params, layout, selection, validation)
    if any(not is_built(layout, name, key) for name, key in keys.items() if ingredient in (None, name)):
        # the device, train.max_length, every LoRA setting of the sweep and LP-FT's `cls` head against the model, before
        # a folder is set aside: a bad value failed after the first ingredient had gone to the cache, leaving the
        # workspace half moved
        check_device(params.device, params.train)  # `dvc repro` with device: cuda on a machine without CUDA
        check_layers(base_model(params), params.train)
    if ingredient is None:
        set_aside_strays(params, layout)
        warn_same_length(list(sweep.values()), len(selection["indices"]))
    out, pseudo = {}, None  # self-training's pseudo-labels, once a student is to be trained
    for name, ing in sweep.items():
        if ingredient is not None and name != ingredient:
            continue
        key, folder = keys[name], layout.ingredients / name
        if is_intact(folder, key):
            rewritten = restore_curves(layout, name)
            print(f"train: {name}: up to date" + (" (its curves rewritten from its history.json)" * rewritten))
            out[name] = read_json(folder / "train_info.json")
            continue
        if folder.exists():
            shelve(layout, folder)
        if unshelve(layout, name, key):
            cache = layout.ingredient_cache.relative_to(layout.root)
            print(f"train: {name}: restored from {cache} (built earlier from these inputs)")
            out[name] = read_json(folder / "train_info.json")
        else:
            if pseudo is None and params.train.self_training.multiple:
                pseudo = pseudo_labelled(params, layout, selection, validation, progress, say=ingredient is None)
            out[name] = train_one(params, layout, ing, selection, key, validation, progress, pseudo)
            # kept on the shelf too until this run ends: `dvc exp run` stopped (Ctrl-C) and started again begins with
            # a forced `dvc checkout` of dvc.lock's outputs, which put the ingredients last recorded back over those
            # this run finished (train is one DVC stage, recorded at its end): the next run moves this copy back
            shelf.keep_copy(folder, layout.ingredient_cache, key)
    if ingredient is None:
        shelf.forget(layout.ingredient_cache, list(keys.values()))  # each is in place: the copies go
        for stale in _stray_folders(layout.curves, sweep):
            shutil.rmtree(stale)
        shelf.prune(layout.ingredient_cache, params.train.keep_replaced, is_whole)
        heads = sweep_heads(params, selection, validation)
        for stale in (p for files in HEAD_FILES for p in layout.head_cache.glob(files)):  # another selection's or
            if stale.name not in heads:  # setting's: every ingredient of this sweep is built, and a head is a fast
                stale.unlink()  # refit when its inputs return
        write_sweep_curves(layout.curves, list(sweep))
        # Every ingredient of the sweep is built: what is left are checkpoints of runs stopped under other
        # params or sweeps (model + optimizer state, hundreds of MB each on the default model).
        for stale in layout.checkpoints.glob("*.pt"):
            stale.unlink()
    return out


def warn_same_length(sweep: list[Ingredient], examples: int) -> list[list[str]]:
    """Warn about ingredients a sweep over `epochs` or `min_steps` names apart that train the same model on this
    selection: steps = max(epochs x steps per epoch, min_steps), so where min_steps wins, epochs changes nothing
    (a small selection), and where epochs wins, min_steps does not. The groups warned about."""
    groups: dict[str, tuple[int, int, list[str]]] = {}  # what the model reads -> steps, the first's floor, names
    for ing in sweep:
        t = ing.train
        if t.method == "probe":
            continue
        same = trained_settings(ing, examples)
        steps = same["steps"]
        groups.setdefault(sha256_obj(same), (steps, t.min_steps, []))[2].append(ing.name)
    found = [(steps, floor, names) for steps, floor, names in groups.values() if len(names) > 1]
    for steps, floor, names in found:
        fix = ("lower train.min_steps below epochs x steps per epoch, or raise the epochs they list"
               if steps == floor else f"raise train.min_steps above {steps}, or vary epochs instead")
        warnings.warn(f"ingredients {', '.join(names)} train the same model: on {examples} examples each trains "
                      f"{steps} steps, max(epochs x steps per epoch, min_steps), so their epochs / min_steps "
                      f"values change nothing; {fix}")
    return [names for _, _, names in found]


def set_aside_strays(params: Params, layout: Layout) -> None:
    """Move the folders of ingredients no longer in the sweep to the ingredient cache, before any ingredient is
    built: a sweep axis added or dropped renames ingredients whose models may be the same, restored by a rename. So
    too self-training's teacher's folder (`TEACHER`) that a run stopped before shelving it left, unless these params'
    teacher (`teacher_folder` shelves that one, trained): another's is an ingredient of other params, restored from
    the cache when they come back (one not whole is deleted); before, it stayed in data/models/ingredients, unseen."""
    for stale in _stray_folders(layout.ingredients, ingredient_names(params)):
        shelve(layout, stale)
    if (left := layout.ingredients / TEACHER).is_dir() and not _teachers(params, layout, left, set()):
        shelve(layout, left)


def teacher_left(params: Params, layout: Layout) -> Path | None:
    """Self-training's teacher's folder (`TEACHER`) that a stopped run left and no run of `params` reads (for
    `soupline cache --gc`, which deletes it, and `soupline status`, which names it): kept only when whole and of
    these params' teacher or of an ingredient of their sweep (the next train run sets it aside, and restores it as
    that ingredient); None when there is none to delete, or no selection yet to key the sweep on (`_keys`)."""
    left = layout.ingredients / TEACHER
    if not left.is_dir() or None in (sweep := _keys(params, layout).values()):  # the sweep keyed only if one is left
        return None
    return None if _teachers(params, layout, left, sweep) else left


def _teachers(params: Params, layout: Layout, folder: Path, keys: Collection[str]) -> bool:
    """Whether `folder` is whole for one of `keys` or for the key of these params' self-training teacher."""
    key = shelf.recorded_key(folder / "train_info.json", ("build", "key"), KEY)
    if params.train.self_training.multiple:
        keys = {*keys, teacher_key(params, read_selection(layout), validation_and_labels(layout))}
    return key in keys and is_whole(folder, key)


def _stray_folders(folder: Path, sweep: Collection[str]) -> list[Path]:
    """Folders under `folder` of ingredients that are not in the sweep."""
    return [p for p in (folder.iterdir() if folder.exists() else [])
            if p.is_dir() and p.name not in sweep and not p.name.startswith(".")]


if __name__ == "__main__":
    main("train", run, **{"--ingredient": {"default": None, "help": "train only this ingredient of the sweep"}})
