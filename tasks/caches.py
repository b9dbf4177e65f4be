"""What data/cache holds and how much disk it takes, and clearing it (`soupline cache`).

Nothing in data/cache is a stage's output: each cache only saves work, and the next run rebuilds what it
needs from it (at a cost: re-embedding, retraining, a stage that runs again), so any of them can go at
any time no run is under way (`soupline cache --clear` takes the workspace lock). The stage outputs
(data/prepared, data/models, ...) are DVC's to manage (`dvc gc` clears DVC's own cache).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from soupline.errors import SouplineError
from tasks.layout import Layout

CACHES = {  # data/cache/<name> -> what it holds; what clearing it costs
    "embeddings": "embeddings by content; cleared: the next embed stage embeds again",
    "ingredients": "replaced ingredients (train.keep_replaced); cleared: retrained if their inputs return",
    "soups": "replaced soups (soup.keep_replaced); cleared: made again if their inputs return",
    "heads": "LP-FT's probe heads, fitted once for the ingredients of a sweep; cleared: the next ingredient fits its "
             "head again",
    "checkpoints": "unfinished training; cleared: a stopped ingredient starts again from step 0",
    "evaluations": ("test metrics by model weights and test texts, and the probe reference's; cleared: evaluate runs "
                    "every model again"),
    "stages": "run records (how `soupline run` skips stages); cleared: a stage dvc.lock does not "
              "record as it is runs once more (train excepted); each stage's last code and model are kept",
    "prefect": "the Prefect flows' task results (their cache); cleared: each task runs once more",
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
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    keys.keep_last_runs(layout.root, last)
    after = usage(layout)
    return cleared, sum(before[name][1] - after[name][1] for name in cleared)


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
