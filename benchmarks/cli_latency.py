"""Latency of everything that is not training: the commands a user types many times a day, and the start-up of
each stage process `dvc repro` launches.

    python benchmarks/cli_latency.py [--root PROJECT] [--repeats 5] [--only NAME ...]

Each command runs `--repeats` times in a fresh process in an up-to-date project, and the median wall time is
printed with its ratio to `python -c pass` (and the `import torch` cost for scale), both measured in the same
run, interleaved with the commands so a busy machine slows both alike. Without `--root`, a tiny project (the
test suite's: a 2-layer BERT with hidden size 32, 90 texts, 4 ingredients) is built in a temp folder and
brought up to date with `dvc repro` first (about a minute on 2 cores; not timed). Only ratios mean anything
across machines; nothing here asserts a time.
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
BIN = Path(sys.executable).parent
STAGES = ["prepare", "embed", "select", "train", "soup", "evaluate", "report"]
PY = str(Path(sys.executable))
SOUPLINE = str(BIN / "soupline")
DVC = str(BIN / "dvc")
BASELINES = {"python -c pass": [PY, "-c", "pass"], "python -c 'import torch'": [PY, "-c", "import torch"]}
COMMANDS = {
    "soupline --help": [SOUPLINE, "--help"],
    "soupline --version": [SOUPLINE, "--version"],
    "soupline params": [SOUPLINE, "params"],
    "soupline status": [SOUPLINE, "status"],
    "soupline run (up to date)": [SOUPLINE, "run"],
    "dvc repro (up to date)": [DVC, "repro"],
    "dvc status": [DVC, "status"],
    **{f"python -m tasks.{s} --help": [PY, "-m", f"tasks.{s}", "--help"] for s in STAGES},
}


def tiny_project(base: Path) -> Path:
    """The test suite's tiny project (tests/conftest.py), built and run once with `dvc repro`."""
    from tests.conftest import tiny_project as make_project
    from tests.test_benchmark_targets import load_benchmark

    model = load_benchmark("orchestration_overhead").tiny_model(base / "tiny-bert")
    root = base / "project"
    root.mkdir()
    make_project(root, model)
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True)
    return root


def wall(cmd: list[str], cwd: Path) -> float:
    """Seconds `cmd` takes in a fresh process; a command that fails stops the benchmark (it measured nothing)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def measure(commands: dict[str, list[str]], cwd: Path, repeats: int) -> dict[str, float]:
    """Median wall time of each command over `repeats` rounds, each round running every command once."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            times[name].append(wall(cmd, cwd))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, help="an up-to-date soupline project (default: a tiny one, built here)")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs of each command")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the commands whose name contains a NAME")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1")
    if args.root is not None and not (args.root / "tasks" / "pipeline.py").is_file():
        parser.error(f"--root {args.root}: not a soupline project (no tasks/pipeline.py there)")
    if args.only and not any(o in n for n in COMMANDS for o in args.only):
        parser.error(f"--only {' '.join(args.only)}: matches none of {list(COMMANDS)}")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    os.environ.update({k: os.environ.get(k, v) for k, v in env.items()})
    commands = {n: c for n, c in COMMANDS.items() if not args.only or any(o in n for o in args.only)}

    base = None
    if args.root is None:
        base = Path(tempfile.mkdtemp(prefix="soupline-latency-"))
        print(f"building a tiny project in {base} (dvc repro, not timed) ...", flush=True)
    try:
        root = args.root.resolve() if args.root else tiny_project(base)
        load = os.getloadavg()
        median = measure({**BASELINES, **commands}, root, args.repeats)
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    floor = median["python -c pass"]
    print(f"\n{root}: median of {args.repeats}, {os.cpu_count()} CPU cores, load average "
          + "/".join(f"{x:.1f}" for x in load))
    print(f"{'command':<40} {'median':>8}   x python -c pass")
    for name, seconds in median.items():
        print(f"{name:<40} {seconds:6.2f} s   {seconds / floor:6.1f}")


if __name__ == "__main__":
    main()
