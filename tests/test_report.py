"""The report's plots: confusion.png and curves.png (seconds; no model)."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest


def _drawn(monkeypatch, plot, *args):
    """The figure `plot` saves (save_figure patched to keep it, and to write it as it would)."""
    from soupline import plots

    kept, save = {}, plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: (kept.setdefault("fig", fig), save(fig, path)))
    plot(*args)
    return kept["fig"]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_confusion_png_is_row_normalised_in_label_id_order_with_counts(monkeypatch, tmp_path):
    """confusion.png: the heatmap of the headline model's matrix, coloured by the share of each actual label (a
    label of 2 test texts all wrong is as dark off the diagonal as one of 200), the count in each non-zero cell,
    labels in the order given (label-id order, not sorted: `b` before `a`), a label with no test text a gray row."""
    from soupline.plots import plot_confusion

    labels, confusion = ["b", "a", "c"], [[8, 2, 0], [0, 0, 0], [0, 1, 1]]
    fig = _drawn(monkeypatch, plot_confusion, "soup:greedy", labels, confusion, tmp_path / "confusion.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels == [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "1", "2", "8"]  # zeros stay blank
    shares = ax.images[0].get_array()
    assert shares[0].tolist() == [0.8, 0.2, 0.0] and shares[2].tolist() == [0.0, 0.5, 0.5]
    assert shares.mask[1].all()  # `a` has no test text: no share to colour
    assert "soup:greedy" in ax.get_title() and ax.get_xlabel() == "predicted label"
    width, height = _png_size(tmp_path / "confusion.png")
    assert 300 < width < 2500 and 300 < height < 2500


def test_confusion_png_above_the_table_limit_has_no_cell_text(monkeypatch, tmp_path):
    """Above CONFUSION_MAX_LABELS (where the report's table becomes the top confusions) the whole matrix is drawn,
    without counts, which would not fit its cells; above CONFUSION_TICK_LABELS the ticks are every n-th label id."""
    from soupline.plots import CONFUSION_MAX_LABELS, CONFUSION_TICK_LABELS, plot_confusion

    n = CONFUSION_MAX_LABELS + 5
    labels = [f"comp.os.ms-windows.misc{i}" for i in range(n)]
    fig = _drawn(monkeypatch, plot_confusion, "m", labels, (np.eye(n, dtype=int) * 3 + 1).tolist(), tmp_path / "c.png")
    assert not fig.axes[0].texts and [t.get_text() for t in fig.axes[0].get_yticklabels()] == labels
    n = CONFUSION_TICK_LABELS + 40
    fig = _drawn(monkeypatch, plot_confusion, "m", [f"l{i}" for i in range(n)], np.eye(n, dtype=int).tolist(),
                 tmp_path / "c.png")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[:2] == ["0", "5"] and len(ticks) == 20
    assert max(_png_size(tmp_path / "c.png")) < 2600


def test_confusion_png_escapes_label_characters_its_fonts_cannot_draw(monkeypatch, tmp_path):
    from soupline.plots import drawable, plot_confusion

    labels = ["日本", "中国", "café"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph .* missing")
        fig = _drawn(monkeypatch, plot_confusion, "m", labels, np.eye(3, dtype=int).tolist(), tmp_path / "c.png")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == drawable(labels) and len(set(ticks)) == 3 and ticks[2] == "café"


def _write_curves(folder, loss_rows, acc_rows):
    folder.mkdir(exist_ok=True)
    (folder / "train_loss.tsv").write_text("step\tloss\tingredient\n" + "".join(f"{s}\t{v}\t{n}\n"
                                                                              for s, v, n in loss_rows))
    (folder / "val_accuracy.tsv").write_text("step\taccuracy\tingredient\n" + "".join(f"{s}\t{v}\t{n}\n"
                                                                                  for s, v, n in acc_rows))


def test_curves_png_draws_a_line_per_ingredient(monkeypatch, tmp_path):
    """curves.png: train loss and validation accuracy by step, one line per ingredient in the files' order; a
    validation curve of one end point (train.eval_every 0) is drawn as its point, and the title says so."""
    from soupline.report import curves_section

    names = ["lr0.01-seed0", "lr0.01-seed1"]
    _write_curves(tmp_path / "curves", [(s, 1.0 / s, n) for n in names for s in range(1, 6)],
                  [(5, 0.5 + i / 10, n) for i, n in enumerate(names)])
    fig = _drawn(monkeypatch, lambda: curves_section(tmp_path / "curves", tmp_path))
    loss, acc = fig.axes[:2]
    assert [line.get_label() for line in loss.lines] == names and len(loss.lines[0].get_xdata()) == 5
    assert [len(line.get_xdata()) for line in acc.lines] == [1, 1]
    # two ingredients ending at the same point stay visible: hollow markers of different shapes
    assert [line.get_marker() for line in acc.lines] == ["o", "s"]
    assert all(line.get_markerfacecolor() == "none" for line in acc.lines)
    assert "validated once" in acc.get_title() and loss.get_xlabel() == "optimizer step"
    assert _png_size(tmp_path / "curves.png")[0] > 500


def test_no_curves_no_png_and_a_line_saying_why(tmp_path):
    """Curve files with the header only, or none: no empty chart; a line says why, and an earlier run's curves.png
    is removed."""
    from soupline.report import curves_section

    _write_curves(tmp_path / "curves", [], [])
    (tmp_path / "curves.png").write_bytes(b"an earlier run's")
    text = "\n".join(curves_section(tmp_path / "curves", tmp_path))
    assert "No training curves: no ingredient has training curves." in text and "curves.png" not in text
    assert not (tmp_path / "curves.png").exists()
    assert "holds no curves" in "\n".join(curves_section(tmp_path / "missing", tmp_path))


def test_a_probe_s_one_point_is_drawn_and_named(monkeypatch, tmp_path):
    """A `train.method: probe` run's curves are one point at step 0 each: drawn (a line under the heading says what
    the point is), and the loss chart's title does not read "validated once" (that is the validation chart's); the
    step axis reads 0 alone (matplotlib's margin of ±0.05 drew fractional steps, -0.04 ... 0.04)."""
    from soupline.report import curves_section

    _write_curves(tmp_path / "curves", [(0, 0.4, "linear-probe")], [(0, 0.9, "linear-probe")])
    fig = _drawn(monkeypatch, lambda: curves_section(tmp_path / "curves", tmp_path))
    loss, acc = fig.axes[:2]
    assert "validated once" not in loss.get_title() and "validated once" in acc.get_title()
    assert list(loss.get_xticks()) == [0] and loss.get_xlim() == (-1, 1)
    assert "`linear-probe` takes no step" in "\n".join(curves_section(tmp_path / "curves", tmp_path))


@pytest.mark.parametrize("n", [1, 12, 45])
def test_curves_png_colours_stay_apart(monkeypatch, tmp_path, n):
    """Up to 20 ingredients each have their own colour (tab10 alone would draw the 11th as the 1st); above 20 the
    colours come round with another line style, so up to 80 lines stay apart."""
    from soupline.report import curves_section

    names = [f"lr0.0{i}-seed0" for i in range(n)]
    _write_curves(tmp_path / "curves", [(s, 1.0, m) for m in names for s in (1, 2)], [(2, 0.5, m) for m in names])
    fig = _drawn(monkeypatch, lambda: curves_section(tmp_path / "curves", tmp_path))
    colours = [tuple(line.get_color()) for line in fig.axes[0].lines]
    assert len(set(colours)) == min(n, 20)
    assert len({(line.get_linestyle(), tuple(line.get_color())) for line in fig.axes[0].lines}) == n


def test_models_png_axis_is_zoomed_to_the_scores_at_both_ends(monkeypatch, tmp_path):
    """models.png zoomed its axis at the bottom only: a 20-label run scoring 0.25-0.43 drew its points in the lowest
    third of an axis up to 1.0 (and a 0.77-0.81 run's differences in a sliver), the rest empty."""
    from soupline.plots import plot_models

    models = {name: {"kind": kind, "accuracy": acc, "macro_f1": f1} for name, kind, acc, f1 in
              [("lr0.1-seed0", "ingredient", 0.333, 0.265), ("soup:greedy", "soup", 0.325, 0.259),
               ("probe", "reference", 0.433, 0.352)]}
    ax = _drawn(monkeypatch, plot_models, models, tmp_path / "models.png").axes[0]
    lo, hi = ax.get_ylim()
    assert lo == pytest.approx(0.259 - 0.05) and hi == pytest.approx(0.433 + 0.05)
    assert {t.get_text() for t in ax.texts} >= {"0.3330", "0.2650", "0.4330"}  # the table's 4 decimals
    top = {name: {**m, "accuracy": 0.99} for name, m in models.items()}
    assert _drawn(monkeypatch, plot_models, top, tmp_path / "models.png").axes[0].get_ylim()[1] == 1.0


def test_curves_png_end_points_share_the_loss_step_axis(monkeypatch, tmp_path):
    """Validation at the end only (one point per ingredient at step 60): on its own axis matplotlib spread it over
    steps 57-63, a column of dots in the middle; the charts share the step axis, so the points sit at the end."""
    from soupline.report import curves_section

    _write_curves(tmp_path / "curves", [(s, 1.0 / s, "a") for s in range(1, 61)], [(60, 0.8, "a")])
    fig = _drawn(monkeypatch, lambda: curves_section(tmp_path / "curves", tmp_path))
    assert fig.axes[1].get_xlim() == fig.axes[0].get_xlim() and fig.axes[1].get_xlim()[0] < 5


def test_curves_png_accuracy_axis_stays_within_an_accuracy(monkeypatch, tmp_path):
    """Every ingredient validated at 1.0 (an easy task, a LoRA run): matplotlib's margin drew the accuracy axis up to
    1.05, ticks at 1.02 and 1.04 no model can score (near 0, below 0). The axis stops at 1 and 0, its points drawn
    whole on the edge."""
    from soupline.report import curves_section

    names = ["lr0.01-seed0", "lr0.01-seed1"]
    for scores in ((1.0, 1.0), (0.0, 0.02)):
        _write_curves(tmp_path / "curves", [(s, 1.0 / s, n) for n in names for s in range(1, 6)],
                      [(5, score, n) for score, n in zip(scores, names)])
        acc = _drawn(monkeypatch, lambda: curves_section(tmp_path / "curves", tmp_path)).axes[1]
        lo, hi = acc.get_ylim()
        assert 0.0 <= lo <= min(scores) and max(scores) <= hi <= 1.0 and hi - lo > 0.01
        assert not any(line.get_clip_on() for line in acc.lines)


def test_the_data_section_names_evaluation_texts_also_in_an_earlier_split():
    """prepare printed the counts once; the report, which a person reads later, said nothing of them."""
    from soupline.report import leakage

    assert leakage({"duplicates": {"within_pool": 3, "validation_in_pool": 0, "test_in_pool": 0}}) == ""
    line = leakage({"duplicates": {"within_pool": 3, "validation_in_pool": 8, "test_in_pool": 28,
                                   "test_in_validation": 6}})
    assert line.startswith("**Leakage:** 8 validation texts also in pool, 28 test texts also in pool, "
                           "6 test texts also in validation: ") and "prepare.duplicates: drop" in line


def test_long_label_names_are_cut_in_the_ticks_with_their_ids(monkeypatch, tmp_path):
    """30 labels of 60-100 characters (and CJK names, escaped to 6 characters each) were drawn whole: the tick labels
    took most of confusion.png (2408 x 1902 pixels, the matrix in a fifth of it) and of coverage.png. A tick is now
    `id: name` cut to 30 characters on a whole character, distinct for names alike up to the cut."""
    from soupline.plots import plot_confusion, plot_coverage

    labels = [f"Customer billing and invoice dispute resolution department — variant {i:02d} with more words"
              for i in range(28)] + ["顧客サポート：製品の返品と交換に関するお問い合わせ窓口", "short"]
    n = len(labels)
    fig = _drawn(monkeypatch, plot_confusion, "m", labels, (np.eye(n, dtype=int) * 3 + 1).tolist(), tmp_path / "c.png")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(set(ticks)) == n and ticks[0] == "0: Customer billing and invoice…" and ticks[-1] == "29: short"
    assert all(len(t.split(": ", 1)[1]) <= 30 for t in ticks)
    assert ticks[28].startswith("28: \\u9867") and ticks[28].endswith("…") and "\\u" not in ticks[28][-3:]
    assert max(_png_size(tmp_path / "c.png")) < 1400
    coverage = {label: {"pool": 10, "selected": 3} for label in labels}
    ticks = [t.get_text() for t in _drawn(monkeypatch, plot_coverage, coverage,
                                          tmp_path / "cov.png").axes[0].get_xticklabels()]
    assert ticks[5] == "5: Customer billing and invoice…" and _png_size(tmp_path / "cov.png")[1] < 700


def test_coverage_png_draws_a_long_tail_on_a_log_axis_and_marks_labels_with_none_selected(monkeypatch, tmp_path):
    """At 40 long-tail labels (2,000 texts down to 3) the tail's bars were invisible on a linear axis, and a label
    with no selected example was an empty slot: a log axis past a 20:1 ratio, and a red x under such a label."""
    from soupline.plots import plot_coverage

    tail = {f"l{i}": {"pool": int(2000 * 0.85 ** i) + 1, "selected": 0 if i in (3, 39) else 5} for i in range(40)}
    ax = _drawn(monkeypatch, plot_coverage, tail, tmp_path / "tail.png").axes[0]
    marks = [c for c in ax.collections if c.get_label() == "none selected"]
    assert ax.get_yscale() == "log" and len(marks) == 1
    assert [round(x, 1) for x, _ in marks[0].get_offsets()] == [3.2, 39.2]  # beside each label's pool bar
    even = {k: {"pool": 10, "selected": 3} for k in "abc"}
    ax = _drawn(monkeypatch, plot_coverage, even, tmp_path / "even.png").axes[0]
    assert ax.get_yscale() == "linear" and not [c for c in ax.collections if c.get_label() == "none selected"]


def test_the_data_section_names_test_labels_the_pool_lacks():
    """A test label with no pool example scores F1 0 for every model; prepare warned once, the report said nothing."""
    from soupline.report import absent_from_pool

    counts = {"pool": {"sport": 40, "tech": 30, "weather": 0}, "validation": {"sport": 5, "tech": 5},
              "test": {"sport": 8, "tech": 7, "weather": 6}}
    line = absent_from_pool({"label_counts": counts})
    assert line.startswith("**Not in the pool:** 1 test label(s), weather (6): 6 of 21 test texts")
    assert "accuracy at most 0.7143" in line
    assert absent_from_pool({"label_counts": {**counts, "pool": {**counts["pool"], "weather": 1}}}) == ""


def test_the_data_section_names_each_split_file_of_your_own():
    """prepare.splits' files were shown as a Python dict (`{'pool': 'data/raw/pool.jsonl', 'validation': None, ...}`)."""
    from soupline.report import source_text

    assert source_text("bbcnews") == "`bbcnews`"
    assert source_text({"pool": "data/raw/pool.jsonl", "validation": None, "test": "data/raw/test.jsonl"}) == \
        "pool `data/raw/pool.jsonl`, test `data/raw/test.jsonl`"


def test_the_model_to_use_says_which_rule_picked_it_and_when_it_is_below_the_best_ingredient():
    """`soup.methods: [uniform, ties]` over a sweep with failed ingredients: the headline rule takes the uniform soup
    (0.33 on validation) over the best ingredient (0.89); the first line named that choice 'chosen on validation'
    and said nothing of the ingredient above it."""
    from soupline.report import model_to_use

    row = {"accuracy": 0.5, "macro_f1": 0.4}
    models = {"lr1-seed0": {**row, "kind": "ingredient", "val_accuracy": 0.8889},
              "lr9-seed0": {**row, "kind": "ingredient", "val_accuracy": 0.3333},
              "soup:uniform": {**row, "kind": "soup", "val_accuracy": 0.3333},
              "soup:ties": {**row, "kind": "soup", "val_accuracy": 0.9},
              "probe": {**row, "kind": "reference", "val_accuracy": 1.0}}
    line = model_to_use(models, "soup:uniform", "lr1-seed0")
    assert "It is the uniform soup, as no greedy soup was made" in line and "chosen on validation" not in line
    assert line.endswith("**Below the best ingredient on validation:** 0.3333 vs `lr1-seed0`'s 0.8889; `soupline "
                         "predict --model lr1-seed0` uses that ingredient, and a greedy soup (`soup.methods`) is "
                         "never below it.")
    assert "It is the first soup of `soup.methods`" in (ties := model_to_use(models, "soup:ties", "lr1-seed0"))
    assert "Below" not in ties
    alone = model_to_use(models, "lr1-seed0", "lr1-seed0")
    assert "It is the best ingredient by validation accuracy, as no soup was made" in alone and "Below" not in alone
    models["soup:greedy"] = {**row, "kind": "soup", "val_accuracy": 0.8889}
    assert "It is the greedy soup, built on validation" in model_to_use(models, "soup:greedy", "lr1-seed0")
    named = model_to_use(models, "soup:uniform", "lr1-seed0", rule="uniform")  # evaluate.final: uniform
    assert "It is the uniform soup, as evaluate.final says" in named and "**Below the best ingredient" in named
