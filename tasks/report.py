"""report: data/reports/report.md + PNG plots (data, selection coverage, ingredients vs soups, timings)."""

from __future__ import annotations

from soupline.artifacts import read_json
from soupline.config import Params
from soupline.report import render
from tasks.common import main, require
from tasks.layout import Layout


def run(params: Params, layout: Layout) -> str:
    timings = {}
    for f in sorted(layout.timings.glob("*.json")) if layout.timings.exists() else []:
        rec = read_json(f)
        timings[f.stem] = rec["seconds"]
    text = render(read_json(require(layout.prepared / "summary.json", "prepare")),
                  read_json(require(layout.selection, "select")),
                  read_json(require(layout.metrics / "details.json", "evaluate")), timings, layout.reports)
    print(f"report: {layout.reports / 'report.md'}")
    return text


if __name__ == "__main__":
    main("report", run)
