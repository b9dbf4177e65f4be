"""Dataset sources, schema checks and splits: everything before embeddings.

Sources: a built-in corpus (`soupline.corpora`: `bbcnews`, `20newsgroups`; both offline), or the user's data read
by `soupline.tables` (a JSONL / CSV / Parquet file, a folder written by `datasets`' `save_to_disk`, or a folder of
such files). Either the user's own pool/validation/test files, or one source split here, seeded and stratified by
label. Every frame leaving this module has the columns `text` (str) and `label` (str), then the columns
named in `keep` (prepare.keep_columns: for example a quality score a selector reads), as they were.
Exact duplicate texts (whitespace, case and Unicode form ignored) are counted within and across splits: a test
text that is also in the pool is test leakage, and a repeated text with two labels is label
noise. `duplicates: drop` removes them (test wins over validation over pool); `keep` reports them.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from soupline.corpora import BUILTIN_CORPORA, load_builtin
from soupline.errors import SouplineError
from soupline.tables import SPLIT_ALIASES, read_table, scalar_cells

SPLITS = ("pool", "validation", "test")
MIN_PER_LABEL = 3  # one example each for pool, validation and test


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
        if scalar_cells(df[col]):
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
