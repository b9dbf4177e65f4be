"""Soup memory and time: the streaming soups (`soupline.soup` on `LazyState`) vs every ingredient in memory.

    python benchmarks/soup_memory.py [--n 8] [--methods uniform,ties,dare,greedy] [--repeats 1] [--threads T]
                                     [--workdir DIR]

Builds `--n` ingredients of the built-in model (all-MiniLM-L6-v2 + a 5-label head, 22.7M
parameters): the shared init (`train.init_model`, head seed 0) plus seeded Gaussian noise of std
1e-3 on every weight, saved with `save_pretrained` (no training: the soups only see tensors).
Then, per method and mode, one fresh Python process (so each peak is its own) does what the
soup stage does for that method and reports its wall time and peak RSS (`VmHWM`, the process's own
high-water mark; `ru_maxrss` would report at least the driver's RSS, which Linux counts in a child's):

- stream (this soupline): `LazyState` per ingredient, `check_compatible` on the headers, the
  soup written into the evaluation model's own state dict (`into=`), task-vector base built
  from the init for ties/dare;
- in-memory (before streaming): `load_state` of every ingredient, `check_compatible`, the
  previous implementation (tests/soup_reference.py), the result loaded into the model.

Both load the evaluation model (as the stage does) and import the same modules. `after imports`
is the RSS once torch/transformers are imported and the evaluation model is loaded (and made
resident), before any ingredient is read; `soup peak` = peak RSS - that, the memory the soup itself needs, printed also
in models (one model = its float32 weights). greedy uses a constant "validation accuracy", so it
keeps every candidate (`strict=False`: a tie keeps it; the default strict rule would keep only the
first): n - 1 candidates built and evaluated, no real evaluation cost. ties uses
the defaults (top-k 20 %, sign election), dare drop 0.5 with a linear merge.
Output of both modes is checked to be equal (torch.equal) in one more process per method.
`--threads T` sets torch's intra-op threads in the workers (default: torch's, one per core). On
a busy machine the streaming soups' many block-sized operations slow down far more than the
in-memory code's few large ones when torch uses more than one thread (each operation waits for
all its threads); `--threads 1` gives times that hold up under load.
"""

from __future__ import annotations

import argparse
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

LABELS = ["tech", "business", "politics", "sport", "entertainment"]
MERGES = {"ties": {"top_k": 20.0, "elect_sign": True}, "dare": {"drop": 0.5, "seed": 0}}


def make_ingredients(workdir: Path, n: int) -> list[Path]:
    import torch

    from soupline.classifier import init_model
    from soupline.models import resolve_model

    dirs = []
    for i in range(n):
        d = workdir / f"ingredient-{i}"
        dirs.append(d)
        if (d / "model.safetensors").exists():
            continue
        model = init_model(resolve_model("all-MiniLM-L6-v2"), LABELS, 0)
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        model.save_pretrained(d)
    return dirs


def worker(method: str, mode: str, dirs: list[Path], out: str | None, threads: int | None = None) -> dict:
    """One soup as the stage does it; returns time and memory (run in a fresh process)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from soupline import soup
    from soupline.classifier import init_model, load_classifier
    from soupline.models import resolve_model
    from tests import soup_reference as ref

    model = load_classifier(dirs[0])
    own = model.state_dict()
    with torch.no_grad():
        for v in own.values():  # weights may be mapped lazily from the file: make them resident before the baseline
            v.mul_(1)
    params = sum(v.numel() for v in own.values())
    model_mb = sum(v.numel() * v.element_size() for v in own.values()) / 2**20
    before = rss_mb()
    start = time.perf_counter()

    def base() -> dict:
        return init_model(resolve_model("all-MiniLM-L6-v2"), LABELS, 0).state_dict()

    def evaluate(state) -> float:  # constant: every candidate kept
        if state is not own:
            model.load_state_dict(state)
        return 1.0

    if mode == "stream":
        states = [soup.LazyState(d) for d in dirs]
        soup.check_compatible(dirs, states)
        if method == "uniform":
            soup.uniform(states, into=own)
        elif method == "greedy":
            result, _, _ = soup.greedy(states, [1.0] * len(dirs), evaluate, strict=False, into=own)
            model.load_state_dict(result)
            del result
        else:
            soup.task_arithmetic(states, base(), into=own, **MERGES[method])
    else:
        states = [soup.load_state(d) for d in dirs]
        soup.check_compatible(dirs, states)
        if method == "uniform":
            result = ref.uniform(states)
        elif method == "greedy":
            result, _, _ = ref.greedy(states, [1.0] * len(dirs), evaluate, strict=False)
        else:
            result = ref.task_arithmetic(states, base(), **MERGES[method])
        model.load_state_dict(result)
        del result
    seconds = time.perf_counter() - start
    if out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    peak = rss_mb("VmHWM")
    return {"seconds": seconds, "rss_after_imports_mb": before, "peak_rss_mb": peak, "model_mb": model_mb,
            "params": params, "threads": torch.get_num_threads()}


def run_worker(method: str, mode: str, workdir: Path, n: int, out: str | None = None, threads: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, mode, "--workdir", str(workdir), "--n", str(n),
           "--threads", str(threads)]
    if out:
        cmd += ["--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method}/{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--methods", default="uniform,ties,dare,greedy")
    parser.add_argument("--repeats", type=int, default=1, help="processes per method and mode (best time, max peak)")
    parser.add_argument("--workdir", help="keep the ingredients here (default: a temp folder, removed)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    parser.add_argument("--no-check", action="store_true", help="skip the equality check of both modes' soups")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        dirs = [Path(args.workdir) / f"ingredient-{i}" for i in range(args.n)]
        print(json.dumps(worker(*args.worker, dirs, args.out, args.threads)))
        return

    with tempfile.TemporaryDirectory(prefix="soup-memory-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_ingredients(workdir, args.n)
        print(f"{args.n} ingredients of all-MiniLM-L6-v2 (+ {len(LABELS)}-label head) in {workdir} "
              f"({time.perf_counter() - t0:.0f} s to build); load average {os.getloadavg()[0]:.2f}")
        rows = []
        for method in args.methods.split(","):
            res, by_mode = {}, {"in-memory": [], "stream": []}
            for _ in range(args.repeats):  # alternating, so a busy spell hits both modes
                for mode, runs in by_mode.items():
                    runs.append(run_worker(method, mode, workdir, args.n, threads=args.threads))
            for mode, runs in by_mode.items():
                res[mode] = {**runs[0], "seconds": min(r["seconds"] for r in runs),
                             "all_seconds": [r["seconds"] for r in runs],
                             "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                             "rss_after_imports_mb": max(r["rss_after_imports_mb"] for r in runs)}
            equal = None
            if not args.no_check:
                import torch
                from safetensors.torch import load_file

                outs = [str(workdir / f"soup-{method}-{mode}.safetensors") for mode in ("in-memory", "stream")]
                for mode, out in zip(("in-memory", "stream"), outs):
                    run_worker(method, mode, workdir, args.n, out, threads=args.threads)
                a, b = load_file(outs[0]), load_file(outs[1])
                equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                for out in outs:
                    Path(out).unlink()
            rows.append((method, res, equal))
        model_mb, params = rows[0][1]["stream"]["model_mb"], rows[0][1]["stream"]["params"]
        print(f"one model: {params / 1e6:.1f}M parameters, {model_mb:.0f} MB float32; "
              f"{args.n} ingredients: {args.n * model_mb:.0f} MB; torch threads {rows[0][1]['stream']['threads']}; "
              f"load average at the end {os.getloadavg()[0]:.2f}")
        print()
        print("| method | mode | seconds (best) | runs (s) | peak RSS MB | after imports MB | soup peak MB (models) |")
        print("|---|---|---|---|---|---|---|")
        for method, res, _ in rows:
            for mode in ("in-memory", "stream"):
                r = res[mode]
                extra = r["peak_rss_mb"] - r["rss_after_imports_mb"]
                runs = ", ".join(f"{x:.1f}" for x in r["all_seconds"])
                print(f"| {method} | {mode} | {r['seconds']:.1f} | {runs} | {r['peak_rss_mb']:.0f} | "
                      f"{r['rss_after_imports_mb']:.0f} | {extra:.0f} ({extra / model_mb:.1f}) |")
        print()
        print("| method | time stream / in-memory | peak RSS stream / in-memory | soup peak stream / in-memory "
              "| soups equal |")
        print("|---|---|---|---|---|")
        for method, res, equal in rows:
            s, m = res["stream"], res["in-memory"]
            extra_s = s["peak_rss_mb"] - s["rss_after_imports_mb"]
            extra_m = m["peak_rss_mb"] - m["rss_after_imports_mb"]
            print(f"| {method} | {s['seconds'] / m['seconds']:.2f} | {s['peak_rss_mb'] / m['peak_rss_mb']:.2f} | "
                  f"{extra_s / extra_m:.2f} | {'not checked' if equal is None else equal} |")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
