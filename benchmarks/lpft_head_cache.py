"""LP-FT's probe head fitted once per sweep (`head_cache`, the default since session 45) vs once per ingredient (the
baseline: each ingredient ran the head's forward pass over the selection and the validation split again); with
`--head-init random`, the starting model's features probe that judges a random head's training that ended at chance
(the same `head_cache`, session 51) vs once per such ingredient (a model load and the same forward passes).

    python benchmarks/lpft_head_cache.py [--model minilm|tiny] [--examples 156] [--val 222] [--ingredients 2]
                                         [--steps 10] [--max-length 128] [--head-init probe|random]
                                         [--learning-rate 1e-4]

On bbcnews (the first `--examples` texts as the selection, the next `--val` as validation: 156 and 222 are the
default pipeline's 10 % selection and validation split), a sweep of `--ingredients` ingredients (learning rates
`--learning-rate` x 1, 2, ..., seed 0; `--steps` optimizer steps each; `--head-init`: with random, a rate such as
2e-2 wrecks all-MiniLM-L6-v2's training, which then ends at chance) is trained twice in this process, after an
untimed one-step ingredient (the first call's imports and set-up): the baseline first, without a head cache, then
with one (the first ingredient writes it, the others read it). Printed: each ingredient's seconds on both sides, the
sweep's totals and their ratio baseline / default, the seconds saved per ingredient after the first, and whether
every ingredient's weights and train_info.json are identical on
both sides. Few steps make the ratio larger than a real sweep's (a
default bbcnews 10 % ingredient trains 60 steps): read the seconds saved beside a real ingredient's time. Nothing
asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def base_model(name: str, folder: Path) -> str:
    """all-MiniLM-L6-v2 (the default), or the test suite's 2-layer BERT (hidden 32) saved in `folder`."""
    if name == "minilm":
        from soupline.models import resolve_model

        return resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    from tests.test_benchmark_targets import load_benchmark

    return load_benchmark("orchestration_overhead").tiny_model(folder / "tiny-bert")


def sweep(model: str, texts, y, val, y_val, labels, args, out: Path, cached: bool) -> tuple[list[float], dict]:
    """Train the sweep into `out`; each ingredient's seconds, and the calls and seconds of the two steps the caches
    save: the model's build (`init_model`: each ingredient's own, and a random head's starting model to probe) and
    `features_probe` (the random head's starting model's and each ingredient's trained one's at chance)."""
    from unittest import mock

    from soupline import train
    from soupline.config import TrainParams
    from soupline.train import finetune

    calls = {name: [] for name in ("init_model", "features_probe")}

    def timed(name):
        real = getattr(train, name)

        def call(*a, **k):
            start = time.perf_counter()
            out = real(*a, **k)
            calls[name].append(time.perf_counter() - start)
            return out
        return mock.patch.object(train, name, call)

    cfg = TrainParams(head_init=args.head_init, epochs=1, min_steps=args.steps, max_length=args.max_length)
    name = {"probe": "head.safetensors", "random": "head.start.json"}[args.head_init]  # as tasks.train.head_file
    cache = {"head_cache": out / "heads" / name} if cached else {}
    seconds = []
    with timed("init_model"), timed("features_probe"):
        for i in range(args.ingredients):
            start = time.perf_counter()
            finetune(model, labels, texts, y, val, y_val, cfg, (i + 1) * args.learning_rate, 0, out / f"ing{i}",
                     out / f"ing{i}.ckpt", progress=False, **cache)
            seconds.append(time.perf_counter() - start)
    return seconds, calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--examples", type=int, default=156)
    parser.add_argument("--val", type=int, default=222)
    parser.add_argument("--ingredients", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--head-init", choices=["probe", "random"], default="probe")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args = parser.parse_args(argv)
    for name in ("examples", "val", "ingredients", "steps", "max_length"):
        if (value := getattr(args, name)) < 1:
            parser.exit(2, f"error: --{name.replace('_', '-')} {value}: at least 1\n")
    if not args.learning_rate > 0:
        parser.exit(2, f"error: --learning-rate {args.learning_rate}: above 0\n")

    import numpy as np
    import torch

    from soupline.artifacts import read_json
    from soupline.corpora import BBC_LABELS, load_builtin
    from soupline.soup import load_state

    df = load_builtin("bbcnews")
    texts, y = df["text"].tolist(), np.array([BBC_LABELS.index(x) for x in df["label"]])
    n, m = args.examples, args.val
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = base_model(args.model, tmp)
        data = (texts[:n], y[:n], texts[n:n + m], y[n:n + m], BBC_LABELS)
        warm = argparse.Namespace(**{**vars(args), "ingredients": 1, "steps": 1})
        sweep(model, *data, warm, tmp / "warm-up", cached=False)  # untimed: the first call's imports and set-up
        baseline, calls = sweep(model, *data, args, tmp / "baseline", cached=False)
        default, cached_calls = sweep(model, *data, args, tmp / "default", cached=True)
        same = all(all(torch.equal(a[k], b[k]) for k in a) for a, b in (
            (load_state(tmp / "baseline" / f"ing{i}"), load_state(tmp / "default" / f"ing{i}"))
            for i in range(args.ingredients)))
        infos = [[read_json(tmp / side / f"ing{i}" / "train_info.json") for i in range(args.ingredients)]
                 for side in ("baseline", "default")]
    failed = sum("failed" in info for info in infos[1])
    print(f"{'LP-FT head' if args.head_init == 'probe' else 'Random head start probe'} cache, {args.model}, {n} "
          f"examples, {m} validation texts, {args.steps} steps, max_length {args.max_length}, {args.ingredients} "
          f"ingredients from {args.learning_rate:g} ({failed} failed); load average {os.getloadavg()[0]:.1f}")
    for i, (b, d) in enumerate(zip(baseline, default)):
        print(f"  ingredient {i}: baseline {b:7.1f} s | default {d:7.1f} s")
    later = [b - d for b, d in zip(baseline[1:], default[1:])]
    print(f"  sweep: baseline {sum(baseline):.1f} s | default {sum(default):.1f} s | baseline / default "
          f"{sum(baseline) / sum(default):.2f}x")
    if later:
        print(f"  saved per ingredient after the first: {np.mean(later):.1f} s")
    print("  " + " | ".join(f"{side}: " + ", ".join(f"{name} {len(c)} calls {sum(c):.1f} s" for name, c in got.items())
                            for side, got in (("baseline", calls), ("default", cached_calls))))
    print(f"  weights identical on both sides: {same}; train_info.json identical: {infos[0] == infos[1]}")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
