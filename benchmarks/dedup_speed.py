"""Near-duplicate filter speed (`select.dedup_threshold`): each row searched against the later rows only vs the
whole pool, on the same synthetic pool in the same run.

    python benchmarks/dedup_speed.py [--n 40000] [--dim 384] [--threshold 0.95] [--repeats 2]

The pool: `--n` L2-normalised points around 300 Gaussian centres (noise 0.35, so neighbours sit at cosine
0.8-0.95) with 1 in 30 rows an exact copy of another. The baseline is `dedup_candidates(..., segments=1)`, one
index of the whole pool, which is what the filter did before session 33; the default cuts the pool into 8
segments and searches each against the rows from its start on. Runs alternate (baseline, default) `--repeats`
times; prints each time, the median ratio default / baseline, and whether both kept the same points.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from soupline.select.dedup import dedup_candidates


def pool(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, dim))[rng.integers(0, 300, n)] + 0.35 * rng.normal(size=(n, dim))
    x[rng.integers(0, n, n // 30)] = x[rng.integers(0, n, n // 30)]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    for flag in ("n", "dim", "repeats"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag} {value}: at least 1")
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold {args.threshold}: a cosine similarity in (0, 1]")
    x = pool(args.n, args.dim)
    times: dict[str, list[float]] = {"whole pool (baseline)": [], "later rows (default)": []}
    kept = {}
    for segments in (1, 8):  # untimed: the first search's one-time start-up went to the baseline
        dedup_candidates(x[:1000], args.threshold, segments=segments)
    for _ in range(args.repeats):
        for name, segments in (("whole pool (baseline)", 1), ("later rows (default)", 8)):
            start = time.perf_counter()
            kept[name] = dedup_candidates(x, args.threshold, segments=segments)
            times[name].append(time.perf_counter() - start)
    for name, seconds in times.items():
        print(f"{name:<22} {len(kept[name]):>7} of {args.n} kept  " + " ".join(f"{s:6.2f}s" for s in seconds))
    ratio = statistics.median(d / b for b, d in zip(*times.values()))
    same = all(np.array_equal(k, kept["whole pool (baseline)"]) for k in kept.values())
    print(f"default / baseline: {ratio:.2f} (median of {args.repeats}); same points kept: {same}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
