"""The embed stage's count of truncated texts: taken from the encoding pass (`Encoder.encode`, the fast
tokenizer's `overflowing`) vs a second tokenisation of every text whole (`embed.count_longer`, the baseline).

    python benchmarks/embed_truncation_count.py [--n 4000] [--words 20 400] [--model MODEL] [--repeats 2]

Texts: `--n` synthetic texts of a uniform number of words in `--words` (a bbcnews article is about 400). Model:
the built-in all-MiniLM-L6-v2 by default; `--model tiny` builds the test suite's 2-layer hidden-32 BERT, whose
forward pass is cheap, so the count is a larger share. Each side embeds the same texts (max_length 128, batch
64) and counts; printed: the median seconds of each side, the ratio default / baseline, and whether both sides
give the same count and bit-identical embeddings. Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def texts_of(n: int, low: int, high: int) -> list[str]:
    rng = np.random.default_rng(0)
    words = "the market team players phone chip software coach goal profit deal battery faster rose".split()
    return [" ".join(rng.choice(words, rng.integers(low, high + 1))) for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--words", type=int, nargs=2, default=[20, 400])
    parser.add_argument("--model", default=None, help="a model folder, `tiny`, or the built-in model (default)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or not 1 <= args.words[0] <= args.words[1]:
        parser.error("--n and --repeats must be at least 1, and --words LOW HIGH with 1 <= LOW <= HIGH")
    from soupline import embed
    from soupline.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            from tests.test_benchmark_targets import load_benchmark

            model = load_benchmark("orchestration_overhead").tiny_model(Path(tmp) / "tiny-bert")
        else:
            model = resolve_model(args.model or "sentence-transformers/all-MiniLM-L6-v2")
        texts = texts_of(args.n, *args.words)
        encoder = embed.Encoder(model, 64, 128, "cpu")
        encoder(texts[:64], progress=False)  # loads the model and tokenizer: not timed
        times: dict[str, list[float]] = {"baseline": [], "default": []}
        results = {}
        for _ in range(args.repeats):
            for side in times:
                start = time.perf_counter()
                emb, count = encoder.encode(texts, progress=False)
                if side == "baseline":
                    count = embed.count_longer(encoder.tokenizer, texts, 128)
                times[side].append(time.perf_counter() - start)
                results[side] = (emb, count)
        med = {side: statistics.median(t) for side, t in times.items()}
        same = results["baseline"][1] == results["default"][1] and \
            np.array_equal(results["baseline"][0], results["default"][0])
        print(f"{args.n} texts of {args.words[0]}-{args.words[1]} words, {Path(model).name}: "
              f"baseline {med['baseline']:.2f} s, default {med['default']:.2f} s, "
              f"ratio default / baseline {med['default'] / med['baseline']:.2f}; truncated "
              f"{results['baseline'][1]} vs {results['default'][1]}, same count and embeddings: {same}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
