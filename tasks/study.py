"""study: selection methods x budgets x seeds, each cell selected, trained, souped and evaluated.

    soupline study                                  # the grid in params.yaml's `study` section
    soupline study study.methods=[random,gotd] study.budgets=[0.01,0.05]

prepare and embed run once (the usual stages, in the workspace); every cell is a small
workspace of its own under data/study/cells/<cell>/ whose data/prepared and data/embeddings
are links to the shared ones, and runs the usual select -> train -> soup -> evaluate stage
functions there with `select.method`, `select.budget` and `select.seed` set. A cell is cached:
its `cell.json` records a key over the content of the prepared data and embeddings, the
cell's params and the code of its stages; a cell whose key still matches is not run again. A cell that fails on
an error that may be transient is tried again (`retried`), as the Prefect study flow's cell tasks are.
With `study.cross_soups`, a `cross-b<budget>` cell per budget soups the ingredients of every
method and seed at that budget together (ingredients trained on different selections, from the
one shared initialisation) and evaluates the soups; its member cells keep their models until it
has run. `aggregate` then writes data/study/report/{study.md, study.html, study.json, *.png, plots/budget.csv}.
"""

from __future__ import annotations

import os
import shutil
import time
from functools import partial
from typing import Callable

from soupline.artifacts import read_json, sha256_file, sha256_obj, sha256_tree, trained_seconds, write_json
from soupline.config import Params, SelfTrainingParams
from soupline.errors import RETRY_DELAYS, SouplineError, transient
from soupline.study_report import CROSS, FULL, failed_ingredients, render_study
from tasks.common import base_model, main, read_labels, timed
from tasks.evaluate import training
from tasks.keys import code_digest, keyed_params, model_content, selection_size, source_contents
from tasks.layout import Layout
from tasks.pipeline import (STAGES, check_device, check_model_layers, dvc_clean, record_stages_in_dvc, run_stage,
                            run_unless_fresh)
from tasks.select import check_budgets
from tasks.train import trained_sweep

CELL_STAGES = ("select", "train", "soup", "evaluate")
ATTEMPT = "attempt.json"  # a cell run's key and the stage times of its stopped runs from that key, until cell.json


def cell_name(method: str, budget: int | float, seed: int) -> str:
    return f"{method}-b{budget}-s{seed}"


def cells(params: Params) -> dict[str, Params]:
    """name -> the cell's params (params.yaml with the cell's selection), in grid order; full pool last."""
    out = {}
    for method in params.study.methods:
        for budget in params.study.budgets:
            for seed in params.study.seeds:
                out[cell_name(method, budget, seed)] = _with_selection(params, method, budget, seed)
    if params.study.full_pool:  # seed 0, not study.seeds[0]: the whole pool is the same cell whatever the grid's
        full = _with_selection(params, "random", 1.0, 0)  # seeds (a changed first seed trained it again)
        # and without self-training: every pool text is labelled there, none left for its teacher to label
        out[FULL] = full.model_copy(update={"train": full.train.model_copy(
            update={"self_training": SelfTrainingParams()})})
    return out


def _with_selection(params: Params, method: str, budget: int | float, seed: int) -> Params:
    select = params.select.model_copy(update={"method": method, "budget": budget, "seed": seed})
    return params.model_copy(update={"select": select})


def cell_key(params: Params, layout: Layout, with_selection: bool = True) -> str:
    """What a cell's result depends on: the shared data, its own params (of the select section, only its
    method's sub-section: tuning gotd re-runs no kmeans cell), its stages' code (`code_digest`), a model folder's
    content. Each ingredient's settings are those it trains with on the count the budget picks (`trained_settings`),
    known once prepare has written the pool.
    Without `with_selection`: what the stages after select read besides the selection itself (`twin_cell`): no
    select setting (method, budget as written, seed), which train, soup and evaluate read only through the picks."""
    cell = {k: v for k, v in keyed_params(params).items()  # `device: auto` as the device, a folder as one path
            if k not in {"prepare", "embed", "study", "select", "train", "soup"}}
    if with_selection:
        cell["select"] = params.select.in_use()
        # the train settings its method reads, as select's stage key: DEALRec's effort reads train.pooling and
        # max_length under `train.method: probe`, whose sweep settings hold neither (an edit served the old cell)
        if reads := params.select.train_read(params.train):
            cell["select_train"] = reads
    # each ingredient's settings as it trains on the budget's count, as soup's and evaluate's keys hold them
    # (`sweep_trained`): `warmup_ratio: 0.1 -> 0.12`, no warm-up step moved, re-ran whole cells; of the sweep as
    # written, only the metric evaluate's reference probe picks its C by. As written before prepare.
    count = selection_size(params, layout.root)
    trained = None if count is None else trained_sweep(params, count)
    cell["train"] = (params.train.sweep_settings() if trained is None
                     else {"early_stopping_metric": params.train.early_stopping_metric})
    cell["soup"] = params.soup.in_use()  # no settings of a soup not made
    cell["evaluate"] = params.evaluate.measured()  # evaluate.final re-judges the cells the report reads, no cell
    prepared = {p.name: sha256_file(p) if p.exists() else None for p in layout.prepared_data}
    parts = {"prepared": prepared, "embeddings": sha256_tree(layout.embeddings),
             "params": cell, "code": code_digest(*CELL_STAGES)}
    if trained is not None:
        parts["trained"] = trained
    if model := model_content(params.model):  # keys of the built-in model unchanged
        parts["model"] = model
    if with_selection and (sources := source_contents("select", params)):  # a GOT-D target file edited in place
        parts["sources"] = sources
    return sha256_obj(parts)


def cell_layout(layout: Layout, name: str) -> Layout:
    """The cell's workspace, sharing the prepared data and embeddings through links."""
    cell = Layout(layout.study_cells / name)
    cell.data.mkdir(parents=True, exist_ok=True)
    for shared in (layout.prepared, layout.embeddings):
        link = cell.data / shared.name
        if not link.is_symlink():
            shutil.rmtree(link, ignore_errors=True)
            link.symlink_to(os.path.relpath(shared.resolve(), cell.data))
    return cell


def _finish(cell: Layout, result: dict, keep_models: bool, seconds: dict[str, float] | None = None,
            models: dict | None = None) -> dict:
    """Add the cell's seconds per stage (to `seconds`: `stage_seconds`) and its models' metrics (`models`, else its
    own), drop its models unless kept, write cell.json."""
    seconds = dict(seconds or {})
    for stage, spent in stage_seconds(cell).items():
        seconds[stage] = round(seconds.get(stage, 0.0) + spent, 3)
    models = models if models is not None else read_json(cell.metrics / "details.json")["models"]
    result = {**result, "seconds": seconds, "models": models}
    if not keep_models:
        drop_models(cell)
    write_json(cell.root / "cell.json", result)
    (cell.root / ATTEMPT).unlink(missing_ok=True)
    return result


def stage_seconds(cell: Layout) -> dict[str, float]:
    """Seconds per stage of the cell's run, whole after a resume: a stage's time is the longest of this run's and
    those of the stopped runs from the same key that finished it (`_begin`: a stage's time is written when it ends;
    a soup made before the stop is kept, not made again, and took its time then), and train's at least what the
    cell's ingredients took to train (`trained_seconds`, counting the steps before a resume; with
    `study.keep_models`, also those of ingredients a run from another key trained, which this cell reuses). A stage
    stopped midway counts only its run that finished (soups made before the stop are not counted; train is, by its
    floor). Before, a resumed cell counted the resumed part alone (0 s when the stop came after train), and won
    the study's ties on compute."""
    earlier = read_json(cell.root / ATTEMPT)["seconds"] if (cell.root / ATTEMPT).exists() else {}
    seconds = {rec["stage"]: max(rec["seconds"], earlier.get(rec["stage"], 0.0))
               for rec in map(read_json, cell.timings.glob("*.json"))}
    if "train" in seconds and cell.ingredients.is_dir():
        trained = [trained_seconds(folder) or 0.0 for folder in cell.ingredients.iterdir() if folder.is_dir()]
        seconds["train"] = max(seconds["train"], sum(trained))
    return seconds


def drop_models(cell: Layout) -> None:
    for folder in (cell.ingredients.parent, cell.soups):  # data/models and data/soups
        shutil.rmtree(folder, ignore_errors=True)


def warm_up(params: Params, layout: Layout) -> None:
    """Load the base model and import what training imports lazily (the probe's sklearn, dvclive) before the
    first cell to run is timed: the first time in a process costs seconds that would be charged to it alone."""
    import dvclive  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    from soupline.classifier import init_model

    init_model(base_model(params), read_labels(layout), params.train.head_init_seed, params.train.pooling)


def _begin(layout: Layout, name: str, key: str) -> Layout:
    """The cell's workspace with its record of an earlier run gone: the stages now rewrite the folder, and a run
    stopped half-way must leave no cell.json that a later run of the earlier params would take for what the folder
    holds. The stage times of runs from this `key` that stopped (the longest of each stage) are kept in ATTEMPT for
    `stage_seconds`; others go."""
    cell = cell_layout(layout, name)
    (cell.root / "cell.json").unlink(missing_ok=True)
    attempt = read_json(cell.root / ATTEMPT) if (cell.root / ATTEMPT).exists() else {}
    earlier = attempt.get("seconds", {}) if attempt.get("key") == key else {}
    if attempt.get("key") == key:
        for rec in map(read_json, cell.timings.glob("*.json")):
            earlier[rec["stage"]] = max(rec["seconds"], earlier.get(rec["stage"], 0.0))
    write_json(cell.root / ATTEMPT, {"key": key, "seconds": earlier})
    shutil.rmtree(cell.timings, ignore_errors=True)
    return cell


def run_cell(name: str, params: Params, layout: Layout, key: str, keep_models: bool | None = None) -> dict:
    """select -> train -> soup -> evaluate in the cell's workspace; its metrics and stage times. A cell keeps no
    replaced ingredients (train.keep_replaced): the study caches whole cells, and a kept copy per cell would
    multiply the disk that `study.keep_models` asks for. A cell whose selection a finished cell of another seed
    picked too (another seed, method or budget: `twin_cell`) takes that cell's results after select, unless its
    models are to be kept (`study.keep_models`); one whose models a cross soup needs, only from a cell that still
    has its models (the cross soup reads those)."""
    cell = _begin(layout, name, key)
    keep = params.study.keep_models if keep_models is None else keep_models
    same_inputs, twin = cell_key(params, layout, with_selection=False), None
    params = params.model_copy(update={"train": params.train.model_copy(update={"keep_replaced": 0})})
    try:
        for stage in CELL_STAGES:
            run_stage(stage, params, cell)
            if stage == "select" and not params.study.keep_models and (twin := twin_cell(
                    layout, name, same_inputs, sha256_obj(read_json(cell.selection)["indices"]), need_models=keep)):
                break
    except SouplineError as err:  # its own words (e.g. "lower select.budget") read as the study grid's
        raise SouplineError(f"study cell {name} failed (the study sets its select.method, select.budget and "
                            f"select.seed): {err}") from None
    selection = read_json(cell.selection)
    result = {"key": key, "cell": name, "method": params.select.method, "seed": selection["seed"],
              "budget": params.select.budget, "examples": selection["budget"],
              "fraction": selection["budget"] / selection["pool_size"], "selection": sha256_obj(selection["indices"]),
              "same_inputs": same_inputs,  # and the pool's labels it has no example of (the study report names them)
              "labels_missed": [k for k, v in selection["label_counts"].items() if v["pool"] and not v["selected"]]}
    if twin is None:
        return _finish(cell, result, keep)
    print(f"study: {name} picked the examples {twin['cell']} picked, from the same inputs: its results are "
          f"{twin['cell']}'s (nothing trained; its times are {twin['cell']}'s after select)")
    after_select = {stage: t for stage, t in twin["seconds"].items() if stage != "select"}
    return _finish(cell, {**result, "same_as": twin["cell"]}, keep, after_select, twin["models"])


def twin_cell(layout: Layout, name: str, same_inputs: str, picked: str, need_models: bool = False) -> dict | None:
    """A finished cell of this workspace, other than `name`, that ran itself (no `same_as`) on the selection `picked`
    (its hash) from the same inputs otherwise (`same_inputs`): training, soups and evaluation would repeat its run to
    the same weights and metrics. A deterministic method (GOT-D on a pool it solves whole) picks alike whatever the
    seed; two budgets that give the same count (0.1 and 6 of a pool of 63) pick alike too, as does any method given
    the whole pool. With `need_models`, only a cell whose models are still there."""
    for path in sorted(layout.study_cells.glob("*/cell.json")):
        other = read_json(path)
        if (path.parent.name != name and "same_as" not in other and other.get("same_inputs") == same_inputs
                and other.get("selection") == picked and (not need_models or _has_models(layout, path.parent.name))):
            return other
    return None


def cached_cell(name: str, layout: Layout, key: str, need_models: bool = False,
                own_models: bool = False) -> dict | None:
    """The cell's recorded result if its key still matches and, when asked, its models are still there: with
    `need_models` (a cross soup's member) those of the cell whose results it took (`same_as`) will do, with
    `own_models` (`study.keep_models`) only its own."""
    path = layout.study_cells / name / "cell.json"
    if path.exists():
        result = read_json(path)
        models_of = name if own_models else models_cell(layout, result)
        has_models = models_of is not None and _has_models(layout, models_of)
        if result.get("key") == key and (has_models or not (need_models or own_models)):
            return result
    return None


def models_cell(layout: Layout, result: dict) -> str | None:
    """The cell whose folder holds the models of the cell `result` records: itself, or the cell whose results it took
    (`same_as`) while that cell still records the same selection from the same inputs (None once it ran again on
    another)."""
    if "same_as" not in result:
        return result["cell"]
    path = layout.study_cells / result["same_as"] / "cell.json"
    source = read_json(path) if path.exists() else {}
    same = all(source.get(k) == result.get(k) for k in ("same_inputs", "selection")) and "same_as" not in source
    return result["same_as"] if same else None


def _has_models(layout: Layout, name: str) -> bool:
    folder = Layout(layout.study_cells / name).ingredients  # a question: not cell_layout, which makes the folder
    return folder.is_dir() and any(folder.iterdir())


def cross_cells(params: Params) -> dict[str, list[str]]:
    """`cross-b<budget>` -> the cells whose ingredients it soups together: every method and seed at that budget."""
    if not params.study.cross_soups:
        return {}
    s = params.study
    return {f"{CROSS}-b{b}": [cell_name(m, b, seed) for m in s.methods for seed in s.seeds] for b in s.budgets}


def cross_key(params: Params, member_keys: dict[str, str]) -> str:
    """What a cross-selection soup depends on: its member cells (their keys), the soup and evaluate settings."""
    return sha256_obj({"cells": member_keys, **_cross_settings(params)})


def _cross_settings(params: Params) -> dict:
    return {"soup": params.soup.in_use(), "evaluate": params.evaluate.measured(),
            "code": code_digest("soup", "evaluate")}


def distinct_members(records: dict[str, dict]) -> dict[str, dict]:
    """Of the members' cell.json records, the first member's of each distinct selection from the same inputs
    (`same_inputs`, `selection`): two members that picked the same examples (two budgets giving one count, methods or
    seeds that pick alike) trained the same models, which a cross soup would count twice. Each left out is printed."""
    kept: dict[tuple, str] = {}
    for member, record in records.items():
        first = kept.setdefault((record.get("same_inputs"), record.get("selection", member)), member)
        if first != member:
            print(f"study: {member} picked the examples {first} picked: its models are souped once, as {first}'s")
    return {member: records[member] for member in kept.values()}


def run_cross_cell(name: str, members: list[str], params: Params, layout: Layout, key: str) -> dict:
    """Soup the ingredients of several cells (trained on different selections, from one initialisation)
    and evaluate them; the probe reference is fit on the union of the cells' selections."""
    cell = _begin(layout, name, key)
    drop_models(cell)
    cell.ingredients.mkdir(parents=True)
    recorded = {member: read_json(layout.study_cells / member / "cell.json") for member in members}
    records = distinct_members(recorded)
    same_inputs = sha256_obj(_cross_settings(params))
    picked = sha256_obj([[r.get("same_inputs"), r.get("selection", m)] for m, r in records.items()])  # what it soups
    result = {"key": key, "cell": name, "method": CROSS, "seed": "all", "members": members, "souped": list(records),
              "budget": cells(params)[members[0]].select.budget, "same_inputs": same_inputs, "selection": picked}
    names, indices, selection = [], set(), {}
    for member, record in records.items():
        selection = read_json(cell_layout(layout, member).selection)
        indices |= set(selection["indices"])
        if (source_name := models_cell(layout, record)) is None:  # a `same_as` member trained nothing itself
            raise SouplineError(f"study cell {record['same_as']} ran again on other examples since {member} took its "
                                f"results; run the study again (it re-runs {member})")
        source = cell_layout(layout, source_name)
        for ingredient in sorted(p.name for p in source.ingredients.iterdir() if not p.name.startswith(".")):
            names.append(f"{member}.{ingredient}")
            (cell.ingredients / names[-1]).symlink_to(os.path.relpath(source.ingredients / ingredient,
                                                                      cell.ingredients))
    union = {**selection, "method": CROSS, "seed": None, "indices": sorted(indices), "budget": len(indices),
             "scores": None, "cells": members}
    write_json(cell.selection, union)
    result.update(examples=len(indices), fraction=len(indices) / selection["pool_size"])
    # another budget's cross soup of the same models
    if not params.study.keep_models and (twin := twin_cell(layout, name, same_inputs, picked)):
        print(f"study: {name} soups the models {twin['cell']} souped: its results are {twin['cell']}'s")
        return _finish(cell, {**result, "same_as": twin["cell"]}, params.study.keep_models, twin["seconds"],
                       twin["models"])
    for stage in ("soup", "evaluate"):
        timed(stage, STAGES[stage], params, cell, ingredients=names)
    # Its compute includes the members' selection and the training of the models it soups: they were made for it too.
    spent: dict[str, float] = {}
    for member, record in recorded.items():
        for stage in ("select", "train") if member in records else ("select",):
            spent[stage] = spent.get(stage, 0.0) + record["seconds"].get(stage, 0.0)
    return _finish(cell, result, params.study.keep_models, spent)


def plan(params: Params, layout: Layout) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """Cell keys, cross-soup keys, and the cells whose models a cross soup still to run will need."""
    keys = {name: cell_key(p, layout) for name, p in cells(params).items()}
    crosses = {name: cross_key(params, {m: keys[m] for m in members}) for name, members in cross_cells(params).items()}
    needed = {m for name, members in cross_cells(params).items() if cached_cell(name, layout, crosses[name]) is None
              for m in members}
    return keys, crosses, needed


def prepare_and_embed(params: Params, layout: Layout) -> None:
    """The inputs every cell shares, each stage skipped when up to date, and every budget of the grid checked against
    the pool between them: one the pool cannot hold is one line before the embeddings, not a failed cell after the
    cells before it ran; likewise a CUDA device this machine lacks, a LoRA target that matches no layer, and a
    `cls` head LP-FT's probe cannot start. As in `soupline run`, dvc.lock's word counts until a stage builds, and
    what they build is recorded there (`dvc repro` ran both again after a study)."""
    check_device(params.device, params.train)
    check_model_layers(params, layout)
    clean = dvc_clean(layout)
    built = run_unless_fresh("prepare", params, layout, clean=clean)
    check_budgets({f"study.budgets[{i}]": b for i, b in enumerate(params.study.budgets)}, layout, params.select,
                  params.study.methods, params.train.self_training.multiple)
    if run_unless_fresh("embed", params, layout, clean=None if built else clean) or built:
        record_stages_in_dvc(params, layout, ("prepare", "embed"))


def run(params: Params, layout: Layout) -> dict:
    """Prepare and embed (unless up to date), run every cell not already cached, write the study report."""
    prepare_and_embed(params, layout)
    grid = cells(params)
    keys, crosses, needed = plan(params, layout)
    results, warm = {}, False
    for name, cell_params in grid.items():
        keep = params.study.keep_models or name in needed  # a cell run without them has its models to make
        results[name] = cached_cell(name, layout, keys[name], need_models=keep, own_models=params.study.keep_models)
        if results[name] is None:
            if not warm:
                warm_up(params, layout)
                warm = True
            start = time.perf_counter()
            results[name] = retried(name, partial(run_cell, name, cell_params, layout, keys[name], keep_models=keep))
            print(f"study: {name} done in {time.perf_counter() - start:.0f}s")
        else:
            print(f"study: {name} cached")
    for name, members in cross_cells(params).items():
        results[name] = cached_cell(name, layout, crosses[name])
        if results[name] is None:
            results[name] = retried(name, partial(run_cross_cell, name, members, params, layout, crosses[name]))
            print(f"study: {name} ({len(results[name]['souped'])} cells' ingredients souped together) done")
        else:
            print(f"study: {name} cached")
    if not params.study.keep_models:
        for name in needed:
            drop_models(cell_layout(layout, name))
    return aggregate(params, layout, results)


def retried(name: str, run_it: Callable[[], dict]) -> dict:
    """`run_it()`, a cell's run, tried again after each of RETRY_DELAYS while it fails on what may be transient (a disk
    hiccup: `errors.transient`), as the Prefect study flow retries its cell tasks; a user error or a bug fails at
    once. A retry resumes the cell as a rerun does (its trained ingredients kept, its stopped run's stage times
    counted)."""
    for delay in RETRY_DELAYS:
        try:
            return run_it()
        except Exception as err:  # noqa: BLE001 - sorted by `transient`
            if not transient(err):
                raise
            print(f"study: {name} failed ({type(err).__name__}: {err}); trying it again in {delay} s")
            time.sleep(delay)
    return run_it()


def shared_params(params: Params) -> dict:
    """The params every cell ran with, for the report: all but the per-cell select keys and the
    sub-sections of methods the study does not run."""
    methods = set(params.study.methods) | ({"random"} if params.study.full_pool else set())
    select = {k: v for k, v in params.select.in_use(methods).items() if k not in ("method", "budget", "seed")}
    return {**params.model_dump(mode="json", exclude={"select"}), "select": select}


def aggregate(params: Params, layout: Layout, results: dict[str, dict]) -> dict:
    """Write the study report from the cells' results; return the summary table."""
    out = layout.study_report
    summary = render_study(list(results.values()), params.soup.methods, out, shared_params(params),
                           training(params, [ingredient.name for ingredient in params.train.ingredients()]))
    shown = out.relative_to(layout.root)  # from the project root, as the report stage's line
    print(f"study: {len(results)} cell{'s' * (len(results) != 1)} -> {shown / 'study.md'} and {shown / 'study.html'}")
    if failed := [name for name, r in results.items() if failed_ingredients(r)]:  # a cached cell's train said it once
        print(f"study: training failed for ingredients of {', '.join(failed)} (flagged in {shown / 'study.md'}); "
              "lower train.learning_rates")
    return summary


if __name__ == "__main__":
    main("study", run)
