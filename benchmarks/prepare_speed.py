"""Reading your own data, and the prepare stage: a baseline commit's `soupline/data.py` vs this tree's, in the same
run, beside plain pandas.

    python benchmarks/prepare_speed.py [--n 100000] [--chars 500] [--labels 5] [--formats parquet csv jsonl]
                                       [--repeats 3] [--baseline b86de11] [--other-columns 0]

A synthetic source of `--n` texts of about `--chars` characters (words drawn from 20, 1 in 50 texts a copy of
another) and `--labels` labels, and `--other-columns` columns soupline does not read (an integer id, a tag, an
integer id, ...: a CSV with them was parsed whole twice before session 51, `--baseline 83d0b20`), is written once in
each format. For each, runs alternate (baseline, this tree)
`--repeats` times: `read_table` of the file beside plain pandas' read of it (`pd.read_parquet`, `pd.read_csv`,
`pd.read_json(lines=True)`), then the prepare stage (`tasks.prepare.run` on the default params with
`prepare.source` set to the file: checks, split, duplicate counts, the three Parquet splits written) with
`soupline.data` swapped for the baseline's. Prints each side's median seconds, the ratios this / baseline and
read_table / pandas, and whether both sides read the same frame and wrote the same splits, labels and summary.
Nothing asserts a time. The default baseline, b86de11, is the code before session 50's changes: each cell of an
Arrow-backed text column checked in Python for bytes and lists, blank texts found through Python's re cell by cell,
a CSV of text and label parsed twice (the second time with dtype=str, 3x pandas' inferred strings), label sets and
duplicate keys built by iterating Arrow cells one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import sklearn.model_selection  # noqa: F401 - imported before the first timing, which would hold its 2 s

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # soupline; baseline_code, also when a test loads this file

import soupline  # noqa: E402 - after the project root is on the path (tasks.prepare)
from soupline import config, data  # noqa: E402
from tasks import prepare  # noqa: E402
from tasks.layout import Layout  # noqa: E402

from baseline_code import module_at  # noqa: E402

BASELINE = "b86de11"
WORDS = ("market", "shares", "film", "music", "election", "vote", "match", "goal", "chip", "software", "bank",
         "profit", "actor", "album", "minister", "court", "team", "coach", "phone", "cloud")
# each format: how the source is written, and how plain pandas reads it
FORMATS = {"parquet": (lambda df, path: df.to_parquet(path, index=False), pd.read_parquet),
           "csv": (lambda df, path: df.to_csv(path, index=False), pd.read_csv),
           "jsonl": (lambda df, path: df.to_json(path, orient="records", lines=True),
                     lambda path: pd.read_json(path, lines=True))}


# rows that take the checks' other paths, 1 in 100 each: blank but for a zero-width space, a line break, a copy of
# another text but for case, spaces and Unicode form (a combining accent), and the same in NFC with a soft hyphen
ODD = ("\u200b \u00ad", "{}\nfirst line of {}", "  Café  {}", "CAFE\u0301 \u00ad{}")


def source(n: int, chars: int, labels: int, seed: int = 0, other: int = 0) -> pd.DataFrame:
    """`n` texts of about `chars` characters, each starting with its row number, 1 in 50 a copy of another row,
    and `ODD`'s rows; `other` more columns, an id and a tag in turn."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), (n, max(chars // 6, 1)))]
    texts = [f"{i} {' '.join(row)}"[:chars] for i, row in enumerate(words)]
    for i, j in zip(rng.integers(0, n, n // 50), rng.integers(0, n, n // 50)):
        texts[i] = texts[j]
    for k, odd in enumerate(ODD):
        texts[k::100] = [odd.format(i % 7, i) for i in range(k, n, 100)]
    columns = {f"other{k}": np.arange(n) if k % 2 == 0 else [f"tag{i % 13}" for i in range(n)] for k in range(other)}
    return pd.DataFrame({"text": texts, "label": [f"label{k}" for k in rng.integers(0, labels, n)], **columns})


def baseline_data(rev: str) -> types.ModuleType:
    """`rev`'s src/soupline/data.py (git show) as a module beside this tree's; LookupError when git has none. Since
    session 64 data.py reads files through soupline/tables.py and the built-in corpora through soupline/corpora.py:
    where `rev` has them, that rev's are what its data.py imports, so the baseline side runs `rev`'s code only."""
    own = {}
    for name in ("corpora", "tables"):  # corpora first: tables imports it
        with contextlib.suppress(LookupError), mock.patch.dict(sys.modules, own):  # LookupError: before the split
            own[f"soupline.{name}"] = module_at(rev, f"src/soupline/{name}.py")
    with mock.patch.dict(sys.modules, own):
        module = module_at(rev, "src/soupline/data.py")
    if "split_column" not in inspect.signature(load := module.load_splits).parameters:  # before session 51
        module.load_splits = lambda *args, split_column=None, **kwargs: load(*args, **kwargs)  # the stage passes None
    return module


def seconds(fn, *args):
    """Wall seconds of fn(*args), and what it returned; its warnings and prints hidden."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - start, out


def stage(module: types.ModuleType, file: Path, workspace: Path) -> dict[str, bytes]:
    """The prepare stage on `file` with `module` as soupline.data; its outputs' contents by name."""
    params = config.load(ROOT / "params.yaml", [f"prepare.source={file}"])
    layout = Layout(workspace)
    with mock.patch.object(soupline, "data", module):  # what the stage's `from soupline import data` finds
        prepare.run(params, layout)
    return {f.name: f.read_bytes() if f.suffix == ".json" else pd.read_parquet(f)
            for f in sorted(layout.prepared.iterdir())}


def same(a, b) -> bool:
    """Frames equal in values, dtypes and index; anything else by ==."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, pd.DataFrame):
        try:
            pd.testing.assert_frame_equal(a, b)
        except AssertionError:
            return False
        return True
    return a == b


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--chars", type=int, default=500)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--other-columns", type=int, default=0)
    args = parser.parse_args(argv)
    for flag, least in (("n", 100), ("chars", 1), ("labels", 2), ("repeats", 1), ("other_columns", 0)):
        if (value := getattr(args, flag)) < least:
            parser.error(f"--{flag.replace('_', '-')} {value}: at least {least}")
    try:
        sides = {"baseline": baseline_data(args.baseline), "this": data}
    except LookupError as err:
        parser.error(str(err))
    frame = source(args.n, args.chars, args.labels, other=args.other_columns)
    print(f"{args.n} texts of {frame['text'].str.len().mean():.0f} characters, {args.labels} labels, "
          f"{args.other_columns} other columns; baseline {args.baseline}")
    with tempfile.TemporaryDirectory() as folder:
        for fmt in args.formats:
            file = Path(folder) / f"source.{fmt}"
            write, plain = FORMATS[fmt]
            write(frame, file)
            runs = {key: [] for key in ("pandas", *(f"{what} {side}" for what in ("read", "stage") for side in sides))}
            outputs = {}
            for _ in range(args.repeats):
                runs["pandas"].append(seconds(plain, file)[0])
                for side, module in sides.items():
                    took, outputs[f"read {side}"] = seconds(module.read_table, file, ("text", "label"))
                    runs[f"read {side}"].append(took)
                    took, outputs[f"stage {side}"] = seconds(stage, module, file, Path(folder) / side)
                    runs[f"stage {side}"].append(took)
            med = {key: statistics.median(times) for key, times in runs.items()}
            print(f"{fmt}: pandas {med['pandas']:.2f} s; read_table {med['read baseline']:.2f} -> "
                  f"{med['read this']:.2f} s; prepare stage {med['stage baseline']:.2f} -> {med['stage this']:.2f} s")
            print(f"  this / baseline: read_table {med['read this'] / med['read baseline']:.2f}, stage "
                  f"{med['stage this'] / med['stage baseline']:.2f}; read_table / pandas "
                  f"{med['read baseline'] / med['pandas']:.2f} -> {med['read this'] / med['pandas']:.2f}; same "
                  f"frame: {same(outputs['read baseline'], outputs['read this'])}, same outputs: "
                  f"{same(outputs['stage baseline'], outputs['stage this'])}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
