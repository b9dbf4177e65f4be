"""The embedding cache's names on a run the cache serves: each split's texts serialised once, a chunk at a time, for
both names (`soupline.embed.cache_files`) vs the whole JSON hashed once per name and lookup, as the embed stage did
before session 48 (4 times per split: `is_cached`'s two files, `encode_cached`, `count_longer_cached`).

    python benchmarks/embed_cache_keys.py [--n 200000] [--chars 1700] [--repeats 3]

Texts: `--n` random texts of about `--chars` characters (words of a small vocabulary, some accented), cut 70 / 10 /
20 % into pool, validation and test as prepare does. No model is loaded: the encoder's fingerprint is its name.
Runs alternate (baseline, default) `--repeats` times; prints each side's median seconds, the ratio default /
baseline, whether both named the same files, and each side's peak memory over the texts (tracemalloc, an untimed
run).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

from soupline import embed
from soupline.artifacts import sha256_obj

LOOKUPS = 4  # the stage's lookups per split before: is_cached (2 files), encode_cached, count_longer_cached


def splits(n: int, chars: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    words = np.array("the match goal shares market profit chip phone café naïve über team coach deal".split())
    per_text = max(1, chars // 6)
    texts = [" ".join(words[rng.integers(0, len(words), per_text)]) + f" {i}" for i in range(n)]
    cuts = [0, int(0.7 * n), int(0.8 * n), n]
    return [texts[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def baseline(texts: list[str], encoder: embed.Encoder, folder: str) -> list:
    """The names as the stage made them before: the whole key through `sha256_obj`, per file and lookup."""
    names = []
    for _ in range(LOOKUPS // 2):
        names = [f"{folder}/{sha256_obj({'encoder': encoder.fingerprint, 'texts': texts, 'batch_size': 64})}.npy",
                 f"{folder}/{sha256_obj({'encoder': encoder.fingerprint, 'texts': texts})}.truncated.json"]
    return names


def default(texts: list[str], encoder: embed.Encoder, folder: str) -> list:
    return [str(p) for p in embed.cache_files(texts, encoder, folder)]


SIDES = (("baseline", baseline), ("default", default))


def timed(fn, parts, encoder, folder) -> tuple[float, list]:
    start = time.perf_counter()
    names = [fn(texts, encoder, folder) for texts in parts]
    return time.perf_counter() - start, names


def peak_mib(fn, parts, encoder, folder) -> float:
    """Peak Python memory allocated while `fn` names every split (tracemalloc, untimed: it slows allocation)."""
    tracemalloc.start()
    for texts in parts:
        fn(texts, encoder, folder)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200000)
    parser.add_argument("--chars", type=int, default=1700)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for flag in ("n", "chars", "repeats"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag} {value}: at least 1")
    parts = splits(args.n, args.chars)
    encoder = embed.Encoder("all-MiniLM-L6-v2", batch_size=64)
    mb = sum(len(t) for p in parts for t in p) / 1e6
    print(f"{args.n} texts, {mb:.1f} M characters; baseline: {LOOKUPS} whole-JSON hashes per split, default: 1 pass")
    runs = {"baseline": [], "default": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.repeats):
            for side, fn in SIDES:
                runs[side].append(timed(fn, parts, encoder, folder))
                print(f"  repeat {r + 1} {side:<8} {runs[side][-1][0]:7.2f} s")
        peak = {side: peak_mib(fn, parts, encoder, folder) for side, fn in SIDES}
    med = {side: statistics.median(s for s, _ in rows) for side, rows in runs.items()}
    same = runs["baseline"][0][1] == runs["default"][0][1]
    print(f"median: baseline {med['baseline']:.2f} s, default {med['default']:.2f} s; default / baseline "
          f"{med['default'] / med['baseline']:.2f}; peak memory {peak['baseline']:.0f} -> {peak['default']:.0f} MiB; "
          f"same file names: {same}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
