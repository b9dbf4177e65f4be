"""soup: merge the sweep's ingredients into one model per soup method of `soup.methods` (uniform, greedy, ties, dare,
learned: the entries of `soupline.soup_methods`, each of which makes its soup from a `SoupContext` built here).

Ingredients are streamed from their safetensors files (`soup.LazyState`), tensor by tensor, and
every soup is written into the evaluation model's own weights: memory stays near two models
(the model + greedy's kept soup or the task-vector base) however many ingredients there are;
the learned soup, which needs every ingredient at each step, holds all of them. A soup made from the same
ingredients and settings before is kept in place, or moved back from data/cache/soups (`shelf`), not made again.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from soupline import soup
from soupline.artifacts import atomic_dir, file_digests, read_json, sha256_obj, write_json
from soupline.classifier import init_model, load_classifier
from soupline.config import Params, no_soup_reason
from soupline.errors import SouplineError
from soupline.evaluate import collate, predict_logits, tokenize
from soupline.models import load_tokenizer, pick_device
from soupline.soup_methods import REGISTRY as SOUPS
from soupline.soup_methods import SoupContext
from tasks import keys, shelf
from tasks.common import base_model, label_ids, main, read_labels, read_record, read_split, require, whole_record
from tasks.layout import Layout
from tasks.train import ingredient_names


KEY = re.compile(r"[0-9a-f]{64}")  # what soup_key returns


def soup_key(method: str, params: Params, layout: Layout, names: list[str]) -> str:
    """What the `method` soup depends on: the soup stage's key with this soup alone in `soup.methods` (its own
    settings, no other soup's: `SoupParams.in_use`), and the ingredients it averages, by name."""
    alone = params.model_copy(update={"soup": params.soup.model_copy(update={"methods": [method]})})
    return sha256_obj({"stage": keys.stage_key("soup", alone, layout.root), "ingredients": names})


def soup_keys(params: Params, layout: Layout, names: list[str]) -> dict[str, str]:
    """Each soup of `soup.methods` -> its `soup_key` (the ingredients hashed once for all of them)."""
    with keys.memoized():
        return {method: soup_key(method, params, layout, names) for method in params.soup.methods}


def made_before(folder: Path, key: str, verify: bool = False) -> dict | None:
    """The soup.json of the soup in `folder` when it was made from `key`'s inputs and is still whole (every file
    it was saved with, at its size, and with `verify` its content: `whole_record`), else None: editing one soup's
    setting re-makes that soup, not the others."""
    info = whole_record(folder, "soup.json", verify)
    return info if info is not None and info.get("key") == key else None


def is_whole(folder: Path, key: str, verify: bool = False) -> bool:
    """Whether `folder` holds the soup made from `key`'s inputs, whole (`made_before`): what the soup cache keeps."""
    return made_before(folder, key, verify) is not None


def is_intact(folder: Path, key: str) -> bool:
    """`is_whole`, content checked: what the soup stage keeps or moves back as made."""
    return is_whole(folder, key, verify=True)


def shelve(layout: Layout, folder: Path) -> None:
    """Move a soup's folder to the soup cache under its key (`shelf.shelve`): changed back, a setting restores it."""
    shelf.shelve(folder, layout.soup_cache, shelf.recorded_key(folder / "soup.json", ("key",), KEY), is_whole)


def restorable(params: Params, layout: Layout) -> list[str]:
    """The soups of `soup.methods` not in place but in the soup cache, whole, from these inputs and settings: the
    next soup stage moves them back (`soupline status` says so)."""
    if no_soup_reason(params, names := ingredient_names(params)):
        return []
    return [m for m, key in soup_keys(params, layout, names).items()
            if made_before(layout.soups / m, key) is None and is_whole(layout.soup_cache / key, key)]


def keep_copies(params: Params, layout: Layout) -> list[str]:
    """Put a copy of each soup of `soup.methods` made from the ingredients in place on the soup cache (hard links,
    `shelf.keep_copy`), for a run dvc.lock does not record, as `tasks.train.keep_copies` does for its ingredients:
    `dvc exp run` of the same values checks dvc.lock's soups out over these first and made every one again (4
    soups, 31 s of the default pipeline's 467); its soup stage now moves the copies back. The methods kept."""
    if no_soup_reason(params, names := ingredient_names(params)):
        return []
    kept = []
    for method, key in soup_keys(params, layout, names).items():
        if made_before(layout.soups / method, key, verify=True) is not None:
            shelf.keep_copy(layout.soups / method, layout.soup_cache, key)
            kept.append(method)
    return kept


def shelve_soups(layout: Layout, keep: set[str]) -> None:
    """Move the soups in data/soups but those named `keep` to the soup cache."""
    for folder in (layout.soups.iterdir() if layout.soups.exists() else []):
        if folder.is_dir() and folder.name not in keep and not folder.name.startswith("."):
            shelve(layout, folder)


def prune_cache(params: Params, layout: Layout) -> None:
    """Keep the newest `soup.keep_replaced` soups in the soup cache and every soup shelved since the last prune
    (`soup.methods: []` shelves all five soups of a run that made them, which a cache of 4 cut to 4), unless
    `keep_replaced` is 0: keep none (`shelf.prune`)."""
    shelf.prune(layout.soup_cache, params.soup.keep_replaced, is_whole)


def run(params: Params, layout: Layout, ingredients: list[str] | None = None) -> dict:
    """Every soup of `params.soup.methods` over the sweep's ingredients (or the folders `ingredients`
    names under data/models/ingredients, e.g. a study's ingredients from several selections); with
    `no_soup_reason`, only data/soups/soups.json saying why there are none. A soup already in data/soups
    from the same inputs and settings (`made_before`) is kept as it is; one replaced or dropped from soup.methods
    goes to the soup cache, from which a soup of the same inputs and settings comes back."""
    names = ingredients or ingredient_names(params)
    why = no_soup_reason(params, names)
    if why:
        shelve_soups(layout, keep=set())  # a one-ingredient quick run deleted them, to be made again after
        with atomic_dir(layout.soups) as tmp:
            write_json(tmp / "soups.json", {"soups": [], "why": why})
        prune_cache(params, layout)
        print(f"soup: none ({why})")
        return {}
    dirs = [require(layout.ingredients / n, "train") for n in names]
    wanted = soup_keys(params, layout, names)
    results = {m: info for m in params.soup.methods
               if (info := made_before(layout.soups / m, wanted[m], verify=True))}
    for method in results:
        print(f"soup: {method}: up to date (made from these ingredients and settings)")
    shelve_soups(layout, keep=set(results))  # replaced, or dropped from soup.methods
    for method in [m for m in params.soup.methods if m not in results]:
        if shelf.unshelve(layout.soup_cache, wanted[method], layout.soups / method, is_intact):
            results[method] = read_json(layout.soups / method / "soup.json")
            print(f"soup: {method}: restored from {layout.soup_cache.relative_to(layout.root)} (made earlier from "
                  "these ingredients and settings)")
    if len(results) < len(params.soup.methods):
        results |= make(params, layout, names, dirs, {m: k for m, k in wanted.items() if m not in results})
    (layout.soups / "soups.json").unlink(missing_ok=True)  # left by a probe run
    shelf.forget(layout.soup_cache, list(wanted.values()))  # each is in place: `keep_copies`' copies go
    prune_cache(params, layout)
    return {m: results[m] for m in params.soup.methods}


def not_finite(method: str, params: Params) -> str:
    """Why the `method` soup's validation logits hold inf or nan: what its entry's `overflow` says (TIES' or DARE's
    scale, DARE's kept deltas also x 1/(1-drop), large enough to overflow float32 in the forward pass: a
    `soup.ties.scale: 1e30` soup scored test accuracy 0.33, every text label 0, with ECE 0); a soup without one
    only averages its ingredients."""
    what = f"soup: {method}: its logits on validation hold inf or nan"
    if (overflow := SOUPS[method].overflow) is None:
        return f"{what}: its ingredients' outputs overflow float32; re-run train"
    return f"{what}: {overflow(getattr(params.soup, method))}"


def make(params: Params, layout: Layout, names: list[str], dirs: list[Path], todo: dict[str, str]) -> dict:
    """Make the soups `todo` names (soup method -> its `soup_key`) into data/soups/<method>/, each atomically."""
    val_scores = [read_record(d / "train_info.json", "train", ("val_accuracy",))["val_accuracy"]
                  for d in dirs]  # fp32, as the soups are scored below
    states = [soup.LazyState(d) for d in dirs]  # headers only: tensors are read when a soup needs them
    soup.check_compatible(dirs, states)
    head_init = soup.shared_head_init(dirs)

    device = pick_device(params.device)
    tok = load_tokenizer(dirs[0])
    model = load_classifier(dirs[0]).to(device)
    own = model.state_dict()  # the model's own tensors: soups are written straight into them
    if own.keys() != states[0].keys():
        raise SouplineError(f"{dirs[0].name}'s weights file does not match its model's parameters; re-run train")
    val = read_split(layout, "validation")
    y_val = label_ids(val["label"], read_labels(layout))
    val_enc = tokenize(tok, val["text"].tolist(), params.train.max_length)

    scored: dict[str, float] = {}  # state_digest -> validation accuracy

    def val_accuracy(state, method: str) -> float:
        """The accuracy of `state` on validation, one forward pass per distinct weights: greedy's first candidate of
        two ingredients is their uniform soup, to the bit, and was scored again (a quarter of the stage's passes).
        Logits that are not all finite are one line (`not_finite`), not a soup of argmax label 0 and ECE 0."""
        if (digest := soup.state_digest(state)) not in scored:
            if state is not own:
                model.load_state_dict(state)
            logits = predict_logits(model, tok, val_enc, params.evaluate.batch_size, device)
            if not np.isfinite(logits).all():
                raise SouplineError(not_finite(method, params))
            scored[digest] = float((logits.argmax(1) == y_val).mean())
        return scored[digest]

    def val_batches(seed: int, size: int) -> list:
        """The validation split in shuffled batches of `size` (inputs, labels), for the learned soup: one Adam step
        each."""
        import torch

        order = np.random.default_rng(seed).permutation(len(val_enc))
        return [(collate(tok, [val_enc[i] for i in idx], device), torch.as_tensor(y_val[idx], device=device))
                for idx in (order[i:i + size] for i in range(0, len(order), size))]

    def base() -> dict:
        """The ingredients' shared init, a task vector's origin: the pretrained body and the head they started from."""
        state = init_model(base_model(params), read_labels(layout), params.train.head_init_seed,
                           params.train.pooling).state_dict()
        state.update(head_init)
        return state

    results = {}
    for method, key in todo.items():
        entry = SOUPS[method]
        settings = getattr(params.soup, method) if entry.settings is not None else None
        made = entry.make(SoupContext(states, val_scores, lambda state: val_accuracy(state, method), val_batches,
                                      base, model, own, params.soup, settings))
        if made.state is not own:  # greedy's kept soup, held apart from the candidates it scored in `own`
            model.load_state_dict(made.state)
        made.state = None  # a model's worth, freed before the save
        for rec in made.log:
            rec["ingredient"] = names[rec["ingredient"]]
        info = {"method": method, "ingredients": [names[i] for i in made.kept], "val_accuracy": made.val_accuracy,
                "log": made.log, **({"settings": settings.model_dump(mode="json")} if settings is not None else {}),
                **made.info}
        with atomic_dir(layout.soups / method) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            info |= {"key": key, "files": file_digests(tmp)}
            write_json(tmp / "soup.json", info)
        results[method] = info
        print(f"soup: {method}: {len(made.kept)}/{len(names)} ingredients, val acc {made.val_accuracy:.4f}")
    return results


if __name__ == "__main__":
    main("soup", run)
