"""report: data/reports/report.md + PNG plots (data, selection coverage, ingredients vs soups, timings)."""

from __future__ import annotations

import warnings

from soupline import STAGE_NAMES
from soupline.artifacts import read_json, trained_seconds
from soupline.config import Params
from soupline.report import render
from tasks.common import made_digest, main, read_record, read_selection, require
from tasks.layout import Layout


def stage_seconds(params: Params, layout: Layout) -> dict[str, float | None]:
    """Wall seconds of each stage's last run here, in pipeline order; None for a stage with no run timed in this
    workspace, or whose outputs another run made (they came from `dvc pull`, `dvc checkout`, `dvc exp apply` or
    DVC's run cache: data/timings is not shared, and a timing names the record files its run wrote).
    Train's row is what the sweep's current ingredients took to train (their train_timing.json, which DVC does not
    hash, so a pulled or checked-out ingredient has none: the row counts those timed, `1 of 2 ingredients`): a
    train run that found them built took no time, and the Prefect flow times each ingredient on its own. No report
    row: this run is not over when it writes the table, and data/timings/report.json holds the previous report's
    time."""
    seconds: dict[str, float | None] = {}
    for stage in STAGE_NAMES[:-1]:
        if stage == "train":
            total = len(params.train.ingredients())
            timed = (trained_seconds(layout.ingredients / i.name) for i in params.train.ingredients())
            built = [t for t in timed if t is not None]
            count = f"{len(built)} of {total}" if 0 < len(built) < total else f"{total}"
            seconds[f"train ({count} ingredient{'s' * (total != 1)})"] = sum(built) if built else None
        else:
            timing = read_json(path) if (path := layout.timings / f"{stage}.json").exists() else {}
            mine = "made" not in timing or timing["made"] == made_digest(layout, stage)  # not restored since
            seconds[stage] = timing["seconds"] if timing and mine else None
    return seconds


def mismatch_warning(params: Params, layout: Layout, details: dict) -> str | None:
    """Why the models reported (evaluate's `details`, details.json) are not the ones these params train on this
    selection (a stage run by hand after train, e.g. `soupline stage select` then `soupline stage report`), or None
    when they are."""
    from tasks.train import unbuilt  # tasks.train imports tasks.common, as this module does

    if not (stale := unbuilt(params, layout)):
        return changed_since_evaluate(layout, details) or soups_stale_when_evaluated(details)
    total = len(params.train.ingredients())
    return (f"{len(stale)} of {total} ingredient(s) ({', '.join(stale[:5])}) were not trained on this selection "
            "with these params: the metrics below are of other models. Run the whole pipeline (`dvc repro` or "
            "`soupline run`) to rebuild them")


def changed_since_evaluate(layout: Layout, details: dict) -> str | None:
    """Which models evaluate scored are no longer in their folders (trained or souped again since, e.g. `soupline
    stage train` after an edit, then `soupline stage report`): their train_info.json / soup.json differ from those
    details.json records. None when all are as evaluated (or details.json predates the record)."""
    from soupline.artifacts import sha256_file

    changed, removed = [], []
    for name, digest in details.get("records", {}).items():
        record = layout.model_record(name)
        if not record.exists():
            removed.append(name)
        elif sha256_file(record) != digest:
            changed.append(name)
    if not (changed or removed):
        return None
    what = " and ".join(f"{len(names)} model(s) ({', '.join(names[:5])}) {how}"
                        for names, how in ((changed, "changed"), (removed, "removed")) if names)
    return (f"{what} since evaluate scored them: the metrics below are of the models before. Run the whole pipeline "
            "(`dvc repro` or `soupline run`) to score them again")


def soups_stale_when_evaluated(details: dict) -> str | None:
    """Which soups evaluate scored were not made from the ingredients in place then (details.json `stale_soups`:
    `soupline stage train`, then `soupline stage evaluate`): report.md showed them, and a stale soup as the model to
    use, with no warning. None when there were none (or details.json predates the record)."""
    if not (stale := details.get("stale_soups")):
        return None
    return (f"{len(stale)} soup(s) ({', '.join(stale[:5])}) were not made from the ingredients below with these "
            "settings when evaluate scored them: their rows are of soups of the ingredients before. Run the whole "
            "pipeline (`dvc repro` or `soupline run`) to make and score them again")


def run(params: Params, layout: Layout) -> str:
    timings = stage_seconds(params, layout)
    # read once, for the warnings and the report; a damaged one (cut short, conflict markers) is one line
    details = read_record(layout.metrics / "details.json", "evaluate",
                          ("labels", "models", "details", "confusion_model"))
    if warning := mismatch_warning(params, layout, details):
        warnings.warn(warning, stacklevel=2)
    text = render(read_json(require(layout.prepared / "summary.json", "prepare")),
                  read_selection(layout),
                  details, timings, layout.reports,
                  warning, embed_info=read_json(require(layout.embeddings / "info.json", "embed")),
                  probe_run=params.train.method == "probe", curves_dir=layout.curves)
    print(f"report: {(layout.reports / 'report.md').relative_to(layout.root)}")  # as dvc repro prints it
    return text


if __name__ == "__main__":
    main("report", run)
