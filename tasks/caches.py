"""What data/cache holds and how much disk it takes, and clearing it, whole or what no run reads (`soupline cache`).

Nothing in data/cache is a stage's output: each cache only saves work, and the next run rebuilds what it
needs from it (at a cost: re-embedding, retraining, a stage that runs again), so any of them can go at
any time no run is under way (`soupline cache --clear` takes the workspace lock); `--gc` deletes only the entries
no run of the current params reads (`unused`). The stage outputs (data/prepared, data/models, ...) are DVC's to
manage (`dvc gc` clears DVC's own cache).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from soupline.errors import SouplineError
from tasks.layout import Layout

if TYPE_CHECKING:  # the listing imports neither pydantic nor numpy: `soupline cache` reads no params
    from soupline.config import Params

CACHES = {  # data/cache/<name> -> what it holds; what clearing it costs
    "embeddings": "embeddings by content; cleared: the next embed stage embeds again",
    "ingredients": "replaced ingredients (train.keep_replaced); cleared: retrained if their inputs return",
    "soups": "replaced soups (soup.keep_replaced); cleared: made again if their inputs return",
    "heads": "LP-FT's probe heads (and a random head's starting score), fitted once for the ingredients of a sweep; "
             "cleared: the next ingredient fits its head again",
    "checkpoints": "unfinished training; cleared: a stopped ingredient starts again from step 0",
    "evaluations": ("test metrics by model weights and test texts, and the probe reference's; cleared: evaluate runs "
                    "every model again"),
    "stages": "run records (how `soupline run` skips stages); cleared: a stage dvc.lock does not "
              "record as it is runs once more (train excepted); each stage's last code and model are kept",
    "prefect": "the Prefect flows' task results (their cache); cleared: each task runs once more",
    "digests": "sha256 of the files runs read, by path and stat; cleared: the next run reads each file once more",
}


def cache_dir(layout: Layout, name: str) -> Path:
    return layout.cache / name


def cell_cache_dirs(layout: Layout, name: str) -> list[Path]:
    """The study cells' own caches of `name` (data/study/cells/<cell>/data/cache/<name>: a stopped cell's training
    checkpoints, its heads and evaluations), which `soupline cache` neither counted nor cleared."""
    return sorted(p for p in layout.study_cells.glob(f"*/data/cache/{name}") if p.is_dir() and not p.is_symlink())


def _folder_usage(folder: Path, own: bool = False) -> tuple[int, int]:
    """(files, bytes) under `folder`; with `own`, the bytes only this folder holds: a file also linked from outside
    it (the copy of a finished ingredient a stopped train run keeps, a hard link to the one in place) frees nothing
    when the folder is cleared."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    if not own:
        return len(files), sum(p.stat().st_size for p in files)
    inodes: dict[tuple[int, int], list] = {}
    for p in files:
        st = p.stat()
        inodes.setdefault((st.st_dev, st.st_ino), [st, 0])[1] += 1
    return len(files), sum(st.st_size for st, links_here in inodes.values() if st.st_nlink <= links_here)


def usage(layout: Layout) -> dict[str, tuple[int, int]]:
    """Cache name -> (files, bytes it holds alone), the study cells' own caches of that name included."""
    out = {}
    for name in CACHES:
        folders = [cache_dir(layout, name), *cell_cache_dirs(layout, name)]
        parts = [_folder_usage(folder, own=True) for folder in folders]
        out[name] = (sum(files for files, _ in parts), sum(size for _, size in parts))
    return out


def dvc_cache_usage(layout: Layout) -> tuple[int, int] | None:
    """(files, bytes) of DVC's cache in its default place, .dvc/cache; None when there is none. It keeps every
    version of every stage output a run made (each data edit adds the new models and soups), so it is most of
    the disk a changing dataset takes, and only `dvc gc` frees it."""
    folder = layout.root / ".dvc" / "cache"
    return _folder_usage(folder) if folder.is_dir() else None


def model_cache_usage() -> tuple[Path, list[str], int] | None:
    """(folder, model names, bytes) of the unpacked built-in models (soupline/packaged_models.py's model cache);
    None when none is unpacked. The cache is the user's, not the workspace's: every workspace shares it, and a
    model deleted from it is unpacked again from its installed packages on its next use."""
    from soupline.packaged_models import model_cache

    folder = model_cache()
    models = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if folder.is_dir() else []
    return (folder, models, _folder_usage(folder)[1]) if models else None


def clear(layout: Layout, names: list[str]) -> tuple[list[str], int]:
    """Delete the caches `names` ("all": every one); those cleared and the bytes freed, measured. A cache folder
    that is a link (moved to a larger disk) is emptied where it points and the link kept: rmtree refuses a link, so
    it would stay full while the bytes were reported freed, and without the link the cache would come back here;
    one that links to nothing is left, with a warning."""
    names = list(CACHES) if "all" in names else list(dict.fromkeys(names))  # a name given twice is freed once
    if layout.cache.exists() and not layout.cache.is_dir():  # nothing cached can be under it
        raise SouplineError(f"{layout.cache} is a file, not the cache folder; move or delete it")
    from tasks import keys

    last = keys.last_runs(layout.root) if "stages" in names else {}
    before, cleared = usage(layout), []
    for name in names:
        folder = cache_dir(layout, name)
        if gone := dangling(folder):  # deleting the link would put the cache back here, on the smaller disk
            warnings.warn(f"{folder} links to {gone}, which is not there (a disk not mounted?); left as it is",
                          stacklevel=2)
            continue
        cleared.append(name)
        for cell_cache in cell_cache_dirs(layout, name):
            shutil.rmtree(cell_cache, ignore_errors=True)
        for path in list(folder.iterdir()) if folder.is_symlink() and folder.is_dir() else [folder]:
            delete(path)
    keys.keep_last_runs(layout.root, last)
    after = usage(layout)
    return cleared, sum(before[name][1] - after[name][1] for name in cleared)


UNJUDGED = {  # the caches `soupline cache --gc` leaves whole, and why: which of their entries a run reads is not known
    "ingredients": "replaced ingredients, as many as train.keep_replaced keeps (0: none), for params that come back",
    "soups": "replaced soups, as many as soup.keep_replaced keeps (0: none), for params that come back",
    "prefect": "the Prefect flows' records, which Prefect reads by its own keys",
    "digests": "one file, which each run that adds to it prunes: entries of files gone or changed, and the oldest "
               "once it holds 20,000 (soupline.artifacts.SHARED_KEPT)",
}


# in `unused`'s answer beside the caches: self-training's teacher's folder (data/models/ingredients/.teacher) that a
# run stopped before moving it to the ingredient cache left there, of other params (`tasks.train.teacher_left`)
TEACHER_LEFT = "stopped teacher"


def unused(params: Params, layout: Layout) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """What `soupline cache --gc` deletes, as `dvc gc -w` does DVC's cache: cache name -> the entries no run of
    `params` (`soupline run`, `dvc repro`, `soupline study`) reads (and `TEACHER_LEFT`), and folder -> why it is left
    whole. Kept: the embeddings of the prepared splits (and GOT-D's target) by these params' model, max_length and
    batch_size; the heads and checkpoints of this sweep on this selection (and of its self-training teacher, and its
    folder a stopped run left); the metrics of the models in place; each stage's newest run record and those that
    vouch for its outputs as they are; the caches of the study cells in the grid. A cache is judged only on the
    stages before its reader up to date with `params`: once prepare (or select, train, soup) runs again, what the
    next stage reads is not known here, so it is left whole."""
    from tasks import evaluate, keys, pipeline, study, train
    from tasks.common import read_selection

    clean, order = pipeline.dvc_clean(layout), list(pipeline.STAGES)
    stale = next((s for s in order[:order.index("evaluate")] if pipeline.why_stale(s, params, layout, clean)), None)
    judged: dict[str, list[Path]] = {name: [] for name in CACHES}
    whole = dict(UNJUDGED)

    def unknown(names: tuple[str, ...], reader: str) -> bool:
        """Whether a stage before `reader` is stale, so what it reads is not made yet: `names` are then left whole."""
        if stale is None or order.index(stale) >= order.index(reader):
            return False
        whole.update(dict.fromkeys(names, f"{stale} is not up to date with these params: what {reader} reads of "
                                          "it is not made yet"))
        return True

    if not unknown(("embeddings",), "embed"):
        judged["embeddings"] = _other(layout.embed_cache, {p.name for p in _embedded(params, layout)})
    if not unknown(("heads", "checkpoints"), "train"):
        selection, validation = read_selection(layout), train.validation_and_labels(layout)
        judged["heads"] = _other(layout.head_cache, train.sweep_heads(params, selection, validation))
        sweep = train.sweep_keys(params, layout, selection, validation).values()
        runs = tuple(f"-{key}.pt" for key in sweep)
        if params.train.self_training.multiple:  # self-training's teacher, stopped mid-training, resumes from its own
            runs += (f"-{train.teacher_key(params, selection, validation)}.pt",)
        judged["checkpoints"] = [p for p in _other(layout.checkpoints, set()) if not p.name.endswith(runs)]
        if (left := train.teacher_left(params, layout)) is not None:
            judged[TEACHER_LEFT] = [left]
    if not unknown(("evaluations",), "evaluate"):
        judged["evaluations"] = _other(layout.evaluation_cache, evaluate.cache_entries(params, layout))
    for stage in pipeline.STAGES:  # a record neither the newest nor of the outputs as they are is read by no run
        if older := [p for p in keys.records_by_age(stage, layout.root)[:-1] if p.name != keys.LAST_RUN]:
            now = keys.outputs_hash(stage, layout.root)
            judged["stages"] += [p for p in older if _recorded_outputs(p) != now]
    grid = {*study.cells(params), *study.cross_cells(params)}
    for name in CACHES:  # a cell out of the study's grid is never run again
        judged[name] += [p for p in cell_cache_dirs(layout, name) if p.parents[2].name not in grid]
    if kept := sorted({p.parents[2].name for name in CACHES for p in cell_cache_dirs(layout, name)} & grid):
        whole["data/study/cells/*/data/cache"] = (f"the caches of {len(kept)} study cell(s) in the grid "
                                                  f"({', '.join(kept[:3])}{', ...' * (len(kept) > 3)}): a cell runs "
                                                  "from them again when its inputs change")
    return ({name: entries for name, entries in judged.items() if entries},
            {str(cache_dir(layout, name).relative_to(layout.root)) if name in CACHES else name: whole[name]
             for name in sorted(whole, key=[*CACHES, *whole].index)})  # in the listing's order


def _embedded(params: Params, layout: Layout) -> list[Path]:
    """The embedding cache's files a run of `params` reads: the prepared splits' and GOT-D's target file's."""
    from soupline import embed
    from soupline.data import SPLITS
    from soupline.select.gotd import read_target
    from tasks.common import base_model, read_split

    # checked as embed checks it: params no run accepts (a max_length past the model's positions) keep nothing
    encoder = embed.Encoder(base_model(params), params.embed.batch_size, params.embed.max_length)
    texts = [read_split(layout, name)["text"].tolist() for name in SPLITS]
    if params.select.method == "gotd" and (gotd := params.select.gotd).target is not None:
        texts.append(read_target(gotd.target, gotd.target_text_column))
    return [path for t in texts for path in embed.cache_files(t, encoder, layout.embed_cache)]


def _other(folder: Path, keep: set[str]) -> list[Path]:
    """The entries of a cache folder (through a link to another disk) but those named `keep`."""
    return sorted(p for p in folder.iterdir() if p.name not in keep) if folder.is_dir() else []


def _recorded_outputs(path: Path) -> str | None:
    """The outputs hash a run record holds; None when it is damaged (no evidence: `keys.stage_record`)."""
    from soupline.artifacts import read_json

    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return None
    return rec.get("outputs") if isinstance(rec, dict) else None


def entry_size(path: Path) -> int:
    """The bytes deleting `path` frees (a file linked from elsewhere too frees none, as `usage` counts)."""
    if path.is_dir() and not path.is_symlink():
        return _folder_usage(path, own=True)[1]
    st = path.lstat()
    return st.st_size if st.st_nlink <= 1 else 0


def delete(path: Path) -> None:
    """Delete a cache entry: a folder with what is in it, a file, a link (never what it links to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def dangling(folder: Path) -> str | None:
    """Where `folder` links to when it is a link to nothing, else None."""
    return str(folder.readlink()) if folder.is_symlink() and not folder.exists() else None


def human_size(n: int) -> str:
    """`n` bytes in the unit that shows it (decimal, as `du --si`): 812 B, 43.5 kB, 1.5 MB, 2.3 GB (a cache of a
    few kB read as an empty "0.0 MB")."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} B"
