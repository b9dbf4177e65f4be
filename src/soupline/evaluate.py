"""Predictions and metrics: accuracy, macro-F1, per-class F1, confusion matrix, calibration (ECE)."""

from __future__ import annotations

import numpy as np

from soupline.errors import SouplineError


def tokenize(tokenizer, texts: list[str], max_length: int, chunk: int = 4096) -> list[dict]:
    """Token ids per text (unpadded); `collate` pads each batch to its own longest text.

    The tokenizer sees `chunk` texts at a time: its encodings (offsets, token strings) of every text at
    once cost about 6 KB per short text at their peak (590 MB for 100,000 texts to `soupline predict`),
    six times the ids kept."""
    rows = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length)
        rows.extend({k: enc[k][i] for k in enc.keys()} for i in range(len(enc["input_ids"])))
    return rows


def collate(tokenizer, rows: list[dict], device: str):
    """`tokenize`'s rows as one batch of tensors on `device`, padded to its longest text."""
    return tokenizer.pad(rows, return_tensors="pt").to(device)


def predict_logits(model, tokenizer, encoded: list[dict], batch_size: int, device: str) -> np.ndarray:
    """(n, num_labels) float32 logits of a classifier over pre-tokenised texts, longest first."""
    import torch

    model.eval()
    order = np.argsort([-len(r["input_ids"]) for r in encoded], kind="stable")
    out = np.empty((len(encoded), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            idx = order[start:start + batch_size]
            batch = collate(tokenizer, [encoded[i] for i in idx], device)
            out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(ece)


def present_labels(pred: np.ndarray, y: np.ndarray) -> list[int]:
    """The label ids macro-F1 averages over: those in y or predicted. A label neither holds (absent from a small
    validation split, never predicted) would add a meaningless 0 to the mean."""
    return sorted(set(y.tolist()) | set(pred.tolist()))


def macro_f1(pred: np.ndarray, y: np.ndarray) -> float:
    """Macro-F1 over `present_labels`: the one rule for validation (early stopping, the probe's C)
    and test metrics."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=present_labels(pred, y), average="macro", zero_division=0))


def label_scores(pred: np.ndarray, y: np.ndarray, label_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class F1 (over `present_labels`) and confusion of label ids."""
    from sklearn.metrics import confusion_matrix, f1_score

    present = present_labels(pred, y)
    per_class = f1_score(y, pred, labels=present, average=None, zero_division=0)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1(pred, y),
        "per_class_f1": {label_names[c]: float(f) for c, f in zip(present, per_class)},
        "confusion": confusion_matrix(y, pred, labels=list(range(len(label_names)))).tolist(),
    }


def metrics(logits: np.ndarray, y: np.ndarray, label_names: list[str]) -> dict:
    """`label_scores` of the logits' argmax, and their calibration: ECE, and the mean probability of the predicted
    label (`confidence`), which says the direction ECE leaves out: below accuracy is under-confident."""
    from scipy.special import softmax

    probs = softmax(logits, axis=1)
    return {**label_scores(logits.argmax(1), y, label_names), "ece": expected_calibration_error(probs, y),
            "confidence": float(probs.max(1).mean())}


def best_ingredient(models: dict) -> str:
    """The ingredient with the highest validation accuracy among `models` (name -> its row, with `kind` and
    `val_accuracy`; the first of a tie): the run's model when it has no soup, and what every soup is compared with."""
    ingredients = [name for name, m in models.items() if m["kind"] == "ingredient"]
    return max(ingredients, key=lambda name: models[name]["val_accuracy"])


def headline(models: dict, soups: list[str], final: str = "auto") -> str:
    """The model a run or a study cell is judged by (metrics.json's `final`, the study's tables), by `final`
    (evaluate.final): `auto`, the greedy soup, else the uniform soup, else the first soup made in `soups`
    (soup.methods) order, else the best ingredient by validation; `best_ingredient`, that ingredient; a soup's name,
    that soup, which must have been made (params check that the run plans it; a stage run by hand on other soups
    can still find it missing)."""
    if final == "best_ingredient":
        return best_ingredient(models)
    if final != "auto":
        if f"soup:{final}" not in models:
            raise SouplineError(f"evaluate.final is {final}, but no {final} soup was made (see the soup stage's "
                                "output); set evaluate.final: auto to judge by another model")
        return f"soup:{final}"
    for name in ["soup:greedy", "soup:uniform"] + [f"soup:{s}" for s in soups]:
        if name in models:
            return name
    return best_ingredient(models)


def headline_rule(final: str) -> str:
    """How `headline` picks with `final` (evaluate.final), in words, for report.md and study.md."""
    if final == "auto":
        return ("the greedy soup, else the uniform soup, else the first soup made, else the best ingredient by "
                "validation")
    if final == "best_ingredient":
        return "the best ingredient by validation accuracy, as evaluate.final says"
    return f"the {final} soup, as evaluate.final says"


def below_best_ingredient(models: dict, final: str) -> bool:
    """Whether the headline model `final` (`headline`) scores below the best ingredient on validation: the rule takes
    the uniform soup, or the first soup made, without comparing it with the ingredients (a greedy soup, which starts
    from the best ingredient, never is). report.md and study.md warn of it."""
    return models[final]["val_accuracy"] < models[best_ingredient(models)]["val_accuracy"]
