"""soupline: fine-tune on less, better-chosen data, then soup the results, reproducibly."""

import warnings

from soupline.blas_kernels import prefer_native_kernels

prefer_native_kernels()  # before any faiss import: its bundled OpenBLAS may not know this CPU

# sklearn guesses that labels "could represent a regression problem" when a set has more labels than half its
# examples: a probe on a few examples per label, or a small test split of many labels, is soupline's normal case.
warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")

__version__ = "0.1.0"
STAGE_NAMES = ("prepare", "embed", "select", "train", "soup", "evaluate", "report")  # tasks.pipeline.STAGES' order
