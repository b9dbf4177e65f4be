"""Own data as users hand it over: a `~` source edited in place, Windows line endings in a swallowed-rows TSV, an
unclosed quote, prepare.splits naming the pool's file for an evaluation split, gzipped CSV and Parquet files."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from tests.conftest import make_frame
from soupline import config, data, tables
from soupline.errors import SouplineError

ARGS = dict(text_column="text", label_column="label", validation_size=0.1, test_size=0.2, seed=0)


def test_a_home_relative_source_is_keyed_on_its_content(tmp_path, monkeypatch):
    """`prepare.source: ~/c.jsonl` was read (read_table expands `~`) but not hashed: an edit in place left prepare
    "up to date" on the old data under `soupline run` and the flows."""
    from tasks import keys

    monkeypatch.setenv("HOME", str(tmp_path))
    make_frame(10).to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    params = config.validate(config.apply_overrides({}, ["prepare.source=~/c.jsonl"]))
    assert keys.source_contents("prepare", params)  # the file is part of the key
    before = keys.stage_key("prepare", params, tmp_path)
    make_frame(10).assign(label="other").to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    assert keys.stage_key("prepare", params, tmp_path) != before
    assert not keys.dvc_can_vouch("prepare", params, tmp_path)  # outside data/raw: DVC cannot see it change


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_swallowed_rows_are_warned_whatever_the_line_endings(tmp_path, newline):
    df = make_frame(10)
    df.loc[3, "text"] = '"quoted start ' + df.text[3]
    df.loc[9, "text"] = df.text[9] + ' a 12" screen'
    path = tmp_path / "raw.tsv"
    lines = ["text\tlabel"] + [f"{t}\t{lab}" for t, lab in zip(df.text, df.label)]
    path.write_bytes((newline.join(lines) + newline).encode())
    with pytest.warns(UserWarning, match="look like rows of their own"):
        tables.read_table(path, ("text", "label"))


def test_an_unclosed_quote_says_how_to_fix_it(tmp_path):
    df = make_frame(10)
    df.loc[3, "text"] = '"quoted start ' + df.text[3]
    path = tmp_path / "raw.tsv"
    path.write_text("\n".join(["text\tlabel"] + [f"{t}\t{lab}" for t, lab in zip(df.text, df.label)]) + "\n")
    with pytest.raises(SouplineError, match="starts with a double quote.*quote such fields"):
        tables.read_table(path, ("text", "label"))


def test_pool_file_named_as_an_evaluation_split_is_one_line(tmp_path):
    df = make_frame(20)
    df[:40].to_csv(tmp_path / "a.csv", index=False)
    df[40:].to_csv(tmp_path / "t.csv", index=False)
    splits = {"pool": str(tmp_path / "a.csv"), "validation": str(tmp_path / "." / "a.csv"),
              "test": str(tmp_path / "t.csv")}
    with pytest.raises(SouplineError, match="prepare.splits.pool and prepare.splits.validation both name"):
        data.load_splits("ignored", splits, **ARGS)


def test_a_pool_emptied_by_duplicates_drop_says_why(tmp_path):
    """It was 'the pool has 0 label(s); classification needs at least 2'."""
    df = make_frame(20)
    df[:40].to_csv(tmp_path / "a.csv", index=False)
    df[:40].to_csv(tmp_path / "copy.csv", index=False)
    df[40:].to_csv(tmp_path / "t.csv", index=False)
    splits = {"pool": str(tmp_path / "a.csv"), "validation": str(tmp_path / "copy.csv"),
              "test": str(tmp_path / "t.csv")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SouplineError, match="pool split has no rows left.*duplicates: drop"):
            data.load_splits("ignored", splits, duplicates="drop", **ARGS)


@pytest.mark.parametrize("name", ["texts.csv", "texts.csv.gz"])
def test_blank_lines_after_the_last_row_are_no_rows_in_a_gzipped_csv_too(tmp_path, name):
    """`_trailing_blank_lines` read the compressed bytes of a .csv.gz: `soupline predict texts.csv.gz` refused the
    file's trailing blank lines as rows without a text."""
    import gzip

    body = b"text\nthe team won\nshares rose\n\n\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    assert tables.read_table(path, ("text",), as_text=True)["text"].tolist() == ["the team won", "shares rose"]


def test_a_gzipped_parquet_file_is_read(tmp_path):
    """A `.parquet.gz` passed the file-type check (".jsonl, .json, .csv, .tsv (each may be .gz-compressed), .parquet")
    and failed in pyarrow: 'Parquet magic bytes not found in footer'."""
    import gzip

    make_frame(10).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "c.parquet.gz").write_bytes(gzip.compress((tmp_path / "c.parquet").read_bytes()))
    assert tables.read_table(tmp_path / "c.parquet.gz", ("text", "label")).equals(pd.read_parquet(tmp_path / "c.parquet"))
