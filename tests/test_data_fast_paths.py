"""The fast paths of reading your own data (session 50): the same frames, warnings and errors as the per-cell loops
they replace, which `benchmarks/prepare_speed.py` times against the baseline commit's data.py."""

import string
import unicodedata

import pandas as pd
import pytest

from soupline import data, tables
from tests.conftest import make_frame


def _full_reads(monkeypatch) -> list:
    """The read_csv calls that parse rows (not `nrows=0`, a header), recorded as they happen."""
    calls, real = [], pd.read_csv

    def read_csv(*args, **kwargs):
        if kwargs.get("nrows") != 0:
            calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", read_csv)
    return calls


def test_a_csv_of_the_columns_read_is_parsed_once_as_written(tmp_path, monkeypatch):
    """A CSV of text and label alone was parsed twice (pandas' NaN words, then as written) and with dtype=str, 0.9 s
    of a 100,000-row file: now once, without dtype=str, when pandas infers strings. The cells are as written still:
    a label `None`, a text `null`, an empty cell missing. A column pandas parses otherwise (a code 007, a score) is
    read again as written, then kept as `_as_written_values` says; a file with another column parses that one as
    pandas does (`NA` missing there)."""
    path = tmp_path / "d.csv"
    path.write_text("text,label\nnull,None\n,sport\nhello,NA\n")
    calls = _full_reads(monkeypatch)
    df = tables.read_table(path, ("text", "label"))
    assert len(calls) == 1 and "dtype" not in calls[0]
    assert df["text"].tolist()[::2] == ["null", "hello"] and pd.isna(df["text"][1])
    assert df["label"].tolist() == ["None", "sport", "NA"]
    path.write_text("text,label,score,code\nnull,None,1.5,007\n,sport,2,8\nhello,NA,,9\n")
    df = tables.read_table(path, ("text", "label"), keep=("score", "code"))
    assert df["label"].tolist() == ["None", "sport", "NA"] and df["code"].tolist() == ["007", "8", "9"]
    assert df["score"].tolist()[:2] == [1.5, 2.0] and pd.isna(df["score"][2])
    other = tables.read_table(path, ("text", "label"), keep=("score",))  # `code` is no column soupline reads
    assert other["code"].tolist() == [7, 8, 9] and other[["text", "label", "score"]].equals(df[["text", "label",
                                                                                                "score"]])


def test_a_csv_with_other_columns_is_parsed_once(tmp_path, monkeypatch):
    """A CSV with a column soupline does not read (an id, a date) was parsed whole twice, with dtype=str (5x slower):
    pandas' parse of every column, then the text, label and kept ones again as written. Now once without dtype=str
    (only a column read as written that pandas parsed otherwise, here the code 007, again): those as written (a label
    `None`, a text `NA`, an empty cell missing, the code as text), the others as pandas parses them by default (`NA`,
    `null` and an empty cell missing, numbers and booleans parsed), by position where a header names a column
    twice."""
    path = tmp_path / "d.csv"
    path.write_text("id,text,label,code,note,note,flag\n1,NA,None,007,NA,x,True\n2,hi,sport,8,,null,False\n"
                    "3,,NA,,n/a,3,True\n")
    calls = _full_reads(monkeypatch)
    df = tables.read_table(path, ("text", "label"), keep=("code",))
    assert len(calls) == 2 and "dtype" not in calls[0] and calls[1]["usecols"] == [3]
    assert df["text"].tolist()[:2] == ["NA", "hi"] and pd.isna(df["text"][2])
    assert df["label"].tolist() == ["None", "sport", "NA"]
    assert df["code"].tolist()[:2] == ["007", "8"] and pd.isna(df["code"][2])
    assert df["id"].tolist() == [1, 2, 3] and df["flag"].tolist() == [True, False, True]
    assert df["note"].isna().all() and df["note.1"].tolist()[::2] == ["x", "3"] and pd.isna(df["note.1"][1])
    path.write_text("text,label,id\nhi,a,\nho,b,12345678901234567890\n")  # pandas leaves such blanks "", not missing
    assert tables.read_table(path, ("text", "label"), keep=("id",))["id"].isna().tolist() == [True, False]
    assert tables.read_table(path, as_text=True)["id"].isna().tolist() == [True, False]


def test_checks_of_each_cell_skip_columns_of_strings(tmp_path, monkeypatch):
    """A column whose dtype holds strings can hold no bytes, list or record, and its duplicate keys and labels are
    taken over lists: no Python function runs per cell through `Series.map` (on Arrow strings it converts each cell
    on its own: 0.1-0.3 s per 100,000 texts for each check). An object column is still checked cell by cell."""
    path = tmp_path / "d.parquet"
    make_frame(20).to_parquet(path)
    monkeypatch.setattr(pd.Series, "map", lambda *a, **kw: pytest.fail("Series.map over a column of strings"))
    frames = data.load_splits(str(path), None, "text", "label", 0.2, 0.2, 0)
    assert sum(map(len, frames.values())) == 60 and data.duplicate_counts(frames)["within_pool"] == 0
    assert not tables.scalar_cells(pd.Series([["a"], "b"], dtype=object))


@pytest.mark.parametrize("text", ["", " \t\n", "A  b\x1c\x1dC\x0b\x0cd\r\n", "x" * 40 + " \x1f Y",
                                  string.printable, "MiXeD CaSe  words"])
def test_an_ascii_text_keys_as_the_unicode_path_does(text):
    """`loose_key` skips NFC and the zero-width characters for an ASCII text: neither changes one."""
    full = " ".join(unicodedata.normalize("NFC", data._INVISIBLE.sub("", text)).split()).casefold()
    assert data.loose_key(text) == full


def test_blank_by_pyarrow_matches_pythons_re():
    """`blank` hands pyarrow the pattern (RE2): the same rows as Python's re on an object column."""
    values = ["", " ", "\u200b", " \u200b\u00ad ", "a\u200b", "\ufeff", "x", "\u2060\t", "\u200c\u200dq", "\u3000"]
    arrow, python = data.blank(pd.Series(values, dtype="str")), data.blank(pd.Series(values, dtype=object))
    assert arrow.tolist() == python.tolist() == [True] * 4 + [False, True, False, True, False, True]
