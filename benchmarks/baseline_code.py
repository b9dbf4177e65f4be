"""A baseline commit's source file loaded as a module beside this tree's (`git show`), for the benchmarks that time
the old code against the new in one run (these machines are noisy: only ratios from the same run count)."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str, path: str) -> types.ModuleType:
    """`rev`'s file at `path` (from the project root) as a module; LookupError, in the `--baseline` option's words,
    when git has no such commit or file."""
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        raise LookupError(f"--baseline {rev}: {(shown.stderr.strip().splitlines() or ['git show failed'])[-1]}")
    module = types.ModuleType(f"{Path(path).stem}_{rev}")
    exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module
