"""A shelf of replaced outputs: a folder a run replaces is moved aside under the key of the inputs it was built
from, moved back when that key comes again (a setting changed and changed back), the newest `keep` kept. What DVC's
run cache does for whole stages, per ingredient (data/cache/ingredients, train) and per soup (data/cache/soups).

`whole(folder, key)` says whether a folder holds what `key`'s inputs build, every file intact: only what could be
trusted in place is shelved, and only that is moved back.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Collection

from soupline.artifacts import read_json

Whole = Callable[[Path, str], bool]


def recorded_key(record: Path, path: tuple[str, ...], pattern: re.Pattern) -> str | None:
    """The key the JSON `record` holds at `path` (nested fields), when it reads and the key matches `pattern` (a key
    names a folder of the shelf: a hand-edited `..` must not); else None."""
    try:
        key = read_json(record)
        for field in path:
            key = key[field]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) and pattern.fullmatch(key) else None


def shelve(folder: Path, shelf: Path, key: str | None, whole: Whole) -> None:
    """Move `folder` to `shelf`/`key`, or delete it when it is not whole for `key` (None: no key recorded)."""
    if key is None or not whole(folder, key):
        shutil.rmtree(folder)
        return
    kept = shelf / key
    if kept.exists():  # the same key: the same output
        shutil.rmtree(kept)
    shelf.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, kept)  # a rename on one file system
    os.utime(kept)  # the newest is kept longest


def unshelve(shelf: Path, key: str, dest: Path, whole: Whole) -> bool:
    """Move the shelved output of `key` into place as `dest` (whose folder must be gone); False when the shelf
    holds none whole."""
    kept = shelf / key
    if not whole(kept, key):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)  # else shutil.move copies it (its parent deleted)
    shutil.move(kept, dest)  # a rename: it is in place whole or not at all
    return True


def prune(shelf: Path, keep: int, whole: Whole, replaced: Collection[str] = ()) -> None:
    """Keep the `keep` most recently shelved outputs that could be moved back (one no longer whole, or built by
    other code, never will be), and, unless `keep` is 0, every one whose key is in `replaced` (the keys of the
    outputs in place when the run began, which it may have shelved): a run that replaces more outputs than `keep`
    at once (a sweep of 12 ingredients, all five soups) keeps them all, so changing the setting back restores every
    one. By key, not by time: no clock of a shared file system to trust."""
    if shelf.exists():
        kept = sorted((p for p in shelf.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        usable = [p for p in kept if whole(p, p.name)]
        this_run = [p for p in usable if keep and p.name in replaced]
        for old in set(kept) - set(usable[:keep]) - set(this_run):
            shutil.rmtree(old, ignore_errors=True)


def keys_in_place(folder: Path, record: str, path: tuple[str, ...], pattern: re.Pattern) -> set[str]:
    """The keys the outputs in `folder`'s sub-folders were built from (`recorded_key` of each one's `record`): what a
    run may replace, and `prune` keeps."""
    return {key for sub in (folder.iterdir() if folder.is_dir() else [])
            if sub.is_dir() and (key := recorded_key(sub / record, path, pattern)) is not None}
