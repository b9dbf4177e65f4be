"""The PNG plots of the reports (report.md's models, coverage, confusion and training curves; study.md's and the
benchmarks' through `pyplot` and `save_figure`): matplotlib on the Agg backend, each file written atomically, tick
labels the installed fonts can draw."""

from __future__ import annotations

from pathlib import Path

from soupline.artifacts import atomic_path


def drawable(labels: list[str]) -> list[str]:
    """Tick labels the plot's fonts can draw: a character none of matplotlib's sans-serif fonts installed here has
    (CJK, emoji, with only DejaVu Sans) is written as its escape (`日本` -> `\\u65e5\\u672c`), which tells labels
    apart, where matplotlib drew an empty box for each (and warned once per character)."""
    from matplotlib import font_manager, rcParams
    from matplotlib.ft2font import FT2Font

    paths = {font_manager.findfont(font_manager.FontProperties())}
    for family in rcParams["font.sans-serif"]:
        try:
            paths.add(font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False))
        except ValueError:  # not installed
            pass
    fonts = [FT2Font(path) for path in sorted(paths)]
    has = lambda ch: ch.isspace() or any(f.get_char_index(ord(ch)) for f in fonts)  # noqa: E731
    return ["".join(ch if has(ch) else ch.encode("unicode_escape").decode("ascii") for ch in label)
            for label in labels]


TICK_CHARS = 30  # a tick label longer than this (a 100-character label name, a CJK name escaped) is cut short


def tick_labels(labels: list[str], width: int = TICK_CHARS) -> list[str]:
    """`drawable` tick labels of at most `width` characters: when a label is longer, each tick is `id: name` and a
    long name is cut on a whole character (never inside an escape) with `…`; the id (the label's row in the report's
    tables, details.json `labels`) tells apart names alike up to the cut. Long names drawn whole took most of
    coverage.png and confusion.png (a 30-label matrix in a fifth of the image, its ticks over each other)."""
    chars = sorted(set("".join(labels)))
    drawn = dict(zip(chars, drawable(chars)))
    names = ["".join(drawn[ch] for ch in label) for label in labels]
    if all(len(n) <= width for n in names):
        return names
    out = []
    for i, (label, name) in enumerate(zip(labels, names)):
        if len(name) > width:
            name = ""
            for ch in label:
                if len(name) + len(drawn[ch]) > width - 1:
                    break
                name += drawn[ch]
            name = name.rstrip() + "…"
        out.append(f"{i}: {name}")
    return out


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported when a plot is drawn: the report,
    the study report and the benchmarks draw through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically (a killed run leaves no half-written plot)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_models(models: dict, path: Path) -> None:
    """Test accuracy and macro-F1 of every ingredient and soup, soups highlighted.

    Points, not bars: the axis is zoomed to the scores at both ends (models often differ by a point or two; a
    20-label run scoring 0.3 drew its points in the bottom third of an axis up to 1.0), and
    a bar on a zoomed axis draws a difference many times its size. 1.5 inches per model keep one model's
    macro-F1 label clear of the next one's accuracy label when they tie; points are not clipped, so a score
    of 1.0 is drawn whole on the top edge; the legend sits outside the axis, over no point.
    """
    plt = pyplot()

    names = list(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(names)), 4))
    x = range(len(names))
    palette = {"soup": "tab:orange", "ingredient": "tab:blue", "reference": "tab:gray"}
    colors = [palette[models[n]["kind"]] for n in names]
    for metric, marker, side in (("accuracy", "o", -1), ("macro_f1", "s", 1)):
        scores = [models[n][metric] for n in names]
        ax.scatter([i + 0.08 * side for i in x], scores, c=colors, marker=marker, s=40, zorder=3, clip_on=False)
        ax.scatter([], [], c="black", marker=marker, label="accuracy" if metric == "accuracy" else "macro-F1")
        for i, score in zip(x, scores):  # the value beside its point, as the table writes it: accuracy left, F1 right
            ax.annotate(f"{score:.4f}", (i + 0.08 * side, score), textcoords="offset points", xytext=(5 * side, 0),
                        ha="left" if side > 0 else "right", va="center", fontsize=7)
    lo = min(min(m["accuracy"], m["macro_f1"]) for m in models.values())
    hi = max(max(m["accuracy"], m["macro_f1"]) for m in models.values())
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("test score (axis zoomed)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Ingredients (blue), soups (orange), linear probe (gray): accuracy (o), macro-F1 (s)", pad=12)
    save_figure(fig, path)
    plt.close(fig)


def plot_coverage(coverage: dict, path: Path) -> None:
    """Share of each label in the pool vs in the selection; the legend sits outside the axis, where it hides no
    bar (with many even labels, no corner inside is free). A long tail (the largest label over LONG_TAIL times the
    smallest) is drawn on a log axis: on a linear one the tail's bars were invisible at 40 labels. A label of the
    pool with no selected example gets a red x at the foot of the axis (its bar, empty, showed nothing)."""
    plt = pyplot()

    labels = list(coverage)
    pool_total = sum(v["pool"] for v in coverage.values()) or 1
    sel_total = sum(v["selected"] for v in coverage.values()) or 1
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(labels)), 3.5))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [coverage[k]["pool"] / pool_total for k in labels], 0.4, label="pool")
    ax.bar([i + 0.2 for i in x], [coverage[k]["selected"] / sel_total for k in labels], 0.4, label="selection")
    sizes = [v["pool"] for v in coverage.values() if v["pool"]]
    if sizes and max(sizes) > LONG_TAIL * min(sizes):
        ax.set_yscale("log")
    missed = [i for i, k in enumerate(labels) if coverage[k]["pool"] and not coverage[k]["selected"]]
    if missed:
        ax.scatter([i + 0.2 for i in missed], [0.02] * len(missed), marker="x", color="tab:red", zorder=3,
                   transform=ax.get_xaxis_transform(), clip_on=False, label="none selected")
    ax.set_xticks(list(x), tick_labels(labels), rotation=30, ha="right")
    ax.set_ylabel("share of examples" + (" (log)" if ax.get_yscale() == "log" else ""))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Label coverage: pool vs selection")
    save_figure(fig, path)
    plt.close(fig)


LONG_TAIL = 20  # coverage.png: a log axis when the pool's largest label is over this many times its smallest


# above this many labels report.md lists the largest confusions, not the matrix, and confusion.png draws no count
CONFUSION_MAX_LABELS = 20
CONFUSION_TICK_LABELS = 60  # above this many labels, confusion.png names every n-th label id, not each label


def plot_confusion(model: str, labels: list[str], confusion: list[list[int]], path: Path) -> None:
    """`model`'s test confusion matrix as a heatmap: rows (actual labels) normalised, so a cell's colour is the share
    of its actual label's test texts (the diagonal: recall), whatever the label's size; labels in `labels`' order
    (label-id order, as the table and `dvc plots show`). Up to CONFUSION_MAX_LABELS labels each non-zero cell holds
    its count (a zero stays blank: 400 zeros at 20 labels hide the counts that matter); above, the cells are too
    small for text and the colours alone show where the model errs (the report's table names the most frequent
    confusions). A label with no test text is a gray row. Label characters the fonts cannot draw are escaped."""
    import numpy as np

    plt = pyplot()
    counts = np.asarray(confusion, dtype=float).reshape(len(labels), len(labels))
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)
    n = len(labels)
    names = tick_labels(labels)
    side = min(16.0, max(4.5, 0.42 * n)) if n <= CONFUSION_MAX_LABELS else min(16.0, max(8.0, 0.16 * n))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    cmap = plt.colormaps["Blues"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("share of the actual label's test texts (diagonal: recall)")
    if n <= CONFUSION_TICK_LABELS:
        ticks, ticklabels = list(range(n)), names
        size = 9 if n <= 10 else 7  # 60 labels on 9.6 inches: 11.5 points a row
    else:  # every n-th id: 200 names at 16 inches would be 4-point type over each other
        ticks = list(range(0, n, -(-n // 20)))
        ticklabels, size = [str(i) for i in ticks], 7
    ax.set_xticks(ticks, ticklabels, rotation=45 if n <= CONFUSION_TICK_LABELS else 0, fontsize=size,
                  ha="right" if n <= CONFUSION_TICK_LABELS else "center", rotation_mode="anchor")
    ax.set_yticks(ticks, ticklabels, fontsize=size)
    named = n <= CONFUSION_TICK_LABELS
    ax.set_xlabel("predicted label" + ("" if named else " (label id, details.json `labels` order)"))
    ax.set_ylabel("actual label" + ("" if named else " (label id)"))
    if n <= CONFUSION_MAX_LABELS:
        text_size = 9 if n <= 10 else 6.5
        for a in range(n):
            for p in range(n):
                if counts[a, p]:
                    dark = share[a, p] > 0.5
                    ax.text(p, a, f"{int(counts[a, p])}", ha="center", va="center", fontsize=text_size,
                            color="white" if dark else "black")
    cells = "counts in the cells" if n <= CONFUSION_MAX_LABELS else f"{n} labels: no counts, too small"
    ax.set_title(f"Test confusion matrix of {drawable([model])[0]}\n(rows normalised; {cells})", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


CURVES = (("train_loss.tsv", "loss", "train loss (cross-entropy of each step's batch)"),
          ("val_accuracy.tsv", "accuracy", "validation accuracy"))


def read_curves(curves_dir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The sweep's curves (train's `data/curves/train_loss.tsv` and `val_accuracy.tsv`: step, value, ingredient):
    file -> ingredient -> [(step, value)] in the files' (sweep) order; a missing file or one with the header only
    gives an empty dict for it."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for file, field, _ in CURVES:
        path, by = Path(curves_dir) / file, {}
        if path.is_file():
            header, *rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
            step, value, name = header.index("step"), header.index(field), header.index("ingredient")
            for row in rows:
                by.setdefault(row[name], []).append((int(row[step]), float(row[value])))
        curves[file] = by
    return curves


def plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """Train loss and validation accuracy by optimizer step, one line per ingredient (the same colour in both
    charts, one step axis for both). A validation curve of one point per ingredient (`train.eval_every: 0` without
    early stopping: validated at the end only) is drawn as its point at the last step, which still says where each
    ingredient ended (alone on its own axis it sat in a column at the middle of a meaningless 57-63 step range).
    Above 20 ingredients the colours come round again with another line style (80 lines apart); each ingredient's
    points are a hollow marker of its own shape, so ingredients ending at the same point stay visible."""
    plt = pyplot()

    names = list(dict.fromkeys(name for by in curves.values() for name in by))
    palette = plt.colormaps["tab10" if len(names) <= 10 else "tab20"]
    colour = {name: palette(i % palette.N) for i, name in enumerate(names)}
    style = {name: ("-", "--", ":", "-.")[i // palette.N % 4] for i, name in enumerate(names)}
    # a hollow marker of its own per ingredient: two ending at the same step and score stay both visible (one
    # filled dot hid the other)
    shape = {name: "os^Dv<>ph*"[i % 10] for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)  # a validation end point at the loss' last step
    for ax, (file, _, title) in zip(axes, CURVES):
        by = curves.get(file, {})
        for name, points in by.items():
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, color=colour[name], linestyle=style[name], label=name, linewidth=1.2,
                    marker=shape[name] if file != "train_loss.tsv" or len(points) == 1 else None, markersize=6,
                    markerfacecolor="none", markeredgewidth=1.2, clip_on=False)  # a 1.0 drawn whole on the top edge
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        one = file != CURVES[0][0] and by and all(len(points) == 1 for points in by.values())
        ax.set_title(title + ("\n(one point each: validated once, at the end of training)" if one else ""),
                     fontsize=10)
        if not by:
            ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes)
    if len(steps := {step for by in curves.values() for points in by.values() for step, _ in points}) == 1:
        step = steps.pop()  # one step (a probe's 0): matplotlib's margin of ±0.05 drew ticks at -0.04 ... 0.04
        axes[0].set_xlim(step - 1, step + 1)
        axes[0].set_xticks([step])
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy (axis zoomed)")
    # within an accuracy's range: matplotlib's margin drew ticks up to 1.04 where every ingredient scored 1.0
    axes[1].set_ylim(max(0.0, axes[1].get_ylim()[0]), min(1.0, axes[1].get_ylim()[1]))
    handles = [plt.Line2D([], [], color=colour[n], linestyle=style[n], linewidth=2, marker=shape[n],
                          markerfacecolor="none") for n in names]
    fig.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, title="ingredient")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
