"""Linear probe: multinomial logistic regression on frozen features, C chosen on validation.

Two uses: the reference every fine-tuned model is compared with (a probe on the embed stage's
sentence embeddings, fit on the selection), and LP-FT (Kumar et al., ICLR 2022), where a probe
fit on the head's own input features becomes the classification head before fine-tuning, so
the pretrained features are not distorted by gradients from a random head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soupline.errors import SouplineError

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_FILE = "probe.safetensors"  # a probe ingredient's weights (train.method: probe)


@dataclass
class Probe:
    weight: np.ndarray  # (num_labels, d): rows of labels absent from the training set are zero
    bias: np.ndarray  # (num_labels,): absent labels get the lowest bias, so they are never favoured
    C: float
    val_score: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.weight.T + self.bias).astype(np.float32)

    def save(self, path) -> None:
        """weight, bias (and C, the validation score) in a safetensors file, the same bytes for the same probe.

        safetensors writes `__metadata__` from a hash map whose order changes from one call to the next, so the
        same probe made different files (a new DVC output for train, and a re-run of what follows): the header
        is written again with the metadata sorted (same length; readers skip the space padding)."""
        import json

        from safetensors.numpy import save

        blob = save({"weight": self.weight, "bias": self.bias},
                    metadata={"C": repr(self.C), "val_score": repr(self.val_score)})
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + n])
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        Path(path).write_bytes(blob[:8] + text.ljust(n) + blob[8 + n:])

    @classmethod
    def load(cls, path) -> "Probe":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            return cls(f.get_tensor("weight"), f.get_tensor("bias"), float(meta.get("C", "nan")),
                       float(meta.get("val_score", "nan")))


def score(logits: np.ndarray, y: np.ndarray, metric: str) -> float:
    """accuracy or macro-F1 (evaluate's rule) of the logits' argmax."""
    from soupline.evaluate import macro_f1

    pred = logits.argmax(1)
    return float((pred == y).mean()) if metric == "accuracy" else macro_f1(pred, y)


def fit_at(x: np.ndarray, y: np.ndarray, num_labels: int, C: float) -> Probe:
    """One probe at inverse regularisation C, over all `num_labels` labels (those absent from y never win)."""
    from sklearn.linear_model import LogisticRegression

    if y.max(initial=-1) >= num_labels:
        raise SouplineError(f"probe labels go up to {y.max()} but the model has {num_labels} labels: the probe and "
                            "the model must share one label set")
    present = np.unique(y)
    weight = np.zeros((num_labels, x.shape[1]), dtype=np.float64)
    bias = np.zeros(num_labels, dtype=np.float64)
    if len(present) == 1:  # one label: nothing to separate; the probe predicts it
        bias[:] = -10.0
        bias[present[0]] = 0.0
    else:
        clf = LogisticRegression(C=C, max_iter=2000).fit(x, y)
        coef, intercept = clf.coef_, clf.intercept_
        if len(present) == 2:  # sklearn's binary form: one row for class 1 vs class 0
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        weight[present], bias[present] = coef, intercept
        bias[np.setdiff1d(np.arange(num_labels), present)] = intercept.min() - 10.0
    return Probe(weight.astype(np.float32), bias.astype(np.float32), C, float("nan"))


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits)."""
    from scipy.special import log_softmax

    log_p = log_softmax(logits.astype(np.float64), axis=1)
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_probe(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_labels: int,
              metric: str = "accuracy", grid: tuple[float, ...] = C_GRID) -> Probe:
    """Fit one probe per C in `grid` on (x, y), keep the best on validation.

    Ties on the metric (common on small validation splits) go to the lower validation log-loss: the
    smallest C would otherwise win them with a near-uniform head, a poor start for LP-FT.
    """
    if len(x) == 0 or len(x_val) == 0:
        raise SouplineError("the probe needs training and validation examples; got "
                            f"{len(x)} and {len(x_val)}")
    if y_val.max(initial=-1) >= num_labels:
        raise SouplineError(f"probe labels go up to {max(y.max(), y_val.max())} but the model has "
                            f"{num_labels} labels: the probe and the model must share one label set")
    best, best_rank = None, None
    for C in grid:
        probe = fit_at(x, y, num_labels, C)
        logits = probe.logits(x_val)
        probe.val_score = score(logits, y_val, metric)
        rank = (probe.val_score, -log_loss(logits, y_val))
        if best is None or rank > best_rank:
            best, best_rank = probe, rank
    return best
