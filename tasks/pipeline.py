"""The whole DAG in one process: prepare -> embed -> select -> train (xN) -> soup -> evaluate -> report.

Used by `soupline run`; `dvc repro` runs the same stage functions one process per stage. Like
`dvc repro`, a run skips a stage that is up to date: a run here from the same key (`tasks.keys.stage_key`:
the content of its dvc.yaml deps, code included, and its params) was recorded, and the outputs are
still as that run wrote them. `train` keeps its own per-ingredient check, so a new seed trains only itself.
A whole run with params.yaml's values ends with `dvc commit -f` (`tasks.dvc_lock`), as the Prefect
flow does, so `dvc status` is clean and `dvc repro` is a no-op after it.
"""

from __future__ import annotations

import functools
from typing import Callable

from soupline import interrupt
from soupline.config import Params
from soupline.train import check_device, needs_layer_check
from tasks import caches, dvc_lock, embed, evaluate, keys, prepare, report, select, soup, train
from tasks.common import timed
from tasks.layout import Layout

STAGES = {"prepare": prepare.run, "embed": embed.run, "select": select.run, "train": train.run,
          "soup": soup.run, "evaluate": evaluate.run, "report": report.run}


def run_stage(name: str, params: Params, layout: Layout) -> None:
    interrupt.check()
    timed(name, STAGES[name], params, layout)


def run_recorded(name: str, params: Params, layout: Layout, key: str | None = None) -> None:
    """run_stage, recorded (`tasks.keys.recorded`) so that a later `soupline run` knows it is up to date."""
    with keys.recorded(name, params, layout.root, key):
        run_stage(name, params, layout)


def run_unless_fresh(name: str, params: Params, layout: Layout, force: bool = False,
                     clean: Callable[[], list[str]] | None = None) -> bool:
    """run_recorded, unless a run of the stage from these params and inputs is recorded and its outputs are still
    what it wrote, or else dvc.lock records them (`dvc_vouches`, asking `clean`; recorded now: outputs `git checkout`
    or `dvc checkout` put back from another run of the same inputs, whose report or timings differ) (`force`: run
    anyway); True when it ran."""
    with keys.memoized():  # the outputs hashed once for the checks and the record: nothing writes them meanwhile
        key = keys.stage_key(name, params, layout.root)
        if not force and keys.is_fresh(name, key, layout.root):
            print(f"{name}: up to date")
            return False
        if not force and clean is not None and dvc_vouches(name, params, layout, clean, key):
            keys.record(name, key, layout.root, params)
            print(f"{name}: up to date (as dvc.lock records it)")
            return False
    run_recorded(name, params, layout, key)
    return True


def dvc_clean(layout: Layout) -> Callable[[], list[str]]:
    """The stages `dvc status` finds as dvc.lock records them (deps, params, outputs), asked once, at the first call
    (handing DVC the lock where this process holds it: `dvc_lock._dvc_changed`)."""
    return functools.cache(lambda: dvc_lock.clean_stages(layout.root, list(STAGES)))


def dvc_vouches(name: str, params: Params, layout: Layout, clean: Callable[[], list[str]],
                key: str | None = None) -> bool:
    """Whether `dvc status` finds the stage's deps, params and outputs as dvc.lock records them (`clean`, from
    `dvc_clean`), dvc.lock covers the stage's key (`keys.dvc_can_vouch`), and no run recorded here from another model
    folder or code wrote the outputs as they are (`keys.written_by_other_inputs`; `key`: the stage's, computed when
    not given): outputs DVC or git put there that no run here wrote (`dvc pull` in a fresh clone, `dvc exp apply` of
    a queued experiment, which ran in a copy of its own, `git checkout` of another run's report) are then up to
    date, as `dvc repro` finds them. Never with values of the stage's params other than params.yaml's (dvc.lock
    describes those)."""
    if dvc_lock.commit_refusal(params, layout.root, (name,)) is not None \
            or not keys.dvc_can_vouch(name, params, layout.root):
        return False
    if name not in clean():
        return False
    return not keys.written_by_other_inputs(name, key or keys.stage_key(name, params, layout.root), params,
                                            layout.root)


def why_stale(name: str, params: Params, layout: Layout, clean: Callable[[], list[str]] | None = None) -> str | None:
    """Why `soupline run` would run the stage now (None: up to date), judged on the outputs as they are: no
    recorded run from its current inputs and params (and dvc.lock does not record them: `dvc_vouches`), outputs
    changed since (by hand, or by a later run from other inputs: the data or params changed and back), or (train)
    ingredients to build."""
    if name == "train":
        if not (todo := train.unbuilt(params, layout)):
            return None
        cached, cache = len(train.restorable(params, layout)), layout.ingredient_cache.relative_to(layout.root)
        (resumed, damaged), checkpoints = train.resumable(params, layout), layout.checkpoints.relative_to(layout.root)
        return (f"{len(todo)} of {len(params.train.ingredients())} ingredient(s) to train: {', '.join(todo[:5])}"
                + ", ..." * (len(todo) > 5)
                + (f" ({cached} of them restorable from {cache})" if cached else "")
                + (f" ({len(moved)} of them built under the sweep's old names: renamed, not trained)"
                   if (moved := train.renamed(params, layout)) else "")
                + (f" ({len(resumed)} of them stopped mid-training: resumed from their checkpoint in {checkpoints})"
                   if resumed else "")
                + (f" (self-training's teacher stopped mid-training: resumed from its checkpoint in {checkpoints})"
                   if train.teacher_resumable(params, layout) else "")
                + (f" (the checkpoint of {', '.join(damaged)} in {checkpoints} cannot be read: the run stops on it; "
                   "delete it to start that ingredient over)" if damaged else ""))
    key = keys.stage_key(name, params, layout.root)
    if keys.is_fresh(name, key, layout.root) or dvc_vouches(name, params, layout, clean or dvc_clean(layout), key):
        return None
    if keys.stage_record(name, key, layout.root) is not None:
        changed = keys.changed_outputs(name, key, layout.root)
        gone = any(c.endswith(" missing") for c in changed)  # deleted (by hand, or by DVC before a failed stage)
        if not gone and keys.last_recorded(name, layout.root, "key") not in (key, ""):  # data/params changed and back
            return "a later run from other params or inputs replaced what its run from these wrote"
        return "its outputs changed since its run from these params and inputs" + (f": {', '.join(changed)}"
                                                                                   if changed else "")
    return "no run recorded from these params and inputs"


def stale_upstream(name: str, params: Params, layout: Layout, including: bool = False) -> str | None:
    """The first stage before `name` (`including`: or `name` itself) that is not up to date (`why_stale`), else
    None."""
    names = list(STAGES)
    clean = dvc_clean(layout)
    upstream = names[:names.index(name) + including]
    return next((up for up in upstream if why_stale(up, params, layout, clean)), None)


def stage_status(params: Params, layout: Layout) -> dict[str, str | None]:
    """Each stage -> `why_stale` (a stage that runs may then change what the stages after it read); train also
    names the built ingredients whose deleted curves it would rewrite (`train.missing_curves`) and the curves of
    ingredients outside the sweep it would remove (`train.stray_curves`), and self-training's teacher folder a
    stopped run of other params left, which it would set aside and `soupline cache --gc` deletes
    (`train.teacher_left`: before, status never named it). Those are not in `why_stale`: no stage after train reads
    them, so they make none of them stale."""
    clean = dvc_clean(layout)  # one `dvc status`, if any stage needs it
    status = {name: why_stale(name, params, layout, clean) for name in STAGES}
    chores = []
    if curves := train.missing_curves(params, layout):
        chores.append(f"would rewrite the deleted curves of {len(curves)} ingredient(s) from their history.json "
                      f"(no retraining): {', '.join(curves[:5])}")
    if strays := train.stray_curves(params, layout):
        chores.append(f"would remove the curves of {len(strays)} ingredient(s) outside the sweep (left by a "
                      f"run with other params, `dvc exp apply` or `git checkout`): {', '.join(strays[:5])}")
    if (left := train.teacher_left(params, layout)) is not None:
        chores.append(f"would set aside {left.relative_to(layout.root)} ({caches.human_size(caches.entry_size(left))}"
                      f"), self-training's teacher that a stopped run of other params left, to "
                      f"{layout.ingredient_cache.relative_to(layout.root)} (`soupline cache --gc` deletes it)")
    if chores:
        status["train"] = "; ".join(filter(None, [status["train"], *chores]))
    if status["soup"] and (back := soup.restorable(params, layout)):
        status["soup"] += (f" ({len(back)} of its soups restorable from "
                           f"{layout.soup_cache.relative_to(layout.root)}: {', '.join(back)})")
    return status


def pullable(params: Params, layout: Layout) -> list[str]:
    """The stages whose outputs dvc.lock records from these params and inputs (deps, params) but this
    workspace lacks (a clone before `dvc pull`, or one that pulled some stages): `dvc pull` brings them, where
    `soupline run` would build them again. Never with params other than params.yaml's (dvc.lock describes those)."""
    if dvc_lock.commit_refusal(params, layout.root) is not None:
        return []
    return [name for name in dvc_lock.pullable(layout.root, list(STAGES)) if keys.dvc_can_vouch(name, params,
                                                                                                 layout.root)]


def unrecorded_in_dvc(params: Params, layout: Layout, todo: bool = False) -> str | None:
    """Why dvc.lock is behind the workspace though every stage is up to date (`dvc_lock.unrecorded`), else None;
    with stages `todo`, only whether DVC cannot read it at all (`dvc_lock.damaged_lock`)."""
    if todo:
        return dvc_lock.damaged_lock(params, layout.root)
    return dvc_lock.unrecorded(params, layout.root, tuple(STAGES))  # as `dvc_clean` asks: one answer for both


def check_model_layers(params: Params, layout: Layout) -> None:
    """`train.lora` (every LoRA point of the sweep) and LP-FT's head under `pooling: cls` against the model's layers
    (`soupline.train.check_layers`), and both max_lengths against its positions (`base_model`), in one line before
    a driver runs its first stage, when such an ingredient is still to be trained: else a target name that matches
    nothing (`[query, vlaue]`), or a head the probe cannot start (RoBERTa's), was said only by the train stage,
    after prepare, embed and select had run. On the model's skeleton (no weights read); nothing to train, no check
    (no import)."""
    if needs_layer_check(params.train) and train.unbuilt(params, layout):
        from soupline.train import check_layers
        from tasks.common import base_model

        check_layers(base_model(params), params.train)


def run_pipeline(params: Params, layout: Layout, start: str = "prepare", force: bool = False) -> None:
    """Every stage from `start` on, skipping those that are up to date (all of them run with `force`). DVC's word
    (`dvc_vouches`) counts only until a stage builds something: what follows may then read other inputs."""
    check_device(params.device, params.train)
    check_model_layers(params, layout)
    names, clean = list(STAGES), dvc_clean(layout)
    built = False
    for name in names[names.index(start):]:
        if name == "embed":  # prepare's pool is there: a budget it cannot hold stops before the embeddings
            select.check_budgets({"select.budget": params.select.budget}, layout, params.select,
                                 multiple=params.train.self_training.multiple)
        if name == "train":
            built = bool(train.unbuilt(params, layout)) or built
            run_stage(name, params, layout)
        else:
            built = run_unless_fresh(name, params, layout, force, None if built else clean) or built
    record_in_dvc(params, layout, start, built)


def changed_while_running(params: Params, layout: Layout, stages: tuple[str, ...] = tuple(STAGES)) -> str | None:
    """Why the outputs a run of `stages` leaves are not those of the inputs now, else None: a stage (train aside,
    whose inputs are the run's own outputs) whose run from its current key is not recorded, because its data, code or
    model folder was edited while the run went on. `dvc commit -f` would record the new inputs with the old outputs,
    and `dvc status`, `dvc repro` and `soupline status` would all trust them."""
    with keys.memoized():  # the run has written everything: each path is hashed once
        moved = [name for name in stages if name != "train"
                 and not keys.is_fresh(name, keys.stage_key(name, params, layout.root), layout.root)]
    if moved:
        return (f"the inputs of {', '.join(moved)} changed while the run went on (data or code edited meanwhile), "
                "so its outputs are not theirs; run it again")
    return None


def why_not_commit(params: Params, layout: Layout, start: str = "prepare") -> str | None:
    """Why dvc.lock must not record the outputs of a run of `params` from stage `start` (`dvc_lock.commit_refusal`:
    no DVC project, or params that are not params.yaml's; a run that checked only the stages from `start` on; data
    or code edited while it ran), or None when it may: `soupline run`'s and the Prefect flow's closing commit."""
    reason = dvc_lock.commit_refusal(params, layout.root)
    if reason is None and start != "prepare":
        reason = f"the run started at {start}, so the stages before it were not checked"
    return reason or changed_while_running(params, layout)


def record_in_dvc(params: Params, layout: Layout, start: str, built: bool = True) -> None:
    """`dvc commit -f` after a whole run whose params are params.yaml's, so `dvc status` is clean; else say why not.
    After a run that built nothing, only when dvc.lock does not record the outputs yet (a run stopped before its
    closing commit): the commit took 60 % of such a run."""
    reason = why_not_commit(params, layout, start)
    if reason is None:
        dvc_lock.dvc_commit(layout.root, list(STAGES), unless_recorded=not built)
        print("dvc: outputs recorded in dvc.lock (`dvc status` is clean)")
    elif reason != dvc_lock.NOT_DVC:
        print(f"dvc: {shelve_unrecorded(params, layout, reason)}")


def record_stages_in_dvc(params: Params, layout: Layout, stages: tuple[str, ...]) -> None:
    """`dvc commit -f` of `stages` after a run that built them (`soupline study`'s prepare and embed), when the params
    they list in dvc.yaml are params.yaml's and their inputs did not change meanwhile; else say why not. Unrecorded,
    `dvc repro` ran them again though nothing they read had changed."""
    reason = dvc_lock.commit_refusal(params, layout.root, stages) or changed_while_running(params, layout, stages)
    if reason is None:
        dvc_lock.dvc_commit(layout.root, list(stages))
        print(f"dvc: {' and '.join(stages)} recorded in dvc.lock")
    elif reason != dvc_lock.NOT_DVC:
        print(f"dvc: dvc.lock not updated for {' and '.join(stages)}: {reason}")


def shelve_unrecorded(params: Params, layout: Layout, reason: str) -> str:
    """After a whole run that dvc.lock does not record: keep its ingredients and soups on their shelves too
    (`train.keep_copies`, `soup.keep_copies`; else a `dvc exp run` of the same values, whose forced `dvc checkout`
    puts dvc.lock's outputs back first, trained and souped them all again), and return the line saying why dvc.lock
    was not updated."""
    kept = [f"its {what} are kept in {cache.relative_to(layout.root)} too" for what, cache, copies in (
        ("ingredients", layout.ingredient_cache, train.keep_copies(params, layout)),
        ("soups", layout.soup_cache, soup.keep_copies(params, layout))) if copies]
    return "; ".join([f"dvc.lock not updated: {reason}; `dvc status` lists the stages it does not describe", *kept])
