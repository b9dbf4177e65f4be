"""Splits of the user's own that prepare empties or cannot measure on, and label columns written two ways."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from soupline import data
from soupline.errors import SouplineError
from tests.conftest import ROOT


def _split(source, **kw):
    args = dict(splits=None, text_column="text", label_column="label", validation_size=0.1, test_size=0.2, seed=42)
    return data.load_splits(source, **{**args, **kw})


def _files(tmp_path, **frames) -> dict[str, str]:
    out = {}
    for name, df in frames.items():
        df.to_csv(tmp_path / f"{name}.csv", index=False)
        out[name] = str(tmp_path / f"{name}.csv")
    return out


def test_a_validation_split_that_duplicates_drop_empties_is_one_line(tmp_path, frame):
    """Every validation text also in test: `duplicates: drop` left validation empty, prepare and doctor passed it, and
    train failed with an IndexError after embed and select had run."""
    files = _files(tmp_path, pool=frame.iloc[:40], validation=frame.iloc[50:55], test=frame.iloc[50:])
    with pytest.raises(SouplineError, match=r"the validation split has no rows left"):
        _split("ignored", splits=files, duplicates="drop")


def test_a_test_split_without_a_pool_label_is_one_line(tmp_path, frame):
    """A hub split exported to files keeps its hidden labels as -1: every model scored test accuracy 0."""
    folder = tmp_path / "export"
    folder.mkdir()
    frame.iloc[:50].to_json(folder / "train.jsonl", orient="records", lines=True)
    frame.iloc[50:].assign(label=-1).to_json(folder / "test.jsonl", orient="records", lines=True)
    with pytest.raises(SouplineError, match=r"none of the test split's labels \['-1'\] is a pool label"):
        _split(str(folder))


def test_min_label_examples_refuses_a_folder_of_splits_too(tmp_path, frame):
    """README: under `error` your splits are refused for a min_label_examples raised above 3; a train/test folder
    was not."""
    folder = tmp_path / "tt"
    folder.mkdir()
    frame.iloc[:45].to_json(folder / "train.jsonl", orient="records", lines=True)
    frame.iloc[45:].to_json(folder / "test.jsonl", orient="records", lines=True)
    with pytest.raises(SouplineError, match=r"fewer than 25 examples in the pool, prepare.min_label_examples"):
        _split(str(folder), min_label_examples=25)


def test_integer_labels_written_as_1_and_1_0_are_one_label(tmp_path, frame):
    """Two CSV shards, one written by pandas from a float column (a missing label: 1.0): six labels 0, 0.0, ..."""
    ids = frame.assign(label=frame["label"].map({"sport": 0, "business": 1, "tech": 2}))
    folder = tmp_path / "shards"
    folder.mkdir()
    ids.iloc[:30].to_csv(folder / "part-0.csv", index=False)
    ids.iloc[30:].assign(label=ids["label"].iloc[30:].astype(float)).to_csv(folder / "part-1.csv", index=False)
    assert data.label_names(_split(str(folder))) == ["0", "1", "2"]


def test_max_examples_keeps_a_label_your_split_holds_once(tmp_path, frame):
    """A validation file with one example of a label: every max_examples below the whole data was sklearn's
    'least populated class' error."""
    rest = frame.iloc[40:]
    val = pd.concat([rest[rest["label"] != "tech"].iloc[:8], rest[rest["label"] == "tech"].iloc[:1]])
    files = _files(tmp_path, pool=frame.iloc[:40], validation=val, test=rest.drop(index=val.index))
    frames = _split("ignored", splits=files, max_examples=40)
    assert len(frames["validation"]) < len(val) and "tech" in set(frames["validation"]["label"])


def test_a_csv_row_repeating_the_header_is_one_line(tmp_path, frame):
    """`cat a.csv b.csv c.csv d.csv > all.csv`: three header lines became a fourth label `label` (text `text`)."""
    frame.to_csv(tmp_path / "a.csv", index=False)
    part = (tmp_path / "a.csv").read_text()
    (tmp_path / "all.csv").write_text(part * 4)
    with pytest.raises(SouplineError, match=r"data row 61 repeats the header \['text', 'label'\] \(3 row"):
        _split(str(tmp_path / "all.csv"))


def test_one_label_is_named_as_such_however_few_rows(tmp_path, frame):
    """5 rows of one label asked for "fewer labels" (the split sizes' line); 20 rows said classification needs 2."""
    frame[frame["label"] == "sport"].head(5).to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(SouplineError, match=r"the data has 1 label \(\['sport'\]\); classification needs at least 2"):
        _split(str(tmp_path / "one.csv"))


def test_a_folder_s_eval_file_is_its_test_split_as_datasets_reads_it(tmp_path, frame):
    """`train.jsonl` + `eval.jsonl` (datasets' split keywords: eval / evaluation name the test split) was refused."""
    folder = tmp_path / "export"
    folder.mkdir()
    frame.iloc[:50].to_json(folder / "train.jsonl", orient="records", lines=True)
    frame.iloc[50:].to_json(folder / "eval.jsonl", orient="records", lines=True)
    frames = _split(str(folder))
    assert sorted(frames["test"]["text"]) == sorted(frame.iloc[50:]["text"])


def test_a_folder_whose_eval_and_test_files_make_one_split_warns(tmp_path, frame):
    """train / eval / test files: eval and test were joined into the test split without a word (many projects mean
    validation by eval)."""
    folder = tmp_path / "export"
    folder.mkdir()
    frame.iloc[:40].to_json(folder / "train.jsonl", orient="records", lines=True)
    frame.iloc[40:50].to_json(folder / "eval.jsonl", orient="records", lines=True)
    frame.iloc[50:].to_json(folder / "test.jsonl", orient="records", lines=True)
    with pytest.warns(UserWarning, match=r"files named \['eval', 'test'\] are all read as the test split, joined"):
        frames = _split(str(folder))
    assert len(frames["test"]) == len(frame) - 40


def test_a_missing_split_file_names_its_key_and_offers_no_corpus(tmp_path, frame):
    """A split file that does not exist was told to give 'a built-in corpus' (which a split cannot be), naming
    'prepare.source / prepare.splits' rather than the split's own key."""
    files = {**_files(tmp_path, pool=frame), "validation": str(tmp_path / "nope.csv")}
    with pytest.raises(SouplineError) as err:
        _split("ignored", splits=files)
    assert str(err.value).endswith("nope.csv' does not exist; give a file or folder (prepare.splits.validation)")
    with pytest.raises(SouplineError, match=r"\(did you mean the built-in corpus 'bbcnews'\?\).*built-in corpus "
                                            r"\['bbcnews', '20newsgroups'\] \(prepare.source\)$"):
        _split("bbcnewz")


def test_a_split_column_divides_the_rows_as_written(tmp_path, frame):
    """A file whose `split` column names each row's split: prepare ignored it and split the rows anew, so test rows
    were trained on; `prepare.split_column` keeps them (a missing validation split carved from the pool)."""
    named = frame.assign(split=["Train"] * 40 + ["test "] * 20)
    named.to_csv(tmp_path / "all.csv", index=False)
    frames = _split(str(tmp_path / "all.csv"), split_column="split")
    assert frames["test"]["text"].tolist() == frame["text"].iloc[40:].tolist()
    assert len(frames["pool"]) + len(frames["validation"]) == 40


def test_the_summary_and_report_say_a_split_column_divided_the_rows(tmp_path, frame, capsys):
    """summary.json and report.md's data section named the source alone: a reader could not tell the splits were the
    file's own, not drawn by prepare."""
    from soupline.report import source_text
    from tasks.prepare import main, run

    source = tmp_path / "all.csv"
    frame.assign(split=["train"] * 40 + ["test"] * 20).to_csv(source, index=False)
    argv = ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--set", f"prepare.source={source}"]
    main("prepare", run, [*argv, "--set", "prepare.split_column=split"])
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert summary["split_column"] == "split" and summary["sizes"]["test"] == 20
    assert source_text(summary["source"], summary["split_column"]) == (
        f"`{source}`, divided into splits by its column `split` (`prepare.split_column`)")
    main("prepare", run, argv)  # unset: prepare split the rows itself, with a warning
    assert "set prepare.split_column: split" in capsys.readouterr().err
    assert "split_column" not in json.loads((tmp_path / "data/prepared/summary.json").read_text())


def test_a_split_column_left_unset_is_a_warning(tmp_path, frame):
    """Without prepare.split_column such a column was ignored silently."""
    frame.assign(split=["train"] * 40 + ["validation"] * 6 + ["test"] * 14).to_json(
        tmp_path / "all.jsonl", orient="records", lines=True)
    with pytest.warns(UserWarning, match=r"column 'split' names each row's split \['test', 'train', 'validation'\], "
                                         r"but prepare splits the rows itself; set prepare.split_column: split"):
        _split(str(tmp_path / "all.jsonl"))


@pytest.mark.parametrize("values, stray", [
    (["train"] * 25 + ["test"] * 5 + ["unsupervised"] * 30, r"'unsupervised' in 30 rows"),  # IMDB's, half the rows
    (["train"] * 40 + ["test"] * 17 + [""] * 2 + [None], r"'' in 2 rows, missing in 1 row"),
])
def test_a_split_column_with_other_values_left_unset_is_a_warning(tmp_path, frame, values, stray):
    """A column of split names beside another value (IMDB's `unsupervised`) or a few blanks was not warned of, though
    prepare ignored it as well and split the rows anew; the warning names the values that are not split names."""
    frame.assign(split=values).to_parquet(tmp_path / "all.parquet")
    with pytest.warns(UserWarning, match=r"column 'split' names each row's split \['test', 'train'\] \(and values "
                                         rf"that are not split names: {stray}\), but prepare splits the rows itself"):
        _split(str(tmp_path / "all.parquet"))


@pytest.mark.parametrize("column", [
    ["train"] * 20 + ["test"] * 9 + ["bus", "car", "ship"] * 10 + ["plane"],  # a topic: split names a minority
    [f"a text {i}" for i in range(58)] + ["train", "test"],  # a title: many values
    ["train", "training"] * 30,  # the pool alone
])
def test_a_column_that_is_not_a_split_column_is_no_warning(tmp_path, frame, column):
    """Neither a text or label column (read, never taken for one) nor another column whose split names are a
    minority of its rows, one of many values, or the pool's alone is taken for a split column."""
    frame.assign(label=["train", "test", "bus"] * 20, tag=column).to_csv(tmp_path / "all.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _split(str(tmp_path / "all.csv"))


@pytest.mark.parametrize("values, message", [
    (["train"] * 59 + [None], r"1 row name no split in column 'split'"),
    (["a"] * 40 + ["test"] * 20, r"names no pool split among \['a', 'test'\]; name the training rows pool or train"),
])
def test_a_split_column_without_a_split_or_a_pool_is_one_line(tmp_path, frame, values, message):
    frame.assign(split=values).to_parquet(tmp_path / "all.parquet")
    with pytest.raises(SouplineError, match=message):
        _split(str(tmp_path / "all.parquet"), split_column="split")


def test_a_split_column_beside_split_files_is_one_line():
    from soupline import config

    with pytest.raises(SouplineError, match=r"split_column 'split' divides prepare.source, which prepare.splits "):
        config.validate(config.apply_overrides({}, ["prepare.split_column=split", "prepare.splits={pool: a.csv}"]))
