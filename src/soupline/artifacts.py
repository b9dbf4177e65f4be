"""Atomic writes and content hashing: every file soupline writes goes through here.

A write lands in a temporary sibling (`.<name>.<random>.tmp`) and is renamed into place, so a run
killed mid-write leaves either the old artifact or none, never a half-written one that a later run
would trust. What such a kill leaves behind is the temporary sibling: `remove_stale_temps` clears
them when the next run takes the workspace lock (and .gitignore / .dvcignore keep them out of git
and DVC meanwhile). What lands gets the permissions the umask gives (mkstemp's and safetensors' are 0600).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from soupline.errors import SouplineError


UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it) ...
os.umask(UMASK)  # ... and put back
# What tempfile makes from prefix ".<name>." and suffix ".tmp", and what DVC's writes into a workspace make
# (dvc_objects' tmp_fname(), ".<token_urlsafe(16)>.tmp": a file `dvc checkout` copies into an output folder, the
# link test of a `dvc commit`, in the folder of an output such as data/metrics)
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp|\.[A-Za-z0-9_-]{22}\.tmp")


# What the file system says when a write cannot happen there: the user's to fix (a read-only or full disk, a
# folder without write permission, a file where a folder should be), so one line naming the path, no traceback.
UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _os_error(err: BaseException) -> OSError | None:
    """The file system's error behind `err`: itself, the one it was raised from or while handling (torch.save into
    an open file raises a RuntimeError over it), or the errno safetensors' writer names in its message
    ("SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)")."""
    while err is not None and not isinstance(err, (OSError, SouplineError)):
        if found := re.search(r"\(os error (\d+)\)", str(err)):
            return OSError(int(found[1]), os.strerror(int(found[1])))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return err if isinstance(err, OSError) else None


@contextlib.contextmanager
def writing(path: Path, also: frozenset = frozenset()) -> Iterator[None]:
    """Turn the file system's refusal to write `path` (UNWRITABLE, plus the errnos `also`) into one SouplineError,
    also when a library's own error wraps it (`_os_error`). A Ctrl-C that a library's clean-up error hides (torch's
    zip writer, closing after it, raises "unexpected pos ...") is raised again as the KeyboardInterrupt it was, so
    the command line says "interrupted", not a traceback."""
    try:
        yield
    except Exception as raised:
        if isinstance(raised.__context__, KeyboardInterrupt):
            raise raised.__context__ from None
        err = _os_error(raised)
        if err is None or err.errno not in UNWRITABLE | also:
            raise
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        hint = "; a file is in the way of a folder there" if err.errno in (errno.EEXIST, errno.ENOTDIR) else ""
        raise SouplineError(f"cannot write {path}: {err.strerror}{where}{hint}") from None


def _tmp_sibling(path: Path, is_dir: bool = False) -> Path:
    with writing(path, frozenset({errno.EEXIST, errno.ENOTDIR})):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileNotFoundError as err:  # each parent was made or there, yet one cannot be: /proc, /sys
            raise SouplineError(f"cannot write {path}: folder {err.filename} cannot be made there") from None
        make = tempfile.mkdtemp if is_dir else tempfile.mkstemp
        try:
            created = make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except FileNotFoundError:
            if path.parent.is_dir():  # it is there, but takes no new files (/proc, /sys)
                raise SouplineError(f"cannot write {path}: its folder takes no new files") from None
            raise  # the folder went away meanwhile: a race, not the user's to fix
    if not is_dir:
        os.close(created[0])
        created = created[1]
    return Path(created)


def _umask_modes(path: Path) -> None:
    """Give `path` (and a folder's contents) the modes open()/mkdir() would have: mkstemp/mkdtemp and
    safetensors make 0600/0700, which a teammate or a worker running as another user cannot read."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~UMASK)
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o777 & ~UMASK)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~UMASK)


def flock_nowait(f) -> bool | None:
    """Take an exclusive OS lock (flock) on the open file `f` without waiting; False when another process
    holds it. The kernel lets go when the process ends, even by SIGKILL, so the lock never goes stale.
    None where there is no fcntl (Windows): nothing is locked there."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def locked_elsewhere(path: Path) -> bool:
    """Whether another process holds an OS lock on the file at `path` (False once it is gone)."""
    try:
        with open(path, "rb") as f:
            return flock_nowait(f) is False
    except OSError:
        return False


def remove_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings under `root` that killed writes left, soupline's and DVC's; the removed paths.
    Only while no other process writes there (the workspace lock and DVC's): a running write's temporary looks the
    same. A file another process holds an OS lock on is a write in progress outside those locks (`soupline predict
    --out data/...` flocks its temporary until the rename) and is left alone."""
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if TEMP_NAME.fullmatch(d)] + [f for f in files if TEMP_NAME.fullmatch(f)]:
            path = Path(folder) / name
            if name in dirs:
                shutil.rmtree(path, ignore_errors=True)
            elif locked_elsewhere(path):  # a write in progress
                continue
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        dirs[:] = [d for d in dirs if not TEMP_NAME.fullmatch(d)]
    return removed


# How long the run that built a folder took: a record of the run, not content. Left out of content hashes here
# and, by .dvcignore, of DVC's, so a rebuild that makes the same files is the same output (dvc.lock unchanged,
# DVC and `soupline run` skip what follows it).
TIMING_FILE = "train_timing.json"


def write_timing(folder: Path, timing: dict) -> None:
    """Write an ingredient's TIMING_FILE once its train_info.json is written, naming that file by hash: DVC ignores
    the timing, so a `dvc checkout` of other weights leaves it beside them (`trained_seconds` then disowns it)."""
    write_json(Path(folder) / TIMING_FILE, {**timing, "train_info": sha256_file(Path(folder) / "train_info.json")})


def trained_seconds(folder: Path) -> float | None:
    """The seconds the ingredient in `folder` took to train in this workspace (its TIMING_FILE), None when it was not
    trained here: no timing (pulled, checked out), or the timing of another training (`write_timing`)."""
    if not (timing_file := Path(folder) / TIMING_FILE).exists():
        return None
    timing = read_json(timing_file)
    info = Path(folder) / "train_info.json"
    if "train_info" in timing and not (info.exists() and sha256_file(info) == timing["train_info"]):
        return None
    return timing["train_seconds"]


def hidden(relative: Path) -> bool:
    """Whether a path under a folder, `relative` to it, is a dot-file or in a dot-folder: never content soupline or a
    model library wrote (a killed write's temporary sibling, `.<name>.<random>.tmp`), but the litter of the OS or an
    editor (macOS' .DS_Store and ._<name>, vim's .<name>.swp, an NFS .nfs<id>) or a download's notes (`hf download
    --local-dir`'s .cache/), which a data folder is read without too."""
    return any(part.startswith(".") for part in relative.parts)


def _content_files(folder: Path) -> list[Path]:
    """The files under `folder` that are its content: not TIMING_FILE, nor a `hidden` one (what a killed write left,
    a .DS_Store Finder dropped), which .dvcignore leaves out of DVC's hashes too: `soupline status` agrees with `dvc
    status` instead of calling the stages after that folder stale, and a built ingredient is not trained again."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TIMING_FILE
                  and not hidden(p.relative_to(folder)))


def file_sizes(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Relative path -> size of each file under `folder`: a cheap check that a saved model is still whole."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in _content_files(folder)
            if str(p.relative_to(folder)) not in exclude}


def file_digests(folder: str | os.PathLike) -> dict[str, list]:
    """Relative path -> [size, sha256] of each file under `folder`: what a saved model's record holds, so a check
    can be cheap (sizes: a file deleted or cut short) or exact (content: a file damaged in place, or another model's
    weights of the same size copied over it)."""
    folder = Path(folder)
    return {name: [size, sha256_file(folder / name)] for name, size in file_sizes(folder).items()}


def check_writable(path: str | os.PathLike) -> None:
    """Raise the one-line error a write of `path` would (an unwritable folder, a file in the way) now, before
    minutes of work whose result it would then lose: a temporary sibling is made and removed."""
    _tmp_sibling(Path(path)).unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path` in one rename."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with writing(path):
            yield tmp
            _umask_modes(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces the directory `path`."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        with writing(path):
            yield tmp
            _umask_modes(tmp)
        if path.exists():
            old = _tmp_sibling(path, is_dir=True)
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_DIGESTS: dict[str, tuple[tuple, str]] = {}  # absolute path -> (its stat when hashed, sha256), this process only
SETTLED_NS = 2_000_000_000  # a file changed this recently is hashed again each time (a coarse mtime may not move)
_SHARING = threading.Event()  # set while a `shared_digests` is in force
_NEW: dict[str, tuple[tuple, str]] = {}  # what this process trusted while it is in force: what it adds to the file
_NEW_LOCK = threading.Lock()  # Prefect's tasks hash in threads
SHARED_KEPT = 20_000  # entries the file keeps, the newest: a no-op run of a project reads a few hundred files
_SHARED_FORMAT = b"soupline-digests 1 "  # the file's first line: this, then the sha256 of the JSON below it


def _stat_key(path: str | os.PathLike) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes. Read once per process while the file keeps its inode, size, mtime and ctime (as
    DVC and git trust a file's stat), and once per run within `shared_digests`: a no-op `soupline run` met each
    output three or four times (a stage's check, the next stage's key, the closing check, train's intact check).
    A file changed in the last SETTLED_NS is read each time: on a file system with coarse timestamps, a write in the
    same tick leaves its stat as it was."""
    seen = _stat_key(path)
    key = os.path.abspath(path)
    if (known := _DIGESTS.get(key)) is not None and known[0] == seen:
        return known[1]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - max(seen[3], seen[4]) > SETTLED_NS and _stat_key(path) == seen:
        _DIGESTS[key] = (seen, digest)  # unchanged while it was read
        if _SHARING.is_set():
            with _NEW_LOCK:
                _NEW[key] = (seen, digest)
    return digest


@contextlib.contextmanager
def shared_digests(file: str | os.PathLike) -> Iterator[None]:
    """Share the digests `sha256_file` trusts with the project's other processes through `file`: read once here,
    each entry trusted only while its file keeps the stat it was hashed at (a copy of the project, a file replaced
    by a rename or written again: another path, inode or ctime, read again), and this process's new ones added on
    the way out: under `dvc repro` each stage is a process of its own, and each read every model again. Within one
    already in force, nothing more: the outer file serves."""
    if _SHARING.is_set():
        yield
        return
    file = Path(file).absolute()
    for key, entry in _read_digests(file, warn=True).items():
        _DIGESTS.setdefault(key, entry)  # one of this process's own is as new
    _SHARING.set()
    try:
        yield
    finally:
        _SHARING.clear()
        with _NEW_LOCK:
            new = dict(_NEW)
            _NEW.clear()
        if new:
            _write_digests(file, new)


def _read_digests(file: Path, warn: bool) -> dict[str, tuple[tuple, str]]:
    """The entries of a `shared_digests` file; none when there is none, or it is unreadable or damaged (its
    checksum: a flipped bit in a digest would be a wrong result), then with one warning when `warn`."""
    try:
        data = file.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # none yet (a file in the cache folder's place is its own error)
        return {}
    except OSError as err:
        why = err.strerror.lower()
    else:
        head, _, body = data.partition(b"\n")
        try:
            if head != _SHARED_FORMAT + sha256_bytes(body).encode():
                raise ValueError
            return {key: (tuple(entry[:5]), entry[5]) for key, entry in json.loads(body).items()}
        except (ValueError, TypeError, AttributeError, IndexError):
            why = "damaged"
    if warn:
        warnings.warn(f"{file}: {why}; ignored (each file it would have vouched for is read again)", stacklevel=3)
    return {}


def _write_digests(file: Path, new: dict[str, tuple[tuple, str]]) -> None:
    """Add `new` to the `shared_digests` file as another process may have left it meanwhile (two writing at once:
    the last rename wins, and the other's entries cost one more read each), newest last; entries of files gone or
    changed are dropped, then the oldest past SHARED_KEPT. A file that cannot be written costs only those reads."""
    entries = _read_digests(file, warn=False)
    for key, entry in new.items():
        entries.pop(key, None)
        entries[key] = entry

    def holds(key: str, stat: tuple) -> bool:
        try:
            return _stat_key(key) == stat
        except OSError:
            return False

    kept = [[key, *stat, digest] for key, (stat, digest) in entries.items() if holds(key, stat)][-SHARED_KEPT:]
    body = json.dumps({key: rest for key, *rest in kept}, separators=(",", ":")).encode()
    with contextlib.suppress(OSError, SouplineError):
        with atomic_path(file) as tmp:
            tmp.write_bytes(_SHARED_FORMAT + sha256_bytes(body).encode() + b"\n" + body)


def sha256_tree(path: str | os.PathLike) -> str:
    """Content hash of a file or of every file under a directory (names + bytes, sorted; not TIMING_FILE)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in _content_files(path):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def sha256_obj(obj: Any) -> str:
    """Stable hash of a JSON-able object (dict keys sorted)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=_json_default).encode())
