"""The whole DAG in one process: prepare -> embed -> select -> train (xN) -> soup -> evaluate -> report.

Used by `soupline run`; `dvc repro` runs the same stage functions one process per stage. Like
`dvc repro`, a run skips a stage that is up to date: same key (`tasks.keys.stage_key`: the content
of its dvc.yaml deps, its params, the library source) as its last run here, and outputs still as
that run wrote them. `train` keeps its own per-ingredient check, so a new seed trains only itself.
"""

from __future__ import annotations

from soupline.config import Params
from tasks import embed, evaluate, keys, prepare, report, select, soup, train
from tasks.common import timed
from tasks.layout import Layout

STAGES = {"prepare": prepare.run, "embed": embed.run, "select": select.run, "train": train.run,
          "soup": soup.run, "evaluate": evaluate.run, "report": report.run}


def run_stage(name: str, params: Params, layout: Layout) -> None:
    timed(name, STAGES[name], params, layout)


def run_pipeline(params: Params, layout: Layout, start: str = "prepare", force: bool = False) -> None:
    """Every stage from `start` on, skipping those that are up to date (all of them run with `force`)."""
    names = list(STAGES)
    for name in names[names.index(start):]:
        if name == "train":
            run_stage(name, params, layout)
            continue
        key = keys.stage_key(name, params, layout.root)
        if not force and keys.is_fresh(name, key, layout.root):
            print(f"{name}: up to date")
            continue
        keys.record_path(name, layout.root).unlink(missing_ok=True)  # a run killed midway leaves no record
        run_stage(name, params, layout)
        keys.record(name, key, layout.root)
