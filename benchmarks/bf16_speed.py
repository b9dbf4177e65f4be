"""bf16 autocast vs fp32: soupline's fine-tune step time per base model, both measured in the same run.

    python benchmarks/bf16_speed.py [--models all-MiniLM-L6-v2 all-mpnet-base-v2] [--steps 20] [--repeats 2]

`train.precision: bf16` runs the forward and backward passes under bfloat16 autocast (weights stay fp32). On a
CPU with native bf16 instructions (AMX, AVX512-BF16: `soupline doctor` names them) that may be faster; without
them autocast converts in software and may be slower. Each measurement is `train.finetune` (the default recipe
with a random head, as LP-FT's probe needs the embed stage; batch 16 x 128 tokens) on the first steps x 16 bbcnews
articles, in a fresh process, fp32 and bf16 alternating; the median time between optimizer steps, best over the
repeats. Prints the fp32 / bf16 ratio per model (> 1: bf16 is faster). Accuracy is not measured here: the `bf16`
recipe of benchmarks/recipe_quality.py compares test accuracy on the same selection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH, MAX_LENGTH, LR = 16, 128, 1e-4


def measure(model: str, precision: str, steps: int) -> float:
    """Median seconds between optimizer steps of one `finetune` (this process)."""
    import soupline.train as train
    from soupline.config import TrainParams
    from soupline.models import resolve_model
    from train_throughput import data, median_gap, optimizer_step_times

    texts, y, val_texts, y_val, labels = data(steps * BATCH)
    params = TrainParams(epochs=1, min_steps=steps, batch_size=BATCH, max_length=MAX_LENGTH, head_init="random",
                         precision=precision)
    with optimizer_step_times() as done, tempfile.TemporaryDirectory() as tmp:
        train.finetune(resolve_model(model), labels, texts, y, val_texts, y_val, params, LR, 0, Path(tmp) / "model",
                       Path(tmp) / "model.ckpt", Path(tmp) / "curves", progress=False)
    return median_gap(done)


def run(model: str, precision: str, steps: int) -> float:
    from train_throughput import worker_result

    return float(worker_result([sys.executable, __file__, "--worker", model, precision, "--steps", str(steps)],
                               f"{model} / {precision}"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.steps < 2:
        p.error(f"--steps {args.steps}: at least 2 (the time between optimizer steps is measured)")
    if args.worker:
        print(json.dumps(measure(*args.worker, args.steps)))
        return
    from soupline.train import cpu_bf16_instructions

    print(f"CPU bf16 instructions: {cpu_bf16_instructions() or 'none'}; {os.cpu_count()} cores; batch {BATCH} x "
          f"{MAX_LENGTH} tokens, median of {args.steps} steps, best of {args.repeats}")
    for model in args.models:
        best = {"fp32": float("inf"), "bf16": float("inf")}
        for _ in range(args.repeats):
            for precision in best:
                best[precision] = min(best[precision], run(model, precision, args.steps))
        print(f"{model}: fp32 {best['fp32']:.2f} s a step, bf16 {best['bf16']:.2f} s: "
              f"fp32 / bf16 = {best['fp32'] / best['bf16']:.2f} x", flush=True)


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
