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
    python benchmarks/selection_quality.py --finetune --pools corpus --methods random dealrec --budgets 0.05 \
        --seeds 0 1 2 --reuse docs/selection_quality_finetune_bbcnews.json:full-pool,random \
        docs/selection_quality_finetune_dealrec_equal.json:dealrec --out /tmp/dealrec_equal

`--reuse FILE ...` takes a previous run's cells (pool, method, budget, seed) instead of running them again, for
the methods `FILE:method,method` lists (a variant `name:key=value,...` is one entry) or, for a file without its
own list, `--reuse-methods` (a later file's cell wins). Each row records what its cell depends on besides the
method's code: the corpus, split and pool, the model fit on the picks (the probe, or the `train` defaults'
fine-tune), and the method's resolved settings with `--stratify` / `--dedup` / `--heldout-dedup`: readable
fields (`settings`) and a fingerprint per part (`fingerprint`: data, fit, select). A reused cell whose settings
differ from this run's is refused before any work, in one line naming the file and what differs. Rows written
before cells recorded their settings (every docs/ .json of this benchmark until then) are taken with a warning
naming the file, checked only for the full-pool reference's model. Whether a method's code changed since is the
reader's to judge: list only methods whose code has not. The tables average the run's --budgets x --seeds
only, whatever else the rows hold (`--report-only` refuses a .json that lacks one of those cells). A long run
writes its cells so far to `<out>.partial.json` after every cell; if it is killed, run it again with
`--reuse <out>.partial.json:full-pool,<its methods>` to run only the cells it lacks.

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
import hashlib
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
sys.path.insert(0, str(ROOT / "benchmarks"))
MODEL = "all-MiniLM-L6-v2"  # the built-in model: the embeddings, every fine-tune, DEALRec's effort pass
EMBED_MAX_LENGTH = 128
EFFORT_MAX_LENGTH = 64  # the `train` max_length of the model a selector scores with (DEALRec, dnc:scorer=finetune)
SKEW = {"keep_fraction": 0.1, "seed": 0}
PROBE = {"C": 10.0, "max_iter": 2000}


def split_settings() -> dict:
    """The default pipeline's split of a built-in corpus: prepare's defaults and the global seed."""
    from soupline.config import Params, PrepareParams

    prepare = PrepareParams()
    return {"seed": Params.model_fields["seed"].default, **prepare.model_dump(
        include={"validation_size", "test_size", "duplicates", "rare_labels", "min_label_examples"})}


def load_corpus(source: str = "bbcnews", max_examples: int | None = None, max_length: int = EMBED_MAX_LENGTH):
    """A built-in corpus split as in the default pipeline, with embeddings (content-cached under data/cache)."""
    from soupline import data
    from soupline.embed import Encoder, encode_cached
    from soupline.models import resolve_model

    frames = data.load_splits(source, None, "text", "label", max_examples=max_examples, **split_settings())
    names = data.label_names(frames)
    enc = Encoder(resolve_model(MODEL), 64, max_length)
    out = {}
    for split, df in frames.items():
        emb, _ = encode_cached(df["text"].tolist(), enc, ROOT / "data" / "cache" / "embeddings")
        out[split] = (df["text"].tolist(), np.array([names.index(x) for x in df["label"]]), emb)
    return names, out


def skew(pool, keep_fraction: float = SKEW["keep_fraction"], seed: int = SKEW["seed"]):
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
        pred = LogisticRegression(**PROBE).fit(x_tr, y_tr).predict(x_te)
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
        finetune(resolve_model(MODEL), names, train[0], train[1], val[0], val[1], cfg,
                 cfg.learning_rates[0], seed, Path(tmp) / "m", Path(tmp) / "ckpt", progress=False)
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "m")
        model = load_classifier(Path(tmp) / "m")
        m = metrics(predict_logits(model, tok, tokenize(tok, test[0], cfg.max_length), 64, "cpu"), test[1], names)
    return m["accuracy"], m["macro_f1"]


def cache_effort() -> None:
    """Memoise DEALRec's effort pass on (texts, labels, settings): it depends on neither the budget nor the seed."""
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
                                extras={"model_path": resolve_model(MODEL),
                                        "train": TrainParams(max_length=EFFORT_MAX_LENGTH), "device": "cpu",
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


READABLE = ("data.corpus", "data.max_examples", "data.split.seed", "data.pool", "fit.method", "fit.max_length",
            "fit.lr", "fit.epochs", "select.stratify", "select.dedup", "select.heldout_dedup")  # a row's `settings`


def cell_settings(args, pool_kind: str, method: str | None = None) -> dict:
    """What a cell's scores depend on besides its method's code, budget and seed, in parts: the corpus, split and pool
    (`data`), the model fit on the picks (`fit`: the probe, or the fine-tune of the `train` defaults at their first
    learning rate, its seed the cell's) and, for a method's cell (`method`; not the full-pool reference), the method's
    resolved settings, the `train` settings it reads and the run-wide select settings (`select`)."""
    from soupline import select
    from soupline.config import TrainParams

    data = {"corpus": args.corpus, "max_examples": args.max_examples, "split": split_settings(), "pool": pool_kind,
            "skew": SKEW if pool_kind == "skewed" else None, "embed": {"model": MODEL, "max_length": EMBED_MAX_LENGTH}}
    if args.finetune:
        fit = {"model": MODEL, **TrainParams().ingredients()[0].key_settings()}
        del fit["seed"]
    else:
        fit = {"method": "probe", **PROBE}
    parts = {"data": data, "fit": fit}
    if method is not None:
        name, cfg = select.method_config(method)
        parts["select"] = {"method": name, "config": cfg.model_dump(mode="json"),
                           "train": cfg.train_settings(TrainParams(max_length=EFFORT_MAX_LENGTH)),
                           "model": MODEL if cfg.uses_model() else None, "stratify": args.stratify,
                           "dedup": args.dedup, "heldout_dedup": args.heldout_dedup}
    return json.loads(json.dumps(parts))  # as a row stores them


def differences(row: dict, parts: dict, model: str) -> list[str]:
    """How a stored cell's settings differ from this run's `parts` ([] when every part's fingerprint matches):
    `provenance.differences` over READABLE. A row from before rows recorded settings is checked for the full-pool
    reference's `model` alone (`probe` / `fine-tune`)."""
    if "fingerprint" not in row:
        had = row.get("model", "probe")
        return [f"full-pool model {had} there, {model} here"] if row["method"] == "full-pool" and had != model else []
    from provenance import differences as differing

    return differing(row, parts, READABLE)


def reuse_specs(values: list[str], default_methods: list[str]) -> list[tuple[str, list[str]]]:
    """--reuse's arguments as (file, methods): `FILE` takes `default_methods` (--reuse-methods), `FILE:m,m` its own
    list, the file being the shortest prefix before a `:` that is one. A method is `name` or a variant
    `name:key=value,...`, so a piece with `=` before its first `:` continues the variant before it."""
    from soupline.errors import SouplineError

    specs = []
    for value in values:
        cuts = [len(value)] + [i for i, c in enumerate(value) if c == ":"]
        path = next((value[:i] for i in sorted(cuts) if Path(value[:i]).is_file()), None)
        if path is None:
            raise SouplineError(f"--reuse {value}: no such file (write FILE or FILE:method,method)")
        if path == value:
            specs.append((path, list(default_methods)))
            continue
        methods: list[str] = []
        for piece in value[len(path) + 1:].split(","):
            if methods and "=" in piece.split(":")[0]:
                methods[-1] += "," + piece
            else:
                methods.append(piece)
        if "" in methods:
            raise SouplineError(f"--reuse {value}: an empty method name; write FILE:method,method")
        specs.append((path, methods))
    return specs


def reused_cells(specs: list[tuple[str, list[str]]], wanted: dict, finetune: bool) -> dict:
    """The stored cells this run takes, by (pool, method, budget, seed): of each file, the cells of its methods that
    the run asks for (`wanted`: their `cell_settings`), a later file's cell winning. A taken cell made with other
    settings is refused, one line naming the file and what differs; a file whose taken cells predate the recorded
    settings is named in a warning."""
    from soupline.errors import SouplineError

    chosen = {}
    for path, methods in specs:
        try:
            rows = json.loads(Path(path).read_text())
            keyed = [((r["pool"], r["method"], r["budget"], r["seed"]), r) for r in rows]
        except (ValueError, TypeError, KeyError) as err:
            raise SouplineError(f"--reuse {path}: not a selection_quality .json ({err!r})") from None
        chosen |= {key: (path, r) for key, r in keyed if r["method"] in methods and key in wanted}
    model = "fine-tune" if finetune else "probe"
    for path in dict(specs):
        taken = [(key, r) for key, (p, r) in chosen.items() if p == path]
        methods, differ = {}, {}  # insertion-ordered sets
        for key, r in taken:
            if lines := differences(r, wanted[key], model):
                methods[key[1]] = None
                differ |= dict.fromkeys(lines)
        if differ:
            raise SouplineError(f"--reuse {path}: its {', '.join(methods)} cells were made with other settings than "
                                f"this run's: {'; '.join(differ)}; leave those methods out of the file's list to run "
                                "them again")
        if old := sum("fingerprint" not in r for _, r in taken):
            print(f"warning: --reuse {path}: {old} cell(s) written before cells recorded their settings, taken "
                  "unchecked: make sure its split, pool and train settings are this run's", file=sys.stderr)
    return {key: r for key, (_, r) in chosen.items()}


def missing_cells(rows: list[dict], args) -> list[str]:
    """The cells of --pools x --methods x --budgets x --seeds (and each pool's full-pool reference) `rows` lacks."""
    have = {(r["pool"], r["method"], r["budget"], r["seed"]) for r in rows}
    return [f"{p} {m}" + ("" if m == "full-pool" else f" {b:.0%} seed {s}") for p in pool_names(args)
            for m, b, s in [("full-pool", 1.0, -1), *((m, b, s) for m in args.methods for b in args.budgets
                                                     for s in args.seeds)] if (p, m, b, s) not in have]


def main() -> None:
    from provenance import stamp

    from soupline import select
    from soupline.artifacts import write_json
    from soupline.errors import SouplineError
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
    parser.add_argument("--reuse", nargs="+", default=[], metavar="JSON[:METHOD,...]",
                        help="previous runs' .json files: their cells (pool, method, budget, seed) of the methods "
                             "listed after the file (else --reuse-methods) are taken as they are instead of run "
                             "again (a later file's cell wins); a cell made with other settings is refused")
    parser.add_argument("--reuse-methods", nargs="+", default=[],
                        help="the methods whose --reuse cells are kept, for a file without its own list (only "
                             "those whose code has not changed)")
    parser.add_argument("--no-effort-cache", action="store_true",
                        help="recompute DEALRec's effort and scores in every cell (same result, slower)")
    args = parser.parse_args()
    if args.report_only:
        if not (stored := Path(args.out).with_suffix(".json")).is_file():
            parser.error(f"--report-only: {stored} does not exist: run without --report-only first")
        rows = json.loads(stored.read_text())
        if lacking := missing_cells(rows, args):
            parser.error(f"--report-only: {Path(args.out).with_suffix('.json')} lacks {len(lacking)} cell(s) of this "
                         f"run's --pools x --methods x --budgets x --seeds, e.g. {', '.join(lacking[:3])}")
        write_outputs(rows, args, Path(args.out))
        return
    try:  # before any work: a refused cell is one line, not a traceback hours later
        settings = {(kind, m): cell_settings(args, kind, m) for kind in args.pools for m in [None, *args.methods]}
        wanted = {}  # (pool, method, budget, seed) -> its cell_settings, for every cell of this run
        for (kind, m), parts in settings.items():
            cells = [("full-pool", 1.0, -1)] if m is None else [(m, b, s) for b in args.budgets for s in args.seeds]
            wanted |= {(pool_id(args.corpus, kind), *cell): parts for cell in cells}
        reuse = reused_cells(reuse_specs(args.reuse, args.reuse_methods), wanted, args.finetune)
    except SouplineError as err:
        parser.error(str(err))
    if not args.no_effort_cache:
        cache_effort()
        cache_scores()
    started = time.perf_counter()

    names, corpus = load_corpus(args.corpus, args.max_examples)
    pools = {kind: corpus["pool"] if kind == "corpus" else skew(corpus["pool"]) for kind in args.pools}
    rows = []
    partial = Path(args.out).with_suffix(".partial.json")  # the cells so far, for resuming a killed run
    for kind, pool in pools.items():
        pool_name = pool_id(args.corpus, kind)
        rows.append(reuse.get((pool_name, "full-pool", 1.0, -1)) or
                    full_pool_reference(pool_name, pool, names, corpus, args.finetune, settings[kind, None]))
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
                                 "budget": b, **stamp(settings[kind, method], READABLE)})
                    print(f"{pool_name:<15} {method:<8} budget={b:<5} seed={seed} "
                          f"acc={r['accuracy']:.4f} macro-F1={r['macro_f1']:.4f} select={r['select_seconds']:.2f}s "
                          f"repeats={r['repeated_picks']}/{r['repeated_picks_conflicting_labels']}")
                    write_json(partial, rows)
    write_outputs(rows, args, Path(args.out), time.perf_counter() - started)
    partial.unlink(missing_ok=True)


def full_pool_reference(pool_name, pool, names, corpus, finetune: bool, parts: dict) -> dict:
    """The model fit on every pool example, scored on test: a probe, or in fine-tune mode one fine-tune (seed 0);
    its row stamped with its `cell_settings` (`parts`)."""
    from provenance import stamp

    model = "fine-tune" if finetune else "probe"
    start = time.perf_counter()
    acc, f1 = fit_and_score(pool, np.arange(len(pool[1])), names, corpus, finetune, 0)
    print(f"{pool_name:<15} full pool ({model}) acc={acc:.4f} macro-F1={f1:.4f} "
          f"({time.perf_counter() - start:.0f} s)")
    return {"pool": pool_name, "method": "full-pool", "model": model, "budget": 1.0, "seed": -1,
            "accuracy": acc, "macro_f1": f1, "select_seconds": 0.0, **stamp(parts, READABLE)}


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
    """Write `out`'s .json (every row given), and its table (.md, printed) and plot (.png) over this run's --pools x
    --methods x --budgets x --seeds alone: a reused file's other seeds are not averaged in. Budgets go in increasing
    order, whatever order --budgets ran them in (a plot's line joined them in that order, back and forth)."""
    from soupline.artifacts import write_json, write_text
    from soupline.plots import pyplot, save_figure
    from soupline.report import keep_handwritten, md_table

    plt = pyplot()

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), rows)
    cells = [r for r in rows if r["method"] == "full-pool" or r["seed"] in args.seeds]  # the tables': this run's
    budgets = sorted(args.budgets)
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
        ref = next(r for r in cells if r["pool"] == pool_name and r["method"] == "full-pool")
        mean = {}
        for m in args.methods:
            for b in budgets:
                cell = [r for r in cells if r["pool"] == pool_name and r["method"] == m and r["budget"] == b]
                mean[m, b] = (np.mean([r["accuracy"] for r in cell]), np.mean([r["macro_f1"] for r in cell]))
        for m in args.methods:
            for b in budgets:
                acc, f1 = mean[m, b]
                ra, rf = mean.get(("random", b), (np.nan, np.nan))
                f1s = {k: [r["macro_f1"] for r in cells if r["pool"] == pool_name and r["method"] == k
                           and r["budget"] == b] for k in (m, "random")}
                var = {k: np.var(v, ddof=1) if len(v) > 1 else np.nan for k, v in f1s.items()}
                se2 = 2 * np.sqrt((var[m] + var["random"]) / len(f1s[m]))
                repeats = [r.get("repeated_picks") for r in cells if r["pool"] == pool_name and r["method"] == m
                           and r["budget"] == b]
                table.append([m, f"{b:.0%}", acc, f1, np.std(f1s[m]), acc - ra, f1 - rf, se2,
                              "n/a" if None in repeats else f"{np.mean(repeats):.1f}"])
                means[pool_name, m, b], noise[pool_name, m, b] = mean[m, b], se2
            ax.plot([b * 100 for b in budgets], [mean[m, b][1] for b in budgets], marker="o", label=m)
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
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
