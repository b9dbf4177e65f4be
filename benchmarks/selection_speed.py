"""Selection speed: wall time and peak memory of every registered method on synthetic embeddings.

    python benchmarks/selection_speed.py                          # pools of 10k and 100k (about 20 min on 2 cores)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/selection_speed.py  # on a shared machine (see docs/selection_speed.md)
    python benchmarks/selection_speed.py --sizes 10000 --methods dnc gotd
    python benchmarks/selection_speed.py --million                # adds a 1M pool (slow; several GB for some methods)

Data: float32 unit vectors, d = 384 (all-MiniLM-L6-v2's size), drawn around 50 cluster centres
with 10 labels (each cluster has a majority label, 10 % flipped), and a 2,000-point target set
from 5 of the clusters (GOT-D's validation stand-in). Budget: `--budget` of the pool (1 %).
Each (method, pool size) runs in a fresh process; its peak memory is the high-water mark of
resident memory (VmHWM, reset via /proc/self/clear_refs once the data and the libraries torch,
POT and scikit-learn are loaded) above the resident memory at that point: the method's working set.
Times are also shown as ratios to the `kmeans` method (the default selector) in the same run.
Then: faiss k-means (the selectors' `kmeans_centroids`) vs `sklearn.cluster.KMeans` with the same
k, the same 25 iterations (tol 0), one restart and the same kind of start (k random points;
scikit-learn's default k-means++ start shown too), at k = 100 and k = the kmeans selector's k
(= budget). DEALRec runs with `effort_weight: 0` in the table (synthetic vectors have no texts);
its effort pass (per-example gradient norms of the target model) is timed separately on bbcnews
pool texts against one training epoch over the same texts with the pipeline's `train` code and
defaults (`soupline.train.finetune`, epochs 1, min_steps 0; the defaults' max_length 128, batch 16).
Both are timed end to end (model load, tokenising, the pass; the epoch also saves the model).
`--worker knn-recall N K PROBES` times dnc's approximate neighbour search against the exact one
and prints its recall.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # peak_memory, also when a test loads this file
from peak_memory import reset_peak, rss_mb  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
D, CLUSTERS, LABELS, TARGET = 384, 50, 10, 2000


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, D)).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, n)
    x = centres[cluster]
    for start in range(0, n, 100_000):  # float32 noise in chunks: a 1M pool never holds float64 copies
        x[start:start + 100_000] += 1.5 * rng.standard_normal((min(n, start + 100_000) - start, D), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.where(rng.random(n) < 0.1, rng.integers(0, LABELS, n), cluster % LABELS)
    t_cluster = rng.integers(0, 5, TARGET)
    t = centres[t_cluster] + 1.5 * rng.normal(size=(TARGET, D)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return x, labels.astype(np.int64), t, (t_cluster % LABELS).astype(np.int64)


def worker(spec: str, n: int, budget_frac: float) -> dict:
    """One method (`name` or `name:key=value,...`) on one pool size, in this (fresh) process."""
    from soupline import select

    x, y, t, ty = synthetic(n)
    inp = select.SelectionInput(x, y, [f"l{c}" for c in range(LABELS)], target_embeddings=t, target_labels=ty,
                                extras={"device": "cpu"})
    method, cfg = select.method_config(spec)
    if method == "dealrec":
        cfg = cfg.model_copy(update={"effort_weight": 0.0})
    budget = max(1, int(round(budget_frac * n)))
    import ot  # noqa: F401  libraries imported before the baseline, so the peak is the method's working memory
    import sklearn.linear_model  # noqa: F401
    import torch  # noqa: F401

    reset_peak()
    base = rss_mb("VmRSS")
    start = time.perf_counter()
    sel = select.run_method(method, inp, budget, 0, cfg)
    seconds = time.perf_counter() - start
    facts = {k: v for k, v in sel.info.items() if k in ("k", "iterations", "converged", "solver", "cg_iterations",
                                                          "ot_pool_size", "eps")}
    return {"method": spec, "n": n, "budget": budget, "seconds": seconds,
            "peak_mb": rss_mb("VmHWM") - base, "facts": facts,
            "target": int(len(t))}


def kmeans_worker(n: int, k: int, niter: int) -> dict:
    """faiss k-means (the selectors' kmeans_centroids) vs scikit-learn Lloyd, same k and iterations."""
    from sklearn.cluster import KMeans

    from soupline.select.kmeans import kmeans_centroids

    x, *_ = synthetic(n)
    start = time.perf_counter()
    kmeans_centroids(x, k, 0, niter, 1)
    out = {"n": n, "k": k, "niter": niter, "faiss_s": time.perf_counter() - start}
    for init in ("random", "k-means++"):
        start = time.perf_counter()
        km = KMeans(n_clusters=k, init=init, max_iter=niter, n_init=1, tol=0.0, algorithm="lloyd",
                    random_state=0).fit(x)
        out[f"sklearn_{init}_s"] = time.perf_counter() - start
        out[f"sklearn_{init}_iter"] = int(km.n_iter_)
    return out


def effort_worker(count: int, which: str) -> dict:
    """DEALRec's effort pass vs one training epoch over the same `count` bbcnews pool texts."""
    import tempfile
    from pathlib import Path

    from soupline import data
    from soupline.config import TrainParams
    from soupline.models import resolve_model
    from soupline.select.dealrec import effort_scores
    from soupline.classifier import init_model
    from soupline.train import finetune

    frames = data.load_splits("bbcnews", None, "text", "label", 0.1, 0.2, seed=42)
    names = data.label_names(frames)
    pool = frames["pool"].iloc[:count]
    texts, labels = pool["text"].tolist(), np.array([names.index(x) for x in pool["label"]])
    model = resolve_model("all-MiniLM-L6-v2")
    init_model(model, names, 0)  # warm the file cache and imports for both timings
    cfg = TrainParams().model_copy(update={"epochs": 1, "min_steps": 0})
    out = {"texts": len(texts), "which": which, "max_length": cfg.max_length, "batch_size": cfg.batch_size}
    start = time.perf_counter()
    effort_scores(texts, labels, names, model, cfg, which, 32, "cpu")
    out["effort_s"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = finetune(model, names, texts, labels, texts[:8], labels[:8], cfg, cfg.learning_rates[0], 0,
                        Path(tmp) / "m", Path(tmp) / "ckpt", progress=False)
        out["epoch_s"] = time.perf_counter() - start
    out["epoch_loop_s"], out["epoch_steps"] = info["train_seconds"], info["steps"]
    return out


def knn_recall_worker(n: int, k: int, probes: int) -> dict:
    """dnc's approximate neighbour search (cell_knn) vs the exact flat search: time and recall@k."""
    from soupline.select.dnc import cell_knn  # soupline before faiss: it picks faiss's BLAS kernels

    import faiss

    x = synthetic(n)[0]
    start = time.perf_counter()
    approx = cell_knn(x, k, 0, probes)
    cells_s = time.perf_counter() - start
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    start = time.perf_counter()
    exact = index.search(x, k)[1]
    exact_s = time.perf_counter() - start
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(approx, exact)]))
    return {"n": n, "k": k, "probes": probes, "cells_s": cells_s, "exact_s": exact_s, "recall": recall}


def spawn(args: list[str], timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s: {' '.join(args)}", flush=True)
        return None
    if done.returncode != 0:
        print(f"  failed: {' '.join(args)}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--million", action="store_true", help="add a 1,000,000-point pool")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="default: every registered method; `name:key=value,...` sets that method's keys")
    parser.add_argument("--budget", type=float, default=0.01, help="fraction of the pool selected")
    parser.add_argument("--kmeans-k", type=int, nargs="+", default=None,
                        help="k of the faiss-vs-sklearn comparison (default: 100 and the kmeans selector's k)")
    parser.add_argument("--effort-texts", type=int, default=512,
                        help="bbcnews pool texts for the effort-vs-epoch timing (0: skip)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per (method, size) before giving up")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "kmeans-vs-sklearn":
            print(json.dumps(kmeans_worker(int(rest[0]), int(rest[1]), int(rest[2]))))
        elif kind == "knn-recall":
            print(json.dumps(knn_recall_worker(int(rest[0]), int(rest[1]), int(rest[2]))))
        elif kind == "effort":
            print(json.dumps(effort_worker(int(rest[0]), rest[1])))
        else:
            print(json.dumps(worker(kind, int(rest[0]), float(rest[1]))))
        return

    from soupline import select

    if unknown := [m for m in args.methods or [] if m.split(":")[0] not in select.REGISTRY]:
        parser.error(f"--methods: unknown {unknown}; choose from {sorted(select.REGISTRY)}")
    if not 0 < args.budget <= 1:
        parser.error(f"--budget {args.budget}: a fraction of the pool in (0, 1]")
    if small := [n for n in args.sizes if n < 100]:
        parser.error(f"--sizes {small}: pools of at least 100 points")
    methods = args.methods or sorted(select.REGISTRY)
    if "kmeans" not in methods:
        methods = ["kmeans", *methods]  # the baseline of the ratios
    sizes = args.sizes + ([1_000_000] if args.million else [])
    print(f"synthetic pools, d={D}, budget {100 * args.budget:g} %, target set {TARGET:,}; {os.cpu_count()} CPU cores; "
          "each cell a fresh process; peak MB = resident high-water mark above the loaded process; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'method':<9}{'pool':>10}{'budget':>8}{'seconds':>10}{'x kmeans':>10}{'peak MB':>10}  facts")
    for n in sizes:
        rows = [r for m in methods if (r := spawn([m, str(n), str(args.budget)], args.timeout))]
        base = next((r["seconds"] for r in rows if r["method"] == "kmeans"), float("nan"))
        for r in rows:
            print(f"{r['method']:<9}{r['n']:>10,}{r['budget']:>8,}{r['seconds']:>10.2f}{r['seconds'] / base:>10.2f}"
                  f"{r['peak_mb']:>10.0f}  {r['facts']}", flush=True)
        gotd = next((r for r in rows if r["method"] == "gotd"), None)
        if gotd and n == 100_000:
            print(f"  gotd, pool 100,000 vs target {gotd['target']:,}: {gotd['seconds']:.1f} s "
                  f"(issue target < 60 s on 2 cores: {'met' if gotd['seconds'] < 60 else 'MISSED'})", flush=True)
    print("\nk-means: faiss vs scikit-learn KMeans(lloyd), same k, 25 iterations (tol 0), one restart:")
    for n in sizes:
        for k in args.kmeans_k or sorted({100, max(1, int(round(args.budget * n)))}):
            r = spawn(["kmeans-vs-sklearn", str(n), str(k), "25"], args.timeout)
            if r:
                ratio = r["sklearn_random_s"] / r["faiss_s"]
                per_iter = ratio * 25 / r["sklearn_random_iter"]  # sklearn stops early once no label changes
                print(f"  pool {n:>9,} k={k:<5}: faiss {r['faiss_s']:6.2f}s | sklearn init=random "
                      f"{r['sklearn_random_s']:6.2f}s ({r['sklearn_random_iter']} it) = {ratio:5.1f}x faiss "
                      f"({per_iter:.1f}x per iteration) | sklearn init=k-means++ {r['sklearn_k-means++_s']:6.2f}s "
                      f"({r['sklearn_k-means++_iter']} it) = {r['sklearn_k-means++_s'] / r['faiss_s']:5.1f}x", flush=True)
    if args.effort_texts:
        print(f"\nDEALRec effort pass vs one training epoch, {args.effort_texts} bbcnews pool texts, CPU:")
        for which in ("head", "last_layer", "trainable"):
            r = spawn(["effort", str(args.effort_texts), which], args.timeout)
            if r:
                print(f"  effort_params={which:<10}: effort {r['effort_s']:6.1f}s | one epoch {r['epoch_s']:6.1f}s "
                      f"({r['epoch_steps']} steps of {r['batch_size']}, loop {r['epoch_loop_s']:.1f}s) | "
                      f"effort / epoch = {r['effort_s'] / r['epoch_s']:.2f} "
                      f"(issue target <= 1: {'met' if r['effort_s'] <= r['epoch_s'] else 'MISSED'})", flush=True)
    load = os.getloadavg()[0]
    print(f"\nload average at the end: {load:.2f}"
          + (f" (above {os.cpu_count()} cores: other work shared them)" if load > (os.cpu_count() or 1) else ""))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
