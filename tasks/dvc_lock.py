"""Record a run made outside `dvc repro` in dvc.lock (`dvc commit -f`), so `dvc status` stays clean.

`soupline run` and the Prefect flow build the same outputs `dvc repro` would; committing them
keeps one truth (DESIGN: a run by another driver leaves `dvc status` clean). It is refused when
dvc.lock would then lie: the run's params differ from params.yaml (overrides, another params
file), or, for `soupline run --from <stage>`, the stages before it were not checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from soupline import config
from soupline.config import Params
from soupline.errors import SouplineError

NOT_DVC = "not a DVC project"


def commit_refusal(params: Params, root: Path) -> str | None:
    """Why dvc.lock must not be written for this run, or None when `dvc commit` is right."""
    if not ((root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()):
        return NOT_DVC
    try:
        same = config.load(root / "params.yaml") == params
    except SouplineError:
        same = False
    return None if same else "the run's params differ from params.yaml (overrides or another params file)"


def dvc_commit(root: Path) -> None:
    """Record the workspace in dvc.lock (`dvc commit -f`), so `dvc status` is clean."""
    out = subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q"], cwd=root, capture_output=True,
                         text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SouplineError(f"the outputs are built, but `dvc commit -f` failed in {root}: {last[0]}")
