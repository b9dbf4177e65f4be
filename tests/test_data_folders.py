"""A folder of data files as one source: shards joined, or a frame per split its file names name."""

import gzip

import pandas as pd
import pytest

from soupline import data, tables
from soupline.errors import SouplineError


def _split(source, **kw):
    args = dict(splits=None, text_column="text", label_column="label", validation_size=0.1, test_size=0.2, seed=0)
    return data.load_splits(source, **{**args, **kw})


def test_shards_are_one_source_joined_in_name_order(tmp_path, frame):
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    frame.iloc[:20].to_parquet(folder / "part-00000.parquet")
    frame.iloc[20:45].to_parquet(folder / "part-00001.parquet")
    frame.iloc[45:].to_parquet(folder / "sub" / "part-00002.parquet")  # below it, read too
    (folder / "_SUCCESS").write_text("")  # Spark's marker, and other files: not data
    (folder / "README.md").write_text("# about")
    (folder / ".hidden.parquet").write_bytes(b"not parquet")
    table = tables.read_table(folder)
    pd.testing.assert_frame_equal(table, frame.reset_index(drop=True))
    frames = _split(str(folder))
    assert sorted(pd.concat(frames.values())["text"]) == sorted(frame["text"])


def test_a_shard_folder_splits_as_the_same_rows_in_one_file(tmp_path, frame):
    folder = tmp_path / "jsonl"
    folder.mkdir()
    for i, start in enumerate(range(0, len(frame), 25)):
        frame.iloc[start:start + 25].to_json(folder / f"part-{i}.jsonl", orient="records", lines=True)
    frame.to_json(tmp_path / "all.jsonl", orient="records", lines=True)
    from_folder, from_file = _split(str(folder)), _split(str(tmp_path / "all.jsonl"))
    for name in data.SPLITS:
        pd.testing.assert_frame_equal(from_folder[name], from_file[name])


def test_a_spark_export_with_an_empty_or_one_row_part_file_is_one_source(tmp_path, frame):
    """Spark writes empty part files, and a part of one record; either refused the whole source ('is empty', or
    pandas' 'If using all scalar values, you must pass an index' for a one-line .json). A folder of empty files is
    still one line."""
    folder = tmp_path / "export"
    folder.mkdir()
    frame.iloc[:-1].to_json(folder / "part-00000.json", orient="records", lines=True)
    (folder / "part-00001.json").write_text("")
    with gzip.open(folder / "part-00002.json.gz", "wt") as f:
        f.write("\n")
    frame.iloc[-1:].to_json(folder / "part-00003.json", orient="records", lines=True)  # one record, one line
    (folder / "_SUCCESS").write_text("")
    pd.testing.assert_frame_equal(tables.read_table(folder), frame.reset_index(drop=True), check_dtype=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "part-00000.json").write_text("")
    with pytest.raises(SouplineError, match=r"part-00000.json \(prepare.source / prepare.splits\) is empty"):
        tables.read_table(empty)


def test_shards_with_their_columns_in_another_order_are_one_table(tmp_path, frame):
    folder = tmp_path / "keys"
    folder.mkdir()
    frame.iloc[:30].to_json(folder / "part-0.jsonl", orient="records", lines=True)
    frame.iloc[30:][["label", "text"]].to_json(folder / "part-1.jsonl", orient="records", lines=True)
    pd.testing.assert_frame_equal(tables.read_table(folder), frame.reset_index(drop=True))


def test_file_names_that_name_splits_are_the_splits(tmp_path, frame):
    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    frame.iloc[:30].to_csv(folder / "data" / "train-00000-of-00002.csv", index=False)
    frame.iloc[30:40].to_csv(folder / "data" / "train-00001-of-00002.csv", index=False)
    frame.iloc[40:50].to_csv(folder / "data" / "dev.csv", index=False)
    with gzip.open(folder / "data" / "test.csv.gz", "wt") as f:
        frame.iloc[50:].to_csv(f, index=False)
    (folder / "dataset_info.json").write_text("{}")  # datasets' metadata: not a data file of another type
    table = tables.read_table(folder)
    assert sorted(table) == ["pool", "test", "validation"]
    assert table["pool"]["text"].tolist() == frame.iloc[:40]["text"].tolist()
    frames = _split(str(folder))
    assert [len(frames[s]) for s in data.SPLITS] == [40, 10, len(frame) - 50]
    assert frames["test"]["text"].tolist() == frame.iloc[50:]["text"].tolist()


def test_split_folders_and_a_missing_validation_split_carved_from_the_pool(tmp_path, frame):
    folder = tmp_path / "byfolder"
    for split, rows in (("training", frame.iloc[:48]), ("testing", frame.iloc[48:])):
        (folder / split).mkdir(parents=True)
        rows.to_json(folder / split / "rows.jsonl", orient="records", lines=True)
    with pytest.warns(UserWarning, match="has no validation split"):
        frames = _split(str(folder))
    assert [len(frames[s]) for s in data.SPLITS] == [43, 5, 12]
    assert frames["test"]["text"].tolist() == frame.iloc[48:]["text"].tolist()


def test_a_word_inside_a_name_is_no_split(tmp_path, frame):
    folder = tmp_path / "words"
    folder.mkdir()
    frame.iloc[:30].to_csv(folder / "contest.csv", index=False)  # "test" inside a word
    frame.iloc[30:].to_csv(folder / "retrained.csv", index=False)
    assert len(tables.read_table(folder)) == len(frame)


def test_prepare_splits_may_name_a_folder_of_one_splits_shards(tmp_path, frame):
    shards = tmp_path / "pool"
    shards.mkdir()
    frame.iloc[:20].to_parquet(shards / "a.parquet")
    frame.iloc[20:50].to_parquet(shards / "b.parquet")
    frame.iloc[50:].to_parquet(tmp_path / "test.parquet")
    with pytest.warns(UserWarning, match="has no validation split"):
        frames = _split(None, splits={"pool": str(shards), "test": str(tmp_path / "test.parquet")})
    assert len(frames["pool"]) + len(frames["validation"]) == 50


@pytest.mark.parametrize("case, match", [
    ("empty", r"is a folder with no data file \(.jsonl, .json, .ndjson, .csv, .tsv, .parquet, each may be .gz\) and "
              r"not one written by datasets' save_to_disk; put the data there, or name the files of your splits"),
    ("two types", r"holds data files of 2 types \(.csv, .jsonl\); keep one type in a data folder \(prepare.source\)"),
    ("splits of two types", r"keep one type in a data folder, or name each split's file in prepare.splits: "
                            r"\{pool: <file>, test: <file>\} \(each may be its own type\)"),  # it said to convert
    ("unnamed beside named", r"the file names say splits, but not one each for \['extra.csv', 'train_test.csv'\]"),
    ("other columns", r"b.csv has columns \['body', 'label'\], but .*a.csv has \['text', 'label'\]; the files of a "
                      r"data folder share their columns"),
    ("bad file", r"cannot read .*b.jsonl: line 2, column"),
])
def test_a_folder_that_cannot_be_one_source_is_one_line(tmp_path, frame, case, match):
    folder = tmp_path / "f"
    folder.mkdir()
    if case == "two types":
        frame.to_csv(folder / "a.csv", index=False)
        frame.to_json(folder / "b.jsonl", orient="records", lines=True)
    elif case == "splits of two types":
        frame.to_csv(folder / "train.csv", index=False)
        frame.to_json(folder / "test.jsonl", orient="records", lines=True)
    elif case == "unnamed beside named":
        for name in ("train.csv", "test.csv", "extra.csv", "train_test.csv"):
            frame.to_csv(folder / name, index=False)
    elif case == "other columns":
        frame.to_csv(folder / "a.csv", index=False)
        frame.rename(columns={"text": "body"}).to_csv(folder / "b.csv", index=False)
    elif case == "bad file":
        frame.to_json(folder / "a.jsonl", orient="records", lines=True)
        (folder / "b.jsonl").write_text('{"text": "x", "label": "y"}\n{"text": oops}\n')
    with pytest.raises(SouplineError, match=match):
        _split(str(folder))


def test_other_readers_of_a_folder_say_what_they_take(tmp_path, frame):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SouplineError, match=r"put the data there, or give one .jsonl/.csv/.parquet file \(the file "):
        tables.read_table(tmp_path / "empty", param="the file to predict")
