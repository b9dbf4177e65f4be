"""Class probabilities for new texts from a saved model folder (a fine-tuned ingredient or soup, or a probe
ingredient), and their score against labels: what `soupline predict` computes (tasks/predict.py reads and
writes the files)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from soupline import data
from soupline.artifacts import read_json
from soupline.errors import SouplineError


def probe_logits(folder: Path, texts: list[str], device: str, batch_size: int) -> np.ndarray:
    """A probe ingredient's logits: the texts embedded as its training embeddings were (the base model and
    max_length in its train_info.json, whatever the params say now)."""
    from soupline.embed import Encoder
    from soupline.models import resolve_model
    from soupline.probe import PROBE_FILE, Probe

    probe = Probe.load(folder / PROBE_FILE)
    embedded = read_json(folder / "train_info.json").get("embed") if (folder / "train_info.json").exists() else None
    if embedded is None:
        raise SouplineError(f"{folder} is a probe without a record of the embeddings it was fit on (trained before "
                            "soupline recorded it); train it again")
    try:
        base = resolve_model(embedded["model"])
    except SouplineError as err:  # its advice, to set `model`, cannot help: the probe reads the model it was fit on
        raise SouplineError(f"{folder} is a probe fit on the embeddings of {embedded['model']!r} (its train_info.json "
                            f"`embed.model`, read whatever `model` says now), which does not load: "
                            f"{str(err).split(';')[0]}; put that model back there, or fit the probe again on it "
                            "where it is now (`model: <its folder>`, then `soupline run`)") from None
    encoder = Encoder(base, batch_size, embedded["max_length"], device)
    x = encoder(texts)
    if x.shape[1] != probe.weight.shape[1]:
        raise SouplineError(f"{folder}: the probe takes {probe.weight.shape[1]}-dimensional embeddings, but "
                            f"{embedded['model']} gives {x.shape[1]}")
    return probe.logits(x)


def class_probabilities(folder: Path, texts: list[str], device: str, batch_size: int, max_length: int,
                        probe_labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """(n, labels) class probabilities of the model saved in `folder` for `texts`, and its label names.

    A fine-tuned model reads as many tokens as its tokenizer's `model_max_length` says (the train.max_length
    it was trained with, so a test split gives evaluate's numbers), else `max_length`, at most as many as its
    positions take; a probe ingredient embeds them as it was fit (its label names are in its train_info.json;
    `probe_labels` names those of older probes)."""
    from scipy.special import softmax

    from soupline.probe import PROBE_FILE

    if (folder / PROBE_FILE).exists():
        logits = probe_logits(folder, texts, device, batch_size)
        names = read_json(folder / "train_info.json").get("labels") or probe_labels  # older probes: the workspace's
        if len(names) != logits.shape[1]:
            raise SouplineError(f"{folder} is a probe over {logits.shape[1]} labels without their names (trained "
                                f"before soupline recorded them), and this workspace has {len(names)}; train it again")
    else:
        from soupline.classifier import load_classifier
        from soupline.evaluate import predict_logits, tokenize
        from soupline.models import load_tokenizer, max_tokens

        tok, model = load_tokenizer(folder), load_classifier(folder).to(device)
        # at most the model's positions: a folder from elsewhere whose tokenizer says more (512 over 128 positions)
        # failed on a long text with torch's traceback
        length = min(tok.model_max_length if tok.model_max_length <= 1_000_000 else max_length,
                     max_tokens(str(folder)) or max_length)
        logits = predict_logits(model, tok, tokenize(tok, texts, length), batch_size, device)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return softmax(logits.astype(np.float64), axis=1), names


def predicted_labels(pred: np.ndarray, names: list[str], labels: pd.Series | None) -> list:
    """The names of the predicted label ids, typed as the file's labels: integers when every name of the model is
    an integer as Python writes one (`7`, not `07`, a code kept as written) and the file's label column, when it
    has one, holds numbers (JSON, Parquet; whole floats too), so that `prediction == label` compares like with like.
    Else the names as strings (prepare keeps labels as strings; a CSV's labels are read as written, strings)."""
    is_number = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)  # noqa: E731
    numeric = labels is None or labels.dropna().map(is_number).all()
    if numeric and all(re.fullmatch(r"0|-?[1-9]\d*", n) for n in names):  # not -0: it would merge with 0
        return [int(names[i]) for i in pred]
    return [names[i] for i in pred]


def label_metrics(labels: pd.Series, pred: np.ndarray, names: list[str]) -> str:
    """Accuracy and macro-F1 on the rows whose label the model knows (the others are named in a warning);
    rows without a label are left out."""
    from soupline.evaluate import label_scores

    labelled = labels.notna().to_numpy()
    labels = data.label_strings(labels)
    known = labelled & labels.isin(names).to_numpy()
    if (labelled & ~known).any():
        unknown, n = sorted(set(labels[labelled & ~known])), int((labelled & ~known).sum())
        warnings.warn(f"{n} row{'s have' if n != 1 else ' has'} labels the model was not trained on ({unknown[:5]}"
                      f"{' ...' if len(unknown) > 5 else ''}); they are left out of the metrics", stacklevel=2)
    if not labelled.any():
        return "no row has a label: no metrics"
    if not known.any():
        return "no row has a label the model knows: no metrics"
    y = labels[known].map({n: i for i, n in enumerate(names)}).to_numpy()
    m = label_scores(pred[known], y, names)
    n = int(known.sum())
    return f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f} on {n} labelled row{'s' * (n != 1)}"
