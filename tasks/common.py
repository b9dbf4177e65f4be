"""What every stage entry point shares: params loading, the one-line error, stage timings."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from soupline import config, interrupt
from soupline.artifacts import (flock_nowait, remove_stale_temps, sha256_bytes, sha256_file, shared_digests, write_json,
                                writing)
from soupline.errors import USER_ERRORS, SouplineError, one_line_warnings, print_error
from soupline.models import driver_environment, pick_device
from tasks import dvc_lock, keys
from tasks.layout import Layout

if TYPE_CHECKING:  # pandas is imported where a split is read: `soupline status` and a run with every
    import pandas as pd  # stage up to date read none (it was a third of their imports)

driver_environment()


def main(stage: str, run: Callable[..., Any], argv: list[str] | None = None, **extra_args: Any) -> None:
    """CLI entry for `python -m tasks.<stage> [--params F] [--set k=v ...] [--root DIR]`."""
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    for flag, kwargs in extra_args.items():
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args(argv)
    one_line_warnings()
    if os.environ.get("DVC_STAGE"):  # run by `dvc repro`: stop if DVC is killed (its own pid alone)
        interrupt.stop_when_orphaned(os.getppid())
    try:
        if not Path(args.params).exists():  # `load` runs every default without one: the whole built-in corpus,
            # over this workspace's outputs (a typo in --params, or --root given from a folder without params.yaml);
            # a folder is `load`'s one line, and a pipe (`--params <(...)`) is read as a file
            raise SouplineError(f"params file {args.params!r} does not exist (read from {Path.cwd()}, not from "
                                "--root); run from the project root, or pass the params file as --params")
        params = config.load(args.params, args.overrides)
        extras = {k.lstrip("-").replace("-", "_"): getattr(args, k.lstrip("-").replace("-", "_")) for k in extra_args}
        layout = Layout(Path(args.root))
        with workspace_lock(layout, f"python -m tasks.{stage}"), keys.recorded(stage, params, layout.root):
            timed(stage, run, params, layout, **extras)
    except USER_ERRORS as err:
        sys.exit(print_error(err))
    except KeyboardInterrupt:  # dvc repro's Ctrl-C reaches the stage too: one line, not a traceback
        print(interrupt.MESSAGE, file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def workspace_lock(layout: Layout, what: str):
    """Hold data/.soupline.lock while `what` runs stages in this workspace, so a second run here fails in
    one line instead of interleaving its writes with the first (DVC locks its repo the same way), and
    DVC's repository lock (`dvc_lock.repo_lock`: a `dvc repro` started meanwhile would delete outputs the
    run reads). Both are OS locks (`flock_nowait`): never stale, none where there is no fcntl (DVC's is a hard link
    under `core.hardlink_lock`, which a killed run leaves held, as a killed `dvc repro` does). Yields the note of a
    holder that ended without clearing it (killed: SIGKILL, out of memory), else "", for a run that must clean up
    after it (`flows.workspace.end_left_running`). The files it hashes meanwhile are read once for the run's
    processes (`shared_digests`), whose file is written before the lock is let go."""
    with writing(layout.data / ".soupline.lock", frozenset({errno.EEXIST, errno.ENOTDIR})):
        layout.data.mkdir(parents=True, exist_ok=True)
        f = open(layout.data / ".soupline.lock", "a+b", buffering=0)  # unbuffered: no failed write retried at close
    with f:
        locked = flock_nowait(f)
        if locked is False:
            raise SouplineError(f"{layout.data} is in use by {_holder(f)}; wait for it to finish, or run in another "
                                "clone of the project")
        left = _holder(f, "") if locked else ""  # a holder ending cleanly empties the note
        f.truncate(0)
        with contextlib.suppress(OSError):  # a full disk: the lock holds without this note (`soupline cache --clear`)
            f.write(f"`{what}` (pid {os.getpid()})".encode())
        try:
            with dvc_lock.repo_lock(layout.root, what), shared_digests(layout.digests):
                # No soupline run nor DVC command writes here now (under `dvc repro` DVC holds its lock and waits on
                # this stage): temporary files of killed writes are leftovers, not work in progress.
                if locked and (removed := remove_stale_temps(layout.data)):
                    print(f"removed {len(removed)} temporary file(s) a stopped run left: "
                          + ", ".join(str(p.relative_to(layout.root)) for p in removed[:3])
                          + (" ..." if removed[3:] else ""))
                yield left
        finally:
            f.truncate(0)


def workspace_holder(layout: Layout) -> str | None:
    """What holds the workspace lock now (`workspace_lock`'s note, e.g. "`soupline run` (pid 123)"), or None when
    nothing does; it probes the lock for an instant, as `dvc_lock.busy` probes DVC's."""
    try:
        f = open(layout.data / ".soupline.lock", "rb")
    except OSError:  # none yet: no run has started here
        return None
    with f:
        return _holder(f) if flock_nowait(f) is False else None


def _holder(f, unnamed: str = "another process") -> str:
    """The note a run holding the lock file `f` wrote in it (`unnamed` when there is none)."""
    f.seek(0)
    return f.read().decode("utf-8", "replace").strip() or unnamed


def timed(stage: str, run: Callable[..., Any], params: config.Params, layout: Layout, **kwargs: Any) -> Any:
    """Run a stage and record its wall time in data/timings/<stage>.json (read by the report), with the digest of
    the outputs' record it made (`made`)."""
    start = time.perf_counter()
    try:
        out = run(params, layout, **kwargs)
    except Exception as err:  # noqa: BLE001 - torch's OutOfMemoryError, by name: not every stage imports torch
        if not isinstance(err, MemoryError) and type(err).__name__ != "OutOfMemoryError":
            raise
        raise SouplineError(out_of_memory(stage, params, err)) from None
    name = "-".join([stage] + [str(v) for v in kwargs.values() if isinstance(v, (str, int, float))])
    write_json(layout.timings / f"{name}.json", {"stage": stage, "seconds": round(time.perf_counter() - start, 3),
                                                  **({"made": made} if (made := made_digest(layout, stage)) else {})})
    return out


def out_of_memory(stage: str, params: config.Params, err: Exception) -> str:
    """The line for a stage that ran out of memory (torch's OutOfMemoryError: a batch too large for a GPU; the host's
    MemoryError), naming the settings that size its batches: a traceback (for a GPU ending in a page on allocator
    settings), which Prefect's flows and `soupline study` then tried twice more in the same way."""
    # `CUDA out of memory. Tried to allocate 2.00 GiB`, not the rest; numpy's MemoryError names the array
    what = ". ".join(str(err).split(". ")[:2]) or "MemoryError"
    where = pick_device(params.device) if type(err).__name__ == "OutOfMemoryError" else "the host"
    method = params.select.method
    sizes = {"embed": "embed.batch_size or embed.max_length",
             "select": {"dealrec": "select.dealrec.effort_batch_size or train.max_length",
                        "dnc": "train.batch_size or train.max_length (dnc's fine-tune scorer)",
                        "gotd": "select.gotd.max_pool_for_ot, select.gotd.max_target or select.gotd.chunk"}.get(
                 method, "the select method's sizes"),
             "train": "train.batch_size (raise train.grad_accumulation to keep the effective batch) or "
                      "train.max_length",
             "soup": "evaluate.batch_size (greedy soup's validation passes) or soup.learned.batch_size",
             "evaluate": "evaluate.batch_size"}.get(stage, "its batch sizes")
    fix = ("free the device (another process may hold its memory: nvidia-smi), or set device: cpu"
           if where != "the host" else "or free memory (other processes)")
    return f"{stage} ran out of memory on {where} ({what}); lower {sizes}, {fix}"


def made_digest(layout: Layout, stage: str) -> str | None:
    """Digest of the record files a run of `stage` writes with its outputs, which DVC restores with them: a timing
    counts only while they are the ones it was written with (DVC's run cache, `dvc checkout` and `dvc exp apply` put
    back another run's outputs, and left the report showing the time of the last run here). None for a stage
    without one (train times each ingredient in its folder)."""
    records = {"prepare": [layout.prepared / "summary.json"], "embed": [layout.embeddings / "info.json"],
               "select": [layout.selection], "soup": sorted(layout.soups.glob("*/soup.json")),
               "evaluate": [layout.metrics / "details.json"]}.get(stage)
    if not records or not all(p.exists() for p in records):
        return None
    return sha256_bytes("".join(sha256_file(p) for p in records).encode())


def base_model(params: config.Params) -> str:
    """`params.model` resolved to what `from_pretrained` loads, checked to be an encoder or a decoder, with
    embed's and train's `max_length` checked against it: a stage that loads the base model fails on a bad value
    before any work. train's only where a model reads it: `train.method: probe` does not (it warned that the setting
    does not apply, then refused it), unless the selection method builds train's model."""
    from soupline.models import check_encoder, check_max_length, resolve_model

    path = resolve_model(params.model)
    check_encoder(path)
    lengths = {"embed.max_length": params.embed.max_length}
    if params.train.method != "probe" or "max_length" in params.select.train_read(params.train):
        lengths["train.max_length"] = params.train.max_length
    check_max_length(path, lengths)
    return path


def require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise SouplineError(f"{path} is missing; run the {stage} stage first (dvc repro or soupline stage {stage})")
    return path


def read_record(path: Path, stage: str, fields: tuple[str, ...]) -> dict:
    """A JSON record `stage` wrote (selection.json, train_info.json, soup.json, metrics.json, details.json) holding
    `fields`; one line when it is missing or damaged (on disk or by hand), naming the stage to run again."""
    from soupline.artifacts import read_json

    try:
        rec = read_json(require(path, stage))
    except ValueError:
        rec = None
    if not (isinstance(rec, dict) and all(f in rec for f in fields)):
        raise SouplineError(f"{path} is damaged; run the {stage} stage again (soupline stage {stage})")
    return rec


def whole_record(folder: Path, record: str, verify: bool = False) -> dict | None:
    """The JSON record `record` (train_info.json, soup.json) a stage saved in `folder` with the size and sha256 of the
    folder's other files (`files`: `artifacts.file_digests`), when it reads and every file is still there at its size
    and, with `verify`, its content; else None. A missing, cut short or edited folder is no evidence: the caller builds
    it again rather than failing. `verify` is for a stage about to keep a model as built (a weights file damaged in
    place, or another model's copied over it, has the same size: `dvc repro` re-ran the stage, which kept it, and
    dvc.lock recorded it); the size check is for looks that decide nothing (`soupline status`, the caches' pruning)."""
    from soupline.artifacts import file_sizes, read_json, sha256_file

    try:
        info = read_json(folder / record)
    except (OSError, ValueError):
        return None
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, list) and len(v) == 2 for v in files.values()):
        return None  # not a record, or one from before session 42 (sizes only)
    if {name: size for name, (size, _) in files.items()} != file_sizes(folder, (record,)):
        return None
    if verify and any(sha256_file(folder / name) != digest for name, (_, digest) in files.items()):
        return None
    return info


def read_selection(layout: Layout) -> dict:
    """selection.json, checked to be of the pool there (its hash) and to hold indices of its rows: one edited by hand,
    or left from another pool (`soupline stage` only warns that select is stale), is one line, not an IndexError or
    a model trained on other examples."""
    sel = read_record(layout.selection, "select", ("indices", "pool_hash", "pool_size"))
    pool = require(layout.split("pool"), "prepare")
    indices, size = sel["indices"], sel["pool_size"]
    fits = isinstance(indices, list) and all(type(i) is int and 0 <= i < size for i in indices)
    if not fits or sel["pool_hash"] != sha256_file(pool):
        raise SouplineError(f"{layout.selection} does not fit {pool} (made from another pool, or edited); run the "
                            "select stage again (soupline stage select)")
    return sel


def wrapped(head: str, items: list[str], sep: str = ", ", indent: int | None = None, width: int = 110) -> str:
    """`head` and `items` as lines of at most `width` characters where items allow, broken between items only (a
    label's name may hold spaces), the later lines indented by `indent` (None: two spaces more than `head`): a
    per-label count of 40 labels printed on one 657-character line."""
    indent = len(head) - len(head.lstrip()) + 2 if indent is None else indent
    mark, gap = sep.rstrip(), sep[len(sep.rstrip()):]  # ", " ends an item with "," and puts " " before the next
    lines, line, fresh = [], head, True
    for i, item in enumerate(items):
        piece = item + (mark if i < len(items) - 1 else "")
        if not fresh and len(line) + len(gap) + len(piece) > width:
            lines, line, fresh = lines + [line], " " * indent, True
        line, fresh = line + ("" if fresh else gap) + piece, False
    return "\n".join(lines + [line])


def read_split(layout: Layout, name: str) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(require(layout.split(name), "prepare"))


def read_labels(layout: Layout) -> list[str]:
    return json.loads(require(layout.prepared / "labels.json", "prepare").read_text())


def read_embedding(layout: Layout, name: str) -> np.ndarray:
    """A split's embeddings, checked to hold a row per row of the split there (its Parquet footer's count): those of
    another prepare run (`soupline stage select` after `soupline stage prepare` on a larger file) were a traceback
    from dealrec's scikit-learn, or kmeans' picks of rows the embeddings do not describe."""
    import pyarrow.parquet as pq

    emb = np.load(require(layout.embedding(name), "embed"))
    split = layout.split(name)
    if split.exists() and len(emb) != (rows := pq.read_metadata(split).num_rows):
        raise SouplineError(f"{layout.embedding(name)} has {len(emb)} rows and {split} {rows}: the embeddings are of "
                            "another prepare run; run the embed stage again (soupline stage embed, or soupline run)")
    return emb


def label_ids(labels: pd.Series, names: list[str]) -> np.ndarray:
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[x] for x in labels], dtype=np.int64)


def probe_data(layout: Layout, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embed stage's embeddings and label ids of the selection, then of validation: what the linear probe is fit
    and scored on."""
    sel = read_selection(layout)
    pool, val = read_split(layout, "pool"), read_split(layout, "validation")
    return (read_embedding(layout, "pool")[sel["indices"]], label_ids(pool["label"], names)[sel["indices"]],
            read_embedding(layout, "validation"), label_ids(val["label"], names))


def selection_probe(params: config.Params, layout: Layout, names: list[str], data: tuple | None = None):
    """The linear probe on the embed stage's embeddings of the selection, C chosen on validation
    (train.method: probe's ingredient, and evaluate's reference next to every model), fit on `data` (`probe_data`'s:
    read here when not given)."""
    from soupline.probe import fit_probe

    return fit_probe(*(data or probe_data(layout, names)), len(names), params.train.early_stopping_metric)
