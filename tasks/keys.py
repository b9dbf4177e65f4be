"""Stage keys made from what dvc.yaml says each stage depends on: the Prefect tasks' cache keys, and
how `soupline run` tells an up-to-date stage (`is_fresh` / `record`).

A stage's key hashes the *content* of its deps in dvc.yaml (data under `data/` is read in the workspace root, code
where Python imported it from: the stage's code, `code_digest`), the values of its params keys in dvc.yaml as the
stage reads them (`keyed_params`; soup and evaluate: each ingredient's settings as its training key holds them), and
the ingredient's name for `train`. `prepare` also hashes its source files (`prepare.source` / `prepare.splits`) and
`select` its GOT-D target file (`select.gotd.target`): dvc.yaml can only list fixed paths (`data/raw`), so a file
named by a param is invisible to DVC, not to these keys; likewise the stages with the `model` param hash a model
folder of the user's (`model_content`). Reading dvc.yaml (not a copy of it) keeps the drivers keyed on the same things:
add a dep there and all of them notice it.

`outputs_hash` is the content of a stage's outs/metrics/plots: a cached or recorded run is only
trusted while the files on disk still hash to what that run wrote. Every driver records the stages it
runs (`recorded`): `soupline run` and `soupline stage`, the entry points `dvc repro` calls, the Prefect
flow; so a `soupline run` after any of them skips what they built.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from soupline.artifacts import hidden, read_json, sha256_file, sha256_obj, sha256_tree, write_json
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.models import BUILTIN_MODELS
from tasks.layout import Layout

CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout whose dvc.yaml describes the stages


def _dvc_stages() -> dict[str, Any]:
    """dvc.yaml's stages (read-only: shared by every caller while the file is unchanged); one line when it cannot be
    read (every stage's key is made from it: a YAML slip was a parser traceback from `soupline status` or `run`)."""
    path = CODE_ROOT / "dvc.yaml"
    try:
        return _parse_stages(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError) as err:  # ValueError: undecodable bytes, no `stages:`
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SouplineError(f"{path} cannot be read ({why}); soupline keys each stage on the deps and params it "
                            "lists: fix it, or `git checkout dvc.yaml`") from None


@functools.lru_cache(maxsize=4)
def _parse_stages(text: str) -> dict[str, Any]:
    """Parsed once per content of dvc.yaml: `soupline status` reads it a dozen times, and parsing was 80 % of its
    stage checks; reading the text each time still sees an edit."""
    loaded = yaml.safe_load(text)
    stages = loaded.get("stages") if isinstance(loaded, dict) else None
    if not isinstance(stages, dict):
        raise ValueError("no `stages:` mapping")
    return stages


def _paths(entries: list) -> list[str]:
    """`[a, {b: {cache: false}}]` -> `[a, b]` (dvc.yaml's two spellings of a path)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def _param_keys(entries: list) -> list[str]:
    """`[a, {params.yaml: [b, c]}]` -> `[a, b, c]` (dvc.yaml's two spellings of params.yaml keys; dvc.yaml
    names no other params file)."""
    return [k for e in entries for k in ([e] if isinstance(e, str) else e["params.yaml"])]


def stage_spec(stage: str, ingredient: str | None = None) -> dict[str, list]:
    """The stage's deps, params keys and outputs (outs + metrics + plots) as dvc.yaml lists them;
    with `ingredient`, only that ingredient's folder inside each of train's output folders."""
    if not isinstance(spec := _dvc_stages().get(stage), dict):
        raise SouplineError(f"{CODE_ROOT / 'dvc.yaml'} has no stage {stage!r}, which soupline runs (its deps and params "
                            "make the stage's key): put it back, e.g. `git checkout dvc.yaml`")
    outs = [p for k in ("outs", "metrics", "plots") for p in _paths(spec.get(k, []))]
    if ingredient is not None:
        outs = [f"{p}/{ingredient}" for p in outs]
    return {"deps": _paths(spec.get("deps", [])), "params": _param_keys(spec.get("params", [])), "outs": outs}


_MEMO: dict[str, str | None] | None = None  # path -> content hash, inside `memoized()` only


@contextlib.contextmanager
def memoized() -> Iterator[None]:
    """Hash each path once inside the block. For read-only checks (`soupline stage`'s upstream check),
    which meet one stage's outputs again as the next stage's deps; nothing may write there meanwhile."""
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def content(path: Path) -> str | None:
    """Content hash of a file or folder; None when it does not exist."""
    if _MEMO is None:
        return sha256_tree(path) if path.exists() else None
    key = os.path.abspath(path)
    if key not in _MEMO:
        _MEMO[key] = sha256_tree(path) if path.exists() else None
    return _MEMO[key]


def code_content(path: Path) -> str | None:
    """Content hash of source code: a folder's `__pycache__` changes whenever Python compiles, so it is left out, as
    is a `hidden` file Python never imports (an open editor's .<name>.py.swp; .dvcignore hides it from DVC too)."""
    if not path.is_dir():
        return content(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and not hidden(p.relative_to(path)))
    return sha256_obj({str(f.relative_to(path)): sha256_file(f) for f in files})


def dep_path(dep: str, root: Path) -> Path:
    """Where a dvc.yaml dep is read: data in the workspace; code where Python imports it from
    (`src/soupline/x.py` -> the imported soupline package, which may be an installed copy)."""
    if dep.startswith("data/"):
        return root / dep
    parts = Path(dep).parts
    parts = parts[1:] if parts[0] == "src" else parts
    module = sys.modules.get(parts[0])
    base = Path(module.__file__).resolve().parent if module and getattr(module, "__file__", None) else None
    return base.joinpath(*parts[1:]) if base else CODE_ROOT / dep


def dep_content(dep: str, root: Path) -> str | None:
    return (content if dep.startswith("data/") else code_content)(dep_path(dep, root))


def code_digest(*stages: str) -> str:
    """Hash of the code the stages run: their dvc.yaml deps outside data/, read where Python imports them from. What
    keys a cache on code (an ingredient's build, the evaluation cache, a study cell): an edit to a file these stages
    do not list (report.py for train, the command line for every stage) rebuilds none of it, as under `dvc repro`;
    tests/test_dvc_deps.py checks that each stage lists every file its code loads."""
    deps = sorted({d for stage in stages for d in stage_spec(stage)["deps"] if not d.startswith("data/")})
    return sha256_obj({d: dep_content(d, CODE_ROOT) for d in deps})


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def stage_params(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """The values of the params keys dvc.yaml lists for `stage` (those DVC records for it in dvc.lock)."""
    return {k: _lookup(values, k) for k in stage_spec(stage)["params"]}


def _source_files(stage: str, params: Params) -> dict[str, Path]:
    """The files a stage reads from paths in params, which dvc.yaml cannot list as deps, that exist (relative to
    the working directory, `~` expanded, as the stage reads them): prepare's sources, and select's GOT-D target
    file (edited in place, same path, it must select again); name as written -> path."""
    if stage == "prepare":
        names = params.prepare.source_paths()
    elif stage == "select" and params.select.method == "gotd" and params.select.gotd.target is not None:
        names = [params.select.gotd.target]
    else:
        names = []
    return {n: path for n in names if (path := Path(n).expanduser()).exists()}


def source_contents(stage: str, params: Params) -> dict[str, str]:
    """The content digest of each file `_source_files` names: part of the stage's key and of a study cell's."""
    return {name: content(path) for name, path in _source_files(stage, params).items()}  # no home folder in a key


def model_content(name: str) -> str | None:
    """Content hash of the base model `name` when it is a folder (None for the built-in model, which its installed
    package's version pins, and for a hub id): weights saved again into the same folder leave `model:` as it was,
    and without this every stage after it stayed "up to date" on the old model. Each file is read once per process
    while its stat holds (`sha256_file`; a 90 MB model: about 0.2 s), and the folder walked once per `memoized`."""
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS or not path.is_dir():
        return None
    return content(path)


def _model_of(stage: str, params: Params) -> str | None:
    """`model_content` of the base model for a stage with the `model` param in dvc.yaml; None for the others."""
    return model_content(params.model) if "model" in stage_spec(stage)["params"] else None


def model_spelling(name: str) -> str:
    """`model` as keys hold it: a folder by one spelling of its path, relative to the working directory it is read
    from when inside it, else to the home folder (`~/...`) when inside that, else absolute (`folder/`, `./folder` and
    its absolute path re-ran embed, select and soup, which read the same files), another name as written. Its links
    resolved as the working directory's and the home folder's are (macOS' /tmp is /private/tmp): else an absolute
    path through a link was not inside it. Home-relative: `~/models/m` read by a copy of the workspace in another
    account (a teammate's clone, the same params.yaml and model files) re-ran embed, select, soup and evaluate, and
    every study cell, on the same files. Not its content alone: embed's info.json records the path, and a probe
    ingredient's train_info.json the one `soupline predict` loads (its `training_key`), so a folder moved elsewhere
    runs them again."""
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS or not path.is_dir():
        return name
    path, cwd = Path(os.path.realpath(path)), Path.cwd()
    if path.is_relative_to(cwd):
        return path.relative_to(cwd).as_posix()
    known = os.path.expanduser("~")  # "~" itself where no home folder is known
    home = Path(os.path.realpath(known)) if known != "~" else None
    if home is not None and path != home and path.is_relative_to(home):
        return f"~/{path.relative_to(home).as_posix()}"
    return path.as_posix()


GPU_DRIVERS = ("/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")  # NVIDIA's, ROCm's, WSL's: torch.cuda needs one


@functools.cache
def auto_device() -> str:
    """What `device: auto` picks here (`pick_device`), without importing torch (2 s of `soupline status`) where CUDA
    cannot be: macOS, Linux without a GPU driver."""
    if sys.platform == "darwin" or sys.platform == "linux" and not any(map(os.path.exists, GPU_DRIVERS)):
        return "cpu"
    from soupline.models import pick_device

    return pick_device()


def keyed_params(params: Params) -> dict[str, Any]:
    """`params` as the keys hold them (a stage's, a study cell's): the `model` folder by `model_spelling`, and
    `device: auto` as the device it picks here (on a machine without CUDA, `auto` and `cpu` give the same floats and
    re-ran embed, soup and evaluate; CUDA's differ, so they stay apart)."""
    values = params.model_dump(mode="json")
    values["model"] = model_spelling(params.model)
    values["device"] = auto_device() if params.device == "auto" else params.device
    return values


def selection_size(params: Params, root: Path) -> int | None:
    """The count `select.budget` asks of the pool prepare wrote (its Parquet footer: every method picks exactly that
    many), known before select runs: what a study cell's ingredients and a select method that trains a model on part
    of the selection (`MethodConfig.train_settings`) are keyed on. None before prepare has run, and for a pool that
    cannot hold the budget (the select stage says so)."""
    pool = Layout(root).split("pool")
    if not pool.exists():
        return None
    import pyarrow.parquet as pq

    from soupline.select import resolve_budget

    try:
        return resolve_budget(params.select.budget, pq.read_metadata(pool).num_rows)
    except (OSError, ValueError, SouplineError):  # unreadable (ValueError: pyarrow's ArrowInvalid) or too small
        return None


def selection_seed(params: Params) -> int:
    """The seed the select stage draws with: `select.seed`, or the global `seed` when it is null."""
    return params.seed if params.select.seed is None else params.select.seed


def stage_key(stage: str, params: Params, root: Path, ingredient: str | None = None) -> str:
    """`soupline-<stage>[-<ingredient>]-<sha256>`: equal keys mean equal inputs, params and code."""
    spec = stage_spec(stage, ingredient)
    values, trained = keyed_params(params), None
    if ingredient is not None:  # its own train values: another sweep point added elsewhere is no change here
        ing = next(i for i in params.train.ingredients() if i.name == ingredient)
        values["train"] = ing.key_settings()
    if stage in ("soup", "evaluate"):
        values["train"] = params.train.sweep_settings(reference_probe=stage == "evaluate")  # soup fits no probe
        values["soup"] = params.soup.in_use()  # no settings of a soup not made
        from tasks.train import sweep_trained  # here: tasks.train imports this module

        # with a selection in place, each ingredient's settings as its training key holds them, for the sweep's as
        # written (`warmup_ratio: 0.1 -> 0.12`, 4 warm-up steps either way, re-trained nothing but re-ran both
        # stages); of those as written, only the metric evaluate's reference probe picks its C by
        if (trained := sweep_trained(params, Layout(root))) is not None:
            values["train"] = {k: v for k, v in values["train"].items() if k == "early_stopping_metric"
                               and stage == "evaluate"}
    if stage == "select":  # the train values its method reads (dvc.yaml lists every one some method may read)
        trains = getattr(params.select, params.select.method).uses_model()  # else no footer read
        values["train"] = params.select.train_read(params.train, selection_size(params, root) if trains else None)
        values["select"] = params.select.in_use()  # and no other method's sub-section
        # the seed it draws with, as either key spells it: `select.seed: 42` under `seed: 42` is null's selection
        values["seed"], values["select"]["seed"] = selection_seed(params), None
    parts = {
        "stage": stage,
        "ingredient": ingredient,
        "deps": {d: dep_content(d, root) for d in spec["deps"]},
        "params": stage_params(stage, values),
        "sources": source_contents(stage, params),
    }
    if trained is not None:
        parts["trained"] = trained
    if stage == "select":  # what the method trains as counts no params key names (dnc's scorer: its steps)
        if counts := {k: v for k, v in values["train"].items() if f"train.{k}" not in spec["params"]}:
            parts["counts"] = counts
    if model := _model_of(stage, params):  # keys of the built-in model unchanged
        parts["model"] = model
    name = stage if ingredient is None else f"{stage}-{ingredient}"
    return f"soupline-{name}-{sha256_obj(parts)}"


def output_contents(stage: str, root: Path, ingredient: str | None = None) -> dict[str, str | None]:
    """Each output of the stage (a path of dvc.yaml's outs) -> its content hash, None when missing."""
    return {o: content(root / o) for o in stage_spec(stage, ingredient)["outs"]}


def outputs_hash(stage: str, root: Path, ingredient: str | None = None) -> str:
    return sha256_obj(output_contents(stage, root, ingredient))


def record_path(stage: str, key: str, root: Path) -> Path:
    """Where the run of a stage from inputs `key` records the content of the outputs it wrote. One record per
    key, not per stage: after `dvc checkout` (or `git checkout` + `dvc checkout`) brings back outputs built
    earlier from other params, their record still matches, so `soupline run` does not rebuild them."""
    return records_dir(stage, root) / f"{key.rsplit('-', 1)[-1]}.json"


def records_dir(stage: str, root: Path) -> Path:
    return Layout(root).stage_records / stage


def stage_record(stage: str, key: str, root: Path) -> dict | None:
    """The record of the run of the stage from this key; None when there is none, or it is cut short, not JSON or
    not a record (damaged on disk or by hand): no evidence, so the stage runs again and rewrites it."""
    try:
        rec = read_json(record_path(stage, key, root))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def is_fresh(stage: str, key: str, root: Path) -> bool:
    """True when a run of the stage from this key was recorded and its outputs are still what it wrote."""
    rec = stage_record(stage, key, root)
    return rec is not None and rec.get("outputs") == outputs_hash(stage, root)


def record(stage: str, key: str, root: Path, params: Params) -> None:
    """Note the key a run of the stage was built from (taken before it ran), the content of what it wrote, and the
    code and model folder it ran (`code_digest`, `last_recorded`)."""
    contents = output_contents(stage, root)
    write_json(record_path(stage, key, root), {"key": key, "outputs": sha256_obj(contents), "contents": contents,
                                               "code": code_digest(stage), "model": _model_of(stage, params)})


def records_by_age(stage: str, root: Path) -> list[Path]:
    """The stage's run records here, newest last; in a tie of timestamps (a coarse file system), a run's record
    after `keep_last_runs`' one."""
    return sorted(records_dir(stage, root).glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name != LAST_RUN))


def last_recorded(stage: str, root: Path, field: str) -> Any:
    """`field` of the newest run of the stage recorded here ("" when that record predates the field, is damaged, or
    a run replaces it meanwhile); None when none is recorded (a fresh clone)."""
    try:
        if not (records := records_by_age(stage, root)):
            return None
        rec = read_json(records[-1])
    except (OSError, ValueError):
        return ""
    return rec.get(field, "") if isinstance(rec, dict) else ""


def written_by_other_inputs(stage: str, key: str, params: Params, root: Path) -> bool:
    """Whether a run of the stage recorded here from another model folder or code than now (inputs DVC does not see)
    wrote its outputs as they are: they are then known to be that model's or code's (a `dvc checkout` put them back,
    a model folder saved again at the same path since), whatever dvc.lock says. A run from other params or data,
    which DVC sees, may write the same bytes (another `embed.batch_size` often does); a record without the
    fields counts as another model. The outputs are hashed only when there is such a record to compare."""
    now = {"code": code_digest(stage), "model": _model_of(stage, params)}
    others = []
    for path in records_dir(stage, root).glob("*.json"):
        try:
            rec = read_json(path) if path != record_path(stage, key, root) else None
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "outputs" in rec and any(rec.get(f, "") != v for f, v in now.items()):
            others.append(rec["outputs"])
    return bool(others) and outputs_hash(stage, root) in others


def last_runs(root: Path) -> dict[str, dict]:
    """Stage -> the code and model of its newest recorded run (`last_recorded`), for the stages with one."""
    folder = Layout(root).stage_records
    stages = [d.name for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
    runs = {stage: {field: last_recorded(stage, root, field) for field in ("code", "model")} for stage in stages}
    return {stage: run for stage, run in runs.items() if run["code"] is not None}


def keep_last_runs(root: Path, last: dict[str, dict]) -> None:
    """Write back, once `soupline cache --clear stages` deleted the run records, what `dvc_can_vouch` reads of them
    (`last_runs`; a record with no key, so no run is taken as up to date by it): with none left the workspace was a
    fresh clone to it, and dvc.lock vouched for outputs of code or a model folder changed since the last run."""
    for stage, fields in last.items():
        write_json(records_dir(stage, root) / LAST_RUN, fields)


LAST_RUN = "last-run.json"  # `keep_last_runs`' record: never a key's (`record_path` names those by a hex digest)


def dvc_can_vouch(stage: str, params: Params, root: Path) -> bool:
    """Whether dvc.lock's word on the stage covers all its key holds: the last run recorded here (if any) ran this
    stage's code (`code_digest`, read where Python imports it from: an installed copy of soupline is no dvc.yaml dep)
    and this model folder (the model's files are no dvc.yaml dep: the key sees them, DVC does not), prepare's source
    files lie inside its dvc.yaml deps (DVC cannot see a source elsewhere change), and select's GOT-D target file
    still holds what the selection was made from (its `target_hash`: DVC sees the path, a param, not the file)."""
    if last_recorded(stage, root, "code") not in (None, code_digest(stage)):
        return False
    if (model := _model_of(stage, params)) and last_recorded(stage, root, "model") not in (None, model):
        return False
    if stage == "select" and (target := _source_files(stage, params)):
        try:
            made_from = read_json(Layout(root).selection).get("target_hash")
        except (OSError, ValueError, AttributeError):
            return False
        return made_from == content(next(iter(target.values())))
    if stage != "prepare":
        return True
    deps = [(root / d).resolve() for d in stage_spec(stage)["deps"] if d.startswith("data/")]
    return all(any(path.resolve().is_relative_to(d) for d in deps) for path in _source_files(stage, params).values())


def changed_outputs(stage: str, key: str, root: Path) -> list[str]:
    """The outputs of the run recorded for `key` that are no longer what it wrote (`<path> missing` when gone)."""
    written = (stage_record(stage, key, root) or {}).get("contents", {})
    return [o if now is not None else f"{o} missing" for o, now in output_contents(stage, root).items()
            if o in written and now != written[o]]


@contextlib.contextmanager
def recorded(stage: str, params: Params, root: Path, key: str | None = None) -> Iterator[None]:
    """Around one run of a stage by any driver: its record is dropped first (a run killed midway leaves
    none) and written once the run succeeds, with the key of the inputs it started from. `train` keeps
    its own per-ingredient records (train_info.json) and `study` is no dvc.yaml stage: both run as is."""
    if stage == "train" or stage not in _dvc_stages():
        yield
        return
    key = key or stage_key(stage, params, root)
    record_path(stage, key, root).unlink(missing_ok=True)
    yield
    record(stage, key, root, params)
