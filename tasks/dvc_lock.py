"""Record a run made outside `dvc repro` in dvc.lock (`dvc commit -f`), so `dvc status` stays clean.

`soupline run` and the Prefect flow build the same outputs `dvc repro` would; committing them
keeps one truth (DESIGN: a run by another driver leaves `dvc status` clean). It is refused when
dvc.lock would then lie: the run's params differ from params.yaml (overrides, another params
file), or, for `soupline run --from <stage>`, the stages before it were not checked.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Iterator

from soupline import config
from soupline.artifacts import flock_nowait
from soupline.config import Params
from soupline.errors import SouplineError
from tasks import keys

NOT_DVC = "not a DVC project"


def commit_refusal(params: Params, root: Path, stages: tuple[str, ...] = ()) -> str | None:
    """Why dvc.lock must not be written for this run, or None when `dvc commit` is right. With `stages`, for those
    alone: only the params they list in dvc.yaml must be params.yaml's (a study's `study.*` overrides are no prepare
    or embed param)."""
    if not ((root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()):
        return NOT_DVC
    try:
        written = config.load(root / "params.yaml")
    except SouplineError:
        written = None
    if written is not None and stages:
        run, file = params.model_dump(mode="json"), written.model_dump(mode="json")
        same = all(keys.stage_params(s, run) == keys.stage_params(s, file) for s in stages)
    else:
        same = written == params
    return None if same else "the run's params differ from params.yaml (overrides or another params file)"


def unrecorded(params: Params, root: Path, stages: tuple[str, ...] = ()) -> str | None:
    """Why `soupline run` would still write dvc.lock though every stage is up to date (None: it would not):
    `dvc status` lists stages, either for params alone (an edit no output depends on: another method's
    `select.<method>.*`, a setting the config does not read) or for outputs, as after a run killed before its
    closing `dvc commit`. Nothing when the commit would be refused, or when `dvc status` cannot tell (another DVC
    process holds the lock: `_dvc_changed` does not ask, and dvc.lock may be mid-write): then `soupline run`
    would not write it either, or the run holding it will. `stages`: those `dvc status` looks at (default: all, and
    any .dvc file)."""
    if commit_refusal(params, root) is not None or _busy_elsewhere(root):
        return None
    if not (changed := _dvc_changed(root, *stages)):
        return damaged_lock(params, root) if changed is None else None  # `dvc status` failed: on dvc.lock?
    entries = [e for stage in changed.values() for e in stage]
    if all(isinstance(e, dict) and set(e) == {"changed deps"} and all(isinstance(v, dict) for v in
                                                                        e["changed deps"].values()) for e in entries):
        keys = sorted({k for e in entries for file in e["changed deps"].values() for k in file})
        stages = f"stage{'s' * (len(changed) > 1)} {', '.join(changed)}"
        return (f"records other values of params {', '.join(keys)} ({stages}), which no output here depends on: "
                "`soupline run` records them, rebuilding nothing")
    return "does not record these outputs (a run stopped before its closing `dvc commit`?): `dvc status` lists them"


MISSING = ("not in cache", "deleted")  # how `dvc status` lists an output (or a dep) that is not in the workspace


def pullable(root: Path, stages: list[str]) -> list[str]:
    """Those of `stages` whose outputs dvc.lock records and this workspace lacks, nothing else changed
    (`pullable_stages`): `dvc pull` (or `dvc checkout`) brings them, as in a clone before `dvc pull`. None outside a
    DVC project or while another DVC process holds its lock."""
    if not ((root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()):
        return []
    return [s for s in pullable_stages(_dvc_changed(root, *stages) or {}, uncached_outs(root)) if s in stages]


def uncached_outs(root: Path) -> frozenset[str]:
    """The outputs dvc.yaml marks `cache: false` (metrics.json, plots, curves, the report): git tracks them, not
    DVC's cache, so neither `dvc pull` nor `dvc checkout` brings one back (`git checkout` does, or a run)."""
    return frozenset(path for stage in _dvc_yaml_stages(root).values() if isinstance(stage, dict)
                     for kind in ("outs", "metrics", "plots") for out in stage.get(kind) or [] if isinstance(out, dict)
                     for path, opts in out.items() if isinstance(opts, dict) and opts.get("cache") is False)


def _dvc_yaml_stages(root: Path | str) -> dict:
    """dvc.yaml's `stages` mapping as written (name -> definition); {} when it cannot be read."""
    import yaml

    try:
        stages = (yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages")
    except (OSError, yaml.YAMLError):
        return {}
    return stages if isinstance(stages, dict) else {}


def pullable_stages(changed: dict, uncached: frozenset[str] = frozenset()) -> list[str]:
    """From `dvc status --json`: the stages DVC lists only for missing outputs (at least one) and, as deps, for
    missing outputs of such stages (their deleted data/prepared files, say), in its order. A changed param, an edited
    file or a dep that no stage makes (a source under data/raw deleted by hand) rules a stage out, and so does a
    missing output in `uncached` (`cache: false`: no DVC cache or remote holds it)."""
    def entries(stage: str, kind: str) -> dict:
        return {k: v for e in changed[stage] if isinstance(e, dict) for k, v in e.get(kind, {}).items()}

    candidates = [s for s, es in changed.items() if all(isinstance(e, dict) and set(e) <= {"changed deps",
                                                                                           "changed outs"} for e in es)
                  and entries(s, "changed outs") and all(v in MISSING for v in entries(s, "changed outs").values())
                  and not uncached.intersection(entries(s, "changed outs"))
                  and all(v == "deleted" for v in entries(s, "changed deps").values())]
    while True:  # drop a stage whose missing deps are not what the remaining candidates' outputs bring back
        outs = [Path(o).parts for s in candidates for o in entries(s, "changed outs")]
        kept = [s for s in candidates if all(any(Path(d).parts[:len(o)] == o for o in outs)
                                             for d in entries(s, "changed deps"))]
        if kept == candidates:
            return kept
        candidates = kept


def unreadable_lock(root: Path) -> str | None:
    """Why DVC cannot read `root`'s dvc.lock (None: it can, or there is none). DVC writes dvc.lock in place (it
    truncates the file, then writes it), so a kill in that moment (`dvc commit`, `dvc repro` between stages) leaves
    it empty or cut mid-line, and DVC then refuses every command there (`'./dvc.lock' validation failed`). Read as
    DVC reads it: its YAML parser and its lock-file schema (a file cut at a line end may still be valid: `dvc
    status` then lists what it lacks)."""
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.serialize import parse_yaml

    path = Path(root) / "dvc.lock"
    if not path.is_file():
        return None
    try:
        COMPILED_LOCKFILE_SCHEMA(parse_yaml(path.read_text(encoding="utf-8"), str(path)))
    except Exception as err:  # noqa: BLE001 - broken YAML, another schema, undecodable bytes: DVC reads none
        if path.stat().st_size == 0:
            return "is empty"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"cannot be read ({first})"
    return None


def damaged_lock(params: Params, root: Path) -> str | None:
    """Why DVC cannot read dvc.lock (`unreadable_lock`) and what writes it again, for `soupline status`; None when
    it can, or outside a DVC project. Said whatever else is out of date: every DVC command fails on it meanwhile."""
    if not (Path(root) / ".dvc").is_dir() or not (why := unreadable_lock(root)):
        return None
    fix = ("`soupline run` writes it again from the outputs" if commit_refusal(params, root) is None else
           "`soupline run` with params.yaml's values (a run with overrides does not write dvc.lock) writes it again "
           "from the outputs")
    return f"{_unreadable_note(why)}: `dvc status` and `dvc repro` fail on it; {fix}"


def _unreadable_note(why: str) -> str:
    return f"{why} (a run killed while DVC wrote it?)"


def clean_stages(root: Path, stages: list[str]) -> list[str]:
    """Those of `stages` whose deps, params and outputs are as dvc.lock records them (`dvc status --json` does not
    list them); none outside a DVC project, or when `dvc status` cannot tell (another DVC process holds the lock,
    which `dvc status` would wait for, then fail)."""
    if not ((root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()):
        return []
    changed = _dvc_changed(root, *stages)
    return [] if changed is None else [s for s in stages if s not in changed]


_ANSWERS: dict[tuple, dict | None] | None = None  # (root, stages) -> `dvc status` answer, inside `one_status()` only


@contextlib.contextmanager
def one_status() -> Iterator[None]:
    """Ask `dvc status` once per workspace and stages inside the block, for read-only checks that ask it several
    questions (`soupline status`: which stages dvc.lock records, which `dvc pull` could bring, whether dvc.lock is
    behind the workspace; each `dvc status` is a second or more). Nothing may change the workspace meanwhile."""
    global _ANSWERS
    outer = _ANSWERS
    _ANSWERS = {} if outer is None else outer
    try:
        yield
    finally:
        _ANSWERS = outer


def _dvc_changed(root: Path, *stages: str) -> dict | None:
    """`dvc status --json` (of `stages`, or all): stage -> what changed, {} when dvc.lock records everything; None
    when it cannot tell (DVC failed, on a dvc.lock it cannot read, say, or another process holds its lock). Asked once
    inside `one_status()`. Asked in this process, on a repo opened before this process lets go of DVC's lock
    (`repo_lock`) for DVC to take, and taken back after: a `dvc status` child process took a second or more to start
    after the run let go, and a `dvc repro` waiting for the lock could take it then and delete the outputs of the
    stage it starts with (before its command meets the workspace lock), as it could at the closing commit. Stages are
    named with their dvc.yaml's path: DVC reads a bare name from the working directory's dvc.yaml."""
    asked = (os.path.abspath(root), stages)
    if _ANSWERS is not None and asked in _ANSWERS:
        return _ANSWERS[asked]
    if _busy_elsewhere(root):  # DVC would wait 3 s for the lock, then fail: not asked
        return None
    try:
        with _handed_over(Path(root), take_back=f"took {root}'s DVC lock while this run asked `dvc status`; wait for "
                                                "it to finish, then start the run again") as repo:
            asking = _status_targets(repo, stages) or None
            changed = _by_name(repo.status(targets=asking), Path(repo.root_dir).resolve())
    except SouplineError:  # the lock taken back from another process: the run stops
        raise
    except Exception:  # noqa: BLE001 - DVC's errors (its LockError too): the callers say what they cannot tell
        changed = None
    changed = changed if isinstance(changed, dict) else None
    if _ANSWERS is not None:
        _ANSWERS[asked] = changed
    return changed


def _by_name(changed: object, root: Path) -> object:
    """`repo.status()`'s answer keyed as `dvc status` in `root` keys it: DVC names a stage by the path of its dvc.yaml
    from the working directory (`../proj/dvc.yaml:train`), and by its name alone where that is the dvc.yaml there."""
    if not isinstance(changed, dict):
        return changed
    named = {}
    for address, what in changed.items():
        path, _, name = address.rpartition(":")
        named[name if path and Path(path).resolve() == root / "dvc.yaml" else address] = what
    return named


def hardlink_lock(root: Path) -> bool:
    """Whether DVC locks the repo at `root` with hard links (`core.hardlink_lock`, for NFS and other file systems
    without flock): its lock is then the existence of .dvc/tmp/lock, which a run's flock there would fake."""
    from dvc.config import Config, ConfigError

    try:
        return bool(Config(dvc_dir=str(Path(root) / ".dvc"))["core"].get("hardlink_lock", False))
    except ConfigError:  # DVC's own commands say what is wrong with its config
        return False


def busy(root: Path) -> bool:
    """Whether another process holds DVC's repository lock now (a run, `dvc repro`, `dvc exp run`)."""
    lock = Path(root) / ".dvc" / "tmp" / "lock"
    if not lock.is_file():
        return False
    if hardlink_lock(root):  # DVC deletes it as it lets go
        return True
    with open(lock, "a+", encoding="utf-8") as f:
        return flock_nowait(f) is False


_held: dict[Path, object] = {}  # project root -> the open .dvc/tmp/lock this process holds (repo_lock)


def _busy_elsewhere(root: Path) -> bool:
    """`busy`, unless this process holds DVC's lock (`repo_lock`): its own flock is no other process's."""
    return Path(root).resolve() not in _held and busy(root)


class _HardlinkHeld:
    """DVC's hard-link lock held by this process, let go by `close()` as the flocked file is (closing twice is
    fine, as for a file)."""

    def __init__(self, lock) -> None:
        self.lock = lock

    def close(self) -> None:
        if self.lock.is_locked:
            self.lock.unlock()


def _take(root: Path, busy: str):
    """.dvc/tmp/lock, open and flocked without waiting; one line (`another DVC process ... <busy>`) when another
    process holds it. Under `core.hardlink_lock`, DVC's own hard-link lock (`_HardlinkHeld`): a plain file left
    there by the flock made every later DVC command, the run's closing commit first, fail "Unable to acquire lock"."""
    if hardlink_lock(root):
        from dvc.lock import LockError, make_lock

        lock = make_lock(str(root / ".dvc" / "tmp" / "lock"), tmp_dir=str(root / ".dvc" / "tmp"), hardlink_lock=True)
        try:
            lock.lock(timeout=datetime.timedelta(microseconds=1))  # one try (DVC reads 0 as its 3 s default)
        except LockError:
            raise SouplineError(f"another DVC process (dvc repro, dvc exp run, ...) {busy}") from None
        return _HardlinkHeld(lock)
    f = open(root / ".dvc" / "tmp" / "lock", "a+", encoding="utf-8")
    if flock_nowait(f) is False:
        f.close()
        raise SouplineError(f"another DVC process (dvc repro, dvc exp run, ...) {busy}")
    return f


@contextlib.contextmanager
def repo_lock(root: Path, what: str) -> Iterator[None]:
    """Hold DVC's repository lock while `what` builds outputs outside `dvc repro`.

    `dvc repro` deletes a stage's outputs before the stage's command starts (and meets the workspace
    lock), so without this a `dvc repro` started during a `soupline run` would delete what the run is
    reading. DVC's lock is an flock on .dvc/tmp/lock (zc.lockfile; under `core.hardlink_lock` a hard link there);
    holding it makes that `dvc repro` wait a few seconds and stop with DVC's "Unable to acquire lock". Not taken
    under `dvc repro` itself (DVC_STAGE is set: DVC holds it) or outside a DVC project."""
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir() or os.environ.get("DVC_STAGE"):
        yield
        return
    (root / ".dvc" / "tmp").mkdir(exist_ok=True)
    _held[root] = f = _take(root, f"holds {root}'s DVC lock; wait for it to finish, then start {what} again")
    try:
        _remove_damaged_rwlock(root)
        yield
    finally:
        f.close()
        if (held := _held.pop(root, None)) is not None:
            held.close()  # f itself, or the file `_dvc_changed` took it back with


def _remove_damaged_rwlock(root: Path) -> None:
    """Delete DVC's record of the outputs its commands are at work on (.dvc/tmp/rwlock) when it is no JSON. DVC
    writes it in place (it truncates the file, then writes it), so a stop in that moment (SIGTERM or Ctrl-C in a
    run's closing `dvc commit`, a kill of `dvc repro`) left it empty or cut, and every DVC command there, the
    closing commit of every later run and Prefect flow included, failed on it ('Unable to read RWLock-file ...
    JSON structure is corrupted') until it was deleted by hand. Called with DVC's lock held: DVC edits the file
    under that lock only, so no writer is at work, and reads a missing file as no command at work."""
    path = root / ".dvc" / "tmp" / "rwlock"
    try:
        json.loads(path.read_bytes())
    except FileNotFoundError:
        return
    except ValueError:  # cut mid-write, empty, or undecodable bytes
        path.unlink()
        print(f"removed DVC's damaged {path.relative_to(root)} (a DVC command stopped while writing it left it "
              "unreadable to DVC)")


def dvc_commit(root: Path, stages: list[str], unless_recorded: bool = False) -> None:
    """Record the outputs of `stages` (the run's) and of the .dvc files they depend on in dvc.lock (`dvc commit -f`
    of each, with its deps), so `dvc status` is clean for them. Another stage of dvc.yaml is left to its own driver: a
    bare `dvc commit -f` failed the run on its missing output (`output 'x' does not exist`), or recorded its stale
    outputs as up to date. `unless_recorded`: ask `dvc status` first and commit only when dvc.lock does not record
    them yet (for a run that built nothing). Run in this process, in `root` (DVC's run cache reads paths from the
    working directory), on a DVC repo opened before the run's DVC lock (repo_lock) is let go (`_handed_over`): a
    `dvc repro` waiting for that lock could otherwise take it in the second a `dvc` child process needs to start,
    delete the outputs the run had just built (a stage's outputs go before its command meets the workspace lock),
    and leave them deleted, the run ending `dvc commit -f failed ...: no output`."""
    from dvc.lock import LockError

    try:
        with _handed_over(Path(root)) as repo:
            if unless_recorded and _recorded(repo, stages):
                return
            failed = _commit(repo, stages)
            if failed is not None and (why := unreadable_lock(root)):
                # what DVC cannot read records nothing: this run's outputs, checked by the run, are what it records now
                (Path(root) / "dvc.lock").unlink()
                repo._reset()
                print(f"dvc: dvc.lock {_unreadable_note(why)}: written again from the outputs")
                failed = _commit(repo, stages)
    except LockError:  # another DVC process took DVC's lock as this run let go of it: one line, not a traceback
        raise SouplineError(f"the outputs are built, but `dvc commit -f` could not take {root}'s DVC lock: another "
                            "DVC process (dvc repro, dvc exp run, ...) holds it; once it has finished, run "
                            "`soupline run` again (it records the outputs in dvc.lock)") from None
    if failed is not None:
        raise SouplineError(f"the outputs are built, but `dvc commit -f` failed in {root}: {failed}")


@contextlib.contextmanager
def _handed_over(root: Path, take_back: str | None = None) -> Iterator:
    """DVC's repo at `root`, opened in this process, holding DVC's lock. When this process holds that lock
    (repo_lock), DVC's lock object adopts the open file that holds it instead of letting go and taking it again:
    a `dvc repro` waiting for the lock (every 0.5 s) could take it in between (a `dvc` child process needed a second
    or more; taking it again in this process, 0.1-10 ms, DVC's progress bar starting a thread). `take_back`: the run
    keeps the lock when DVC lets go of it (where adoption cannot be used, it takes it again, with `_take`'s line
    should another process get it first)."""
    import logging
    import types

    from dvc.lock import Lock
    from dvc.repo import Repo, lock_repo

    logging.getLogger("dvc").setLevel(logging.ERROR)  # as `dvc commit -q`
    root = Path(root).resolve()
    repo = Repo(str(root))
    held = _held.pop(root, None)
    adopted = held is not None and type(repo.lock) is Lock and hasattr(repo.lock, "_do_lock")
    try:
        if adopted:  # DVC's unlock closes what it holds: our file, or, to keep the lock, nothing
            kept = held if take_back is None else types.SimpleNamespace(close=lambda: None)
            repo.lock._do_lock = lambda: setattr(repo.lock, "_lock", kept)
        elif held is not None:
            held.close()  # lets go of the flock
        with lock_repo(repo):
            yield repo
    finally:
        if held is not None and take_back is not None:
            _held[root] = held if adopted else _take(root, take_back)
        elif held is not None:
            held.close()  # DVC's unlock did, unless its lock failed first
        repo.close()


def _targets(repo, stages: tuple[str, ...] | list[str]) -> list[str]:
    """DVC's addresses of `stages` in `repo`'s dvc.yaml: DVC reads a bare name from the working directory's."""
    return [f"{repo.root_dir}/dvc.yaml:{s}" for s in stages]


def _status_targets(repo, stages: tuple[str, ...] | list[str]) -> list[str]:
    """What `repo.status` is asked of for `stages`: dvc.yaml itself when they are all of its stages (DVC then checks
    the same stages, and with deps the same ones), else each stage's address (`_targets`). DVC read dvc.yaml and
    dvc.lock again for each stage named and, with deps, checked a stage once for each named stage after it (28
    checks for 7 stages): a no-op `soupline run`'s closing check took 4.5-5.0 s, 1.0-1.5 s as one file
    (`benchmarks/dvc_status_speed.py`)."""
    if stages and set(stages) == set(_dvc_yaml_stages(repo.root_dir)):
        return [f"{repo.root_dir}/dvc.yaml"]
    return _targets(repo, stages)


def _recorded(repo, stages: list[str]) -> bool:
    """Whether dvc.lock records `stages` and the .dvc files they depend on (`dvc status --with-deps` finds nothing);
    False when it cannot tell."""
    try:
        return repo.status(targets=_status_targets(repo, stages), with_deps=True) == {}
    except Exception:  # noqa: BLE001 - a dvc.lock DVC cannot read, say: the commit says what
        return False


def _commit(repo, stages: list[str]) -> str | None:
    """`dvc commit -f --with-deps` of each of `stages` on `repo` (locked by the caller), the last first: its deps
    are then committed once (a .dvc file's stage has no name); None, or the last line of DVC's error."""
    done: set[str] = set()
    try:
        for stage, target in reversed(list(zip(stages, _targets(repo, stages)))):
            if stage not in done:
                done.update(getattr(s, "name", None) for s in repo.commit(target, with_deps=True, force=True))
    except Exception as err:  # noqa: BLE001 - DVC's own errors, as its command line would print them
        return (str(err).strip().splitlines() or [type(err).__name__])[-1]
    return None
