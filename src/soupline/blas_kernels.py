"""Make OpenBLAS copies older than this CPU use its SIMD kernels (faiss-cpu bundles OpenBLAS 0.3.15).

An OpenBLAS that predates a CPU does not recognise it and falls back to its most generic x86-64
kernels ("Prescott", SSE3). On the 2-core AVX-512 Xeon of session 13 that left faiss's k-means 3x
slower than it should be (100k points, k = 100, 25 iterations: 8.8 s; 2.9 s with the AVX-512
kernels; `benchmarks/selection_speed.py --worker kmeans-vs-sklearn 100000 100 25`), while numpy's
newer OpenBLAS picked the right ones. OPENBLAS_CORETYPE, read by each OpenBLAS when it loads, names
the kernels; it is set here from the CPU's flags, unless the user has set it. It only helps when
soupline is imported before faiss: a program that imports faiss first keeps the generic kernels,
and gets a warning that says so.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

AVX512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def coretype_for(flags: set[str]) -> str | None:
    """OpenBLAS's kernel family for x86-64 CPU flags: SkylakeX (AVX-512), Haswell (AVX2 + FMA), or None."""
    if AVX512 <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux x86-64), or None where there are none to read."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration, IndexError):
        return None


def prefer_native_kernels() -> str | None:
    """Set OPENBLAS_CORETYPE from the CPU's flags when unset; returns what it set."""
    if "OPENBLAS_CORETYPE" in os.environ or (flags := cpu_flags()) is None:
        return None
    if core := coretype_for(flags):
        os.environ["OPENBLAS_CORETYPE"] = core
        if "faiss" in sys.modules:  # its OpenBLAS has already chosen its kernels
            warnings.warn(f"faiss was imported before soupline, so its bundled OpenBLAS may run generic kernels "
                          f"(k-means 3-5x slower): import soupline first, or export OPENBLAS_CORETYPE={core}",
                          stacklevel=3)
    return core
