"""The first `soupline run` in a copy of an up-to-date workspace: what it runs again and what it costs, against a
no-op run in the workspace itself. The keys hold content and paths relative to the workspace, and a model folder
under the home folder as `~/...` (`tasks.keys.model_spelling`); they held such a folder by its absolute path, and a
copy in another home (a teammate's: the same params.yaml, the same model files at `~/models/bert`) ran embed,
select, soup, evaluate and report again where no dvc.lock vouched for them.

    python benchmarks/copied_workspace.py [--hidden 32] [--repeats 3]

The test suite's tiny project (90 texts, 4 ingredients, 4 soups) with `model: ~/models/bert`, a 2-layer BERT of
hidden size `--hidden` in a temp home, brought up to date with `soupline run` (not timed). Cases, each copy made
afresh by `cp -r` before each timed run (`--repeats` times, interleaved): `original` (the workspace itself),
`copy` (another folder, the same home), `other home` (the workspace and the model folder copied into another home,
HOME set to it), and `other home, no DVC` (the same without .dvc/ and dvc.lock, as benchmarks/'s study workspaces:
no `dvc status` to vouch for the outputs). Printed per case: the median seconds, the ratio to `original`, and the
stages each run ran (`noop_hashing.ran`). Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from noop_hashing import ran, save_bert  # noqa: E402 - after the benchmarks are on the path
from tasks.pipeline import STAGES  # noqa: E402

CASES = ("original", "copy", "other home", "other home, no DVC")


def build(base: Path, hidden: int) -> Path:
    """The tiny project in `base`/a/ws on `~/models/bert` (home: `base`/a), up to date; the model also in home b."""
    from tests.conftest import tiny_project

    save_bert(base / "a" / "models" / "bert", hidden)
    shutil.copytree(base / "a" / "models", base / "b" / "models")
    root = base / "a" / "ws"
    root.mkdir()
    tiny_project(root, "~/models/bert")
    subprocess.run([sys.executable, "-m", "soupline.cli", "run"], cwd=root, check=True, capture_output=True,
                   env={**os.environ, "HOME": str(base / "a")})
    return root


def once(case: str, root: Path, base: Path) -> tuple[float, list[str]]:
    """One `soupline run` in a fresh process in the case's workspace (a fresh `cp -r` of `root` but for `original`):
    its seconds and the stages it ran."""
    home = base / ("a" if case in ("original", "copy") else "b")
    where = root if case == "original" else home / "copy"
    if case != "original":
        shutil.rmtree(where, ignore_errors=True)
        subprocess.run(["cp", "-r", str(root), str(where)], check=True)
        if case.endswith("no DVC"):
            shutil.rmtree(where / ".dvc")
            (where / "dvc.lock").unlink()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "soupline.cli", "run"], cwd=where, capture_output=True, text=True,
                         env={**os.environ, "HOME": str(home)})
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"`soupline run` ({case}) failed: {out.stderr[-800:]}")
    return seconds, ran(out.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.hidden < 1:
        parser.error("--repeats and --hidden must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp).resolve()
        root = build(base, args.hidden)
        runs: dict[str, list] = {case: [] for case in CASES}
        for _ in range(args.repeats):
            for case in CASES:
                runs[case].append(once(case, root, base))
    med = {case: statistics.median(r[0] for r in rs) for case, rs in runs.items()}
    for case, rs in runs.items():
        stages = sorted({s for r in rs for s in r[1]}, key=list(STAGES).index)
        print(f"{case:20s} {med[case]:6.2f} s  / original {med[case] / med['original']:.2f}  "
              f"ran: {', '.join(stages) or 'nothing'}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
