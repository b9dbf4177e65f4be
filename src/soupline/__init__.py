"""soupline: fine-tune on less, better-chosen data, then soup the results, reproducibly."""

from soupline.blas_kernels import prefer_native_kernels

prefer_native_kernels()  # before any faiss import: its bundled OpenBLAS may not know this CPU

__version__ = "0.1.0"
