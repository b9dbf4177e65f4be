"""Selection quality: every registered method x budgets x seeds, on bbcnews and a label-skewed pool.

    python benchmarks/selection_quality.py                      # linear-probe mode (minutes)
    python benchmarks/selection_quality.py --finetune           # fine-tune mode (slow: one fine-tune per cell)
    python benchmarks/selection_quality.py --methods random kmeans --budgets 0.01 0.05 --seeds 0 1 2
    python benchmarks/selection_quality.py --methods random gotd gotd:rounds=16 --out docs/selection_quality_gotd_rounds
    python benchmarks/selection_quality.py --heldout-dedup 0.9 --out docs/selection_quality_heldout_dedup
    python benchmarks/selection_quality.py --pools corpus --seeds 0 1 2 3 4 5 6 7 8 9 --dedup 1.0 \
        --out docs/selection_quality_exact_copies
    python benchmarks/selection_quality.py --corpus 20newsgroups --max-examples 6000 \
        --out docs/selection_quality_20newsgroups
    python benchmarks/selection_quality.py --finetune --reuse docs/selection_quality_finetune.json \
        --reuse-methods random
    python benchmarks/selection_quality.py --finetune --pools corpus --methods random gotd \
        --seeds 0 1 2 3 4 5 6 7 8 9 --reuse docs/selection_quality_finetune.json \
        docs/selection_quality_finetune_dnc_10seeds.json --reuse-methods full-pool random gotd

A long run writes its cells so far to `<out>.partial.json` after every cell; if it is killed, run it
again with `--reuse <out>.partial.json --reuse-methods full-pool <its methods>` to run only the cells it lacks.

`--corpus` picks the built-in corpus (default bbcnews; 20newsgroups is the 20-label check that the
settings chosen on bbcnews carry over). Each cell: select `budget` of the pool with the method, fit a
classifier on the selection (a logistic-regression probe on the frozen embeddings, or a fine-tune
with the pipeline's `train` defaults), score it on the test split. The skewed pool keeps every example of the 2
largest classes and 10 % of the others (`--pools` runs one of the two). The reference line is the same kind of model fit on the whole
pool (the probe, or one fine-tune, seed 0; `--reuse-methods full-pool` keeps a previous run's). Writes
`docs/selection_quality.md` (+ `.png`, `.json`) and prints the table with each method's
difference to `random` at the same budget, averaged over seeds, and the issue's targets.
Every method runs with its defaults unless named as a variant, `name:key=value,...` (its
`select.<name>` keys, e.g. `gotd:rounds=16,nudge=0.9`). `--dedup COSINE` sets `select.dedup_threshold` for
every method (1.0: one of each exact copy); `--heldout-dedup COSINE` sets
`select.heldout_dedup_threshold` for every method (no pick closer than that to a validation or
test text); `--stratify label|balanced` sets `select.stratify` for every method. DEALRec's effort
term scores the model `train` starts from with its defaults (the built-in model, mean pooling,
LP-FT head), at max_length 64; `dnc:scorer=finetune` fine-tunes that
model (same settings) on the picks so far between rounds. Effort scores depend on the texts and
labels only, not the budget or seed, so they are computed once per pool and reused across cells
(`--no-effort-cache` recomputes them in every cell); DEALRec's whole score (surrogate fit, influence solve) is
cached the same way, keyed on the pool and its scoring settings, so variants of its coverage sampling share it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def load_corpus(source: str = "bbcnews", max_examples: int | None = None, max_length: int = 128):
    """A built-in corpus split as in the default pipeline, with embeddings (content-cached under data/cache)."""
    from soupline import data
    from soupline.embed import Encoder, encode_cached
    from soupline.models import resolve_model

    frames = data.load_splits(source, None, "text", "label", 0.1, 0.2, seed=42,
                              max_examples=max_examples)
    names = data.label_names(frames)
    enc = Encoder(resolve_model("all-MiniLM-L6-v2"), 64, max_length)
    out = {}
    for split, df in frames.items():
        emb, _ = encode_cached(df["text"].tolist(), enc, ROOT / "data" / "cache" / "embeddings")
        out[split] = (df["text"].tolist(), np.array([names.index(x) for x in df["label"]]), emb)
    return names, out


def skew(pool, keep_fraction: float = 0.1, seed: int = 0):
    """Keep all of the 2 largest classes and `keep_fraction` of every other class."""
    texts, y, emb = pool
    counts = np.bincount(y)
    big = set(np.argsort(-counts)[:2].tolist())
    rng = np.random.default_rng(seed)
    keep = [i for c in range(len(counts)) for i in
            (np.flatnonzero(y == c) if c in big else
             rng.choice(np.flatnonzero(y == c), max(1, int(keep_fraction * counts[c])), replace=False))]
    keep = np.sort(np.array(keep))
    return [texts[i] for i in keep], y[keep], emb[keep]


def probe_scores(x_tr, y_tr, x_te, y_te, n_labels: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    if len(set(y_tr.tolist())) < 2:
        pred = np.full(len(y_te), y_tr[0])
    else:
        pred = LogisticRegression(C=10.0, max_iter=2000).fit(x_tr, y_tr).predict(x_te)
    return float((pred == y_te).mean()), float(f1_score(y_te, pred, labels=list(range(n_labels)),
                                                         average="macro", zero_division=0))


def finetune_scores(names, train, val, test, seed: int):
    import tempfile

    from soupline.config import TrainParams
    from soupline.evaluate import metrics, predict_logits, tokenize
    from soupline.models import resolve_model
    from soupline.train import finetune
    from transformers import AutoTokenizer

    from soupline.classifier import load_classifier

    cfg = TrainParams()
    with tempfile.TemporaryDirectory() as tmp:
        finetune(resolve_model("all-MiniLM-L6-v2"), names, train[0], train[1], val[0], val[1], cfg,
                 cfg.learning_rates[0], seed, Path(tmp) / "m", Path(tmp) / "ckpt", progress=False)
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "m")
        model = load_classifier(Path(tmp) / "m")
        m = metrics(predict_logits(model, tok, tokenize(tok, test[0], cfg.max_length), 64, "cpu"), test[1], names)
    return m["accuracy"], m["macro_f1"]


def cache_effort() -> None:
    """Memoise DEALRec's effort pass on (texts, labels, settings): it depends on neither the budget nor the seed."""
    import hashlib

    from soupline.select import dealrec

    compute, memo = dealrec.effort_scores, {}

    def cached(texts, labels, *args, **kwargs):
        key = (hashlib.sha256("\x00".join(texts).encode()).hexdigest(), np.asarray(labels).tobytes(),
               tuple(map(str, args)), tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in memo:
            memo[key] = compute(texts, labels, *args, **kwargs)
        return memo[key]

    dealrec.effort_scores = cached


def cache_scores() -> None:
    """Memoise DEALRec's scores on (pool, the settings that score): the surrogate fit and influence solve repeat in
    every cell otherwise, while coverage sampling (`strata`, `strata_by`, `coverage_by_label`, `hard_prune*`) alone
    depends on the budget and seed."""
    import hashlib

    from soupline.select import dealrec

    compute, memo = dealrec.scores, {}
    sampling = {"hard_prune", "hard_prune_within", "strata", "strata_by", "coverage_by_label"}

    def cached(pool, seed, cfg):
        key = (hashlib.sha256(pool.embeddings.tobytes()).hexdigest(), pool.labels.tobytes(),
               json.dumps(cfg.model_dump(mode="json", exclude=sampling), sort_keys=True))
        if key not in memo:
            memo[key] = compute(pool, seed, cfg)
        return memo[key][0], dict(memo[key][1])

    dealrec.scores = cached


def run_cell(method, pool, target, budget_frac, seed, names, corpus, finetune, heldout_dedup=None,
             stratify="none", dedup=None):
    from soupline import select
    from soupline.config import TrainParams
    from soupline.models import resolve_model

    texts, y, emb = pool
    inp = select.SelectionInput(embeddings=emb, labels=y, label_names=names, texts=texts,
                                target_embeddings=target[2], target_labels=target[1],
                                extras={"model_path": resolve_model("all-MiniLM-L6-v2"),
                                        "train": TrainParams(max_length=64), "device": "cpu",
                                        "validation": corpus["validation"][:2]})
    budget = select.resolve_budget(budget_frac, len(y))
    start = time.perf_counter()
    name, cfg = select.method_config(method)
    heldout = np.vstack([corpus["validation"][2], corpus["test"][2]]) if heldout_dedup else None
    with warnings.catch_warnings():  # the row counts the picks that repeat a text: no warning line per cell
        warnings.filterwarnings("ignore", message="the selection holds")
        sel = select.run_method(name, inp, budget, seed, cfg, stratify, dedup, heldout, heldout_dedup)
    seconds = time.perf_counter() - start
    acc, f1 = fit_and_score(pool, sel.indices, names, corpus, finetune, seed)
    return {"accuracy": acc, "macro_f1": f1, "select_seconds": seconds, "budget": budget,
            **{k: sel.info.get(k, 0) for k in ("repeated_picks", "repeated_picks_conflicting_labels")}}


def fit_and_score(pool, idx, names, corpus, finetune: bool, seed: int) -> tuple[float, float]:
    """Test (accuracy, macro-F1) of a model fit on the pool rows `idx`: one fine-tune, or the probe."""
    texts, y, emb = pool
    if finetune:
        return finetune_scores(names, ([texts[i] for i in idx], y[idx]), corpus["validation"][:2],
                               corpus["test"][:2], seed)
    return probe_scores(emb[idx], y[idx], corpus["test"][2], corpus["test"][1], len(names))


def main() -> None:
    from soupline import select
    from soupline.artifacts import write_json
    from soupline.select.quotas import STRATIFY

    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=sorted(select.REGISTRY))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--finetune", action="store_true", help="fine-tune instead of a linear probe")
    parser.add_argument("--corpus", default="bbcnews", help="built-in corpus (bbcnews, 20newsgroups)")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="stratified subsample of the corpus before splitting (default: all)")
    parser.add_argument("--pools", nargs="+", choices=POOLS, default=list(POOLS),
                        help="which pools to run: the corpus's own pool and/or its label-skewed version")
    parser.add_argument("--out", default=str(ROOT / "docs" / "selection_quality"))
    parser.add_argument("--dedup", type=float, default=None, metavar="COSINE",
                        help="select.dedup_threshold for every method: never pick a pool text this close to an "
                             "earlier one (1.0: identical embeddings only, exact copies among them)")
    parser.add_argument("--heldout-dedup", type=float, default=None, metavar="COSINE",
                        help="select.heldout_dedup_threshold for every method: never pick a pool text this close "
                             "to a validation or test text")
    parser.add_argument("--stratify", choices=STRATIFY, default="none",
                        help="select.stratify for every method: run it inside each label, with proportional "
                             "(label) or equal (balanced) label quotas")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and plot from --out's .json (same --methods/--budgets/--seeds)")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="JSON",
                        help="previous runs' .json files (same mode and corpus): their cells (pool, method, budget, "
                             "seed) of --reuse-methods are taken as they are instead of run again (a later file's "
                             "cell wins)")
    parser.add_argument("--reuse-methods", nargs="+", default=[],
                        help="the methods whose --reuse cells are kept (only those whose code has not changed)")
    parser.add_argument("--no-effort-cache", action="store_true",
                        help="recompute DEALRec's effort and scores in every cell (same result, slower)")
    args = parser.parse_args()
    if args.report_only:
        write_outputs(json.loads(Path(args.out).with_suffix(".json").read_text()), args, Path(args.out))
        return
    if not args.no_effort_cache:
        cache_effort()
        cache_scores()
    started = time.perf_counter()

    names, corpus = load_corpus(args.corpus, args.max_examples)
    pools = {pool_id(args.corpus, kind): corpus["pool"] if kind == "corpus" else skew(corpus["pool"])
             for kind in args.pools}
    rows = []
    previous = [r for f in args.reuse for r in json.loads(Path(f).read_text())]
    reuse = {(r["pool"], r["method"], r["budget"], r["seed"]): r for r in previous if r["method"] in args.reuse_methods}
    partial = Path(args.out).with_suffix(".partial.json")  # the cells so far, for resuming a killed run
    for pool_name, pool in pools.items():
        rows.append(full_pool_reference(pool_name, pool, names, corpus, args.finetune, reuse))
        write_json(partial, rows)
        for method in args.methods:
            for b in args.budgets:
                for seed in args.seeds:
                    if (pool_name, method, b, seed) in reuse:
                        rows.append(r := reuse[pool_name, method, b, seed])
                        print(f"{pool_name:<15} {method:<8} budget={b:<5} seed={seed} "
                              f"acc={r['accuracy']:.4f} macro-F1={r['macro_f1']:.4f} (reused)")
                        continue
                    r = run_cell(method, pool, corpus["validation"], b, seed, names, corpus, args.finetune,
                                 args.heldout_dedup, args.stratify, args.dedup)
                    rows.append({"pool": pool_name, "method": method, "seed": seed, **r, "count": r["budget"],
                                 "budget": b})
                    print(f"{pool_name:<15} {method:<8} budget={b:<5} seed={seed} "
                          f"acc={r['accuracy']:.4f} macro-F1={r['macro_f1']:.4f} select={r['select_seconds']:.2f}s "
                          f"repeats={r['repeated_picks']}/{r['repeated_picks_conflicting_labels']}")
                    write_json(partial, rows)
    write_outputs(rows, args, Path(args.out), time.perf_counter() - started)
    partial.unlink(missing_ok=True)


def full_pool_reference(pool_name, pool, names, corpus, finetune: bool, reuse) -> dict:
    """The model fit on every pool example, scored on test: a probe, or in fine-tune mode one
    fine-tune (seed 0; reused from --reuse when `full-pool` is among --reuse-methods)."""
    model = "fine-tune" if finetune else "probe"
    previous = reuse.get((pool_name, "full-pool", 1.0, -1))
    if previous and previous.get("model", "probe") == model:
        return previous
    start = time.perf_counter()
    acc, f1 = fit_and_score(pool, np.arange(len(pool[1])), names, corpus, finetune, 0)
    print(f"{pool_name:<15} full pool ({model}) acc={acc:.4f} macro-F1={f1:.4f} "
          f"({time.perf_counter() - start:.0f} s)")
    return {"pool": pool_name, "method": "full-pool", "model": model, "budget": 1.0, "seed": -1,
            "accuracy": acc, "macro_f1": f1, "select_seconds": 0.0}


PAPER_METHODS = ("dnc", "dealrec", "gotd")
FULL_POOL = {"probe": "a linear probe on every pool example",
             "fine-tune": "one fine-tune on every pool example with the `train` defaults, seed 0"}


POOLS = ("corpus", "skewed")


def pool_id(corpus: str, kind: str) -> str:
    """A pool's name in the tables: the corpus's own pool, or `<corpus>-skewed`."""
    return corpus if kind == "corpus" else f"{corpus}-{kind}"


def pool_names(args) -> list[str]:
    """The names of the pools run (`--pools`)."""
    return [pool_id(args.corpus, kind) for kind in args.pools]


def targets(mean, noise, args) -> list[str]:
    """The issue's targets, from the seed-averaged (accuracy, macro-F1) per (pool, method, budget);
    each miss with 2 standard errors of its difference (`noise`), to tell a real loss from seed noise."""
    out = []
    for m in PAPER_METHODS:
        if m not in args.methods or "random" not in args.methods:
            continue
        worse = [f"{pool} {b:.0%} ({d:+.4f} ± {noise[pool, m, b]:.4f}{', beyond noise' if -d > noise[pool, m, b] else ''})"
                 for pool in pool_names(args) for b in args.budgets
                 if (d := mean[pool, m, b][1] - mean[pool, "random", b][1]) < 0]
        out.append(f"- {m} >= random (macro-F1, mean over seeds) at every budget on {' and '.join(pool_names(args))}: "
                   + ("**met**" if not worse else "**missed** at " + ", ".join(worse)))
    if "gotd" in args.methods and "random" in args.methods and "skewed" in args.pools:
        for b in (0.02, 0.05):
            if b in args.budgets:
                skewed = pool_id(args.corpus, "skewed")
                d = 100 * (mean[skewed, "gotd", b][1] - mean[skewed, "random", b][1])
                out.append(f"- gotd beats random by >= 5 macro-F1 points on the skewed pool at {b:.0%}: "
                           f"{d:+.1f} points, **{'met' if d >= 5 else 'missed'}**")
    return out


def write_outputs(rows, args, out: Path, seconds: float = float("nan")) -> None:
    from soupline.artifacts import write_json, write_text
    from soupline.report import keep_handwritten, md_table, pyplot, save_figure

    plt = pyplot()

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), rows)
    mode = ("fine-tune" if args.finetune else "linear probe on frozen embeddings") + \
        ("" if args.stratify == "none" else f", select.stratify: {args.stratify}") + \
        ("" if args.dedup is None else f", select.dedup_threshold: {args.dedup}")
    command = " ".join(["python", "benchmarks/selection_quality.py",
                        *map(shlex.quote, [a for a in sys.argv[1:] if a != "--report-only"])])
    took = "table rewritten from the run's .json" if np.isnan(seconds) else \
        f"{seconds / 60:.1f} min on {os.cpu_count()} CPU cores"
    lines = [f"# Selection quality ({mode})", "",
             f"Command: `{command}` ({took}); "
             f"mean over seeds {args.seeds} (sd = standard deviation over seeds); "
             "delta = method - random at the same budget; ± 2 SE = two standard errors of the macro-F1 delta "
             "(2 sqrt((s_method^2 + s_random^2) / seeds), s the sample standard deviation): a delta inside it is seed "
             "noise; repeated picks = picks that repeat another pick's text, mean over seeds (n/a: a run before "
             "they were counted).", ""]
    means, noise = {}, {}
    fig, axes = plt.subplots(1, len(args.pools), figsize=(5.5 * len(args.pools), 4), squeeze=False)
    axes = axes[0]
    for ax, pool_name in zip(axes, pool_names(args)):
        table = []
        ref = next(r for r in rows if r["pool"] == pool_name and r["method"] == "full-pool")
        mean = {}
        for m in args.methods:
            for b in args.budgets:
                cell = [r for r in rows if r["pool"] == pool_name and r["method"] == m and r["budget"] == b]
                mean[m, b] = (np.mean([r["accuracy"] for r in cell]), np.mean([r["macro_f1"] for r in cell]))
        for m in args.methods:
            for b in args.budgets:
                acc, f1 = mean[m, b]
                ra, rf = mean.get(("random", b), (np.nan, np.nan))
                f1s = {k: [r["macro_f1"] for r in rows if r["pool"] == pool_name and r["method"] == k
                           and r["budget"] == b] for k in (m, "random")}
                var = {k: np.var(v, ddof=1) if len(v) > 1 else np.nan for k, v in f1s.items()}
                se2 = 2 * np.sqrt((var[m] + var["random"]) / len(f1s[m]))
                repeats = [r.get("repeated_picks") for r in rows if r["pool"] == pool_name and r["method"] == m
                           and r["budget"] == b]
                table.append([m, f"{b:.0%}", acc, f1, np.std(f1s[m]), acc - ra, f1 - rf, se2,
                              "n/a" if None in repeats else f"{np.mean(repeats):.1f}"])
                means[pool_name, m, b], noise[pool_name, m, b] = mean[m, b], se2
            ax.plot([b * 100 for b in args.budgets], [mean[m, b][1] for b in args.budgets], marker="o", label=m)
        ref_model = ref.get("model", "probe")
        ax.axhline(ref["macro_f1"], color="gray", ls="--", label=f"full pool ({ref_model})")
        ax.set_title(pool_name)
        ax.set_xlabel("budget (% of pool)")
        ax.set_ylabel("test macro-F1")
        lines += [f"## {pool_name}", "",
                  f"Full-pool reference ({FULL_POOL[ref_model]}): accuracy "
                  f"{ref['accuracy']:.4f}, macro-F1 {ref['macro_f1']:.4f}.", "",
                  md_table(["method", "budget", "accuracy", "macro-F1", "sd macro-F1", "delta acc", "delta macro-F1",
                            "± 2 SE", "repeated picks"], table), ""]
    lines += ["## Issue targets", "", *targets(means, noise, args), ""]
    axes[0].legend()
    save_figure(fig, out.with_suffix(".png"), dpi=110)
    kept = keep_handwritten(out.with_suffix(".md"))  # ["", "## Reading ...", ...] replaces the last blank line
    write_text(out.with_suffix(".md"), "\n".join(lines[:-1] + kept if kept else lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
