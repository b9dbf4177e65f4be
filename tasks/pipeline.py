"""The whole DAG in one process: prepare -> embed -> select -> train (xN) -> soup -> evaluate -> report.

Used by `soupline run`; `dvc repro` runs the same stage functions one process per stage.
"""

from __future__ import annotations

from soupline.config import Params
from tasks import embed, evaluate, prepare, report, select, soup, train
from tasks.common import timed
from tasks.layout import Layout

STAGES = {"prepare": prepare.run, "embed": embed.run, "select": select.run, "train": train.run,
          "soup": soup.run, "evaluate": evaluate.run, "report": report.run}


def run_stage(name: str, params: Params, layout: Layout) -> None:
    timed(name, STAGES[name], params, layout)


def run_pipeline(params: Params, layout: Layout, start: str = "prepare") -> None:
    names = list(STAGES)
    for name in names[names.index(start):]:
        run_stage(name, params, layout)
