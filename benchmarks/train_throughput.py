"""Fine-tuning throughput: soupline's `train.finetune` vs a minimal plain PyTorch loop, same model/data/steps.

    python benchmarks/train_throughput.py [--steps 30] [--batch-size 16] [--max-length 64] [--repeats 1]

On the built-in model (all-MiniLM-L6-v2, 5-label head) and the first steps x batch-size bbcnews
texts (one pass, every batch a different slice), each measurement in a fresh Python process
(so its peak RSS, `VmHWM`, is its own), repeats alternating between the two loops:

- plain: `AutoModelForSequenceClassification` + AdamW (lr 1e-4 on every trainable weight), texts
  tokenised once (truncation to max_length, padded), then `steps` x (forward with labels,
  backward, step, zero_grad); LoRA: the same after peft `get_peft_model` with soupline's default
  LoraConfig (r 8, alpha 16, dropout 0.05, query/value).
- soupline: `finetune(...)` with TrainParams(method=..., epochs=1, min_steps=steps, batch_size,
  max_length): its own head init, AdamW param groups, grad clipping, linear warm-up schedule,
  per-batch padding, then a validation pass at the last step (64 held-out texts; it also gives the
  final score), and saving the model (+ the adapter for LoRA) and its training curves.
  `full` is compared with `freeze_embeddings: false` (the plain loop trains the word embeddings
  too); the default (frozen word embeddings) is measured as well.

Prints examples/s from the median time between optimizer steps (robust to a busy spell of the
machine: the headline ratio), of all training steps (soupline: its `train_seconds` minus the time
spent in validation) and end to end (model load to saved model; plain: model load to last step),
the ratios soupline / plain, where soupline's end-to-end time goes besides the steps (validation,
saving model + curves, setup = the rest: model load, tokenising, ...), each process's CPU time
and peak RSS. With `--repeats`, the best of each number (the largest peak) over the repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # soupline; peak_memory, also when a test loads this file
from peak_memory import rss_mb  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LR, VAL_TEXTS = 1e-4, 64


def data(n_train: int):
    import numpy as np

    from soupline.corpora import BBC_LABELS, load_builtin

    df = load_builtin("bbcnews")
    texts = df["text"].tolist()
    y = np.array([BBC_LABELS.index(x) for x in df["label"]])
    return (texts[:n_train], y[:n_train], texts[n_train:n_train + VAL_TEXTS], y[n_train:n_train + VAL_TEXTS],
            BBC_LABELS)


def plain(method: str, steps: int, batch_size: int, max_length: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from soupline.config import LoraParams
    from soupline.models import resolve_model

    texts, y, _, _, labels = data(steps * batch_size)
    path = resolve_model("all-MiniLM-L6-v2")
    from peft import LoraConfig, TaskType, get_peft_model  # imported before the timer, as in soupline()

    torch.manual_seed(0)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    if method == "lora":
        lora = LoraParams()
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                                 lora_dropout=lora.dropout, target_modules=lora.target_modules))
    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    labels_t = torch.as_tensor(y)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    loop_start = time.perf_counter()
    for step in range(steps):
        sl = slice(step * batch_size, (step + 1) * batch_size)
        loss = model(**{k: v[sl] for k, v in enc.items()}, labels=labels_t[sl]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return {"loop_seconds": end - loop_start, "total_seconds": end - start, "validation_seconds": 0.0,
            "saving_seconds": 0.0,
            "tokens_per_batch": int(enc["attention_mask"][:batch_size].sum()) / batch_size}


def soupline(method: str, steps: int, batch_size: int, max_length: int, freeze: bool) -> dict:
    import soupline.train as train
    from soupline.config import TrainParams
    from soupline.models import resolve_model

    texts, y, val_texts, y_val, labels = data(steps * batch_size)
    spent = {"validation": 0.0}
    predict = train.predict_logits

    def timed_predict(*args, **kwargs):  # validation passes inside finetune
        t = time.perf_counter()
        try:
            return predict(*args, **kwargs)
        finally:
            spent["validation"] += time.perf_counter() - t

    train.predict_logits = timed_predict
    spent["saving"] = 0.0
    atomic_dir = train.atomic_dir

    @contextlib.contextmanager
    def timed_atomic_dir(*args, **kwargs):  # writing the model, tokenizer, head init, info and curves
        t = time.perf_counter()
        with atomic_dir(*args, **kwargs) as tmp:
            yield tmp
        spent["saving"] += time.perf_counter() - t

    train.atomic_dir = timed_atomic_dir
    # The plain loop's architecture and start: Hugging Face's [CLS] classifier with a random head.
    params = TrainParams(method=method, epochs=1, min_steps=steps, batch_size=batch_size, max_length=max_length,
                         freeze_embeddings=freeze, pooling="cls", head_init="random")
    # Imports are once per process (the train stage fits every ingredient of the sweep in one), and the
    # plain loop imports before its timer too. transformers' get_scheduler alone pulls in peft through
    # trainer_utils: about 1 s on a quiet machine, which would otherwise count as 'setup' here.
    import dvclive  # noqa: F401
    import transformers.optimization  # noqa: F401
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = train.finetune(resolve_model("all-MiniLM-L6-v2"), labels, texts, y, val_texts, y_val, params, LR, 0,
                              Path(tmp) / "model", Path(tmp) / "model.ckpt", Path(tmp) / "curves", progress=False)
        total = time.perf_counter() - start
    assert info["steps"] == steps, info
    # train_seconds runs to the final score: the validation pass at the last step is inside it
    return {"loop_seconds": info["train_seconds"] - spent["validation"], "total_seconds": total,
            "validation_seconds": spent["validation"], "saving_seconds": spent["saving"],
            "train_seconds": info["train_seconds"]}


@contextlib.contextmanager
def optimizer_step_times():
    """The times at which each `torch.optim.AdamW.step` returned inside the block (soupline's `finetune` and the plain
    loop both step AdamW), in a list filled as they come; AdamW is restored after."""
    import torch

    done: list[float] = []
    step = torch.optim.AdamW.step

    def timed_step(self, *args, **kwargs):
        try:
            return step(self, *args, **kwargs)
        finally:
            done.append(time.perf_counter())

    torch.optim.AdamW.step = timed_step
    try:
        yield done
    finally:
        torch.optim.AdamW.step = step


def median_gap(times: list[float]) -> float:
    """The median time between consecutive steps: robust to a busy spell of the machine."""
    import statistics

    return statistics.median(b - a for a, b in zip(times, times[1:]))


def worker(kind: str, method: str, steps: int, batch_size: int, max_length: int) -> dict:
    cpu = time.process_time()
    with optimizer_step_times() as done:
        if kind == "plain":
            res = plain(method, steps, batch_size, max_length)
        else:
            res = soupline(method, steps, batch_size, max_length, freeze=kind == "soupline-frozen")
    assert len(done) == steps, (len(done), steps)
    res["median_step_seconds"] = median_gap(done)
    res["cpu_seconds"] = time.process_time() - cpu
    res["peak_rss_mb"] = rss_mb("VmHWM")
    return res


def worker_result(cmd: list[str], what: str):
    """Run a benchmark's worker process and return the JSON of its last stdout line. A worker's user error (its one
    `error:` line, exit status 2) is raised as that SouplineError; any other failure shows the worker's stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode == 2 and last.startswith("error: "):
        from soupline.errors import SouplineError

        raise SouplineError(last.removeprefix("error: "))
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(kind: str, method: str, args) -> dict:
    return worker_result([sys.executable, __file__, "--worker", kind, method, "--steps", str(args.steps),
                          "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)],
                         f"{kind}/{method}")


KINDS = {"full": ["plain", "soupline", "soupline-frozen"], "lora": ["plain", "soupline"]}  # method -> runs timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="processes per measurement (best time, max peak)")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:  # the headline is the median time between optimizer steps: one step has none
        parser.error(f"--steps {args.steps}: at least 2 (examples/s is timed between optimizer steps)")
    if unknown := set(args.methods.split(",")) - set(KINDS):
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {','.join(KINDS)}")

    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.batch_size, args.max_length)))
        return

    import torch

    examples = args.steps * args.batch_size
    print(f"all-MiniLM-L6-v2, bbcnews: {args.steps} steps x batch {args.batch_size} = {examples} examples, "
          f"max_length {args.max_length}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    results: dict = {}
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        for method in args.methods.split(","):
            for kind in KINDS[method]:
                r = run_worker(kind, method, args)
                prev = results.get((method, kind))
                if prev is None:
                    results[(method, kind)] = r
                else:
                    results[(method, kind)] = {k: (max if k == "peak_rss_mb" else min)(prev[k], r[k])
                                               for k in r}
    names = {"plain": "plain PyTorch loop", "soupline": "soupline finetune",
             "soupline-frozen": "soupline finetune (default: frozen word embeddings)"}
    print(f"tokens per training example (plain loop's batches): "
          f"{results[(args.methods.split(',')[0], 'plain')]['tokens_per_batch']:.1f}; "
          f"benchmark wall time {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f}")
    print()
    print("| method | loop | examples/s, median step | examples/s, all steps | examples/s, end to end "
          "| end-to-end s | of which validation s | saving s | setup s | CPU s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (method, kind), r in results.items():
        print(f"| {method} | {names[kind]} | {args.batch_size / r['median_step_seconds']:.1f} "
              f"| {examples / r['loop_seconds']:.1f} | {examples / r['total_seconds']:.1f} "
              f"| {r['total_seconds']:.1f} | {r['validation_seconds']:.1f} | {r['saving_seconds']:.1f} "
              f"| {r['total_seconds'] - r['loop_seconds'] - r['validation_seconds'] - r['saving_seconds']:.1f} "
              f"| {r['cpu_seconds']:.0f} "
              f"| {r['peak_rss_mb']:.0f} |")
    print()
    print("| method | soupline / plain: median step | all steps | end to end | peak RSS soupline / plain |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        p = results[(method, "plain")]
        for kind in KINDS[method][1:]:
            s = results[(method, kind)]
            label = method + (" (frozen word embeddings)" if kind == "soupline-frozen" else "")
            print(f"| {label} | **{p['median_step_seconds'] / s['median_step_seconds']:.2f}** "
                  f"| {p['loop_seconds'] / s['loop_seconds']:.2f} | {p['total_seconds'] / s['total_seconds']:.2f} "
                  f"| {s['peak_rss_mb'] / p['peak_rss_mb']:.2f} |")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
