"""Screen (issue 7): a SetFit-style contrastive stage before LP-FT, paired with the default recipe.

    python benchmarks/setfit_stage.py                           # 20newsgroups (3,000 docs), budget 10 %, seed 0
    python benchmarks/setfit_stage.py --budgets 0.05 0.1 --contrastive-steps 200

Tunstall et al. 2022 ("Efficient Few-Shot Learning Without Prompts"): before the classifier is trained, the sentence
encoder (mean pooling, unit norm: the text vector LP-FT's head reads) is fine-tuned on pairs of the selected texts
with a cosine-similarity loss (same label -> 1, different -> 0; half the pairs positive). Then the default recipe
(LP-FT: probe head on the new encoder, then full fine-tuning) starts from that encoder. Both arms train on the same
selection (recipe_quality.py's workspace: the same prepare, embed and kmeans pick), learning rate, seed, data order
and steps; only the starting encoder differs. Results go to the workspace's study cells folder, setfit-results.json (an
arm finished under these settings is not trained again; one finished under others, say another --contrastive-lr,
stops the run: `run_screen`) and the table is printed; docs/recipe_quality_20newsgroups_remedies.md reads them.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def screen_parser(doc: str) -> argparse.ArgumentParser:
    """The options every recipe screen (`run_screen`) takes: corpus, budgets, selection seed, learning rate."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--corpus", default="20newsgroups")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1])
    p.add_argument("--seed", type=int, default=0, help="selection seed (select.seed)")
    p.add_argument("--lr", type=float, default=2.0e-4, help="the fine-tune's learning rate (the default sweep's best "
                   "by validation at 5 and 10 %% in the remedies screen)")
    return p


def parse_args(argv=None):
    p = screen_parser(__doc__)
    p.add_argument("--contrastive-steps", type=int, default=200)
    p.add_argument("--contrastive-batch", type=int, default=16, help="pairs per step")
    p.add_argument("--contrastive-lr", type=float, default=2.0e-5, help="SetFit's default body rate")
    return p.parse_args(argv)


def pairs(y: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` (i, j, target) pairs, alternately same-label (1) and different-label (0), SetFit's balanced sampling;
    labels with one example give no positive pair and anchor only negatives."""
    rng = np.random.default_rng(seed)
    by_label = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    rich = np.concatenate([ix for ix in by_label.values() if len(ix) > 1])
    out = []
    for k in range(count):
        if k % 2 == 0:
            i = rng.choice(rich)
            out.append((i, rng.choice(by_label[y[i]][by_label[y[i]] != i]), 1.0))
        else:
            i = rng.integers(len(y))
            out.append((i, rng.choice(np.flatnonzero(y != y[i])), 0.0))
    a, b, t = zip(*out)
    return np.array(a), np.array(b), np.array(t, dtype=np.float32)


def contrastive_encoder(model_path: str, texts: list[str], y: np.ndarray, args, max_length: int, out: Path) -> float:
    """Fine-tune the encoder on the selection's pairs (cosine of the unit-norm mean-pooled vectors vs 1/0, MSE:
    sentence-transformers' CosineSimilarityLoss) with AdamW and a linear decay; save it to `out`. Its seconds."""
    import torch

    from soupline.artifacts import atomic_dir
    from soupline.evaluate import collate, tokenize
    from soupline.models import load_encoder, load_tokenizer

    torch.manual_seed(args.seed)
    tok, model = load_tokenizer(model_path), load_encoder(model_path)
    enc = tokenize(tok, texts, max_length)
    a, b, t = pairs(y, args.contrastive_steps * args.contrastive_batch, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.contrastive_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / args.contrastive_steps)

    def embed(idx: np.ndarray):
        batch = collate(tok, [enc[i] for i in idx], "cpu")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    start = time.perf_counter()
    model.train()
    for step in range(args.contrastive_steps):
        s = slice(step * args.contrastive_batch, (step + 1) * args.contrastive_batch)
        cos = (embed(a[s]) * embed(b[s])).sum(-1)
        loss = torch.nn.functional.mse_loss(cos, torch.as_tensor(t[s]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == args.contrastive_steps - 1:
            print(f"contrastive step {step + 1}/{args.contrastive_steps}: loss {float(loss.detach()):.4f}", flush=True)
    seconds = time.perf_counter() - start
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return seconds


def test_scores(folder: Path, texts: list[str], y: np.ndarray, names: list[str], max_length: int) -> dict:
    from soupline.classifier import load_classifier
    from soupline.evaluate import metrics, predict_logits, tokenize
    from soupline.models import load_tokenizer

    tok = load_tokenizer(folder)
    m = metrics(predict_logits(load_classifier(folder), tok, tokenize(tok, texts, max_length), 64, "cpu"), y, names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


SCREEN_READABLE = ("arm", "fit", "model", "data")  # a screen row's `settings`: every field of every part


def run_screen(args, stem: str, arms: dict[str, dict], train_arm, extra_columns: tuple[str, ...] = ()) -> None:
    """A screen of recipe arms against the default, each arm one ingredient on the same selection (this file's,
    rdrop_stage.py's, tapt_stage.py's, window_stage.py's and self_training_stage.py's): recipe_quality.py's
    workspace (the 3,000-post subsample prepared and embedded), per budget of `args` its kmeans pick at `args.seed`
    in the cell `<stem>-b<budget>-s<seed>`, and per arm of `arms` (its name: the script's settings that shape it)
    `train_arm(arm, cell)`, which trains it with `cell.fit(start model, arm)` (soupline's `finetune` at `args.lr`,
    training seed 0; `cell.fit(start, arm, texts, y, steps)` trains on other data, or for `steps` optimizer steps)
    and returns its info and the extra columns' values; the cell also holds the selection's `texts`, `y` and pool
    rows `idx`, and all of the pool's and validation's texts (`pool_texts`, `val_texts`: unlabelled data for a stage
    before the fine-tune), the pool's true label ids `pool_y` (to report on pseudo-labels or for a control arm) and
    the label `names`. Rows go to `<stem>-results.json` in the workspace's cells folder, each stamped with what
    produced it (`provenance.stamp`: readable `settings` and a `fingerprint` per part): the arm's script settings
    (`arm`), the learning rate, training seed and train key settings (`fit`), the start model by content (`model`),
    the prepared splits by content and the selection (`data`). The run first checks every arm it would train: an
    arm whose row is there under these settings is not trained again (one line says so); one there under other
    settings stops the run in one line naming the first that differs (the arm's name holds only some: budget, seed,
    rate, arm); a row written before rows recorded settings is taken unchecked, with one warning. An arm stopped
    mid-training resumes from its checkpoint only under what wrote it (start model, texts, labels, steps, learning
    rate, train settings: the arm's folder does not name the rate); another refuses it in one line."""
    import json
    from types import SimpleNamespace

    from provenance import differences, stamp
    from recipe_quality import DEFAULT_MAX_EXAMPLES, cell_params

    from soupline import config
    from soupline import train as train_module
    from soupline.artifacts import read_json, sha256_obj, sha256_tree, write_json
    from soupline.errors import SouplineError
    from soupline.report import md_table
    from soupline.train import finetune
    from tasks.common import base_model, label_ids, read_labels, read_selection, read_split
    from tasks.layout import Layout
    from tasks.pipeline import run_stage
    from tasks.study import cell_layout

    layout = Layout(ROOT / "data" / "bench" / f"recipe-{args.corpus}")
    base = [f"prepare.source={args.corpus}", f"prepare.max_examples={DEFAULT_MAX_EXAMPLES}"]
    for stage in ("prepare", "embed"):
        run_stage(stage, config.load(ROOT / "params.yaml", base), layout)
    results_path = layout.study_cells / f"{stem}-results.json"
    results = read_json(results_path) if results_path.exists() else {}
    names = read_labels(layout)
    pool, val, test = (read_split(layout, s) for s in ("pool", "validation", "test"))
    y_pool, y_val, y_test = (label_ids(split["label"], names) for split in (pool, val, test))
    val_texts = val["text"].tolist()
    splits = sha256_obj({s: [split["text"].tolist(), split["label"].tolist()] for s, split in
                         (("pool", pool), ("validation", val), ("test", test))})[:12]
    cells = []
    for budget in dict.fromkeys(args.budgets):  # a budget given twice is one cell
        params = cell_params(base, "default", budget, args.seed)
        cfg = params.train.model_copy(update={"learning_rates": [args.lr]})
        cell = cell_layout(layout, f"{stem}-b{budget}-s{args.seed}")
        run_stage("select", params, cell)
        idx = read_selection(cell)["indices"]
        texts, y = pool["text"].iloc[idx].tolist(), y_pool[idx]
        screened = SimpleNamespace(root=cell.root, model=base_model(params), texts=texts, y=y, idx=idx,
                                   max_length=cfg.max_length, pool_texts=pool["text"].tolist(), val_texts=val_texts,
                                   pool_y=y_pool, names=names, budget=budget, cfg=cfg)

        def fit(start, arm, texts=texts, y=y, steps=None, cfg=cfg, root=cell.root):
            """The fine-tune; `steps` holds it to that many optimizer steps (else the recipe's rule sets them). Its
            checkpoint's fingerprint is what it trains (the start model by content: a workspace copied elsewhere
            resumes), so that another setting does not resume it."""
            fingerprint = sha256_obj({"start": sha256_tree(start), "texts": texts, "labels": y, "steps": steps,
                                      "lr": args.lr, "train": cfg.key_settings()})
            with mock.patch.object(train_module, "total_steps", lambda *_: steps) if steps else nullcontext():
                return finetune(str(start), names, texts, y, val_texts, y_val, cfg, args.lr, 0, root / arm,
                                root / f"{arm}.ckpt", device="cpu", progress=False, fingerprint=fingerprint)

        screened.fit = fit
        cells.append(screened)
    content = {model: sha256_tree(model)[:12] for model in {cell.model for cell in cells}}  # by content
    todo, unchecked = [], []
    for cell in cells:
        data = {"corpus": args.corpus, "max_examples": DEFAULT_MAX_EXAMPLES, "splits": splits, "budget": cell.budget,
                "seed": args.seed, "selection": sha256_obj(cell.idx)[:12]}
        for arm, shaping in arms.items():
            name = f"b{cell.budget}-s{args.seed}-lr{args.lr:g}-{arm}"
            parts = json.loads(json.dumps({"arm": shaping, "fit": {"lr": args.lr, "seed": 0,
                                                                    "train": cell.cfg.key_settings()},
                                           "model": {"content": content[cell.model]}, "data": data}))
            if name not in results:
                todo.append((cell, arm, name, parts))
            elif "fingerprint" not in results[name]:
                unchecked.append(name)
                print(f"{name}: finished before rows recorded their settings, not trained again", flush=True)
            elif differ := differences(results[name], parts, SCREEN_READABLE):
                sys.exit(f"{name}: {results_path} holds this arm finished under other settings ({differ[0]}); delete "
                         "its row (or the file) to train it under these, or run with the settings that wrote it")
            else:
                print(f"{name}: finished under these settings, not trained again", flush=True)
    if unchecked:
        print(f"warning: {results_path}: {len(unchecked)} row(s) written before rows recorded their settings, reused "
              "unchecked: make sure the script's settings, train settings, model and data are this run's",
              file=sys.stderr, flush=True)
    for cell, arm, name, parts in todo:
        try:
            info, extra = train_arm(arm, cell)
        except SouplineError as err:  # a checkpoint of another setting, say: one line, not a traceback
            sys.exit(f"{name}: {err}")
        results[name] = {"budget": cell.budget, "examples": len(cell.idx), "arm": arm, "lr": args.lr,
                         **test_scores(cell.root / arm, test["text"].tolist(), y_test, names, cell.max_length),
                         "val_accuracy": info["val_accuracy"], "probe_val_accuracy": info["probe"]["val_accuracy"],
                         **extra, "train_seconds": info["train_seconds"], **stamp(parts, SCREEN_READABLE)}
        write_json(results_path, results)
        print(name, {k: v for k, v in results[name].items() if k not in ("settings", "fingerprint")}, flush=True)
    cols = ["budget", "examples", "arm", "lr", "accuracy", "macro_f1", "val_accuracy", "probe_val_accuracy",
            *extra_columns, "train_seconds"]
    print(md_table(cols, [[r[c] for c in cols] for r in results.values()]))


def main(argv=None) -> None:
    args = parse_args(argv)

    def train_arm(arm: str, cell) -> tuple[dict, dict]:
        start, extra = cell.model, 0.0
        if arm != "default":
            start = cell.root / "encoder"
            extra = contrastive_encoder(cell.model, cell.texts, cell.y, args, cell.max_length, start)
        return cell.fit(start, arm), {"contrastive_seconds": round(extra, 1)}

    contrastive = {k: getattr(args, k) for k in ("contrastive_steps", "contrastive_batch", "contrastive_lr")}
    run_screen(args, "setfit", {"default": {}, f"setfit{args.contrastive_steps}": contrastive}, train_arm,
               ("contrastive_seconds",))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)
