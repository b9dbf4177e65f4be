"""GOT-D select time, peak memory and picks: a baseline commit's `select/gotd.py` vs this tree's, in the same run.

    python benchmarks/gotd_solver.py [--n 28840] [--target 2000] [--dim 384] [--repeats 1] [--seeds 0]
                                     [--stratify none|label|balanced] [--baseline f4c044d]

The default baseline, f4c044d, is the code before session 46: each Sinkhorn block was a call of POT's `ot.sinkhorn`,
which rebuilt exp(-C / eps) and its scaled copy, and built the plan, in every call (every GOT-D round), the cost
shift took `min(0)`, 15x slower than `amin(0)` on CPU, and each round's warm start took the c-transform of the
subsample that the round before had just computed. The pool: `--n` L2-normalised float32 points around 20
Gaussian centres (noise 2.0) with 5 labels, and a labelled target of `--target` points drawn the same way (the
20newsgroups pool has 28,840 rows, d=384); budget 1 %, `target_copy_threshold: null`, the other GOT-D defaults (16
rounds, so label_weight 0.1; above `max_pool_for_ot` the solve runs on a subsample and the c-transform scores the
rest). Runs alternate (baseline, this tree) `--repeats` times for each seed; prints each run's wall and CPU
seconds and peak resident memory above its start, the median ratios this / baseline (time and peak memory), and whether
both picked the same points. `--baseline 9f6ded0` measures session 46's later memory changes (the cost cache filled in
place, no kept copy of the subsample's cached rows, the label term's median in row chunks): at `--n 100000` the peak is
the cache's build in the baseline. `--baseline be2c88c --n 140000` measures the partial cost cache: a pool whose cost
matrix is over `cost_cache_mb` (140,000 x 2,000 float32: 1,068 MB) recomputed every row outside the OT subsample each
round; now it keeps whole chunks of them beside the subsample's, up to `cost_cache_mb`.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

from soupline import select
from soupline.select.gotd import GotdConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # baseline_code, peak_memory, also when a test loads this file
from baseline_code import module_at  # noqa: E402
from peak_memory import reset_peak, rss_mb  # noqa: E402
BASELINE = "f4c044d"


def problem(n: int, target: int, dim: int, seed: int) -> select.SelectionInput:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))

    def draw(size: int) -> tuple[np.ndarray, np.ndarray]:
        cluster = rng.integers(0, 20, size)
        x = centres[cluster] + 2.0 * rng.normal(size=(size, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), cluster % 5

    x, labels = draw(n)
    y, y_labels = draw(target)
    return select.SelectionInput(x, labels, [f"l{k}" for k in range(5)], target_embeddings=y, target_labels=y_labels,
                                 extras={"device": "cpu"})


def baseline_select(rev: str):
    """`select` of `rev`'s select/gotd.py (git show), loaded beside this tree's without registering it again;
    LookupError when git has no such file."""
    with mock.patch("soupline.select.base.register", lambda *args, **kwargs: lambda fn: fn):
        return module_at(rev, "src/soupline/select/gotd.py").select


def timed(fn, pool, budget: int, seed: int, stratify: str) -> tuple[float, float, float, np.ndarray]:
    """Wall and CPU seconds (the CPU's are steadier on a shared machine), peak resident MiB above the start and
    picks of one select with `fn` as GOT-D."""
    ctypes.CDLL(None).malloc_trim(0)  # glibc hands freed heap back, or the next run reuses the last one's pages unseen
    reset_peak()
    start_mb = rss_mb("VmHWM")
    method = select.REGISTRY["gotd"]
    cfg = GotdConfig(target_copy_threshold=None)
    with mock.patch.dict(select.REGISTRY, {"gotd": dataclasses.replace(method, fn=fn)}):
        start, cpu = time.perf_counter(), time.process_time()
        picked = select.run_method("gotd", pool, budget, seed, cfg, stratify=stratify).indices
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, rss_mb("VmHWM") - start_mb, picked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=28840)
    parser.add_argument("--target", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--stratify", choices=["none", "label", "balanced"], default="none")
    parser.add_argument("--baseline", default=BASELINE, metavar="REV")
    args = parser.parse_args(argv)
    for flag in ("n", "target", "dim", "repeats"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag} {value}: at least 1")
    if min(args.seeds) < 0:
        parser.error(f"--seeds {min(args.seeds)}: a seed is at least 0")
    try:
        runs = {f"{args.baseline} (baseline)": baseline_select(args.baseline), "this tree": select.REGISTRY["gotd"].fn}
    except LookupError as e:
        parser.error(str(e))
    for fn in runs.values():  # untimed: the first solve's one-time start-up would go to the baseline
        timed(fn, problem(min(args.n, 500), min(args.target, 50), args.dim, 0), 5, 0, "none")
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, list[float]] = {name: [] for name in runs}
    same = True
    for seed in args.seeds:
        pool = problem(args.n, args.target, args.dim, seed)
        for _ in range(args.repeats):
            picked = []
            for name, fn in runs.items():
                seconds, cpu, mb, indices = timed(fn, pool, max(1, args.n // 100), seed, args.stratify)
                times[name].append(seconds)
                cpus[name].append(cpu)
                peaks[name].append(mb)
                picked.append(indices)
                print(f"seed {seed}  {name:<22} {seconds:7.1f} s  CPU {cpu:7.1f} s  peak {mb:6.0f} MiB", flush=True)
            same &= np.array_equal(*picked)
    ratio, cpu, peak = (statistics.median(new / old if old > 0 else float("nan") for old, new in zip(*t.values()))
                        for t in (times, cpus, peaks))
    print(f"this / baseline: {ratio:.2f} wall, {cpu:.2f} CPU, {peak:.2f} peak memory (median of "
          f"{len(args.seeds) * args.repeats}); same points picked: {same}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
