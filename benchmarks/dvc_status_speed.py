"""`dvc status` inside `soupline run` and `soupline status`: DVC asked of every stage by name (the baseline, before
session 52: it read dvc.yaml and dvc.lock again for each of the 7 stages and, with deps, checked each stage once per
named stage after it) vs of dvc.yaml itself when the stages asked of are all of its stages (`dvc_lock._status_targets`),
in fresh processes, interleaved, in the same run.

    python benchmarks/dvc_status_speed.py [--hidden 32] [--repeats 3] [--root PROJECT]

Without `--root`, the tiny project of `noop_hashing.py` (on a 2-layer BERT of hidden size `--hidden`) is built in a
temp folder and brought up to date with `soupline run` and its closing `dvc commit` (not timed). A `--root` project
must be up to date with its params.yaml (a `soupline run` with no overrides), so that a run's closing check asks
`dvc status --with-deps` of every stage, and hold this tree's tasks/dvc_lock.py (the commands run its tasks/).
Then `soupline run` (nothing to do: its closing check) and `soupline status` run `--repeats` times per side;
`soupline status` with soupline's own run records (data/cache/stages) moved aside meanwhile, so that it asks DVC
whether dvc.lock records the stages (one `dvc status` of all 7), as after a `git checkout` or `dvc pull` of outputs
no run here wrote. The baseline side is this tree with `_status_targets` swapped for `_targets` (each stage by
name), which is what the code before it asked DVC. Printed: each side's median seconds for the whole command and for
its `dvc status` calls, the ratios this / baseline, and whether both sides printed the same and got the same answers
from DVC. Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from noop_hashing import project  # noqa: E402 - after benchmarks/ is on the path
from tasks.layout import Layout  # noqa: E402

# one command in this process, the project's own tasks/ first on the path; the seconds in DVC's status and its answers
CHILD = r"""
import json, sys, time
sys.path.insert(0, ".")
from tasks import dvc_lock
if sys.argv[1] == "baseline":
    dvc_lock._status_targets = dvc_lock._targets
spent, answers = [0.0], []
def timed(name):
    real = getattr(dvc_lock, name)
    def call(*args):
        start = time.perf_counter()
        answer = real(*args)
        spent[0] += time.perf_counter() - start
        answers.append([name, answer])
        return answer
    setattr(dvc_lock, name, call)
timed("_recorded"); timed("_dvc_changed")
import atexit
atexit.register(lambda: sys.stderr.write("\nDVC " + json.dumps([spent[0], answers], default=str) + "\n"))
from soupline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def once(side: str, command: str, root: Path) -> tuple[float, float, str, str]:
    """Seconds of the whole command and of its `dvc status` calls, what it printed, and DVC's answers."""
    import json

    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, side, command], cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0 or "\nDVC " not in out.stderr:
        sys.exit(f"`soupline {command}` ({side}) failed: {out.stderr[-800:]}")
    spent, answers = json.loads(out.stderr.rsplit("\nDVC ", 1)[1].splitlines()[0])
    return seconds, spent, out.stdout, json.dumps(answers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, help="a soupline project up to date with its params.yaml (default: a "
                                                  "tiny one, built here)")
    args = parser.parse_args(argv)
    for name in ("repeats", "hidden"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: at least 1")
    if args.root is not None and not (args.root / "tasks" / "pipeline.py").is_file():
        parser.error(f"--root {args.root}: not a soupline project")
    if args.root is not None and "def _status_targets(" not in (args.root / "tasks" / "dvc_lock.py").read_text():
        parser.error(f"--root {args.root}: its tasks/dvc_lock.py is older than this tree's (copy this tree's there)")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root.resolve() if args.root else project(Path(tmp), args.hidden)
        records = Layout(root).stage_records
        for command in ("run", "status"):
            runs: dict[str, list] = {"baseline": [], "this": []}
            aside = records.with_name(records.name + ".aside") if command == "status" else None
            if aside is not None:
                records.rename(aside)
            try:
                for i in range(args.repeats):
                    for side in (list(runs) if i % 2 == 0 else list(runs)[::-1]):  # the first side alternates
                        runs[side].append(once(side, command, root))
            finally:
                if aside is not None:
                    aside.rename(records)
            whole = {side: statistics.median(r[0] for r in rs) for side, rs in runs.items()}
            dvc = {side: statistics.median(r[1] for r in rs) for side, rs in runs.items()}
            same = len({(r[2], r[3]) for rs in runs.values() for r in rs}) == 1
            ratio = f"{dvc['this'] / dvc['baseline']:.2f}" if dvc["baseline"] else "-"
            print(f"soupline {command:6s} baseline {whole['baseline']:.2f} s (dvc status {dvc['baseline']:.2f} s)  "
                  f"this {whole['this']:.2f} s (dvc status {dvc['this']:.2f} s)  ratio this / baseline "
                  f"{whole['this'] / whole['baseline']:.2f} (dvc status {ratio})  same output and answers: {same}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
