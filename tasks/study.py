"""study: selection methods x budgets x seeds, each cell selected, trained, souped and evaluated.

    soupline study                                  # the grid in params.yaml's `study` section
    soupline study study.methods=[random,gotd] study.budgets=[0.01,0.05]

prepare and embed run once (the usual stages, in the workspace); every cell is a small
workspace of its own under data/study/cells/<cell>/ whose data/prepared and data/embeddings
are links to the shared ones, and runs the usual select -> train -> soup -> evaluate stage
functions there with `select.method`, `select.budget` and `select.seed` set. A cell is cached:
its `cell.json` records a key over the content of the prepared data and embeddings, the
cell's params and the library's source; a cell whose key still matches is not run again.
`aggregate` then writes data/reports/study/{study.md, study.html, study.json, *.png, *.csv}.
"""

from __future__ import annotations

import os
import shutil
import time

from soupline.artifacts import read_json, sha256_obj, sha256_tree, source_digest, write_json
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.study_report import render_study
from tasks.common import main
from tasks.layout import Layout
from tasks.pipeline import run_stage

CELL_STAGES = ("select", "train", "soup", "evaluate")
FULL = "full-pool"


def cell_name(method: str, budget: int | float, seed: int) -> str:
    return f"{method}-b{budget}-s{seed}"


def cells(params: Params) -> dict[str, Params]:
    """name -> the cell's params (params.yaml with the cell's selection), in grid order; full pool last."""
    out = {}
    for method in params.study.methods:
        for budget in params.study.budgets:
            for seed in params.study.seeds:
                out[cell_name(method, budget, seed)] = _with_selection(params, method, budget, seed)
    if params.study.full_pool:
        out[FULL] = _with_selection(params, "random", 1.0, params.study.seeds[0])
    return out


def _with_selection(params: Params, method: str, budget: int | float, seed: int) -> Params:
    select = params.select.model_copy(update={"method": method, "budget": budget, "seed": seed})
    return params.model_copy(update={"select": select})


def cell_key(params: Params, layout: Layout) -> str:
    """What a cell's result depends on: the shared data, its own params, the library's code."""
    cell = params.model_dump(mode="json", exclude={"prepare", "embed", "study"})
    return sha256_obj({"prepared": sha256_tree(layout.prepared), "embeddings": sha256_tree(layout.embeddings),
                       "params": cell, "library": source_digest()})


def cell_layout(layout: Layout, name: str) -> Layout:
    """The cell's workspace, sharing the prepared data and embeddings through links."""
    cell = Layout(layout.data / "study" / "cells" / name)
    cell.data.mkdir(parents=True, exist_ok=True)
    for shared in (layout.prepared, layout.embeddings):
        link = cell.data / shared.name
        if not link.is_symlink():
            shutil.rmtree(link, ignore_errors=True)
            link.symlink_to(os.path.relpath(shared.resolve(), cell.data))
    return cell


def run_cell(name: str, params: Params, layout: Layout, key: str) -> dict:
    """select -> train -> soup -> evaluate in the cell's workspace; its metrics and stage times."""
    cell = cell_layout(layout, name)
    shutil.rmtree(cell.timings, ignore_errors=True)
    for stage in CELL_STAGES:
        run_stage(stage, params, cell)
    seconds: dict[str, float] = {}
    for f in cell.timings.glob("*.json"):
        rec = read_json(f)
        seconds[rec["stage"]] = round(seconds.get(rec["stage"], 0.0) + rec["seconds"], 3)
    selection = read_json(cell.selection)
    result = {"key": key, "cell": name, "method": params.select.method, "seed": selection["seed"],
              "budget": params.select.budget, "examples": selection["budget"],
              "fraction": selection["budget"] / selection["pool_size"],
              "seconds": seconds, "models": read_json(cell.metrics / "details.json")["models"]}
    if not params.study.keep_models:
        for folder in (cell.ingredients.parent, cell.soups):  # data/models and data/soups
            shutil.rmtree(folder, ignore_errors=True)
    write_json(cell.root / "cell.json", result)
    return result


def cached_cell(name: str, layout: Layout, key: str) -> dict | None:
    path = layout.data / "study" / "cells" / name / "cell.json"
    if path.exists():
        result = read_json(path)
        if result.get("key") == key:
            return result
    return None


def run(params: Params, layout: Layout, only: list[str] | None = None) -> dict:
    """Prepare and embed once, run every cell not already cached (or just `only`), write the study report."""
    for stage in ("prepare", "embed"):
        run_stage(stage, params, layout)
    grid = cells(params)
    unknown = sorted(set(only or []) - set(grid))
    if unknown:
        raise SouplineError(f"unknown study cell(s) {unknown}; cells of this study: {list(grid)}")
    results = {}
    for name, cell_params in grid.items():
        if only and name not in only:
            continue
        key = cell_key(cell_params, layout)
        results[name] = cached_cell(name, layout, key)
        if results[name] is None:
            start = time.perf_counter()
            results[name] = run_cell(name, cell_params, layout, key)
            print(f"study: {name} done in {time.perf_counter() - start:.0f}s")
        else:
            print(f"study: {name} cached")
    return aggregate(params, layout, results)


def aggregate(params: Params, layout: Layout, results: dict[str, dict]) -> dict:
    """Write the study report from the cells' results; return the summary table."""
    out = layout.reports / "study"
    summary = render_study(list(results.values()), params.soup.methods, out)
    print(f"study: {len(results)} cells -> {out / 'study.md'} and {out / 'study.html'}")
    return summary


if __name__ == "__main__":
    main("study", run)
