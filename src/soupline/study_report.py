"""The study report: which selection method and budget, with which soup, gives the best model for the compute.

Input: one result per cell (`tasks/study.py`: method, budget, seed, stage seconds and the test
metrics of every ingredient, soup and the linear probe). Output, in one folder: study.md and a
self-contained study.html of it (report.as_html, images inlined), study.json (every row), PNG plots, and
plots/budget.csv for `dvc plots show`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soupline.artifacts import write_json, write_text
from soupline.config import dump
from soupline.evaluate import below_best_ingredient, best_ingredient, headline, headline_rule
from soupline.plots import pyplot, save_figure
from soupline.report import BELOW_BEST, NEVER_BELOW, as_html, md_table, members, self_contained, training_recipe

FULL = "full-pool"  # the cell trained on the whole pool (study.full_pool): a reference line, not a budget
CROSS = "cross"  # the method of a cross-selection soup cell (study.cross_soups)


def budget_label(budget: int | float) -> str:
    """A budget as written, as the cells' names write it: the count `1` (one example) and the fraction `1.0` (the whole
    pool) are two budgets, which a key of the number merged (`1 == 1.0` in Python: one group of both, labelled 1)."""
    return str(budget)


def _share(fraction: float) -> float:
    """A share of the pool to 4 significant digits: to 4 places, 3 examples of a pool of 100,000 were 0.0, a point a
    log axis cannot draw."""
    return float(f"{fraction:.4g}")


def rows_of(results: list[dict]) -> list[dict]:
    """One row per (cell, model) with the cell's selection and the model's test metrics (and `failed`: why an
    ingredient's training failed)."""
    rows = []
    for r in results:
        for model, m in r["models"].items():
            rows.append({"cell": r["cell"], "method": r["method"], "budget": r["budget"], "examples": r["examples"],
                         "fraction": _share(r["fraction"]), "seed": r["seed"], "model": model, "kind": m["kind"],
                         **{k: round(m[k], 4) for k in ("accuracy", "macro_f1", "ece", "val_accuracy")},
                         "soup_of": members(m.get("ingredients"), [k for k, v in r["models"].items()
                                                                    if v["kind"] == "ingredient"], m.get("weights")),
                         **({"failed": m["failed"]} if m.get("failed") else {})})
    return rows


def failed_ingredients(result: dict) -> list[str]:
    """The ingredients of a cell whose training failed (their train_info.json `failed`, through evaluate's
    details.json): models that learned nothing, which its soups may hold and its scores then measure."""
    return [name for name, m in result["models"].items() if m.get("failed")]


def failed_cells_line(results: list[dict]) -> str:
    """The line under the study table naming the cells whose ingredients failed training, or ''."""
    failed = {r["cell"]: names for r in results if (names := failed_ingredients(r))}
    if not failed:
        return ""
    return ("**Training failed** in " + "; ".join(f"{cell} ({', '.join(names)})" for cell, names in failed.items())
            + ": those models learned nothing (`failed` in data/study/cells/<cell>/cell.json says why), so a row "
              "marked `training failed` may measure them, not its selection; lower `train.learning_rates` (or "
              "`train.head_learning_rate`) and run the study again.")


def below_best_line(results: list[dict], soups: list[str], rule: str = "auto") -> str:
    """The line under the study table naming the cells whose headline model (by `rule`, evaluate.final) is below
    their best ingredient on validation (report.md's warning, `below_best_ingredient`: a `soup.methods` without
    greedy, or a soup evaluate.final names), or ''."""
    below = []
    for r in results:
        models, final = r["models"], headline(r["models"], soups, rule)
        if below_best_ingredient(models, final):
            best = best_ingredient(models)
            below.append(f"{r['cell']} (`{final}` {models[final]['val_accuracy']:.4f} vs `{best}`'s "
                         f"{models[best]['val_accuracy']:.4f})")
    if not below:
        return ""
    took = ("the uniform soup, or the first soup made," if rule == "auto" else f"the {rule} soup evaluate.final names")
    return (f"**{BELOW_BEST}** in " + "; ".join(below) + f": the headline rule took {took} without comparing it "
            "with the ingredients, so those cells' rows score a model their own "
            f"validation ranks below an ingredient (each model's scores are in Ingredients vs soups); {NEVER_BELOW}.")


def by_budget(results: list[dict], soups: list[str], rule: str = "auto") -> list[dict]:
    """Mean and spread over seeds per (method, budget) of the headline model (by `rule`, evaluate.final), the best
    ingredient and the probe.
    `model` names the cells' headline model, or `best ingredient (by val.)` when, without soups, their best
    ingredients have different names."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if r["cell"] != FULL:
            groups.setdefault((r["method"], budget_label(r["budget"])), []).append(r)
    out = []
    for (method, _), rs in groups.items():
        # each cell's own headline model: without soups, its best ingredient, which seeds need not share
        finals = [headline(r["models"], soups, rule) for r in rs]
        row = {"method": method, "budget": rs[0]["budget"], "examples": rs[0]["examples"],
               "fraction": _share(np.mean([r["fraction"] for r in rs])),
               "seeds": len(rs), "model": finals[0] if len(set(finals)) == 1 else "best ingredient (by val.)",
               # a deterministic method (GOT-D) picks the same examples whatever the seed: fewer distinct picks
               "distinct_selections": len({r.get("selection", r["cell"]) for r in rs}),
               "failed_cells": [r["cell"] for r in rs if failed_ingredients(r)],
               "below_best_cells": [r["cell"] for r, final in zip(rs, finals)
                                    if below_best_ingredient(r["models"], final)]}
        for metric in ("accuracy", "macro_f1"):
            values = [r["models"][final][metric] for r, final in zip(rs, finals)]
            row[metric] = float(np.mean(values))
            row[f"{metric}_per_seed"] = [float(v) for v in values]  # seed order: what `by_budget_winners` compares
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            row[f"best_ingredient_{metric}"] = float(np.mean([r["models"][best_ingredient(r["models"])][metric]
                                                              for r in rs]))
            row[f"probe_{metric}"] = float(np.mean([r["models"]["probe"][metric] for r in rs]))
        row["seconds"] = float(np.mean([sum(r["seconds"].values()) for r in rs]))
        out.append(row)
    return sorted(out, key=lambda r: (r["method"], r["fraction"]))


def shown_rows(table: list[dict]) -> list[dict]:
    """`by_budget`'s rows as a person reads them (the Prefect flow's table artifact): their values but mappings, each
    float (and each seed's) to 4 places as study.md's tables, `fraction` at its 4 significant digits (`_share`) and
    `budget` as written (to 4 places, budgets 3e-05 and 5e-05 of a 1M pool read 0.0 and 0.0001). study.json keeps
    the exact means: the best cell and the winners are decided on them (to 9 places), and a script that reads them
    would see ties those broke."""
    def four(value):
        if isinstance(value, list):
            return [four(v) for v in value]
        return round(value, 4) if isinstance(value, float) else value

    return [{k: v if k in ("fraction", "budget") else four(v) for k, v in row.items() if not isinstance(v, dict)}
            for row in table]


def seeds_cell(row: dict) -> str:
    """`3`, or `3 (1 distinct selection)` when seeds picked the same examples (their spread is the training's only)."""
    n, distinct = row["seeds"], row["distinct_selections"]
    return str(n) if distinct == n else f"{n} ({distinct} distinct selection{'s' if distinct > 1 else ''})"


def model_cell(row: dict) -> str:
    """The row's headline model, flagged when the training of some of its cells' ingredients failed, and when it is
    below some cell's best ingredient on validation (`below_best_line`)."""
    flags = [f"{what} in {len(row[key])} of {row['seeds']} cells" for key, what in
             (("failed_cells", "training failed"), ("below_best_cells", "below the best ingredient on validation"))
             if row.get(key)]
    return row["model"] + (f" ({'; '.join(flags)})" if flags else "")


def spread(row: dict, key: str) -> float | str:
    """The std over seeds, or a dash for one seed or one distinct selection (no spread measured, not a spread of 0:
    the seeds of a deterministic method share one result, `same_as`)."""
    return row[key] if row["distinct_selections"] > 1 else "-"  # at most `seeds`: one seed gives one selection


def by_budget_winners(table: list[dict]) -> list[dict]:
    """Per budget (as written) that two or more selection methods ran: the method of the highest mean test accuracy,
    the runner-up, and whether the lead is beyond seed noise: every seed of the winner above every seed of each other
    method (a tie is broken as `best_cell` breaks it, and named). A method of one distinct selection (one seed, or
    GOT-D's alike seeds) has no measured spread, so a lead over or by it is called unmeasured unless the seed ranges
    overlap anyway. Cross soups are left out: they soup models trained on the union of the budget's selections, more
    examples than the budget."""
    budgets: dict[str, list[dict]] = {}
    for r in table:
        if r["method"] != CROSS:
            budgets.setdefault(budget_label(r["budget"]), []).append(r)
    out = []
    for rs in budgets.values():
        if len(rs) < 2:
            continue
        win, tied = best_cell(rs)
        others = sorted((r for r in rs if r is not win), key=lambda r: -round(r["accuracy"], 9))
        overlap = [r["method"] for r in others if max(r["accuracy_per_seed"]) >= min(win["accuracy_per_seed"])]
        unmeasured = [r["method"] for r in rs if r["distinct_selections"] < 2]
        if tied:
            verdict = (f"tied with {', '.join(r['method'] for r in tied)} on mean accuracy (as for the best cell, a "
                       "tie goes to fewer examples, then to less compute)")
        elif overlap:
            verdict = f"within seed noise: its seeds' accuracies overlap those of {', '.join(overlap)}"
        elif unmeasured:
            verdict = f"not measured: {', '.join(unmeasured)} had one distinct selection (no spread over seeds)"
        else:
            verdict = "beyond seed noise: each of its seeds above every seed of the other methods"
        out.append({"budget": rs[0]["budget"], "winner": win["method"], "accuracy": win["accuracy"],
                    "runner_up": others[0]["method"], "runner_up_accuracy": others[0]["accuracy"],
                    "lead": win["accuracy"] - others[0]["accuracy"], "verdict": verdict})
    shares = budget_shares(table)
    return sorted(out, key=lambda w: shares[budget_label(w["budget"])])


def budget_shares(table: list[dict]) -> dict[str, float]:
    """Each budget (`budget_label`) -> its share of the pool: that of its selection methods' rows, not a cross soup's,
    whose models trained on the union of the budget's selections (more of the pool: drawn there, it read as a budget
    of its own); a cross soup's own share only where no method's row has its budget."""
    shares = {budget_label(r["budget"]): r["fraction"] for r in table if r["method"] == CROSS}
    return shares | {budget_label(r["budget"]): r["fraction"] for r in table if r["method"] != CROSS}


def per_seed(row: dict) -> str:
    """A row's headline accuracies, one per seed, for a reader to see the spread the mean hides."""
    return ", ".join(f"{v:.4f}" for v in row["accuracy_per_seed"])


def _percent(fraction: float) -> float:
    """A budget as a percentage of the pool to 3 significant digits: a tick label, and the x of its points."""
    return float(f"{100 * fraction:.3g}")


def score_bars(rows: list[dict], metric: str) -> list[list[float]]:
    """The rows' ± std error bars (below, above) cut at 0 and 1, the range of a score: the sample std of two seeds
    scoring 1.0 and 0.67 drew a bar up to 1.07, an accuracy no model can reach, which stretched the axis past 1."""
    return [[min(r[f"{metric}_std"], r[metric]) for r in rows], [min(r[f"{metric}_std"], 1 - r[metric]) for r in rows]]


DODGE = 1.04  # budget.png: methods at one budget sit this factor apart on the log axis, centred on the tick
PROBE_MS = 10  # budget.png: the probe's x, wider than a method's dot (6) so it shows where both score alike


def plot_budget(table: list[dict], full: dict | None, path: Path) -> None:
    """Accuracy and macro-F1 vs budget, one line per method (headline model), probe dotted, full pool dashed; a cross
    soup at its budget, starred. Each tick names its budgets as written under their share of the pool."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({r["method"] for r in table})
    shares = budget_shares(table)
    ticks = sorted({_percent(f) for f in shares.values()})
    for ax, metric, title in zip(axes, ("accuracy", "macro_f1"), ("test accuracy", "test macro-F1")):
        for i, method in enumerate(methods):
            rs = sorted((r for r in table if r["method"] == method), key=lambda r: shares[budget_label(r["budget"])])
            # beside the tick, each method a little apart: at one x their error bars hid each other
            x = [_percent(shares[budget_label(r["budget"])]) * DODGE ** (i - (len(methods) - 1) / 2) for r in rs]
            label = f"{method} ({rs[0]['model']})" + (": at each budget, its methods' models souped together"
                                                       if method == CROSS else "")
            ax.errorbar(x, [r[metric] for r in rs], yerr=score_bars(rs, metric), capsize=3,
                        marker="*" if method == CROSS else "o", ms=10 if method == CROSS else 6,
                        ls="-." if method == CROSS else "-", color=colors[i % len(colors)], label=label,
                        clip_on=False)  # a 1.0 and its bar's cap drawn whole on the top edge
            # a marker on each point: a study of one budget has a probe line of one point, which a line alone
            # does not draw; wider than the method's dot, whose colour it shares: a probe scoring as the method
            # did (an easy task: both 1.0) was an x of 5 points hidden inside its dot of 6
            ax.plot(x, [r[f"probe_{metric}"] for r in rs], ":", marker="x", ms=PROBE_MS, mew=1.5,
                    color=colors[i % len(colors)], alpha=0.7, clip_on=False)
        if full:
            ax.axhline(full[metric], color="black", ls="--", lw=1, label=f"full pool ({full['model']})")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}\n" + ", ".join(b for b, f in shares.items() if _percent(f) == t)
                              for t in ticks])
        # a margin of its own: a point 1e-14 off its tick made a log axis of zero width (divide-by-zero warnings)
        ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
        ax.minorticks_off()
        ax.set_xlabel("budget: % of the pool (log scale), and below it as written in study.budgets")
        # within a score's range: matplotlib's margin drew ticks up to 1.04 where every cell scored 1.0
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), min(1.0, ax.get_ylim()[1]))
        ax.set_title(title, pad=10)  # clear of a 1.0's marker on the top edge
        ax.grid(alpha=0.3)
    fig.suptitle("Solid: each cell's headline model (named in the legend; mean ± std over seeds, cut at 0 and 1); "
                 "dotted: linear probe", fontsize=10)
    fig.tight_layout()
    # below both charts, over no point (inside one, 'best' still covered a method's low-budget error bar)
    handles, _ = axes[0].get_legend_handles_labels()
    probe = Line2D([], [], ls=":", marker="x", ms=PROBE_MS, mew=1.5, color="gray",
                   label="linear probe (dotted, x, in its method's colour)")
    fig.legend(handles=[*handles, probe], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, len(handles) + 1), frameon=False)
    save_figure(fig, path)
    plt.close(fig)


def plot_soups(results: list[dict], soups: list[str], path: Path) -> None:
    """Per cell: the ingredients' spread (gray bar, dots) against each soup's test accuracy (markers). A cell's
    markers sit within 0.35 of its tick (a fourth soup sat midway to the next cell's), the legend outside the axis
    (inside, it covered the first cells' points)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(results)), 4))
    markers = dict(zip(soups, "D^vs*P"))
    for i, r in enumerate(results):
        accs = [m["accuracy"] for m in r["models"].values() if m["kind"] == "ingredient"]
        ax.vlines(i, min(accs), max(accs), color="lightgray", lw=8)
        ax.scatter([i] * len(accs), accs, color="gray", s=12, zorder=2, label="ingredients" if i == 0 else None)
        for j, s in enumerate(soups):
            if f"soup:{s}" in r["models"]:
                ax.scatter(i + 0.35 * (j + 1) / len(soups), r["models"][f"soup:{s}"]["accuracy"], marker=markers[s],
                           zorder=3, color=f"C{j + 1}", label=s if i == 0 else None)
        ax.scatter(i - 0.15, r["models"]["probe"]["accuracy"], marker="x", color="black",
                   label="probe" if i == 0 else None)
    ax.set_xticks(range(len(results)), [r["cell"] for r in results], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_title("Ingredient spread (gray) vs soups")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def plot_time(results: list[dict], path: Path) -> None:
    """Stage seconds per cell, stacked; the legend right of the chart (inside, cells of one length had a bar under
    it whatever corner it took)."""
    plt = pyplot()
    stages = ["select", "train", "soup", "evaluate"]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.35 * len(results))))
    left = np.zeros(len(results))
    for stage in stages:
        values = np.array([r["seconds"].get(stage, 0.0) for r in results])
        ax.barh([r["cell"] for r in results], values, left=left, label=stage)
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Compute per cell")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)
    plt.close(fig)


PLOT_DATA = "budget.csv"  # plots/: every method's rows, for one chart of a line per method (template `methods`)


def write_plot_data(table: list[dict], folder: Path) -> None:
    """plots/budget.csv for `dvc plots show --template methods`: a row per method and budget (as written), at the
    budget's share of the pool (`budget_shares`, a cross soup's too). One file in long form, as DVC draws a chart
    per file: the per-method CSVs of earlier studies (plots/<method>.csv, one chart each) are deleted."""
    for stale in folder.glob("*.csv"):
        if stale.name != PLOT_DATA:
            stale.unlink()
    shares = budget_shares(table)
    lines = ["method,budget,examples,fraction,accuracy,macro_f1,probe_accuracy,probe_macro_f1"]
    lines += [f"{r['method']},{budget_label(r['budget'])},{r['examples']},{shares[budget_label(r['budget'])]},"
              f"{r['accuracy']:.4f},{r['macro_f1']:.4f},{r['probe_accuracy']:.4f},{r['probe_macro_f1']:.4f}"
              for r in table]
    write_text(folder / PLOT_DATA, "\n".join(lines) + "\n")


def best_cell(table: list[dict]) -> tuple[dict | None, list[dict]]:
    """The row of the highest mean test accuracy, and the rows tied with it. Ties (an easy task scores 1.0 at several
    budgets; two seeds' 58 and 60 of 60 texts against 59 and 59) go to fewer examples, then to less compute: means
    compared to 9 places, as the float mean of equal counts can differ in its last bit and decided the tie."""
    if not table:
        return None, []
    def mean(row: dict) -> float:
        return round(row["accuracy"], 9)

    best = max(table, key=lambda r: (mean(r), -r["examples"], -r["seconds"]))
    return best, [r for r in table if r is not best and mean(r) == mean(best)]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *args in blocks:
        if kind == "h":
            out.append("#" * args[0] + " " + args[1])
        elif kind == "p":
            out.append(args[0])
        elif kind == "table":
            out.append(md_table(*args))
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})")
        elif kind == "code":
            out.append(f"```{args[1]}\n{args[0].rstrip()}\n```")
    return "\n\n".join(out) + "\n"


def render_study(results: list[dict], soups: list[str], out: Path, params: dict | None = None,
                 training: list[dict] | None = None) -> list[dict]:
    """Write the study report into `out`; return the per-(method, budget) table. `params`: what every
    cell ran with, listed at the end of the report (and in study.json) so a reader can rerun it; with `training`
    (`tasks.evaluate.training`'s records of the sweep), its train section is said in a line under the best cell."""
    out.mkdir(parents=True, exist_ok=True)
    rule = (params or {}).get("evaluate", {}).get("final", "auto")  # the headline rule (evaluate.final)
    full = next((r for r in results if r["cell"] == FULL), None)
    full_row = None
    if full:
        name = headline(full["models"], soups, rule)
        full_row = {"model": name, **{k: full["models"][name][k] for k in ("accuracy", "macro_f1")}}
    table = by_budget(results, soups, rule)
    plot_budget(table, full_row, out / "budget.png")
    souped = any(m["kind"] == "soup" for r in results for m in r["models"].values())
    if souped:
        plot_soups(results, soups, out / "soups.png")
    else:  # a spread of one ingredient and no soup says nothing; nor does an earlier study's plot
        (out / "soups.png").unlink(missing_ok=True)
    plot_time(results, out / "time.png")
    write_plot_data(table, out / "plots")
    winners = by_budget_winners(table)
    write_json(out / "study.json", {"by_budget": table, "winners": winners, "full_pool": full_row,
                                    "rows": rows_of(results), "params": params})

    best, tied = best_cell(table)
    blocks: list[tuple] = [("h", 1, "soupline study")]
    if best:
        blocks.append(("p", f"Best cell by mean test accuracy: {best['method']} at {best['budget']} "
                            f"({100 * best['fraction']:.1f} % of the pool) with {model_cell(best)}: accuracy "
                            f"{best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f}, {best['seconds']:.0f} s per cell."
                       + (" Tied on mean accuracy with " + ", ".join(
                           f"{r['method']} at {r['budget']} ({r['examples']} examples, {r['seconds']:.0f} s per cell)"
                           for r in tied) + ": a tie goes to fewer examples, then to less compute." if tied else "")
                       + (f" Full pool ({full_row['model']}): accuracy {full_row['accuracy']:.4f}, macro-F1 "
                          f"{full_row['macro_f1']:.4f}." if full_row else "")))
    if params and training:
        alone = (" The full-pool cell trains without self-training: it leaves no unselected text to pseudo-label."
                 if full_row and params["train"].get("self_training", {}).get("multiple") else "")
        blocks.append(("p", training_recipe(training, params["train"]) + alone))
    if missed := [r for r in results if r.get("labels_missed")]:
        blocks.append(("p", "Selections with no example of some label (no model trained on one can predict it; "
                            "`select.stratify: balanced` gives every label an example while the budget allows): "
                       + "; ".join(f"{r['cell']} ({len(r['labels_missed'])}: {', '.join(r['labels_missed'][:5])}"
                                   f"{' ...' if len(r['labels_missed']) > 5 else ''})" for r in missed) + "."))
    blocks += [
        ("h", 2, "Accuracy and macro-F1 vs budget"),
        ("p", f"Mean over selection seeds (± sample std); the headline model of a cell is {headline_rule(rule)}. "
              "Probe: logistic regression on frozen embeddings of the same selection."),
        ("table", ["method", "budget", "examples", "% pool", "seeds", "model", "accuracy", "± std",
                   "accuracy per seed", "macro-F1", "± std", "best ingredient acc (by val.)", "probe acc",
                   "probe macro-F1", "seconds"],
         [[r["method"], budget_label(r["budget"]), r["examples"], f"{100 * r['fraction']:.1f}", seeds_cell(r),
           model_cell(r), r["accuracy"], spread(r, "accuracy_std"), per_seed(r), r["macro_f1"],
           spread(r, "macro_f1_std"), r["best_ingredient_accuracy"], r["probe_accuracy"], r["probe_macro_f1"],
           f"{r['seconds']:.1f}"] for r in table]),
    ]
    blocks += [("p", line) for line in (failed_cells_line(results), below_best_line(results, soups, rule)) if line]
    if winners:
        blocks += [
            ("h", 2, "Which method wins at each budget"),
            ("p", "By mean test accuracy of the headline model; the lead is beyond seed noise only when every seed "
                  "of the winner scored above every seed of each other method at that budget."),
            ("table", ["budget", "winner", "accuracy", "runner-up", "accuracy", "lead", "verdict"],
             [[budget_label(w["budget"]), w["winner"], w["accuracy"], w["runner_up"], w["runner_up_accuracy"],
               f"{w['lead']:+.4f}", w["verdict"]] for w in winners]),
        ]
    blocks += [
        ("img", "budget.png", "accuracy and macro-F1 vs budget"),
        ("h", 2, "Ingredients vs soups"),
        ("img", "soups.png", "ingredient spread vs soups") if souped else
        ("p", "No cell has a soup (one ingredient per cell, `soup.methods: []` or `train.method: probe`): every "
              "model of every cell is below."),
        ("table", ["cell", "model", "kind", "accuracy", "macro-F1", "ECE", "val accuracy", "soup of"],
         [[r["cell"], r["model"], r["kind"] + " (training failed)" * ("failed" in r), r["accuracy"], r["macro_f1"],
           r["ece"], r["val_accuracy"], r["soup_of"]] for r in rows_of(results)]),
        ("h", 2, "Compute per cell"),
        ("table", ["cell", "select s", "train s", "soup s", "evaluate s", "total s"],
         [[r["cell"] + (f" (results of {r['same_as']}: the same picks)" if r.get("same_as") else "")]
          + [f"{r['seconds'].get(s, 0.0):.1f}" for s in ("select", "train", "soup", "evaluate")]
          + [f"{sum(r['seconds'].values()):.1f}"] for r in results]),
        ("img", "time.png", "seconds per cell"),
    ]
    if params:
        blocks += [("h", 2, "Params"),
                   ("p", "Shared by every cell; each cell sets select.method, select.budget and select.seed from the "
                         "study grid."),
                   ("code", dump(params), "yaml")]  # read back as the same values (YAML 1.2, as `load`)
    write_text(out / "study.md", to_markdown(blocks))
    write_text(out / "study.html", as_html(self_contained(out / "study.md"), title="soupline study"))
    return table
