"""evaluate: every ingredient and every soup on the test split, next to a linear probe -> metrics.json + plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from soupline.artifacts import read_json, sha256_file, sha256_obj, write_json, write_text
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.evaluate import best_ingredient, headline, metrics, predict_logits, tokenize
from soupline.probe import PROBE_FILE, Probe, score
from soupline.soup import weight_files
from soupline.models import load_tokenizer, pick_device
from tasks.common import (label_ids, main, probe_data, read_embedding, read_labels, read_record, read_split, require,
                          selection_probe)
from tasks.keys import code_digest
from tasks.layout import Layout
from tasks.soup import made_before, no_soup_reason, soup_keys
from tasks.train import ingredient_names


def models_to_evaluate(params: Params, layout: Layout, ingredients: list[str] | None = None) -> dict:
    """name -> (kind, folder) for the sweep's ingredients (or `ingredients`) and the configured soups."""
    names = ingredients or ingredient_names(params)
    out = {n: ("ingredient", require(layout.ingredients / n, "train")) for n in names}
    if no_soup_reason(params, names) is None:
        out.update({f"soup:{m}": ("soup", require(layout.soups / m, "soup")) for m in params.soup.methods})
    return out


def stale_soups(params: Params, layout: Layout, ingredients: list[str] | None = None) -> list[str]:
    """The soups evaluate scores that were not made from the ingredients now in place with these settings (`soupline
    stage train`, or an edited `soup.*` setting, then `soupline stage evaluate`): details.json records them, so the
    report says its soups (and maybe its model to use) are the ones before."""
    names = ingredients or ingredient_names(params)
    if no_soup_reason(params, names) is not None:
        return []
    return [f"soup:{m}" for m, key in soup_keys(params, layout, names).items()
            if made_before(layout.soups / m, key) is None]


def model_labels(folder: Path) -> list[str] | None:
    """The label names a saved model predicts, in id order (config.json's id2label; a probe's train_info.json
    `labels`); None when it does not say."""
    if (folder / PROBE_FILE).exists():
        info = read_json(folder / "train_info.json") if (folder / "train_info.json").exists() else {}
        return info.get("labels") if isinstance(info, dict) else None
    try:
        id2label = read_json(folder / "config.json").get("id2label")
    except (OSError, ValueError, AttributeError):
        return None
    return [id2label.get(str(i)) for i in range(len(id2label))] if isinstance(id2label, dict) else None


def weights_digest(folder: Path) -> str:
    """Content hash of a saved model's config and weights (not its train_info.json / soup.json): two
    folders with the same digest make the same predictions."""
    files = [folder / "config.json", *weight_files(folder)]
    return sha256_obj({f.name: sha256_file(f) for f in files})


def _cached_metrics(m) -> bool:
    return isinstance(m, dict) and {"accuracy", "macro_f1", "ece", "confidence"} <= set(m)


def _cached_probe(hit) -> bool:
    return isinstance(hit, dict) and isinstance(hit.get("row"), dict) and _cached_metrics(hit.get("metrics"))


def _cached(path: Path, valid=_cached_metrics) -> dict | None:
    """What an earlier evaluate wrote at `path` (a model's metrics, or with `_cached_probe` the probe's); None when
    there is none, or the file is damaged (cut short, edited): the model is then run again and the file rewritten."""
    try:
        m = read_json(path)
    except (OSError, ValueError):
        return None
    return m if valid(m) else None


def probe_reference(params: Params, layout: Layout, names: list[str], y_test) -> tuple[dict, dict]:
    """The linear probe on the embed stage's embeddings of the selection: (row, metrics) on test. Kept in the
    evaluation cache by what it is fit and scored on (the splits, their embeddings, the selection, the metric that
    picks C, the code): its five logistic regressions took most of an evaluate that found every model evaluated
    before (a soup setting or `soup.methods` edited: 28 of 32 s at 30 labels), to give the same numbers."""
    cached = probe_entry(params, layout)
    if (hit := _cached(cached, _cached_probe)) is not None:
        return hit["row"], hit["metrics"]
    data = probe_data(layout, names)  # read once: the fit and its validation score
    probe = selection_probe(params, layout, names, data)
    m = metrics(probe.logits(read_embedding(layout, "test")), y_test, names)
    x_val, y_val = data[2:]
    val_acc = score(probe.logits(x_val), y_val, "accuracy")
    row = {"kind": "reference", **calibrated_scores(m), "val_accuracy": val_acc, "C": probe.C}
    write_json(cached, {"row": row, "metrics": m})
    return row, m


def probe_entry(params: Params, layout: Layout) -> Path:
    """Where the evaluation cache keeps the probe reference fit and scored on the workspace's files as they are."""
    inputs = {"probe": {str(f.relative_to(layout.root)): sha256_file(f) if f.exists() else None for f in
                        [*layout.prepared_data, *(layout.embedding(s) for s in ("pool", "validation", "test")),
                         layout.selection]},
              "metric": params.train.early_stopping_metric, "code": code_digest("evaluate")}
    return layout.evaluation_cache / f"probe-{sha256_obj(inputs)}.json"


def scored_inputs(params: Params, tok, test, names: list[str], device: str) -> tuple[dict, str]:
    """The `test` split's texts tokenized by `tok`, and the key of what a model's test metrics depend on besides its
    weights (`model_entry`): those tokens, the labels, the device, the batch size, the code."""
    enc = tokenize(tok, test["text"].tolist(), params.train.max_length)
    return enc, sha256_obj({"inputs": enc, "labels": [names, label_ids(test["label"], names).tolist()],
                            "device": device, "batch_size": params.evaluate.batch_size,
                            "code": code_digest("evaluate")})


def model_entry(layout: Layout, digest: str, inputs: str) -> Path:
    """Where the evaluation cache keeps the test metrics of the weights `digest` on the test `inputs`."""
    return layout.evaluation_cache / f"{sha256_obj({'weights': digest, 'inputs': inputs})}.json"


def cache_entries(params: Params, layout: Layout) -> set[str]:
    """The evaluation cache's files a run of evaluate on the models in place reads (`soupline cache --gc`)."""
    weighted = [path for _, path in models_to_evaluate(params, layout).values() if not (path / PROBE_FILE).exists()]
    entries = {probe_entry(params, layout).name}
    if weighted:
        inputs = scored_inputs(params, load_tokenizer(weighted[0]), read_split(layout, "test"), read_labels(layout),
                               pick_device(params.device))[1]
        entries |= {model_entry(layout, weights_digest(path), inputs).name for path in weighted}
    return entries


def calibrated_scores(m: dict) -> dict:
    """What details.json's model rows (and the report's table) hold of `metrics`."""
    return {k: m[k] for k in ("accuracy", "macro_f1", "ece", "confidence")}


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run(params: Params, layout: Layout, ingredients: list[str] | None = None) -> dict:
    from soupline.classifier import load_classifier

    names = read_labels(layout)
    test = read_split(layout, "test")
    y = label_ids(test["label"], names)
    device = pick_device(params.device)
    tok = None
    results, details = {}, {}
    records: dict[str, str] = {}  # model -> hash of its train_info.json / soup.json: the report names one changed since
    evaluated: dict[str, str] = {}  # weights digest -> the model evaluated with them
    models = models_to_evaluate(params, layout, ingredients)
    stale = stale_soups(params, layout, ingredients)  # before `ingredients` is reused below
    width = max(map(len, [*models, "probe (reference)"]))  # the score columns line up under any name
    for name, (_, path) in models.items():  # ids are scored against labels.json's: another order scores garbage
        if (own := model_labels(path)) is not None and own != names:
            raise SouplineError(f"{name} predicts the labels {own}, and the test split's are now {names} "
                                f"({layout.prepared.relative_to(layout.root)}/labels.json: prepare ran since it was "
                                "trained), so its predictions cannot be scored against them; run the stages after "
                                "prepare again (`soupline run` or `dvc repro`)")
    for name, (kind, path) in models.items():
        if (path / PROBE_FILE).exists():  # a probe ingredient: a linear model on the test embeddings
            m = metrics(Probe.load(path / PROBE_FILE).logits(read_embedding(layout, "test")), y, names)
        elif (digest := weights_digest(path)) in evaluated:  # e.g. a greedy soup that kept one ingredient
            m = details[evaluated[digest]]
            print(f"evaluate: {name}: the same weights as {evaluated[digest]}, its predictions reused")
        else:
            if tok is None:
                tok = load_tokenizer(path)
                enc, inputs = scored_inputs(params, tok, test, names, device)
            cached = model_entry(layout, digest, inputs)
            if (m := _cached(cached)) is not None:
                print(f"evaluate: {name}: evaluated before (the same weights on the same test inputs), its "
                      f"metrics read from {cached.parent.relative_to(layout.root)}")
            else:
                model = load_classifier(path).to(device)
                m = metrics(predict_logits(model, tok, enc, params.evaluate.batch_size, device), y, names)
                del model  # before the next is loaded: one model on the device at a time
                write_json(cached, m)
            evaluated[digest] = name
        info = (read_record(path / "train_info.json", "train", ("val_accuracy",)) if kind == "ingredient"
                else read_record(path / "soup.json", "soup", ("val_accuracy", "ingredients")))
        results[name] = {"kind": kind, **calibrated_scores(m), "val_accuracy": info["val_accuracy"],
                         **({"ingredients": info["ingredients"]} if kind == "soup" else {}),
                         **({"settings": info["settings"]} if "settings" in info else {}),  # its soup.<method> keys
                         **({"weights": info["weights"]} if "weights" in info else {}),  # a learned soup's mix
                         **({"failed": info["failed"]} if "failed" in info else {}),  # why its training failed
                         **({"self_training": info["self_training"]} if "self_training" in info else {})}
        details[name] = m
        records[name] = sha256_file(layout.model_record(name))
        print(f"evaluate: {name:<{width}} test acc {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    results["probe"], details["probe"] = probe_reference(params, layout, names, y)
    print(f"evaluate: {'probe (reference)':<{width}} test acc {results['probe']['accuracy']:.4f}  "
          f"macro-F1 {results['probe']['macro_f1']:.4f}")
    ingredients = {k: v for k, v in results.items() if v["kind"] == "ingredient"}
    best = best_ingredient(results)
    scores = lambda v: {m: round(v[m], 4) for m in ("accuracy", "macro_f1", "ece")}  # noqa: E731
    # the run's headline model (whose confusion matrix dvc plots and the report show), as a study judges its cells;
    # first in metrics.json, so `dvc exp show` leads with it
    final = headline(results, params.soup.methods, params.evaluate.final)
    summary = {
        "final": {"model": final, **scores(results[final])},
        "best_ingredient": {"name": best, **scores(results[best])},
        "probe": scores(results["probe"]),
        "soups": {k.removeprefix("soup:"): scores(v) for k, v in results.items() if v["kind"] == "soup"},
        "ingredients": {k: scores(v) for k, v in ingredients.items()},
    }
    write_json(layout.metrics / "metrics.json", summary)
    write_json(layout.metrics / "details.json", {"labels": names, "models": results, "details": details,
                                                 "confusion_model": final, "final_rule": params.evaluate.final,
                                                 "no_soups": no_soup_reason(params, list(ingredients)),
                                                 "records": records,
                                                 "stale_soups": stale, "training": training(params, list(ingredients)),
                                                 "train": params.train.recipe()})
    write_text(layout.metrics / "plots" / "models.csv",
               _csv([{"model": k, "kind": v["kind"], "accuracy": round(v["accuracy"], 4),
                      "macro_f1": round(v["macro_f1"], 4)} for k, v in results.items()]))
    write_text(layout.metrics / "plots" / "confusion.csv", _csv(confusion_rows(details[final]["confusion"], names)))
    return summary


def training(params: Params, evaluated: list[str]) -> list[dict]:
    """How the `evaluated` ingredients were fine-tuned, for the report (a LoRA run's read as a full fine-tune's): each
    distinct `train.method`, with its `train.lora` settings under LoRA, and its ingredients (a sweep may vary either).
    What evaluate is keyed on: `train.lora` only under LoRA."""
    recipes: dict[str, dict] = {}
    for ing in (i for i in params.train.ingredients() if i.name in evaluated):
        t = ing.train
        recipe = {"method": t.method, **({"lora": t.lora.model_dump()} if t.method == "lora" else {})}
        recipes.setdefault(repr(recipe), {**recipe, "ingredients": []})["ingredients"].append(ing.name)
    return list(recipes.values())


def confusion_rows(confusion: list[list[int]], names: list[str]) -> list[dict]:
    """One row per test text for `dvc plots`' confusion matrix: its actual and predicted label, and their ids, by
    which the template (.dvc/plots/confusion_ids.json) orders the axes: id order (1, 2, 10, a declared order), not
    the text order (1, 10, 2) a plot of names alone gets."""
    return [{"actual": names[i], "predicted": names[j], "actual_id": i, "predicted_id": j}
            for i, row in enumerate(confusion) for j, c in enumerate(row) for _ in range(c)]


if __name__ == "__main__":
    main("evaluate", run)
