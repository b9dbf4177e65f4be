"""prepare.rare_labels / prepare.min_label_examples: labels too rare to split refused (error) or dropped (drop)."""

import json
import re

import pandas as pd
import pytest

from soupline import config, data
from soupline.errors import SouplineError
from tests.conftest import ROOT


def _split(source, **kw):
    args = dict(splits=None, text_column="text", label_column="label", validation_size=0.1, test_size=0.2, seed=0)
    args.update(kw)
    return data.load_splits(source, **args)


def _rows(label: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{label} example number {i}" for i in range(n)], "label": [label] * n})


def _long_tail(tmp_path, frame, tail: dict[str, int]):
    """frame (3 labels x 20) plus `tail` labels of a few rows each, shuffled, as a CSV; its path."""
    df = pd.concat([frame, *(_rows(label, n) for label, n in tail.items())], ignore_index=True)
    df.sample(frac=1.0, random_state=1).to_csv(tmp_path / "d.csv", index=False)
    return str(tmp_path / "d.csv")


def test_drop_removes_exactly_the_rare_labels_rows_as_cleaning_by_hand_would(tmp_path, frame):
    source = _long_tail(tmp_path, frame, {"a": 1, "b": 2, "c": 3})
    gone = {}
    with pytest.warns(UserWarning, match=r"dropped 2 labels with fewer than 3 examples \(prepare.rare_labels: drop\) "
                                         r"and their 3 rows: 'a', 'b'"):
        frames = _split(source, rare_labels="drop", rare_dropped=gone)
    assert gone == {"a": 1, "b": 2}
    assert set().union(*(set(f["label"]) for f in frames.values())) == {"business", "sport", "tech", "c"}
    assert sum(len(f) for f in frames.values()) == len(frame) + 3
    by_hand = pd.read_csv(source).loc[lambda d: ~d["label"].isin(["a", "b"])]  # the same rows, cleaned first
    by_hand.to_csv(tmp_path / "clean.csv", index=False)
    clean = _split(str(tmp_path / "clean.csv"))
    again = _split(source, rare_labels="drop")  # deterministic
    for name in data.SPLITS:
        pd.testing.assert_frame_equal(frames[name], clean[name])
        pd.testing.assert_frame_equal(frames[name], again[name])
    gone = {}
    frames = _split(source, rare_labels="drop", min_label_examples=4, rare_dropped=gone)  # c (3) goes too
    assert gone == {"a": 1, "b": 2, "c": 3} and "c" not in set(frames["pool"]["label"])
    with pytest.warns(UserWarning, match=r"dropped 1 label with fewer than 3 examples \(prepare.rare_labels: drop\) "
                                         r"and its 1 row: 'a'$"):  # was "1 label ... and their 1 rows"
        _split(_long_tail(tmp_path, frame, {"a": 1}), rare_labels="drop")
    with pytest.warns(UserWarning, match=r"their 2 rows: 'Sport', 'a' \('Sport' is 'sport' but for spaces, case or "
                                         r"Unicode form: clean the label column\)"):  # a misspelt label: merge it, not drop it
        _split(_long_tail(tmp_path, frame, {"a": 1, "Sport": 1}), rare_labels="drop")


def test_error_names_the_option_and_comes_before_max_examples(tmp_path, frame):
    source = _long_tail(tmp_path, frame, {"a": 1, "c": 5})
    with pytest.raises(SouplineError, match=r"labels \{'a': 1\} have fewer than 3 examples, too few to split; add "
                                            r"examples, remove those labels, or set prepare.rare_labels: drop"):
        _split(source)
    # a label of 1 was max_examples' error ("cannot take 40 of 66 rows ...; raise prepare.max_examples"), not its own
    with pytest.raises(SouplineError, match=r"labels \{'a': 1\} have fewer than 3"):
        _split(source, max_examples=40)
    with pytest.raises(SouplineError, match=r"labels \{'c': 5, 'a': 1\} have fewer than 6 examples, "
                                            r"prepare.min_label_examples; .*prepare.rare_labels: drop"):
        _split(source, min_label_examples=6)


def test_drop_comes_before_max_examples(tmp_path, frame):
    """Rare is counted in the whole source, so a quick run (max_examples) keeps the labels a full run keeps; a kept
    label the subsample would leave too few is max_examples' error, naming the min_label_examples that drops it."""
    source = _long_tail(tmp_path, frame, {"b": 2, "mid": 5})
    gone = {}
    frames = _split(source, rare_labels="drop", max_examples=40, rare_dropped=gone)
    assert gone == {"b": 2} and all(set(f["label"]) == {"business", "sport", "tech", "mid"} for f in frames.values())
    assert sum(len(f) for f in frames.values()) == 40
    with pytest.raises(SouplineError, match=r"leave labels \['mid'\] fewer than 3 examples, too few to split; raise "
                                            r"prepare.max_examples to 39 or more, or leave it null, or raise "
                                            r"prepare.min_label_examples to 6 to drop it"):
        _split(source, rare_labels="drop", max_examples=35)


def test_min_label_examples_below_3_is_one_line(tmp_path, frame):
    with pytest.raises(SouplineError, match=r"prepare.min_label_examples.*greater than or equal to 3"):
        config.load(ROOT / "params.yaml", ["prepare.min_label_examples=2"])
    with pytest.raises(SouplineError, match=r"prepare.rare_labels"):
        config.load(ROOT / "params.yaml", ["prepare.rare_labels=keep"])
    with pytest.raises(SouplineError, match=r"min_label_examples is 2; it must be 3 or more"):
        _split(_long_tail(tmp_path, frame, {}), min_label_examples=2)


def test_drop_leaving_fewer_than_two_labels_is_one_line(tmp_path, frame):
    """At the least min_label_examples (3) the line asked to lower it; a file of 5 rows read 'only none has'."""
    source = _long_tail(tmp_path, frame[frame["label"] == "sport"], {"a": 1, "b": 2})
    with pytest.raises(SouplineError, match=r"prepare.rare_labels: drop leaves 1 label\(s\) \['sport'\] of 3: only "
                                            r"that one has 3 or more examples .*needs at least 2; add examples$"):
        _split(source, rare_labels="drop")
    frame.groupby("label").head(2).iloc[:5].to_csv(tmp_path / "five.csv", index=False)  # 2, 2 and 1 of 3 labels
    with pytest.raises(SouplineError, match=r"drop leaves 0 label\(s\) \[\] of \d: no label has 3 or more examples "
                                            r"\(prepare.min_label_examples\), and .*; add examples$"):
        _split(str(tmp_path / "five.csv"), rare_labels="drop")
    with pytest.raises(SouplineError, match=r"drop leaves 0 label\(s\) \[\] of 5: no label has 50 or more .*; lower "
                                            r"prepare.min_label_examples \(3 at least\) or add examples$"):
        _split(_long_tail(tmp_path, frame, {"a": 1, "b": 2}), rare_labels="drop", min_label_examples=50)


def test_own_splits_count_the_pool_and_drop_the_label_everywhere(tmp_path, frame):
    """Splits of your own: a label is rare by its pool examples; its validation and test rows go too (no model can
    learn it), as do those of a label the pool lacks. Under `error` only a min_label_examples above 3 refuses them."""
    pool = pd.concat([frame.iloc[:40], _rows("rare", 2), _rows("lone", 1)], ignore_index=True)
    val = pd.concat([frame.iloc[40:50], _rows("rare", 1)], ignore_index=True)
    test = pd.concat([frame.iloc[50:], _rows("ghost", 1)], ignore_index=True)
    files = {}
    for name, df in (("pool", pool), ("validation", val), ("test", test)):
        df.to_csv(tmp_path / f"{name}.csv", index=False)
        files[name] = str(tmp_path / f"{name}.csv")
    with pytest.warns(UserWarning, match=r"labels \['ghost'\] appear in test but not in the pool"):
        kept = _split("ignored", splits=files)  # today's behaviour
    assert [len(kept[name]) for name in data.SPLITS] == [43, 11, 11]
    gone = {}
    with pytest.warns(UserWarning, match=r"prepare.splits: dropped 3 labels with fewer than 3 examples in the pool "
                                         r"\(prepare.rare_labels: drop\) and their 5 rows: 'ghost', 'lone', 'rare'"):
        frames = _split("ignored", splits=files, rare_labels="drop", rare_dropped=gone)
    assert gone == {"ghost": 1, "lone": 1, "rare": 3}
    assert [len(frames[name]) for name in data.SPLITS] == [40, 10, 10]
    assert all(set(f["label"]) == {"business", "sport", "tech"} for f in frames.values())
    # no validation file: the lone pool example was the carve's error; dropped first, the carve works
    carved = _split("ignored", splits={"pool": files["pool"], "test": files["test"]}, rare_labels="drop")
    assert "lone" not in set(carved["pool"]["label"]) and len(carved["validation"])
    # a min_label_examples raised above 3 is asked for: under error it refuses your splits' rare pool labels
    with pytest.raises(SouplineError, match=r"labels \{'rare': 2, 'lone': 1\} have fewer than 5 examples in the pool, "
                                            r"prepare.min_label_examples; .* prepare.rare_labels: drop"):
        _split("ignored", splits=files, min_label_examples=5)


def test_a_dropped_declared_label_keeps_its_id(tmp_path, frame):
    """prepare.label_names: the dropped label is recorded by its name, and every other label keeps its id (id i is
    label_names[i], as predict and a Hugging Face id2label read it)."""
    ids = frame["label"].map({"business": 0, "sport": 1, "tech": 3})
    pd.concat([frame.assign(label=ids), pd.DataFrame({"text": ["one", "two"], "label": [2, 2]})]).to_csv(
        tmp_path / "d.csv", index=False)
    gone = {}
    names = ["economy", "games", "weather", "computing"]
    with pytest.warns(UserWarning) as caught:
        frames = _split(str(tmp_path / "d.csv"), label_names=names, rare_labels="drop", rare_dropped=gone)
    said = [str(w.message) for w in caught]
    assert any(re.search(r"labels \['weather'\] are declared .* keep their ids", m) for m in said), said
    assert any(m.endswith("dropped 1 label with fewer than 3 examples (prepare.rare_labels: drop) and its 2 rows: "
                          "'weather'") for m in said), said  # its name, not the integer written in the data
    assert gone == {"weather": 2}
    assert data.label_names(frames) == names


def test_prepare_records_the_dropped_labels_and_the_report_says_it(tmp_path, frame, capsys):
    from soupline import report
    from tasks.prepare import main, run

    source = _long_tail(tmp_path, frame, {"a": 1, "b": 2})
    argv = ["--params", str(ROOT / "params.yaml"), "--root", str(tmp_path), "--set", f"prepare.source={source}"]
    with pytest.raises(SystemExit, match="2"):  # error, the default: one line naming the option
        main("prepare", run, argv)
    assert "prepare.rare_labels: drop" in capsys.readouterr().err
    main("prepare", run, argv + ["--set", "prepare.rare_labels=drop"])
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert summary["rare_labels_dropped"] == {"a": 1, "b": 2} and sum(summary["sizes"].values()) == len(frame)
    assert json.loads((tmp_path / "data/prepared/labels.json").read_text()) == ["business", "sport", "tech"]
    assert report.rare_labels_dropped(summary) == ("Dropped 2 labels with fewer than `prepare.min_label_examples` "
                                                   "examples and their 3 rows (`prepare.rare_labels: drop`): `b` 2, "
                                                   "`a` 1.")
    assert report.rare_labels_dropped({"rare_labels_dropped": {"a": 1}}) == (  # was "1 label ... their 1 rows"
        "Dropped 1 label with fewer than `prepare.min_label_examples` examples and its 1 row (`prepare.rare_labels: "
        "drop`): `a` 1.")
    assert report.rare_labels_dropped({"sizes": {}}) == ""


def test_doctor_splits_as_prepare_would(tmp_path, frame):
    from soupline import doctor

    source = _long_tail(tmp_path, frame, {"a": 1})
    params = config.load(ROOT / "params.yaml", [f"prepare.source={source}"])
    with pytest.raises(SouplineError, match="prepare.rare_labels: drop"):
        doctor._data_check(params.prepare, params.seed, 0.1)
    params = config.load(ROOT / "params.yaml", [f"prepare.source={source}", "prepare.rare_labels=drop"])
    with pytest.warns(UserWarning, match="dropped 1 label"):
        said, frames = doctor._data_check(params.prepare, params.seed, 0.1)
        assert "-> pool 42 / validation 6 / test 12 over 3 labels" in said and len(frames["pool"]) == 42


def test_a_long_tail_too_wide_for_the_splits_names_what_fixes_it():
    """23 labels of 5-6 rows: validation (10 % of 130 = 13 rows) cannot hold one of each. The line says how large a
    split must be and that dropping the rarer labels is a way out."""
    rows = pd.DataFrame({"text": [f"text {i}" for i in range(130)], "label": [f"l{i % 23}" for i in range(130)]})
    with pytest.raises(SouplineError, match=r"too few to split 23 labels .*one example per label: 23 of 130, 18%\); "
                                            r"give more data, .*prepare.rare_labels: drop with a higher "
                                            r"prepare.min_label_examples"):
        data.stratified_split(rows, 0.1, 0.2, seed=0)


def test_a_label_column_of_texts_or_ids_says_to_check_the_column_names(tmp_path, frame):
    """The text and label columns swapped (or an id named as the label) gave every row a label of its own; the line
    said to add examples or drop the rare labels, and under `drop` then 'leaves 0 label(s) ...; add examples'. It
    says to check the column names first, then still how to fix rare labels: a long tail of 82 labels in 100 rows
    looks the same, and there `prepare.rare_labels: drop` keeps its two labels of 10 rows (the line had lost it)."""
    frame.assign(id=range(len(frame))).to_csv(tmp_path / "d.csv", index=False)
    source = str(tmp_path / "d.csv")
    check = (r"the label column holds 60 different values in 60 rows, as a text or id column does: check that "
             r"prepare.label_column names the column of labels \(and prepare.text_column the texts\); if it does, ")
    for text, label in (("label", "text"), ("text", "id")):
        with pytest.raises(SouplineError, match=r"and 50 more have fewer than 3 examples, too few to split; " + check
                           + r"add examples, remove those labels, or set prepare.rare_labels: drop to drop their "
                             r"rows$"):
            _split(source, text_column=text, label_column=label)
        with pytest.raises(SouplineError, match=r"drop leaves 0 label\(s\) \[\] of 60: .*needs at least 2; " + check
                           + "add examples$"):
            _split(source, text_column=text, label_column=label, rare_labels="drop")
    with pytest.raises(SouplineError, match=r"too few to split; add examples, remove those labels"):  # a real tail
        _split(_long_tail(tmp_path, frame, {f"tail{i}": 1 for i in range(30)}))
    tail = pd.DataFrame({"text": [f"text {i}" for i in range(100)],
                         "label": ["a"] * 10 + ["b"] * 10 + [f"rare{i}" for i in range(80)]})
    with pytest.raises(SouplineError, match=r"82 different values in 100 rows.*; if it does, add examples, remove "
                                            r"those labels, or set prepare.rare_labels: drop"):
        data.check_rare_labels(tail)
