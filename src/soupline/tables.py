"""Reading the user's data files: a JSONL / JSON / CSV / TSV / Parquet file (each may be gzipped: `.csv.gz`), a
folder written by `datasets`' `save_to_disk`, or a folder of such files (shards, or a file per split named train /
validation / test, as `datasets` reads a data folder), each as a pandas frame (a dict of frames per split where the
source names splits). Values are read as written (no dtype guessing that turns a label "007" into 7), and a file that
cannot be read (not UTF-8, an unquoted separator, a damaged gzip or folder) is one line saying why and how to fix it.
`soupline.data` checks and splits what is read here."""

from __future__ import annotations

import difflib
import io
import os
import re
import warnings
from pathlib import Path

import pandas as pd

from soupline.artifacts import hidden
from soupline.corpora import BUILTIN_CORPORA
from soupline.errors import USER_ERRORS, SouplineError, experiment_copy_note

# A split's names: a DatasetDict's split, a word in a data folder's file or folder names (as Hugging Face `datasets`
# reads a folder of files), and what `prepare.splits`' keys are called elsewhere (config's unknown-key hint)
SPLIT_ALIASES = {"pool": ("pool", "train", "training"), "validation": ("validation", "valid", "dev", "val"),
                 "test": ("test", "testing", "eval", "evaluation")}


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


def scalar_cells(column: pd.Series) -> bool:
    """Whether the column's dtype holds one string, number, boolean or date per cell, so none is bytes, a list or a
    record and the checks of each cell can skip it: iterating a column of Arrow strings cell by cell took 0.1-0.3 s
    per 100,000 texts, more than reading them from Parquet."""
    return isinstance(column.dtype, pd.StringDtype) or column.dtype.kind in "biufcmMU"


def _decoded(df: pd.DataFrame, columns: tuple[str, ...], where) -> pd.DataFrame:
    """The `columns` (text and label) with their bytes cells (a Parquet or Arrow binary column) decoded as UTF-8:
    else str() makes a text "b'...'" (joined text columns, a GOT-D target) and a non-UTF-8 cell is a traceback."""
    for col in dict.fromkeys(columns):
        if col not in df.columns or scalar_cells(df[col]) or not df[col].map(lambda v: isinstance(v, bytes)).any():
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
            df[col] = [None if pd.isna(v) or v < 0 else feature.int2str(int(v)) for v in df[col]]
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
