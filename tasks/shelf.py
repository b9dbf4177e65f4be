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
from typing import Callable

from soupline.artifacts import read_json

Whole = Callable[[Path, str], bool]
MARK = ".shelved"  # an empty file `<key>.shelved` beside an output shelved since the shelf was last pruned


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
    (shelf / f"{key}{MARK}").touch()  # and the next prune keeps it whatever `keep`


def keep_copy(folder: Path, shelf: Path, key: str) -> None:
    """Put a copy of `folder` on the shelf under `key` as hard links to its files (a copy where the file system has
    none: no second copy on disk otherwise), whole or not at all; `forget` removes it."""
    tmp = shelf / f".{key}.tmp"  # left by a kill: not whole for any key, so the next prune removes it
    shutil.rmtree(tmp, ignore_errors=True)
    shelf.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, tmp, copy_function=_link_or_copy)
    shutil.rmtree(shelf / key, ignore_errors=True)  # the same key: the same output
    os.replace(tmp, shelf / key)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def forget(shelf: Path, keys: list[str]) -> None:
    """Remove what the shelf holds under `keys` (copies `keep_copy` made of outputs now in place)."""
    for key in keys:
        shutil.rmtree(shelf / key, ignore_errors=True)


def holds(shelf: Path, key: str, whole: Whole) -> bool:
    """Whether the shelf holds the output of `key` whole (`whole`, which checks content); one that is not (damaged at
    its size) is deleted: it would never be moved back, and it took the place of one that could."""
    if whole(shelf / key, key):
        return True
    shutil.rmtree(shelf / key, ignore_errors=True)
    return False


def unshelve(shelf: Path, key: str, dest: Path, whole: Whole) -> bool:
    """Move the shelved output of `key` into place as `dest` (whose folder must be gone); False when the shelf
    holds none whole (`holds`)."""
    kept = shelf / key
    if not holds(shelf, key, whole):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)  # else shutil.move copies it (its parent deleted)
    shutil.move(kept, dest)  # a rename: it is in place whole or not at all
    return True


def prune(shelf: Path, keep: int, whole: Whole) -> None:
    """Keep the `keep` most recently shelved outputs that could be moved back (one no longer whole, or built by
    other code, never will be), and, unless `keep` is 0, every one shelved since the last prune (`MARK`): a run that
    replaces more outputs than `keep` at once (a sweep of 12 ingredients, all five soups), or one stopped before its
    prune, loses none of them, so changing the setting back restores every one. The marks are then cleared: this is
    the prune of a run that got to its end."""
    if shelf.exists():
        kept = sorted((p for p in shelf.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        usable = [p for p in kept if whole(p, p.name)]
        marks = list(shelf.glob(f"*{MARK}"))
        marked = {m.name.removesuffix(MARK) for m in marks} if keep else set()
        for old in set(kept) - set(usable[:keep]) - {p for p in usable if p.name in marked}:
            shutil.rmtree(old, ignore_errors=True)
        for mark in marks:
            mark.unlink(missing_ok=True)
