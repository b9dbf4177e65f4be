"""Own data as real exports write it: Excel's semicolon CSV (and its `sep=;` line), a nested label field that
`soupline predict` scores as prepare reads it and writes to CSV as JSON, `datasets`' Parquet files with a ClassLabel
column, and a pandas ordered categorical label column."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from soupline import data, tables
from soupline.errors import SouplineError
from tasks import predict
from tasks.layout import Layout
from tests.conftest import make_frame, one_ingredient_params
from tests.test_predict import untrained

ARGS = dict(text_column="text", label_column="label", validation_size=0.1, test_size=0.2, seed=0)


def excel_csv(frame: pd.DataFrame, sep: str) -> bytes:
    """`frame` as Excel's "CSV UTF-8" writes it: a byte-order mark, CRLF line ends, texts quoted; with `sep` ";" where
    the decimal mark is a comma (German, French, ... settings), which also writes `4,5` for 4.5."""
    out = frame.assign(rating=frame["rating"].map(lambda v: str(v).replace(".", ",") if sep == ";" else str(v)))
    return ("\ufeff" + out.to_csv(sep=sep, index=False, lineterminator="\r\n")).encode()


def test_an_excel_semicolon_csv_is_read_as_the_same_data_saved_with_commas(tmp_path):
    """Excel where the decimal mark is a comma saves "CSV" with `;` and cannot save it with commas; it was one line
    asking to save it comma-separated (or as .jsonl / .parquet, which Excel does not write either)."""
    frame = make_frame(10).assign(rating=[0.5 * (i % 9) for i in range(30)])
    frame.loc[3, "text"] += "\r\nsecond line; with, a comma"  # a quoted line break, separators inside a text
    (tmp_path / "semi.csv").write_bytes(excel_csv(frame, ";"))
    (tmp_path / "commas.csv").write_bytes(excel_csv(frame, ","))
    semi = data.load_splits(str(tmp_path / "semi.csv"), None, keep_columns=("rating",), **ARGS)
    commas = data.load_splits(str(tmp_path / "commas.csv"), None, keep_columns=("rating",), **ARGS)
    for name in data.SPLITS:
        pd.testing.assert_frame_equal(semi[name], commas[name])
    assert semi["pool"]["rating"].dtype == float  # `4,5` is 4.5, as select.dnc.q: column:rating needs a number
    got = tables.read_table(tmp_path / "semi.csv", as_text=True)  # what `soupline predict` reads
    assert list(got.columns) == ["text", "label", "rating"] and got["text"][3] == frame["text"][3]
    (tmp_path / "semi.csv").write_bytes(excel_csv(frame, ";") + b"a text;sport;1;2\r\n")
    with pytest.raises(SouplineError, match="a text holding a semicolon must be quoted"):  # not "a comma"
        tables.read_table(tmp_path / "semi.csv", ("text", "label"))


@pytest.mark.parametrize("sep, first", [(";", "sep=;"), (",", "sep=,"), (";", '"sep=;"'), ("\t", "sep=\t")])
def test_an_excel_sep_line_says_the_separator_and_is_no_row(tmp_path, sep, first):
    """A first line `sep=;` tells Excel the separator (Excel hides it; exports made for Excel write it): it was read
    as the header, columns ['sep=', 'Unnamed: 1'], and the text column was "not found"."""
    frame = make_frame(10).assign(rating=[0.5 * (i % 9) for i in range(30)])
    frame.loc[3, "text"] += "\r\nsep=; a text line"
    (tmp_path / "plain.csv").write_bytes(excel_csv(frame, ","))
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + f"{first}\r\n".encode() + excel_csv(frame, sep)[3:])
    excel = data.load_splits(str(tmp_path / "excel.csv"), None, keep_columns=("rating",), **ARGS)
    plain = data.load_splits(str(tmp_path / "plain.csv"), None, keep_columns=("rating",), **ARGS)
    for name in data.SPLITS:
        pd.testing.assert_frame_equal(excel[name], plain[name])
    got = tables.read_table(tmp_path / "excel.csv", as_text=True)  # what `soupline predict` reads
    assert list(got.columns) == ["text", "label", "rating"] and len(got) == 30 and got["text"][3] == frame["text"][3]


def test_an_excel_workbook_says_how_to_save_it_as_csv(tmp_path):
    (tmp_path / "tickets.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(SouplineError, match=r"unsupported file type '.xlsx'; use .jsonl, .json, .csv \(in Excel: Save "
                                            r"As > CSV UTF-8\), .tsv"):
        tables.read_table(tmp_path / "tickets.xlsx")


def test_a_datasets_parquet_file_is_read_with_its_classlabel_names(tmp_path):
    """`Dataset.to_parquet` and the hub's Parquet files keep a ClassLabel column as ids, its names in the schema's
    metadata: they were read as labels `0`, `1`, `2` (in labels.json and the report), where the same data saved with
    save_to_disk was read as its names, in their order."""
    import datasets

    order = ["tech", "sport", "business"]
    frame = make_frame(20)
    ds = datasets.Dataset.from_pandas(frame.assign(label=frame["label"].map(order.index)), preserve_index=False)
    ds = ds.cast_column("label", datasets.ClassLabel(names=order))
    ds.to_parquet(tmp_path / "one.parquet")
    frames = data.load_splits(str(tmp_path / "one.parquet"), None, **ARGS)
    assert data.label_names(frames) == order
    assert sorted(frames["pool"]["label"].unique()) == sorted(order)
    (tmp_path / "hub").mkdir()  # a hub dataset's files: a split per file name, two train shards
    splits = ds.train_test_split(test_size=0.3, seed=0)
    splits["train"].shard(2, 0, contiguous=True).to_parquet(tmp_path / "hub" / "train-00000-of-00002.parquet")
    splits["train"].shard(2, 1, contiguous=True).to_parquet(tmp_path / "hub" / "train-00001-of-00002.parquet")
    splits["test"].to_parquet(tmp_path / "hub" / "test-00000-of-00001.parquet")
    with pytest.warns(UserWarning, match="no validation split"):
        frames = data.load_splits(str(tmp_path / "hub"), None, **ARGS)
    assert data.label_names(frames) == order and len(frames["test"]) == 18
    assert set(frames["test"]["label"]) == set(order)


def test_an_ordered_categorical_label_column_declares_its_order(tmp_path):
    """A Parquet label column saved from a pandas `Categorical(..., ordered=True)` (`low` < `mid` < `high`) gave the
    label ids in sorted order (`high`, `low`, `mid`); an unordered one, or integer categories, still sort."""
    order = ["tech", "sport", "business"]
    frame = make_frame(10)
    ordered = pd.Categorical(frame["label"], categories=order, ordered=True)
    frame.assign(label=ordered).to_parquet(tmp_path / "o.parquet")
    assert data.label_names(data.load_splits(str(tmp_path / "o.parquet"), None, **ARGS)) == order
    frame.assign(label=pd.Categorical(frame["label"], categories=order)).to_parquet(tmp_path / "u.parquet")
    assert data.label_names(data.load_splits(str(tmp_path / "u.parquet"), None, **ARGS)) == sorted(order)
    codes = pd.Categorical(frame["label"].map({"tech": 10, "sport": 2, "business": 1}), categories=[10, 2, 1],
                           ordered=True)  # integers: sorted as numbers, and prepare.label_names names them
    frame.assign(label=codes).to_parquet(tmp_path / "i.parquet")
    assert data.label_names(data.load_splits(str(tmp_path / "i.parquet"), None, **ARGS)) == ["1", "2", "10"]


def test_predict_scores_a_nested_label_field(tmp_path, tiny_model, capsys):
    """`prepare.label_column: annot.cat` (a field of JSON records, as prepare reads it): predict wrote its
    predictions but no accuracy, silently, as if the file had no labels."""
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "prepare.label_column=annot.cat")
    model = untrained(tiny_model, ["3", "7"], tmp_path / "classifier")
    pd.DataFrame({"text": ["a late goal", "shares rose", "a phone"],
                  "annot": [{"cat": 3, "by": "a"}, {"cat": 7, "by": "b"}, {"cat": None, "by": "c"}]}).to_json(
        tmp_path / "nested.jsonl", orient="records", lines=True)
    out = predict.run(params, Layout(tmp_path), str(tmp_path / "nested.jsonl"), str(model))
    assert "on 2 labelled rows" in capsys.readouterr().err
    assert list(out.columns) == ["text", "annot", "prediction", "score"]  # the file's columns, as they were
    assert out["prediction"].map(type).eq(int).all()  # the field's labels are numbers: so are the predictions


def test_predictions_to_csv_write_nested_records_as_json(tmp_path, tiny_model):
    """`--out preds.csv` of JSON lines with records (or a Parquet struct / list column): the cells were Python's repr,
    `{'cat': None, 'by': ['a']}`, which no JSON reader takes back."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = str(untrained(tiny_model, ["sport", "tech"], tmp_path / "classifier"))
    annot = [{"cat": "sport", "by": ["a", "b"]}, {"cat": None, "by": []}]
    frame = pd.DataFrame({"text": ["a late goal", "a phone"], "annot": annot, "n": [1, 2]})
    frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "in.parquet")
    for source in ("in.jsonl", "in.parquet"):
        for out in ("out.csv", "out.tsv"):
            predict.run(params, layout, str(tmp_path / source), model, str(tmp_path / out))
            back = pd.read_csv(tmp_path / out, sep="\t" if out.endswith(".tsv") else ",")
            assert back["annot"].map(json.loads).tolist() == annot and back["n"].tolist() == [1, 2]
