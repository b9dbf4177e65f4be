#!/usr/bin/env bash
# Fresh machine -> fine-tuned, souped model + report: install, then `dvc repro` the default pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ -d .git ] || git init -q
dvc repro
dvc metrics show
echo "report: data/reports/report.md"
