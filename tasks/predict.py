"""predict: labels for new texts from a model this workspace built (`soupline predict FILE`).

Not a pipeline stage: it reads the trained ingredients and soups (and metrics.json for `final`) and
writes nothing under data/. A fine-tuned model reads the texts itself, as many tokens as it was trained
on; a probe ingredient (`train.method: probe`) reads their embeddings from the base model it was fit on. So
the test split gives evaluate's numbers whatever these params say. When the file also has the label
column, accuracy and macro-F1 on it are printed too.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from soupline import data
from soupline.artifacts import atomic_path, read_json
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.models import pick_device
from tasks.common import read_labels
from tasks.layout import Layout

OUTPUTS = (".jsonl", ".csv", ".parquet")


def resolve_model(params: Params, layout: Layout, model: str) -> tuple[str, Path]:
    """(name, folder) of `final` (metrics.json's headline model), `soup:<method>`, an ingredient, or a folder."""
    if model == "final":
        metrics = layout.metrics / "metrics.json"
        if not metrics.exists():
            raise SouplineError("--model final is the evaluate stage's headline model and there is no "
                                f"{metrics} yet; run the pipeline, or name a model (soup:greedy, an ingredient)")
        model = read_json(metrics)["final"]["model"]
    if model.startswith("soup:"):
        folder = layout.soups / model.removeprefix("soup:")
    elif (layout.ingredients / model).is_dir():
        folder = layout.ingredients / model
    else:
        folder = Path(model)
    if not (folder / "config.json").exists() and not (folder / "probe.safetensors").exists():
        built = sorted(p.name for p in layout.ingredients.iterdir() if p.is_dir()) if layout.ingredients.exists() else []
        soups = sorted(f"soup:{p.name}" for p in layout.soups.iterdir() if p.is_dir()) if layout.soups.exists() else []
        raise SouplineError(f"--model {model!r} is not a model this workspace built, nor a model folder; built: "
                            f"{['final', *soups, *built]}")
    return model, folder


def probe_logits(params: Params, folder: Path, texts: list[str], device: str) -> np.ndarray:
    """A probe ingredient's logits: the texts embedded as its training embeddings were (the base model and
    max_length in its train_info.json, whatever these params say)."""
    from soupline.embed import Encoder
    from soupline.models import resolve_model
    from soupline.probe import PROBE_FILE, Probe

    probe = Probe.load(folder / PROBE_FILE)
    embedded = read_json(folder / "train_info.json").get("embed") if (folder / "train_info.json").exists() else None
    if embedded is None:
        raise SouplineError(f"{folder} is a probe without a record of the embeddings it was fit on (trained before "
                            "soupline recorded it); train it again")
    encoder = Encoder(resolve_model(embedded["model"]), params.embed.batch_size, embedded["max_length"], device)
    x = encoder(texts)
    if x.shape[1] != probe.weight.shape[1]:
        raise SouplineError(f"{folder}: the probe takes {probe.weight.shape[1]}-dimensional embeddings, but "
                            f"{embedded['model']} gives {x.shape[1]}")
    return probe.logits(x)


def predict_probs(params: Params, layout: Layout, folder: Path, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """(n, labels) class probabilities of the model in `folder` for `texts`, and its label names.

    A fine-tuned model reads as many tokens as its tokenizer's `model_max_length` says (train.max_length of
    the run that trained it: evaluate's numbers on test), else train.max_length."""
    from soupline.probe import PROBE_FILE

    device = pick_device(params.device)
    if (folder / PROBE_FILE).exists():
        logits, names = probe_logits(params, folder, texts, device), read_labels(layout)
    else:
        from transformers import AutoTokenizer

        from soupline.classifier import load_classifier
        from soupline.evaluate import predict_logits, tokenize

        tok, model = AutoTokenizer.from_pretrained(folder), load_classifier(folder).to(device)
        max_length = tok.model_max_length if tok.model_max_length <= 1_000_000 else params.train.max_length
        logits = predict_logits(model, tok, tokenize(tok, texts, max_length), params.evaluate.batch_size, device)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    logits = logits.astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), names


def label_metrics(labels: pd.Series, pred: np.ndarray, names: list[str]) -> str:
    """Accuracy and macro-F1 on the rows whose label the model knows (the others are named in a warning);
    rows without a label are left out."""
    from soupline.evaluate import metrics

    labelled = labels.notna().to_numpy()
    labels = data.label_strings(labels)
    known = labelled & labels.isin(names).to_numpy()
    if (labelled & ~known).any():
        unknown = sorted(set(labels[labelled & ~known]))
        warnings.warn(f"{(labelled & ~known).sum()} rows have labels the model was not trained on ({unknown[:5]}"
                      f"{' ...' if len(unknown) > 5 else ''}); they are left out of the metrics", stacklevel=2)
    if not known.any():
        return "no row has a label the model knows: no metrics"
    y = labels[known].map({n: i for i, n in enumerate(names)}).to_numpy()
    onehot = np.eye(len(names), dtype=np.float32)[pred[known]]  # metrics() reads argmax of its logits
    m = metrics(onehot, y, names)
    return f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f} on {int(known.sum())} labelled rows"


def run(params: Params, layout: Layout, source: str, model: str = "final", out: str | None = None,
        probabilities: bool = False) -> pd.DataFrame:
    """Predict every text of `source`; write the table (input columns + prediction, score) to `out` or stdout."""
    p = params.prepare
    if out is not None and Path(out).suffix.lower() not in OUTPUTS:
        raise SouplineError(f"--out {out!r}: write predictions as one of {list(OUTPUTS)}")
    table = data.read_table(source, (*data.as_columns(p.text_column), p.label_column), param="the file to predict")
    if isinstance(table, dict):
        raise SouplineError(f"{source} is a DatasetDict folder; point at one split's folder or file")
    texts = data.texts_of(table, p.text_column, source)
    if texts.isna().any():
        raise SouplineError(f"{source}: {int(texts.isna().sum())} rows have no text; fill or drop them")
    name, folder = resolve_model(params, layout, model)
    probs, names = predict_probs(params, layout, folder, texts.astype(str).tolist())
    pred = probs.argmax(1)
    result = table.assign(prediction=[names[i] for i in pred], score=probs.max(1).round(6))
    if probabilities:
        result = result.assign(**{f"prob:{n}": probs[:, i].round(6) for i, n in enumerate(names)})
    print(f"predict: {len(result)} texts with {name} ({folder})", file=sys.stderr)
    if p.label_column in table.columns:
        labels = table[p.label_column].astype(object)
        if p.label_names:  # integer labels, named as prepare names them
            given = labels.notna()
            labels[given] = data.name_labels(data.label_strings(labels[given]), p.label_names)
        print(f"predict: {label_metrics(labels, pred, names)}", file=sys.stderr)
    if out is None:
        result.to_json(sys.stdout, orient="records", lines=True, force_ascii=False)
        return result
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        suffix = Path(out).suffix.lower()
        if suffix == ".jsonl":
            result.to_json(tmp, orient="records", lines=True, force_ascii=False)
        elif suffix == ".csv":
            result.to_csv(tmp, index=False)
        else:
            result.to_parquet(tmp, index=False)
    print(f"predict: wrote {out}", file=sys.stderr)
    return result
