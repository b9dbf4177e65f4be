"""OPENBLAS_CORETYPE from the CPU's flags, so faiss's bundled (older) OpenBLAS uses this CPU's SIMD
kernels instead of its generic fallback; a value the user set is kept."""

import os
import subprocess
import sys

import pytest

from soupline.blas_kernels import coretype_for, cpu_flags, prefer_native_kernels


def test_kernel_family_follows_the_flags():
    assert coretype_for({"avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}) == "SkylakeX"
    assert coretype_for({"avx2", "fma", "avx512f"}) == "Haswell"  # a partial AVX-512 set is not SkylakeX
    assert coretype_for({"avx2", "fma"}) == "Haswell"
    assert coretype_for({"sse4_2", "avx"}) is None


def test_a_user_choice_is_kept(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Sandybridge")
    assert prefer_native_kernels() is None and os.environ["OPENBLAS_CORETYPE"] == "Sandybridge"


def native_core() -> str:
    """The kernel family this CPU's flags call for; skips the test on CPUs without AVX2 or x86-64 flags."""
    if (flags := cpu_flags()) is None or (core := coretype_for(flags)) is None:
        pytest.skip("no AVX2 x86-64 CPU flags")
    return core


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter whose environment lacks OPENBLAS_CORETYPE."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_faiss_openblas_gets_this_cpus_kernels():
    """In a fresh process without the variable: importing soupline first gives faiss's OpenBLAS the
    kernels of this CPU's flags (on an AVX2 / AVX-512 machine)."""
    pytest.importorskip("threadpoolctl")
    want = native_core()
    out = fresh_python("import soupline, faiss, threadpoolctl; print([i.get('architecture') for i in "
                       "threadpoolctl.threadpool_info() if 'faiss' in i['filepath'] and i['internal_api'] == 'openblas'])")
    assert out.stdout.strip() == f"['{want}']"


def test_importing_faiss_first_warns():
    """faiss loaded before soupline has fixed its kernels already: the user is told how to fix it."""
    core = native_core()
    err = fresh_python("import warnings; warnings.simplefilter('always'); import faiss, soupline").stderr
    assert "faiss was imported before soupline" in err and f"OPENBLAS_CORETYPE={core}" in err
    quiet = fresh_python("import warnings; warnings.simplefilter('always'); import soupline, faiss").stderr
    assert "faiss was imported before soupline" not in quiet
