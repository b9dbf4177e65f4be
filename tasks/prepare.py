"""prepare: load the source, validate it, split pool/validation/test, write Parquet + label summary."""

from __future__ import annotations

from pathlib import Path

from soupline.artifacts import atomic_path, write_json
from soupline.config import Params
from tasks.common import main, wrapped
from tasks.layout import Layout


def outside_raw(params: Params, layout: Layout) -> list[str]:
    """The source files that are not under data/raw, the one input folder dvc.yaml lists for prepare:
    `dvc repro` cannot see their content change (dvc.yaml deps are fixed paths, not params)."""
    raw = (layout.data / "raw").resolve()
    return [s for s in params.prepare.source_paths() if not Path(s).expanduser().resolve().is_relative_to(raw)]


def run(params: Params, layout: Layout) -> dict:
    from soupline import data  # here: importing tasks.prepare (tasks.pipeline does) imports no pandas

    p = params.prepare
    dropped: dict[str, int] = {}
    rare: dict[str, int] = {}
    frames = data.load_splits(p.source, p.splits.model_dump() if p.splits else None, p.text_column,
                              p.label_column, p.validation_size, p.test_size, params.seed, p.max_examples, p.duplicates,
                              p.keep_columns, dropped, p.label_names, p.rare_labels, p.min_label_examples, rare,
                              split_column=p.split_column)
    for name, df in frames.items():
        with atomic_path(layout.split(name)) as tmp:
            df.to_parquet(tmp, index=False)
    names = data.label_names(frames)
    counts = data.label_counts(frames, names)
    write_json(layout.prepared / "labels.json", names)
    duplicates = data.duplicate_counts(frames)
    summary = {"source": p.source if not p.splits else p.splits.model_dump(),
               "sizes": {k: len(v) for k, v in frames.items()}, "label_counts": counts, "duplicates": duplicates,
               "empty_dropped": dropped.pop("empty", 0)}  # rows without a text or label (warned as well)
    if p.split_column is not None:  # the splits are the source's own, by this column, not drawn by prepare
        summary["split_column"] = p.split_column
    if p.duplicates == "drop":  # what went (the counts above are what is left)
        summary["duplicates_dropped"] = dropped
    if p.rare_labels == "drop":  # {label: rows dropped}, labels under prepare.min_label_examples
        summary["rare_labels_dropped"] = rare
    write_json(layout.prepared / "summary.json", summary)
    print(f"prepare: {summary['sizes']} over {len(names)} labels")
    if any(duplicates.values()):
        leaked = data.leaks(duplicates)
        print("prepare: duplicate texts " + ", ".join(f"{k}={v}" for k, v in duplicates.items() if v)
              + (" (validation/test texts also in an earlier split inflate their scores" if leaked else
                 " (no validation or test text is in an earlier split") + "; prepare.duplicates=drop removes them)")
    for name in data.SPLITS:
        print(wrapped(f"  {name:<10} ", [f"{k}={v}" for k, v in counts[name].items()], sep="  ", indent=13))
    outside = outside_raw(params, layout)
    if outside:
        one = len(outside) == 1
        print(f"prepare: note: {', '.join(outside)} {'is' if one else 'are'} outside data/raw/, so `dvc repro` will "
              f"not notice when {'its' if one else 'their'} content changes (it does notice changes under data/raw/); "
              f"move {'it' if one else 'them'} there, or run `dvc repro -f -s prepare` after editing")
    return summary


if __name__ == "__main__":
    main("prepare", run)
