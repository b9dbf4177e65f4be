"""`soupline doctor`: what a run needs, checked before one, nothing written. Each check prints one line, or its
one-line error (the others still run): the params, the base model (its tokenizer loaded), the device, the data (read
and split as prepare would, the budget against the pool), what the selection method reads besides the embeddings,
self-training's pseudo-label counts, what train checks against the model's layers (LoRA, LP-FT's head) and, with
Prefect installed, the server its flows would use; then the versions of the drivers."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any, Callable

from soupline import __version__
from soupline.config import Params
from soupline.errors import USER_ERRORS, SouplineError, print_error


def run(params: Params, params_path: str) -> None:
    """Print a line per check (its error on stderr, and the next check still runs), then the installed versions;
    one line naming the failed checks at the end, as the command's error (exit code 2)."""
    import importlib.metadata as md

    from soupline.models import load_tokenizer, max_tokens, pick_device
    from tasks.common import base_model

    print(f"params: ok ({params_path})")

    def model() -> str:
        path = base_model(params)
        load_tokenizer(path)
        return f"{params.model} -> {path} (takes up to {max_tokens(path)} tokens)"

    found = {}  # the data check's splits, for the select and self-training checks

    def data() -> str:
        said, found["frames"] = _data_check(params.prepare, params.seed, params.select.budget)
        return said

    def device() -> str:
        from soupline.train import cpu_bf16_instructions
        from tasks.pipeline import check_device

        check_device(params.device, params.train)
        picked = pick_device(params.device)
        if picked == "cpu" and params.train.precision == "fp32" and (isa := cpu_bf16_instructions()):
            return (f"{params.device} -> cpu, which has {isa}: `train.precision: bf16` may train faster here "
                    "(measured: README, Fine-tuning recipes)")
        return f"{params.device} -> {picked}"

    checks = {"model": model, "device": device, "data": data,
              "select": lambda: _select_check(params.select, found.get("frames", {}).get("pool")),
              "train": lambda: _train_check(params.train, base_model(params))}
    if multiple := params.train.self_training.multiple:
        checks["self-training"] = lambda: _self_training_check(multiple, params.select.budget, params.study.budgets,
                                                               found.get("frames"))
    if find_spec("prefect") is not None:  # the flows' and `soupline serve`'s server (run and dvc repro need none)
        checks["prefect server"] = _prefect_server_check
    failed = []
    for name, check in checks.items():
        if name == "train" and "model" in failed:  # it builds the model: the model's line says why it cannot
            continue
        if not _report_check(name, check):
            failed.append(name)
    print(f"soupline: {__version__}")
    for pkg in ("torch", "transformers", "faiss-cpu", "POT", "peft", "dvc", "dvclive", "prefect"):
        try:
            print(f"{pkg}: {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg}: not installed")
    if failed:
        raise SouplineError(f"doctor: {' and '.join(failed)} failed (above); fix them, then run again")


def _prefect_server_check() -> str:
    """The Prefect server the flows and `soupline serve` would use: PREFECT_API_URL's, asked for /health (a server
    down there was news only once a flow or `soupline serve` started), or none configured."""
    from flows.workspace import prefect_server_answers

    if url := prefect_server_answers():
        return f"{url} answers"
    return "none configured (PREFECT_API_URL unset): the flows and `soupline serve` start a temporary one"


def _report_check(name: str, check: Callable[[], str]) -> bool:
    """Print `name: <what check found>`, or its one-line error on stderr (doctor goes on to the next check)."""
    try:
        print(f"{name}: {check()}")
        return True
    except USER_ERRORS as err:
        print_error(err)
        return False


def _data_check(p, seed: int, budget: int | float) -> tuple[str, Any]:
    """Read and split the data as prepare would (nothing written): its errors and warnings, and whether the pool holds
    select.budget, before a run; what it found (with the column that divides the rows under prepare.split_column:
    the line did not say the splits were the file's own), and the splits."""
    from soupline import data
    from soupline.select.quotas import resolve_budget

    frames = data.load_splits(p.source, p.splits.model_dump() if p.splits else None, p.text_column, p.label_column,
                              p.validation_size, p.test_size, seed, p.max_examples, p.duplicates, p.keep_columns,
                              label_names=p.label_names, rare_labels=p.rare_labels,
                              min_label_examples=p.min_label_examples, split_column=p.split_column)
    sizes = " / ".join(f"{name} {len(frames[name])}" for name in data.SPLITS)
    sources = p.source_paths() or [p.source]
    count = resolve_budget(budget, len(frames["pool"]))
    divided = f", divided by its column {p.split_column!r} (prepare.split_column)" if p.split_column else ""
    return (f"{', '.join(sources)} -> {sizes} over {len(data.label_names(frames))} labels{divided}; "
            f"select.budget {budget} = {count} examples"), frames


def _select_check(s, pool) -> str:
    """What the selection method reads besides the embeddings, read as select reads it: GOT-D's target file, dnc's
    quality column and DEALRec's hard_prune against the budget (in the `pool` the data check read; unchecked when
    that failed). Each was a select stage's error after prepare and embed had run, where doctor had said every check
    passed."""
    said = [s.method]
    if s.method == "gotd" and s.gotd.target is not None:
        from soupline.select.gotd import read_target

        said.append(f"target {s.gotd.target} ({len(read_target(s.gotd.target, s.gotd.target_text_column))} texts)")
    if s.method == "dnc" and (name := s.dnc.quality_column()) is not None and pool is not None:
        from soupline.select import data_columns
        from soupline.select.dnc import column_quality

        column_quality(data_columns(pool), name)
        said.append(f"quality column {name!r}")
    if s.method == "dealrec" and s.dealrec.hard_prune > 0 and pool is not None:
        from soupline.select.dealrec import check_hard_prune
        from soupline.select.quotas import resolve_budget

        check_hard_prune(pool["label"].to_numpy(), resolve_budget(s.budget, len(pool)), s.dealrec, s.stratify)
        said.append(f"hard_prune {s.dealrec.hard_prune} (leaves the budget)")
    return ", ".join(said)


def _self_training_check(multiple: float, budget: int | float, study: list[int | float], frames) -> str:
    """`train.self_training.multiple` x select.budget against the labels of the splits the data check read
    (`check_count`, as `soupline run` checks it once prepare has run, and train): doctor passed a count under one
    pseudo-label per label, which the run then refused. Then, not refused (params do not say whether a study is
    meant), the `study` budgets in order through `soupline study`'s own check (`check_counts`, as
    `tasks.select.check_budgets`): the budget study would stop on, else the smallest budget's count (doctor said
    nothing of the budget that study then stopped on). Unchecked when the data check failed (`frames` None)."""
    if frames is None:
        return f"multiple {multiple:g} (not checked against the data: its check failed)"
    from soupline import data
    from soupline.select.quotas import resolve_budget
    from soupline.self_training import check_count, check_counts

    size, labels = resolve_budget(budget, len(frames["pool"])), len(data.label_names(frames))
    check_count(multiple, size, labels)
    said = f"multiple {multiple:g} x {size} selected = {round(multiple * size)} pseudo-labels over {labels} labels"
    try:
        counts = {f"study.budgets[{i}] {b}": resolve_budget(b, len(frames["pool"]), f"study.budgets[{i}]")
                  for i, b in enumerate(study)}
    except SouplineError as err:  # the budget study would stop on before any self-training count
        return f"{said}; `soupline study` would stop: {err}"
    try:
        check_counts(multiple, counts, labels)
    except SouplineError as err:  # the first in study's order, where study stops (not the smallest: both may fail)
        return f"{said}; `soupline study` would stop at {err}"
    smallest = min(counts, key=counts.__getitem__)
    return (f"{said}; at {smallest}, `soupline study`'s smallest budget: {multiple:g} x {counts[smallest]} selected "
            f"= {round(multiple * counts[smallest])}")


def _train_check(t, model_path: str) -> str:
    """What the train stage checks only once prepare, embed and select have run: LoRA's `target_modules` and `r`
    against the layers of the model, for each LoRA setting of the sweep, and LP-FT's `cls` head
    (`soupline.train.check_layers`)."""
    from soupline.train import check_layers

    check_layers(model_path, t)
    lora = {m for i in t.ingredients() if i.train.method == "lora" for m in i.train.lora.target_modules}
    return f"lora on {', '.join(sorted(lora))}" if lora else t.method
