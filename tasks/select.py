"""select: choose the fine-tuning subset of the pool with the configured method and budget."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from soupline import select
from soupline.artifacts import sha256_file, sha256_tree, write_json
from soupline.config import Params, SelectParams
from soupline.embed import Encoder, encode_cached
from soupline.models import pick_device
from soupline.select.dealrec import check_hard_prune
from soupline.select.dnc import column_quality
from soupline.select.gotd import read_target
from soupline.self_training import check_counts
from tasks import keys
from tasks.common import base_model, label_ids, main, read_embedding, read_labels, read_split, require, wrapped
from tasks.layout import Layout


def selection_input(params: Params, layout: Layout) -> select.SelectionInput:
    """The pool, and the target set: the validation split, or the texts of `select.gotd.target` embedded
    like the pool (content-cached, unlabelled) when the method is gotd and a target file is named."""
    names = read_labels(layout)
    pool, val = read_split(layout, "pool"), read_split(layout, "validation")
    # DEALRec's effort and dnc's finetune scorer use the model `train` starts from, with its settings.
    extras = {"train": params.train, "validation": (val["text"].tolist(), label_ids(val["label"], names))}
    gotd, texts = params.select.gotd, None
    if params.select.method == "gotd" and gotd.target is not None:
        # hashed before it is read: an edit in between makes the next run's key differ, never a stale record; read
        # before the model's check below, so a file without texts is one line before 9 s of imports
        target_file = Path(gotd.target).expanduser()  # `~/t.jsonl`, as read_target reads it
        extras["target_hash"] = sha256_tree(target_file) if target_file.exists() else None
        texts = read_target(gotd.target, gotd.target_text_column)
    method = getattr(params.select, params.select.method)
    if method.uses_model():  # GOT-D without a target file runs torch, not the model: 2.5 s of imports less
        extras["model_path"] = base_model(params)
    if method.uses_device():
        extras["device"] = pick_device(params.device)
    target, target_labels = read_embedding(layout, "validation"), label_ids(val["label"], names)
    if texts is not None:
        encoder = Encoder(extras["model_path"], params.embed.batch_size, params.embed.max_length, extras["device"])
        target, target_labels = encode_cached(texts, encoder, layout.embed_cache, progress=False)[0], None
        extras["target_source"] = gotd.target
    return select.SelectionInput(
        embeddings=read_embedding(layout, "pool"), labels=label_ids(pool["label"], names), label_names=names,
        texts=pool["text"].tolist(), target_embeddings=target, target_labels=target_labels, extras=extras,
        columns=select.data_columns(pool))


def check_budgets(budgets: dict[str, int | float], layout: Layout, s: SelectParams,
                  methods: list[str] | None = None, multiple: float = 0) -> None:
    """Each budget (setting -> value) against the pool prepare wrote, its row count read from the Parquet footer: a
    driver that runs prepare, embed and select in one go (`soupline run`, `soupline study`, the Prefect flows) calls
    this between prepare and embed, so a budget the pool cannot hold is one line before the embeddings are computed,
    not after; so is, when DEALRec is among the `methods` run (a study's; else `s.method`), a
    `select.dealrec.hard_prune` that leaves fewer examples than a budget (from the pool's labels), when GOT-D is, a
    `select.gotd.target` file missing or without texts (`read_target`), and when dnc is, a `select.dnc.q: column:`
    the pool lacks or that is no score (`column_quality`): both said only once the embeddings were made; so is a
    `train.self_training.multiple` (`multiple`) under one pseudo-label per label of a budget (`check_counts`), said
    by train after select. The select and train stages check them all again (under `dvc repro` they are the first
    to)."""
    pool = require(layout.split("pool"), "prepare")
    rows = pq.read_metadata(pool).num_rows
    counts = {key: select.resolve_budget(budget, rows, key) for key, budget in budgets.items()}
    if multiple:
        named = {"" if key == "select.budget" else f"{key} {budgets[key]}": count for key, count in counts.items()}
        check_counts(multiple, named, len(read_labels(layout)))  # a study's budget is named: its line says no budget
    if "dealrec" in (methods or [s.method]) and s.dealrec.hard_prune > 0:
        labels = pq.read_table(pool, columns=["label"]).column("label").to_numpy()
        for count in counts.values():
            check_hard_prune(labels, count, s.dealrec, s.stratify)
    if "gotd" in (methods or [s.method]) and s.gotd.target is not None:
        read_target(s.gotd.target, s.gotd.target_text_column)
    if "dnc" in (methods or [s.method]) and (name := s.dnc.quality_column()) is not None:
        column_quality(select.data_columns(read_split(layout, "pool")), name)


def run(params: Params, layout: Layout) -> dict:
    s = params.select
    inp = selection_input(params, layout)
    budget = select.resolve_budget(s.budget, inp.n)
    seed = keys.selection_seed(params)
    heldout = np.vstack([read_embedding(layout, "validation"), read_embedding(layout, "test")]) \
        if s.heldout_dedup_threshold is not None else None
    sel = select.run_method(s.method, inp, budget, seed, getattr(s, s.method), s.stratify, s.dedup_threshold,
                            heldout, s.heldout_dedup_threshold)
    chosen = inp.labels[sel.indices]
    coverage = {name: {"selected": int((chosen == i).sum()), "pool": int((inp.labels == i).sum())}
                for i, name in enumerate(inp.label_names)}
    out = {
        "method": s.method, "budget": budget, "pool_size": inp.n, "seed": seed,
        "params": s.in_use(), "pool_hash": sha256_file(layout.split("pool")),
        "target_hash": inp.extras.get("target_hash"),  # select.gotd.target's content; null: no target file
        "label_counts": coverage, "info": sel.info,
        "indices": sel.indices.tolist(), "scores": np.round(sel.scores, 6).tolist(),
    }
    write_json(layout.selection, out)
    removed = sel.info.get("labels_removed_by_dedup", [])  # run_method warned about these
    left_out = [k for k, v in coverage.items() if v["pool"] and not v["selected"] and k not in removed]
    if left_out and s.stratify == "none":  # stratified selection warns about its quotas itself
        warnings.warn(f"the selection has no example of {len(left_out)} label(s) {left_out[:10]}: no model trained "
                      "on it can predict them; set select.stratify: balanced (equal quotas: every label gets one "
                      "while the budget is at least the number of labels) or raise select.budget", stacklevel=2)
    print(wrapped(f"select: {s.method} chose {budget}/{inp.n} examples; per label ",
                  [f"{k}={v['selected']}" for k, v in coverage.items()]))
    if (left := sel.info.get("candidates_after_dedup")) is not None:  # how much the filters took, without the json
        twins = f" ({sel.info['heldout_twins_excluded']} removed as near-copies of a validation or test text)"
        print(f"select: the near-duplicate filters left {left} of {inp.n} pool examples as candidates"
              + (twins if s.heldout_dedup_threshold else ""))
    deps = [(layout.root / d).resolve() for d in keys.stage_spec("select")["deps"]]
    if (target := inp.extras.get("target_source")) and not any(Path(target).resolve().is_relative_to(d) for d in deps):
        print(f"select: note: select.gotd.target {target} is a path in params, so `dvc repro` "
              "will not notice when its content changes (`soupline run` and the Prefect flow do); add it to the "
              "select stage's deps in dvc.yaml, or run `dvc repro -f -s select` after editing")
    return out


if __name__ == "__main__":
    main("select", run)
