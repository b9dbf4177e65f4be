"""The human-readable report: report.md (tables and what they mean) and report.html from the metrics files, with
the PNG plots `soupline.plots` draws."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from soupline.artifacts import write_text
from soupline.config import PROBE
from soupline.evaluate import below_best_ingredient, best_ingredient, headline_rule
from soupline.plots import (CONFUSION_MAX_LABELS, CURVES, plot_confusion, plot_coverage, plot_curves, plot_models,
                            read_curves)
from soupline.select.dedup import repeats_note


def md_cell(v) -> str:
    """A table cell: floats to 4 places; `|` escaped and line breaks flattened, so a label such as
    `Sport | Games` stays one cell."""
    text = f"{v:.4f}" if isinstance(v, float) else str(v)
    return " ".join(text.splitlines()).replace("|", "\\|")


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def self_contained(path: Path) -> str:
    """The markdown file at `path` with its local PNG images inlined as data URIs.

    For viewers that do not read files beside the markdown, such as a Prefect artifact in the UI, where the
    relative links of report.md would be broken images. A link to a missing file is left as it is.
    """
    folder = path.parent

    def inline(match: re.Match) -> str:
        image = folder / match[2]
        if not image.is_file():
            return match[0]
        return f"![{match[1]}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode('ascii')})"

    return IMAGE_LINK.sub(inline, path.read_text(encoding="utf-8"))


HANDWRITTEN = "## Reading"  # a generated report's hand-written section starts here; rewrites keep it


def keep_handwritten(path: Path) -> list[str]:
    """The hand-written part of an earlier report (from its `## Reading` heading on), kept across rewrites."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(HANDWRITTEN)), None)
    return [""] + lines[start:] if start is not None else []


def source_text(source, split_column: str | None = None) -> str:
    """prepare's source as the Data section names it: one path or corpus, or each split's own file (`prepare.splits`:
    a Python dict there before), and the column whose split names divided its rows (`prepare.split_column`)."""
    if isinstance(source, dict):
        return ", ".join(f"{split} `{path}`" for split, path in source.items() if path is not None)
    return f"`{source}`" + (f", divided into splits by its column `{split_column}` (`prepare.split_column`)"
                            if split_column else "")


def curves_section(curves_dir: Path | None, out_dir: Path) -> list[str]:
    """The Training curves section: curves.png from data/curves, or a line saying why there is none (and an earlier
    run's curves.png removed, so the report never shows another run's curves)."""
    png = out_dir / "curves.png"
    curves = read_curves(curves_dir) if curves_dir is not None else {}
    if not any(curves.values()):
        png.unlink(missing_ok=True)
        why = ("no ingredient has training curves" if curves_dir is not None
               and (Path(curves_dir) / CURVES[0][0]).is_file() else "`data/curves/` holds no curves")
        return ["## Training curves", f"No training curves: {why}."]
    plot_curves(curves, png)
    probe = any(PROBE in by for by in curves.values())
    return ["## Training curves",
            "Train loss (each optimizer step's batch) and validation accuracy by step, one line per ingredient "
            "(`train.eval_every` spaces the validation points; `dvc plots show` draws these and macro-F1 too)."
            + (f" `{PROBE}` takes no step: its point at step 0 is its cross-entropy on the selection and its "
               "validation accuracy." if probe else ""),
            "![training curves](curves.png)"]


def per_label(details: dict, best: str) -> list[str]:
    """Test F1 per label of the best ingredient, every soup and the probe, and the confusion matrix of the
    model `dvc plots` shows (details.json's `confusion_model`): where a model loses, not just how much; its heatmap
    is confusion.png (`plot_confusion`)."""
    labels, models = details["labels"], details["models"]
    shown = [best] + [k for k, v in models.items() if v["kind"] != "ingredient"]
    f1 = {k: details["details"][k]["per_class_f1"] for k in shown}
    final = details["confusion_model"]
    confusion = details["details"][final]["confusion"]
    return [
        "## Per label (test split)",
        f"F1 per label (`{best}` is the best ingredient by validation; blank: the label is neither in the test "
        "split nor predicted by that model; a label with no test text that the model predicts scores 0, every such "
        "prediction wrong, and counts in its macro-F1, as in scikit-learn).",
        md_table(["label"] + shown, [[lab] + [f1[k].get(lab, "") for k in shown] for lab in labels]),
        *confusion_section(final, labels, confusion),
        "![confusion matrix, rows normalised](confusion.png)",
    ]


def confusion_section(model: str, labels: list[str], confusion: list[list[int]], top: int = 20) -> list[str]:
    """The confusion matrix of `model`; above CONFUSION_MAX_LABELS labels, its `top` largest off-diagonal
    cells instead (a 200-label matrix is a 40,000-cell markdown table nobody can read, mostly zeros)."""
    if len(labels) <= CONFUSION_MAX_LABELS:
        return [f"Confusion matrix of `{model}` (rows: actual label, columns: predicted; also `dvc plots show`).",
                md_table(["actual / predicted"] + labels, [[lab] + row for lab, row in zip(labels, confusion)])]
    cells = [(n, a, p) for a, row in enumerate(confusion) for p, n in enumerate(row) if a != p and n > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    rows = [[labels[a], labels[p], n, f"{n / sum(confusion[a]):.1%}"] for n, a, p in cells[:top]]
    whole = ("the whole matrix is in `data/metrics/details.json` and `data/metrics/plots/confusion.csv`, "
             "`dvc plots show` draws it")
    if not rows:
        return [f"`{model}` confuses no test text ({len(labels)} labels; {whole})."]
    return [f"The {len(rows)} most frequent confusions of `{model}` ({len(labels)} labels: {whole}).",
            md_table(["actual", "predicted", "test texts", "of the actual label's"], rows)]


def selection_settings(selection: dict) -> str:
    """How the selection was made, beyond method and budget: its quotas, near-duplicate filters and the method's
    own settings (selection.json `params`, `info`)."""
    p, info = selection.get("params", {}), selection.get("info", {})
    parts = []
    if p.get("stratify", "none") != "none":
        parts.append(f"Label quotas: `select.stratify: {p['stratify']}` (the method ran inside each label).")
    filters = [f"`{k}: {p[k]}`" for k in ("dedup_threshold", "heldout_dedup_threshold") if p.get(k) is not None]
    if filters:
        text = (f"Near-duplicate filters {', '.join(filters)}: {info.get('candidates_after_dedup')} of "
                f"{selection['pool_size']} pool examples stayed candidates")
        if p.get("heldout_dedup_threshold") is not None:
            text += f" ({info.get('heldout_twins_excluded')} near-copies of a validation or test text excluded)"
        parts.append(text + ".")
    if info.get("repeated_picks"):
        parts.append(f"**Exact copies:** {repeats_note(info, p.get('dedup_threshold'))}.")
    settings = p.get(selection["method"]) or {}
    if settings:
        parts.append(f"`select.{selection['method']}`: " + ", ".join(setting(k, v, info) for k, v in settings.items())
                     + ".")
    return " ".join(parts)


def setting(key: str, value, info: dict) -> str:
    """`key=value`, None written `null` as in params.yaml; a null setting the method resolved (GOT-D's `eps`,
    `label_weight`) also shows the value it used, which selection.json's `info` records under the same key."""
    if value is None and isinstance(info.get(key), (int, float)):
        return f"{key}=null ({info[key]:.4g} used)"
    return f"{key}={'null' if value is None else value}"


def unselected_labels(counts: dict[str, dict[str, int]], removed: list[str] = ()) -> str:
    """A sentence naming the pool's labels the selection has no example of (the select stage warns, but only in
    the terminal): no model trained on it can predict them, which the per-label scores below then show. `removed`:
    the labels the near-duplicate filters left no candidate of (selection.json `info.labels_removed_by_dedup`),
    which no quota brings back."""
    missing = [label for label, c in counts.items() if c["pool"] and not c["selected"]]
    if not missing:
        return ""
    filtered = [m for m in missing if m in removed]
    fixes = [f"the near-duplicate filters left no candidate of {', '.join(f'`{m}`' for m in filtered)}"] \
        if filtered else []
    if len(filtered) < len(missing):
        fixes.append("`select.stratify: balanced` gives every label a quota while the budget is at least the "
                     "number of labels")
    return (f"**No example selected** of {len(missing)} label{'s' * (len(missing) != 1)} "
            f"({', '.join(f'`{m}`' for m in missing)}): no model trained on this selection can predict "
            f"{'them' if len(missing) != 1 else 'it'}; {'; '.join(fixes)}.")


def members(soup_of: list[str] | None, ingredients: list[str], weights: list[float] | None = None) -> str:
    """A soup's ingredients for the table: `all 4`, or the ones it kept (greedy) by name; a learned soup's weights
    (in `soup_of`'s order), which say more than `all 4` about what it holds."""
    if soup_of is None:
        return ""
    if sorted(soup_of) == sorted(ingredients):
        text = f"all {len(ingredients)}"
    else:
        text = f"{len(soup_of)} of {len(ingredients)}: " + ", ".join(f"`{n}`" for n in soup_of)
    return text + (f" (learned weights {', '.join(f'{w:.2f}' for w in weights)})" if weights else "")


def failed_training(models: dict) -> str:
    """A sentence naming the ingredients whose training failed (train_info.json `failed`, which train warned of in
    the terminal alone) and the soups that hold them: their rows below are of models that learned nothing."""
    failed = {name: m["failed"] for name, m in models.items() if m.get("failed")}
    if not failed:
        return ""
    holders = [name for name, m in models.items() if set(m.get("ingredients") or ()) & set(failed)]
    return ("**Training failed** for " + "; ".join(f"`{name}` ({why})" for name, why in failed.items())
            + (f"; {', '.join(f'`{h}`' for h in holders)} hold{'s' * (len(holders) == 1)} "
               f"{'it' if len(failed) == 1 else 'them'}" if holders else "")
            + ". Lower `train.learning_rates` (or `train.head_learning_rate`).")


def self_training(models: dict) -> str:
    """A sentence on self-training's teacher and pseudo-labels (an ingredient's train_info.json `self_training`,
    through details.json), when the ingredients are its students: the teacher is in no table below."""
    info = next((m["self_training"] for m in models.values() if m.get("self_training")), None)
    if info is None:
        return ""
    agreement = "" if info["agreement"] is None else (
        f"; {info['agreement']:.1%} of them agree with the pool's own labels (which neither the teacher's pick nor "
        "training reads)")
    return (f"Self-training (`train.self_training.multiple: {info['multiple']:g}`): the teacher "
            f"`{info['teacher']['ingredient']}` (that ingredient trained on the selection alone; in no soup) "
            f"labelled the pool's {info['unselected']} unselected texts, and each ingredient trained from the base "
            f"model on the selection plus its {info['kept']} most confident, class-balanced ({info['asked']} asked), "
            f"for the steps of the selection alone{agreement}.")


def training_recipe(training: list[dict] | None, train: dict | None) -> str:
    """How the ingredients were trained, report.md's and study.md's one line: each method (details.json `training`),
    its LoRA settings, its ingredients where a sweep has several, then from `train` (the train section:
    `TrainParams.recipe`, details.json's `train`) the head's start (LP-FT or not), the learning rates (and LoRA's
    adapters' rates: x `train.lora.learning_rate_scale`), epochs, least steps and sweep axes. Two runs of other
    recipes otherwise read alike (a LoRA run as a full fine-tune). The probe's own line for `method: probe`; '' for
    a details.json from before the record, the method alone for one without `train` (before session 52)."""
    if not training:
        return ""
    if training[0]["method"] == "probe":
        return ("Ingredients: the probe (`train.method: probe`: logistic regression on the embed stage's embeddings, "
                "no fine-tuning).")
    recipes = [f"`train.method: {r['method']}`"
               + (": peft adapters merged into the body, `train.lora`: " + ", ".join(f"{k}={v}" for k, v in
                                                                                   r["lora"].items())
                  if "lora" in r else "")
               + (f" ({', '.join(f'`{name}`' for name in r['ingredients'])})" if len(training) > 1 else "")
               for r in training]
    methods = f"Ingredients fine-tuned with {'; '.join(recipes)}."
    if not train:
        return methods
    multiple = train.get("self_training", {}).get("multiple")  # absent: a details.json from before self-training
    fitted = (f"the selection and its pseudo-labels (self-training, `train.self_training.multiple: {multiple:g}`)"
              if multiple else "the selection")
    head = (f"LP-FT (`train.head_init: probe`: the head starts as the probe fit on {fitted})"
            if train["head_init"] == "probe" else "random (`train.head_init: random`)")
    rates = ", ".join(f"{lr:g}" for lr in train["learning_rates"])
    # LoRA's adapters train at the rates x train.lora.learning_rate_scale (`TrainParams.body_rate`; x1 before it)
    scales = sorted({r["lora"]["learning_rate_scale"] for r in training if "learning_rate_scale" in r.get("lora", {})})
    adapters = "".join(f"adapters x{scale:g}: {', '.join(f'{lr * scale:g}' for lr in train['learning_rates'])}; "
                       for scale in scales)
    head_rate = "the body's" if train["head_learning_rate"] is None else f"{train['head_learning_rate']:g}"
    sweep = ", ".join(f"{axis} {values}" for axis, values in train["sweep"].items())
    epochs = f"{train['epochs']} epoch{'s' * (train['epochs'] != 1)}"
    return (f"{methods} Head: {head}; learning rates {rates} ({adapters}head {head_rate}); {epochs}, "
            f"at least {train['min_steps']} steps" + (f"; swept: {sweep}" if sweep else "") + ".")


def soup_settings(models: dict) -> str:
    """The `soup.<method>` settings each soup was made with (its soup.json, through details.json): two reports of
    runs that differ only in, say, `soup.ties.top_k` otherwise read alike."""
    made = [f"`soup.{name.removeprefix('soup:')}`: " + ", ".join(f"{k}={v}" for k, v in m["settings"].items())
            for name, m in models.items() if m.get("settings")]
    return f"Soups made with {'; '.join(made)}." if made else ""


def truncation(embed_info: dict) -> str:
    """How many texts of each split are longer than the embed stage's max_length (read only up to there)."""
    counts, shapes = embed_info.get("truncated") or {}, embed_info["shapes"]
    if not any(counts.values()):
        return ""
    return (f"Longer than `embed.max_length` ({embed_info['max_length']} tokens; the embeddings, and so the selection "
            "and the probe, read only that many; a fine-tune reads up to `train.max_length`): "
            + ", ".join(f"{k} {v} of {shapes[k][0]} ({_percent(v, shapes[k][0])})" for k, v in counts.items()) + ".")


def _percent(part: int, whole: int) -> str:
    """part / whole as a whole percent that reads 0 % or 100 % only when it is (444 of 445 read 100 %)."""
    share = f"{part / whole:.0%}"
    return ">99%" if share == "100%" and part < whole else "<1%" if share == "0%" and part else share


def rare_labels_dropped(summary: dict) -> str:
    """What prepare.rare_labels: drop removed (summary.json's `rare_labels_dropped`, {label: rows}): the labels, most
    rows first, 10 named."""
    gone = summary.get("rare_labels_dropped") or {}
    if not gone:
        return ""
    named = sorted(gone.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"`{' '.join(label.splitlines())}` {rows}" for label, rows in named[:10])
    listed += " ..." if len(named) > 10 else ""
    rows, one = sum(gone.values()), len(gone) == 1
    return (f"Dropped {len(gone)} label{'s' * (not one)} with fewer than `prepare.min_label_examples` examples and "
            f"{'its' if one else 'their'} {rows} row{'s' * (rows != 1)} (`prepare.rare_labels: drop`): {listed}.")


def leakage(summary: dict) -> str:
    """Evaluation texts also in an earlier split (summary.json's `duplicates`): their scores below are inflated, which
    prepare printed once and the report said nothing of."""
    from soupline.data import leaks

    if not (leaked := leaks(summary.get("duplicates") or {})):
        return ""
    return ("**Leakage:** " + ", ".join(f"{v} {k.replace('_in_', ' texts also in ')}" for k, v in leaked.items())
            + ": a model trained (or chosen, on validation) on a copy of a text scores higher on it, so the scores below "
              "may be inflated; `prepare.duplicates: drop` removes such copies from the earlier split.")


def absent_from_pool(summary: dict) -> str:
    """Test labels the pool holds no example of (summary.json's `label_counts`): no model trained on the pool can
    predict them, so their F1 below is 0 and they cap the accuracy; prepare warned once, and the report showed the
    zeros with no word of why."""
    counts = summary.get("label_counts") or {}
    pool, test = counts.get("pool") or {}, counts.get("test") or {}
    absent = {label: n for label, n in test.items() if n and not pool.get(label)}
    if not absent:
        return ""
    total, missed = sum(test.values()), sum(absent.values())
    names = ", ".join(f"{label} ({n})" for label, n in list(absent.items())[:10])
    more = f" and {len(absent) - 10} more" if len(absent) > 10 else ""
    return (f"**Not in the pool:** {len(absent)} test label(s), {names}{more}: {missed} of {total} test texts that "
            f"no model trained on this pool can predict (F1 0 below; accuracy at most {1 - missed / total:.4f}). "
            "Add pool examples of them, or leave them out of the test split.")


def timings_table(timings: dict[str, float | None]) -> str:
    """The Timings section's table: seconds per stage and their total; a stage not run in this workspace (None: its
    outputs were pulled or checked out) says so, and the total is then of the stages run here."""
    timed = [v for v in timings.values() if v is not None]
    every = len(timed) == len(timings)
    rows = [[k, "not run here" if v is None else f"{v:.1f}"] for k, v in timings.items()]
    table = md_table(["stage", "seconds"], rows + [["total" if every else "total (the stages run here)",
                                                    f"{sum(timed):.1f}"]])
    if every:
        return table
    return (table + "\n\nNot run here: this workspace did not make those outputs (they came from `dvc pull`, "
            "`dvc checkout`, `dvc exp apply` or DVC's run cache), so it has no time for them.")


HEADLINE_WHY = {"soup:greedy": "the greedy soup, built on validation (an ingredient kept only if it raised validation "
                               "accuracy)",
                "soup:uniform": "the uniform soup, as no greedy soup was made"}
BELOW_BEST = "Below the best ingredient on validation"  # report.md's and study.md's warning (`below_best_ingredient`)
NEVER_BELOW = "a greedy soup (`soup.methods`) is never below it"


def model_to_use(models: dict, final: str, best: str, rule: str = "auto") -> str:
    """The report's first line: the headline model, how to use it, its test scores, and those of the best ingredient
    and the probe beside it (a person opening the report asks which model, and whether souping paid); which rule
    picked it, and a warning when it is below the best ingredient on validation (a soup list without greedy: the
    headline rule takes the uniform soup, or the first soup, without comparing it with the ingredients; or
    evaluate.final, `rule`, names a soup)."""
    row = models[final]
    beside = [f"the best ingredient by validation, `{best}`, {models[best]['accuracy']:.4f}" if best != final else "",
              f"the probe {models['probe']['accuracy']:.4f}" if "probe" in models and final != "probe" else ""]
    why = headline_rule(rule) if rule != "auto" else HEADLINE_WHY.get(
        final, "the best ingredient by validation accuracy, as no soup was made" if final == best
        else "the first soup of `soup.methods`, as no greedy or uniform soup was made")
    below = below_best_ingredient(models, final)
    return (f"**Model to use: `{final}`** (`soupline predict` uses it): test accuracy {row['accuracy']:.4f}, macro-F1 "
            f"{row['macro_f1']:.4f}" + "".join(f"; {b}" for b in beside if b)
            + f". It is {why} (the rule in Ingredients vs soups), not chosen by these test scores."
            + (f" **{BELOW_BEST}:** {row['val_accuracy']:.4f} vs `{best}`'s {models[best]['val_accuracy']:.4f}; "
               f"`soupline predict --model {best}` uses that ingredient, and {NEVER_BELOW}." if below else ""))


def render(summary: dict, selection: dict, details: dict, timings: dict[str, float | None], out_dir: Path,
           warning: str | None = None, *, embed_info: dict, probe_run: bool = False,
           curves_dir: Path | None = None) -> str:
    """Write report.md + PNGs to out_dir (`warning` at the top); return the markdown. `probe_run`: the ingredient is
    the probe itself (`train.method: probe`), so nothing here is a fine-tune for the probe to be the reference of.
    `curves_dir`: train's data/curves, drawn as curves.png."""
    models = details["models"]
    plot_models(models, out_dir / "models.png")
    plot_coverage(selection["label_counts"], out_dir / "coverage.png")
    final = details["confusion_model"]
    plot_confusion(final, details["labels"], details["details"][final]["confusion"], out_dir / "confusion.png")
    sizes = summary["sizes"]
    ingredients = {k: v for k, v in models.items() if v["kind"] == "ingredient"}
    best = best_ingredient(models)
    rule = details.get("final_rule", "auto")  # evaluate.final (details.json written before it had one: auto)
    parts = [
        "# soupline report",
        *([f"> **Warning:** {warning}."] if warning else []),
        model_to_use(models, final, best, rule),
        "## Data",
        " ".join(filter(None, [f"Source: {source_text(summary['source'], summary.get('split_column'))}. "
                               + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ".",
                               rare_labels_dropped(summary), truncation(embed_info), leakage(summary),
                               absent_from_pool(summary)])),
        md_table(["label"] + list(sizes), [[lab] + [summary["label_counts"][s].get(lab, 0) for s in sizes]
                                            for lab in details["labels"]]),
        "## Selection",
        f"Method `{selection['method']}`, budget {selection['budget']} of {selection['pool_size']} pool examples "
        f"({selection['budget'] / selection['pool_size']:.1%}), seed {selection['seed']}. "
        + " ".join(filter(None, [selection_settings(selection), unselected_labels(
            selection["label_counts"], selection.get("info", {}).get("labels_removed_by_dedup", []))])),
        md_table(["label", "pool", "selected", "pool share", "selected share"],
                 [[k, v["pool"], v["selected"], v["pool"] / selection["pool_size"], v["selected"] / selection["budget"]]
                  for k, v in selection["label_counts"].items()]),
        "![label coverage](coverage.png)",
        "## Ingredients vs soups (test split)",
        f"Headline model (metrics.json's `final`: {headline_rule(rule)}): `{details['confusion_model']}`. "
        f"Best ingredient by validation accuracy: `{best}`. "
        + (f"`probe` is the same model as `{best}` (`train.method: probe`): " if probe_run else
           "`probe` is the reference a fine-tune should beat: ")
        + "logistic regression on the embed stage's frozen embeddings of the same selection, C chosen on validation."
        + (f" {recipe}" if not probe_run and (recipe := training_recipe(details.get("training"),
                                                                        details.get("train"))) else "")
        + (f" No soups: {details['no_soups']}." if details.get("no_soups") else "")
        + (f" {settings}" if (settings := soup_settings(models)) else "")
        + (f" {failed}" if (failed := failed_training(models)) else "")
        + (f" {taught}" if (taught := self_training(models)) else ""),
        md_table(["model", "kind", "val accuracy", "test accuracy", "test macro-F1", "ECE", "mean confidence",
                  "soup of"],
                 [[k, v["kind"] + " (training failed)" * bool(v.get("failed")), v["val_accuracy"], v["accuracy"],
                   v["macro_f1"], v["ece"], v["confidence"], members(v.get("ingredients"), list(ingredients),
                                                                     v.get("weights"))] for k, v in models.items()]),
        "ECE is the calibration error of the predicted label's probability (10 bins); the mean confidence, that "
        "probability averaged over the test texts, gives its direction: below the test accuracy the model is "
        "under-confident (as a strongly regularised probe on unit-length embeddings tends to be), above it "
        "over-confident.",
        "![ingredients vs soups](models.png)",
        *per_label(details, best),
        *curves_section(curves_dir, out_dir),
        "## Timings",
        timings_table(timings),
    ]
    text = "\n\n".join(parts) + "\n"
    write_text(out_dir / "report.md", text)
    write_text(out_dir / "report.html", as_html(text))
    return text


def as_html(markdown: str, title: str = "soupline report") -> str:
    """report.md as one HTML page for a browser (tables drawn, the PNGs beside it linked as report.md links them);
    raw HTML in the markdown (a label name, a source path) is shown as text, never run."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style>"
            f"</head><body>\n{body}</body></html>\n")
