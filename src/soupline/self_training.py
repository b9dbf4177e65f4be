"""Self-training (`train.self_training`): pseudo-labels for the pool's unselected texts from a teacher's softmax.

Lee 2013 ("Pseudo-Label"), Xie et al. 2020 ("Self-training with Noisy Student"): a selection method holds every pool
text and the labels are what the budget saves, so the unselected texts are unlabelled data. A teacher (an ingredient
trained on the selection alone) predicts them; per predicted label its most confident are kept, class-balanced, as
hard labels (LP-FT's probe and cross-entropy read label ids), and the students train on selection + them. The train
stage (tasks/train.py) and benchmarks/self_training_stage.py both pick them here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from soupline.errors import SouplineError


def balanced_pick(labels: np.ndarray, score: np.ndarray, count: int, n_labels: int) -> np.ndarray:
    """Class-balanced pick: per label of `labels` (ids below `n_labels`) its `count` // `n_labels` rows of highest
    `score` (ties by row order), all of them when it has fewer. The rows, ascending."""
    rows = [ix[np.argsort(-score[ix], kind="stable")[:count // n_labels]]
            for ix in (np.flatnonzero(labels == c) for c in range(n_labels))]
    return np.sort(np.concatenate(rows))


def check_count(multiple: float, size: int, labels: int) -> None:
    """`train.self_training.multiple` x a selection of `size` against the `labels`: a count under one per label gives
    each label none (`balanced_pick`), so the teacher trained and labelled the pool for students trained on the
    selection alone, with no word; one line naming the least multiple that gives one per label."""
    if round(multiple * size) < labels:
        least = math.ceil(labels / size * 1000) / 1000
        raise SouplineError(f"train.self_training.multiple={multiple:g} asks for {round(multiple * size)} "
                            f"pseudo-labels ({multiple:g} x the selection's {size}), fewer than one per label "
                            f"({labels} labels), so the students would train on none; raise it to at least "
                            f"{least:g}, or set it to 0 (no self-training)")


def check_counts(multiple: float, sizes: dict[str, int], labels: int) -> None:
    """`check_count` for each named selection size in order (a study's budgets: `study.budgets[1] 2` -> its size): the
    first under one pseudo-label per label stops with its line prefixed by its name, as `soupline study` stops on it
    (`tasks.select.check_budgets`) and doctor says it would (`cli._self_training_check`); the name "" adds none (a
    run's select.budget, which its line names already)."""
    for name, size in sizes.items():
        try:
            check_count(multiple, size, labels)
        except SouplineError as err:
            raise (SouplineError(f"{name}: {err}") if name else err) from None


def pseudo_labels(probs: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced confident pick from `probs` (texts x labels): per predicted label (argmax) its `count` //
    labels most confident rows (ties by row order), all of them when it has fewer. The rows, ascending, and their
    predicted labels."""
    predicted = probs.argmax(1)
    rows = balanced_pick(predicted, probs.max(1), count, probs.shape[1])
    return rows, predicted[rows]


def teacher_probs(folder: str | Path, texts: list[str], max_length: int, batch_size: int = 64,
                  device: str = "cpu") -> np.ndarray:
    """The classifier at `folder`'s softmax over `texts` (float32, texts x labels)."""
    from scipy.special import softmax

    from soupline.classifier import load_classifier
    from soupline.evaluate import predict_logits, tokenize
    from soupline.models import load_tokenizer

    tok = load_tokenizer(folder)
    logits = predict_logits(load_classifier(folder).to(device), tok, tokenize(tok, texts, max_length), batch_size,
                            device)
    return softmax(logits, axis=1).astype(np.float32)
