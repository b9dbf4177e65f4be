"""The inference paths of a real-model project: the soup stage, the evaluate stage and `soupline predict`, a baseline
commit's code vs this tree's, each in a fresh process, interleaved, in the same run.

    python benchmarks/inference_speed.py [--texts 400] [--predict 200] [--repeats 3] [--baseline 577603e]
                                         [--root PROJECT]

Without `--root`, a project on all-MiniLM-L6-v2 is built in a temp folder (not timed): `--texts` bbcnews texts
(a stratified subsample: test 20 %, validation 10 %), 20 % of the pool selected by k-means, two ingredients of 4
steps (learning rates 1e-4 and 2e-4), soups uniform, greedy, TIES and DARE, brought up to date with `soupline run`.
Each repeat runs, for the baseline (`git archive` of `--baseline`; at 577603e a mean-pooled model was drawn at
random before its weights were loaded over the draw, and greedy's first candidate of two ingredients, their uniform
soup to the bit, had its own validation pass) and for this tree, the first side alternating: `python -m tasks.soup`
with data/soups deleted, `python -m tasks.evaluate` with the evaluation cache deleted, and `soupline predict` of the
last `--predict` bbcnews texts (not in the project when `--texts` is below 2,000) with the final model. A `--root`
project's soups and evaluation cache are made again. Printed: each side's median seconds and the median of the
per-repeat ratios baseline / this tree, and whether both sides made the same soups (weights files), metrics
(metrics.json, details.json's models and metrics) and predictions; then the load of one soup in this process, the
baseline's way written out (drawn, then loaded over) vs `load_classifier`, `--repeats` pairs (at least 5).
Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
BASELINE = "577603e"
SOUPS = ("uniform", "greedy", "ties", "dare")


def project(base: Path, texts: int) -> Path:
    import yaml

    from tests.conftest import run_cmd, tiny_project

    root = tiny_project(base / "project", "all-MiniLM-L6-v2")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"].update(source="bbcnews", max_examples=texts)
    params["embed"].update(max_length=128, batch_size=64)
    params["select"]["budget"] = 0.2
    params["train"].update(learning_rates=[1e-4, 2e-4], seeds=[0], epochs=1, min_steps=4, batch_size=16,
                           max_length=128)
    params["soup"]["methods"] = list(SOUPS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd([sys.executable, "-m", "soupline.cli", "run"], root)
    return root


def baseline_tree(rev: str, into: Path) -> Path:
    """`rev`'s src/, tasks/ and dvc.yaml (the stages' deps, which tasks read beside their code) in `into`."""
    archive = subprocess.run(["git", "archive", rev, "src", "tasks", "dvc.yaml"], cwd=ROOT, capture_output=True,
                             check=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def timed(root: Path, code: Path, module: str, *args: str) -> float:
    """Seconds of `python -m module args` in `root`, importing soupline and tasks from `code`."""
    run = (f"import runpy, sys; sys.path[:0] = [{str(code / 'src')!r}, {str(code)!r}]; "
           f"sys.argv = [{module!r}, *{list(args)!r}]; runpy.run_module({module!r}, run_name='__main__')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", run], cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def one_side(root: Path, code: Path, texts: Path, out: Path) -> tuple[dict[str, float], bytes]:
    """The soup, evaluate and predict seconds of `code` in `root`, and the bytes of what they made."""
    data = root / "data"
    shutil.rmtree(data / "soups", ignore_errors=True)
    shutil.rmtree(data / "cache" / "evaluations", ignore_errors=True)
    seconds = {"soup": timed(root, code, "tasks.soup"), "evaluate": timed(root, code, "tasks.evaluate"),
               "predict": timed(root, code, "soupline.cli", "predict", str(texts), "--out", str(out))}
    made = [hashlib.sha256((data / "soups" / m / "model.safetensors").read_bytes()).digest() for m in SOUPS]
    details = json.loads((data / "metrics" / "details.json").read_text())  # its `records` hash soup.json, whose key
    made += [json.dumps([details["models"], details["details"]]).encode(),  # hashes the code: not compared
             (data / "metrics" / "metrics.json").read_bytes(), out.read_bytes()]
    return seconds, b"".join(made)


def load_seconds(folder: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of loading the mean-pooled model in `folder`, in this process, interleaved after one untimed load
    each: the baseline's way (drawn at random, then every tensor loaded over the draw) and `load_classifier`."""
    from transformers import AutoConfig

    from soupline.classifier import load_classifier, mean_pool_class
    from soupline.soup import load_state

    def drawn():
        mean_pool_class()(AutoConfig.from_pretrained(folder)).load_state_dict(load_state(folder))

    def seconds(load) -> float:
        start = time.perf_counter()
        load()
        return time.perf_counter() - start

    drawn(), load_classifier(folder)
    pairs = [(seconds(drawn), seconds(lambda: load_classifier(folder))) for _ in range(repeats)]
    return [old for old, _ in pairs], [new for _, new in pairs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--predict", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--root", type=Path, default=None,
                        help="a project built with these settings and brought up to date")
    args = parser.parse_args(argv)
    for flag, least in (("texts", 150), ("predict", 1), ("repeats", 1)):
        if (value := getattr(args, flag)) < least:
            parser.error(f"--{flag} {value}: at least {least}")
    if args.root is not None and not (args.root / "data" / "metrics" / "metrics.json").is_file():
        parser.error(f"--root {args.root}: not a soupline project brought up to date (no data/metrics/metrics.json)")
    from soupline.corpora import load_builtin

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            base = baseline_tree(args.baseline, (tmp / "baseline").resolve())
        except subprocess.CalledProcessError as err:
            parser.error(f"--baseline {args.baseline}: {err.stderr.decode().strip().splitlines()[0]}")
        root = args.root.resolve() if args.root else project((tmp / "built").resolve(), args.texts)
        texts = tmp / "predict.jsonl"
        load_builtin("bbcnews").iloc[-args.predict:][["text", "label"]].to_json(texts, orient="records", lines=True)
        times: dict[str, dict[str, list[float]]] = {"baseline": {}, "this tree": {}}
        made: dict[str, bytes] = {}
        for repeat in range(args.repeats):  # which side goes first alternates: a load that eases favours neither
            for side, code in (("baseline", base), ("this tree", ROOT))[::1 if repeat % 2 == 0 else -1]:
                seconds, made[side] = one_side(root, code, texts, tmp / f"{side}.jsonl")
                for stage, s in seconds.items():
                    times[side].setdefault(stage, []).append(s)
                print(f"{side}: " + ", ".join(f"{stage} {s:.1f} s" for stage, s in seconds.items()), flush=True)
        times["baseline"]["load"], times["this tree"]["load"] = load_seconds(root / "data" / "soups" / "uniform",
                                                                             max(5, args.repeats))
        for stage in times["baseline"]:
            old, new = times["baseline"][stage], times["this tree"][stage]
            ratio = statistics.median(o / n for o, n in zip(old, new))
            print(f"{stage:>8}: baseline {statistics.median(old):6.2f} s, this tree {statistics.median(new):6.2f} s, "
                  f"ratio baseline/this tree {ratio:.2f}x (median of {len(old)} pairs)")
        print(f"soups, metrics and predictions identical: {made['baseline'] == made['this tree']}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
