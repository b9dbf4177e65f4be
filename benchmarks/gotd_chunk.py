"""GOT-D select time with the pool cut into chunks of `select.gotd.chunk` rows: the default vs the 8192 rows it had
before session 35, on the same synthetic pool in the same run.

    python benchmarks/gotd_chunk.py [--n 60000] [--target 5000] [--dim 384] [--repeats 1]

The pool: `--n` L2-normalised float32 points around 20 Gaussian centres (noise 2.0) and a target of `--target`
points drawn the same way; budget 1 % of the pool, `target_copy_threshold: null`, the other GOT-D defaults. Above
`max_pool_for_ot` (20,000) the OT solve runs on a subsample and every pool row gets its potential from the
c-transform, chunk by chunk, each of the 16 rounds; with `cost_cache_mb: 0` here the costs are recomputed in chunks
too (a pool over the cache keeps the rows that fit and recomputes the others: at 60,000 x 5,000, 1.2 GB in float32,
7,232 rows a round). Runs alternate (baseline, default) `--repeats` times; prints each time, the
median ratio default / baseline, and whether both picked the same points.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from soupline.select.base import SelectionInput
from soupline.select.gotd import GotdConfig, select


def problem(n: int, target: int, dim: int, seed: int = 0) -> SelectionInput:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))

    def draw(size: int) -> np.ndarray:
        x = centres[rng.integers(0, 20, size)] + 2.0 * rng.normal(size=(size, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    pool = draw(n)
    return SelectionInput(pool, np.zeros(n, dtype=np.int64), ["a"], target_embeddings=draw(target),
                          extras={"device": "cpu"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--target", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-pool-for-ot", type=int, default=GotdConfig().max_pool_for_ot)
    args = parser.parse_args(argv)
    for flag in ("n", "target", "dim", "repeats", "max_pool_for_ot"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag.replace('_', '-')} {value}: at least 1")
    pool = problem(args.n, args.target, args.dim)
    runs = {"8192 rows (baseline)": 8192, f"{GotdConfig().chunk} rows (default)": GotdConfig().chunk}
    times: dict[str, list[float]] = {name: [] for name in runs}
    picked = {}
    configs = {name: GotdConfig(chunk=chunk, target_copy_threshold=None, max_pool_for_ot=args.max_pool_for_ot,
                                cost_cache_mb=0) for name, chunk in runs.items()}
    for cfg in configs.values():  # untimed: the first solve's one-time start-up (2.5 s here) went to the baseline
        select(problem(min(args.n, 1000), min(args.target, 100), args.dim), 10, 0, cfg)
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            start = time.perf_counter()
            picked[name] = select(pool, max(1, args.n // 100), 0, cfg).indices
            times[name].append(time.perf_counter() - start)
    for name, seconds in times.items():
        print(f"{name:<22} " + " ".join(f"{s:7.1f}s" for s in seconds))
    ratio = statistics.median(d / b for b, d in zip(*times.values()))
    same = all(np.array_equal(p, next(iter(picked.values()))) for p in picked.values())
    print(f"default / baseline: {ratio:.2f} (median of {args.repeats}); same points picked: {same}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
