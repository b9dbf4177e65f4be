"""Latency of everything that is not training: the commands a user types many times a day, and the start-up of
each stage process `dvc repro` launches.

    python benchmarks/cli_latency.py [--root PROJECT] [--repeats 5] [--only NAME ...] [--baseline REV]

Each command runs `--repeats` times in a fresh process in an up-to-date project, and the median wall time is
printed with its ratio to `python -c pass` (and the `import torch` cost for scale), both measured in the same
run, interleaved with the commands so a busy machine slows both alike. Without `--root`, a tiny project (the
test suite's: a 2-layer BERT with hidden size 32, 90 texts, 4 ingredients) is built in a temp folder and
brought up to date with `dvc repro` first (about a minute on 2 cores; not timed). `soupline predict` labels 8
texts of the project's test split (the file has their labels: accuracy and macro-F1 are printed too).

`--baseline REV` (a commit, e.g. HEAD~1) times each command with REV's code as well (`git archive REV` in a temp
folder, its src/ first on PYTHONPATH, and a tiny project of its own built from its tasks/: each tree's stage keys
hash its own code), the two interleaved in every round, and prints each command's median under both and their
ratio: what a change of code did to each command, on this machine, in this run. Only ratios mean anything across
machines; nothing here asserts a time.
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
    "soupline doctor": [SOUPLINE, "doctor"],
    "soupline predict (8 texts)": [SOUPLINE, "predict", "{texts}"],
    "dvc repro (up to date)": [DVC, "repro"],
    "dvc status": [DVC, "status"],
    **{f"python -m tasks.{s} --help": [PY, "-m", f"tasks.{s}", "--help"] for s in STAGES},
}
NO_PROJECT = {"soupline --help", "soupline --version"}  # run anywhere: no project built for them alone


def tiny_project(base: Path, tree: Path = ROOT, model: Path | None = None) -> Path:
    """The test suite's tiny project (tests/conftest.py) of the code in `tree` (its tasks/, src/ and dvc.yaml),
    built and run once with `dvc repro` under that code; `model`: the tiny model to use (default: made here)."""
    from tests.test_benchmark_targets import load_benchmark

    if model is None:
        model = load_benchmark("orchestration_overhead").tiny_model(base / "tiny-bert")
    root = base / "project"
    root.mkdir()
    make = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/src']; "
            "from tests.conftest import tiny_project; tiny_project(Path(sys.argv[2]), sys.argv[3])")
    subprocess.run([PY, "-c", make, str(tree), str(root), str(model)], check=True, env=code_env(tree))
    subprocess.run([DVC, "repro", "-q"], cwd=root, check=True, env=code_env(tree))
    return root


def code_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that runs soupline from `tree`'s src/ (None: this process's environment, unchanged)."""
    if tree is None:
        return None
    path = os.pathsep.join([str(tree / "src"), str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path}


def texts_file(root: Path, folder: Path) -> Path:
    """8 labelled texts of the project's test split, as JSON lines, for `soupline predict`."""
    import pandas as pd

    path = folder / "texts.jsonl"
    pd.read_parquet(root / "data" / "prepared" / "test.parquet").head(8).to_json(path, orient="records", lines=True)
    return path


def code_tree(rev: str, folder: Path) -> Path:
    """The files git holds at `rev` (of this repository), unpacked into `folder`."""
    folder.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"--baseline {rev}: {archive.stderr.decode(errors='replace').strip().splitlines()[-1]}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def wall(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds `cmd` takes in a fresh process; a command that fails stops the benchmark (it measured nothing)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def measure(commands: dict[str, list[str]], sides: dict[str, tuple[Path, dict | None, Path | None]], repeats: int
            ) -> dict[str, dict[str, float]]:
    """Median wall time of each command on each side (name -> (project, environment, texts file for predict)) over
    `repeats` rounds; in each round every command runs once per side, back to back (the side that goes first
    alternating by round), so a busy machine slows both alike."""
    times = {side: {name: [] for name in commands} for side in sides}
    for r in range(repeats):
        for name, cmd in commands.items():
            for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                root, env, texts = sides[side]
                times[side][name].append(wall([c.replace("{texts}", str(texts)) for c in cmd], root, env))
    return {side: {name: statistics.median(t) for name, t in per.items()} for side, per in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, help="an up-to-date soupline project (default: a tiny one, built here)")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs of each command")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the commands whose name contains a NAME")
    parser.add_argument("--baseline", metavar="REV", help="also time each command with the code of this commit "
                        "(e.g. HEAD~1), interleaved, and print the ratio")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1")
    if args.root is not None and not (args.root / "tasks" / "pipeline.py").is_file():
        parser.error(f"--root {args.root}: not a soupline project (no tasks/pipeline.py there)")
    if args.root is not None and args.baseline:
        parser.error("--root with --baseline: REV's code would find that project's stages out of date (their keys "
                     "hash the code) and run them; drop --root (a tiny project is built for each)")
    if args.only and not any(o in n for n in COMMANDS for o in args.only):
        parser.error(f"--only {' '.join(args.only)}: matches none of {list(COMMANDS)}")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    os.environ.update({k: os.environ.get(k, v) for k, v in env.items()})
    commands = {n: c for n, c in COMMANDS.items() if not args.only or any(o in n for o in args.only)}
    needs_project = any(n not in NO_PROJECT for n in commands)
    predicts = any("{texts}" in c for c in commands.values())

    base = Path(tempfile.mkdtemp(prefix="soupline-latency-"))
    try:
        trees = {"this": None}  # None: the code this process runs, in its environment
        if args.baseline:
            trees = {args.baseline: code_tree(args.baseline, base / "baseline"), "this": ROOT}
        sides = {}
        if needs_project and args.root is None:
            print(f"building a tiny project{' per tree' * bool(args.baseline)} in {base} (dvc repro, not timed) ...",
                  flush=True)
            from tests.test_benchmark_targets import load_benchmark

            model = load_benchmark("orchestration_overhead").tiny_model(base / "tiny-bert")
        for i, (side, tree) in enumerate(trees.items()):
            if not needs_project:
                root = args.root.resolve() if args.root else (tree or ROOT)
            elif args.root is not None:
                root = args.root.resolve()
            else:
                (base / f"run{i}").mkdir()
                root = tiny_project(base / f"run{i}", tree or ROOT, model)
            sides[side] = (root, code_env(tree), texts_file(root, root.parent if args.root is None else base)
                           if predicts else None)
        load = os.getloadavg()
        median = measure({**BASELINES, **commands}, sides, args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{sides['this'][0]}: median of {args.repeats}, {os.cpu_count()} CPU cores, load average "
          + "/".join(f"{x:.1f}" for x in load))
    if args.baseline:
        print(f"{'command':<40} {args.baseline[:8]:>8} {'this':>8}   this / {args.baseline}")
        for name, seconds in median["this"].items():
            before = median[args.baseline][name]
            print(f"{name:<40} {before:6.2f} s {seconds:6.2f} s   {seconds / before:6.2f}")
        return
    median = median["this"]
    floor = median["python -c pass"]
    print(f"{'command':<40} {'median':>8}   x python -c pass")
    for name, seconds in median.items():
        print(f"{name:<40} {seconds:6.2f} s   {seconds / floor:6.1f}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
