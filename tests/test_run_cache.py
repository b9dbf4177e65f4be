"""`soupline run` skips the stages that are up to date, as `dvc repro` does, keyed like the Prefect tasks."""

import contextlib
import fcntl
import hashlib
import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import yaml

from soupline import artifacts
from soupline.artifacts import atomic_dir, write_json
from soupline.errors import SouplineError
from tasks import dvc_lock, keys, pipeline, study
from tasks.common import workspace_lock
from tasks.layout import Layout
from tasks.pipeline import STAGES, run_pipeline, run_recorded, stage_status, stale_upstream
from tasks.report import stage_seconds
from tests.conftest import make_frame, one_ingredient_params

SKIPPABLE = [s for s in STAGES if s != "train"]  # train checks each ingredient itself


def _ran(out: str) -> list[str]:
    return [s for s in SKIPPABLE if f"{s}: up to date" not in out]


def test_dvc_lock_does_not_vouch_for_outputs_a_run_from_other_inputs_wrote(tmp_path, monkeypatch):
    """A model folder saved again at the same path (v2), a run from it recorded, then `dvc checkout` of v1's
    embeddings: DVC does not see the folder's content, so `dvc status` is clean, and dvc.lock was let vouch for v1's
    embeddings as v2's (and recorded them so, for good). A run recorded here from other inputs wrote them: no."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "weights.bin").write_text("v1")
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", str(model)), Layout(tmp_path)

    def embeddings(tag: str) -> None:
        layout.embeddings.mkdir(parents=True, exist_ok=True)
        (layout.embeddings / "pool.npy").write_text(tag)

    embeddings("v1's")
    keys.record("embed", v1 := keys.stage_key("embed", params, tmp_path), tmp_path, params)
    (model / "weights.bin").write_text("v2")
    embeddings("v2's")
    keys.record("embed", v2 := keys.stage_key("embed", params, tmp_path), tmp_path, params)
    assert v1 != v2
    embeddings("v1's")  # `git checkout` of the older dvc.lock, then `dvc checkout`
    # params.yaml's values
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    clean = lambda: ["embed"]  # noqa: E731 - `dvc status`: embed as that dvc.lock records it
    assert pipeline.why_stale("embed", params, layout, clean) == (
        "its outputs changed since its run from these params and inputs: data/embeddings")
    monkeypatch.setattr(pipeline, "run_recorded", lambda *args: None)
    assert pipeline.run_unless_fresh("embed", params, layout, clean=clean)  # runs
    embeddings("another run's, from v2")  # outputs no run here wrote: dvc.lock's word counts
    assert pipeline.why_stale("embed", params, layout, clean) is None
    # a run from other params (which DVC sees) and the same model may write the same bytes (embeddings of another
    # embed.batch_size often are), so an experiment of another batch size, applied, is what DVC says it is
    embeddings("v2's")
    other = one_ingredient_params(tmp_path / "corpus.jsonl", str(model), "embed.batch_size=9")
    assert pipeline.why_stale("embed", other, layout, clean) is None


def test_second_run_skips_up_to_date_stages_and_reruns_what_changed(tmp_path, tiny_model, capsys, monkeypatch):
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)

    def params(*extra):
        return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]", *extra)

    layout = Layout(tmp_path)
    built = []  # what each run tells its closing `dvc commit`: a run that built nothing commits only if behind
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda params, layout, start, b: built.append(b))
    run_pipeline(params(), layout)
    assert _ran(capsys.readouterr().out) == SKIPPABLE
    metrics = (layout.metrics / "metrics.json").read_bytes()
    shutil.copytree(layout.selection.parent, tmp_path / "selection-b12")
    assert "Warning" not in (layout.reports / "report.md").read_text()
    assert stage_status(params(), layout) == dict.fromkeys(STAGES)  # `soupline status`: nothing to run
    status = stage_status(params("select.budget=10", "train.seeds=[0, 1]"), layout)
    assert [k for k, v in status.items() if v] == ["select", "train", "soup", "evaluate"]  # report: inputs as they are
    assert status["select"] == "no run recorded from these params and inputs"
    assert status["train"] == "1 of 2 ingredient(s) to train: lr0.001-seed1"  # on the selection as it is

    run_pipeline(params(), layout)
    out = capsys.readouterr().out
    assert _ran(out) == [] and "train: lr0.001-seed0: up to date" in out and built == [True, False]
    assert (layout.metrics / "metrics.json").read_bytes() == metrics
    assert stale_upstream("report", params(), layout) is None
    hashed = []  # `soupline stage report`'s check meets each stage's outputs again as the next stage's deps
    monkeypatch.setattr(keys, "sha256_tree", lambda path, real=keys.sha256_tree: hashed.append(str(path)) or real(path))
    stale_upstream("report", params(), layout)
    assert len(hashed) > len(set(hashed))
    hashed.clear()
    with keys.memoized():
        stale_upstream("report", params(), layout)
        keys.stage_key("report", params(), layout.root)
    assert hashed and len(hashed) == len(set(hashed))  # each once
    monkeypatch.undo()
    # the report's timings: pipeline order; train is what the ingredient took, not the up-to-date check's 0 s
    seconds = stage_seconds(params(), layout)
    ingredient = json.loads((layout.ingredients / "lr0.001-seed0" / "train_timing.json").read_text())
    # the report's own row would be the previous report's time (this one is not over when it writes the table)
    assert (layout.timings / "report.json").exists()
    assert list(seconds) == ["prepare", "embed", "select", "train (1 ingredient)", "soup", "evaluate"]
    assert seconds["train (1 ingredient)"] == ingredient["train_seconds"] > 0
    assert ingredient["train_info"] == artifacts.sha256_file(layout.ingredients / "lr0.001-seed0" / "train_info.json")

    # what `soupline stage` warns about: the first stage before it that these params would rebuild
    assert stale_upstream("evaluate", params("select.budget=10"), layout) == "select"
    assert stale_upstream("select", params("select.budget=10"), layout) is None
    assert stale_upstream("soup", params("train.seeds=[1]"), layout) == "train"  # seeds: no select param
    run_recorded("select", params("select.budget=11"), layout)  # `soupline stage select`: recorded too
    with pytest.warns(UserWarning, match="1 of 1 ingredient"):  # `soupline stage report` on models of another selection
        run_recorded("report", params("select.budget=11"), layout)
    assert ("> **Warning:** 1 of 1 ingredient(s) (lr0.001-seed0) were not trained on this selection with these "
            "params") in (layout.reports / "report.md").read_text()
    assert stale_upstream("train", params("select.budget=11"), layout) is None
    assert stale_upstream("soup", params("select.budget=11"), layout) == "train"

    run_pipeline(params("select.budget=10"), layout)  # select and what follows; prepare and embed are kept
    assert _ran(capsys.readouterr().out) == ["select", "soup", "evaluate", "report"]
    assert json.loads(layout.selection.read_text())["budget"] == 10
    # the budget back: the outputs of its run were not damaged, a later run replaced them
    assert stage_status(params(), layout)["select"] == ("a later run from other params or inputs replaced what its "
                                                        "run from these wrote")
    shutil.move(layout.selection.parent, tmp_path / "selection-moved")  # gone (DVC deletes it before a failed stage)
    assert stage_status(params(), layout)["select"] == ("its outputs changed since its run from these params and "
                                                        "inputs: data/selections missing")
    shutil.move(tmp_path / "selection-moved", layout.selection.parent)
    # `dvc checkout` of the first run's outputs: their record (one per key) still holds, nothing to rebuild
    selections = layout.selection.parent
    shutil.move(selections, tmp_path / "selection-b10")
    shutil.copytree(tmp_path / "selection-b12", selections)
    assert keys.is_fresh("select", keys.stage_key("select", params(), layout.root), layout.root)
    assert not keys.is_fresh("select", keys.stage_key("select", params("select.budget=10"), layout.root), layout.root)
    shutil.rmtree(selections)
    shutil.move(tmp_path / "selection-b10", selections)

    (layout.metrics / "metrics.json").write_text("{}")  # an output that is not what the run wrote (status names it)
    (layout.metrics / "plots" / "confusion.csv").unlink()
    assert stage_status(params("select.budget=10"), layout)["evaluate"] == (
        "its outputs changed since its run from these params and inputs: data/metrics/metrics.json, "
        "data/metrics/plots/confusion.csv missing")
    run_pipeline(params("select.budget=10"), layout)
    assert _ran(capsys.readouterr().out) == ["evaluate"]
    assert json.loads((layout.metrics / "metrics.json").read_text())["ingredients"]

    (layout.ingredients / "lr0.001-seed0" / "model.safetensors").unlink()  # an ingredient that is no longer whole
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    (layout.checkpoints / "lr0.001-seed0-0123456789ab.pt").write_bytes(b"a run stopped under other params")
    run_pipeline(params("select.budget=10"), layout)
    out = capsys.readouterr().out
    assert "train: lr0.001-seed0: 2 steps" in out and (layout.ingredients / "lr0.001-seed0/model.safetensors").exists()
    assert not list(layout.checkpoints.glob("*.pt"))  # the sweep is built: no checkpoint is needed any more

    corpus = (tmp_path / "corpus.jsonl").read_text()  # the source's content, not its path
    (tmp_path / "corpus.jsonl").write_text("".join(reversed(corpus.splitlines(keepends=True))))
    run_pipeline(params("select.budget=10"), layout)
    assert _ran(capsys.readouterr().out)[0] == "prepare"

    run_pipeline(params("select.budget=10"), layout, force=True)
    assert _ran(capsys.readouterr().out) == SKIPPABLE


def test_the_same_data_under_another_file_name_or_format_rebuilds_only_prepare_and_report(tmp_path, tiny_model,
                                                                                           capsys, monkeypatch):
    """summary.json names the source file, and the stages after prepare depended on all of data/prepared: data
    converted to Parquet, or renamed, re-ran embed, select, soup and evaluate on the same splits. They read only the
    splits and labels.json; the report, which prints the source, reads summary.json."""
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda *args: None)
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    run_pipeline(one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), layout)
    capsys.readouterr()
    cell = study.cell_key(one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), layout)
    pd.read_json(tmp_path / "corpus.jsonl", lines=True).to_parquet(tmp_path / "corpus.parquet")
    run_pipeline(one_ingredient_params(tmp_path / "corpus.parquet", tiny_model), layout)
    assert _ran(capsys.readouterr().out) == ["prepare", "report"]
    assert study.cell_key(one_ingredient_params(tmp_path / "corpus.parquet", tiny_model), layout) == cell
    assert "corpus.parquet" in (layout.reports / "report.md").read_text()
    frame = make_frame(20)
    frame.loc[0, "label"] = "tech" if frame.loc[0, "label"] != "tech" else "sport"  # a label fixed: all of it
    frame.to_parquet(tmp_path / "corpus.parquet")
    run_pipeline(one_ingredient_params(tmp_path / "corpus.parquet", tiny_model), layout)
    assert _ran(capsys.readouterr().out) == SKIPPABLE


def test_data_edited_while_a_run_goes_on_is_not_committed_with_the_outputs_of_the_old(tmp_path, tiny_model, capsys,
                                                                                      monkeypatch):
    """Rows appended to the source while train or soup ran: the closing `dvc commit -f` recorded the new data with
    outputs built from the old, so `dvc status`, `dvc repro` and `soupline status` trusted them."""
    corpus = tmp_path / "corpus.jsonl"
    make_frame(20).to_json(corpus, orient="records", lines=True)
    params = one_ingredient_params(corpus, tiny_model)
    commits = []
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    monkeypatch.setattr(dvc_lock, "dvc_commit", lambda root, stages, unless_recorded=False: commits.append(root))

    def edit_during_report(name, *args, real=pipeline.run_unless_fresh):
        if name == "report" and not commits:
            make_frame(22).to_json(corpus, orient="records", lines=True)
        return real(name, *args)

    monkeypatch.setattr(pipeline, "run_unless_fresh", edit_during_report)
    run_pipeline(params, Layout(tmp_path))
    assert not commits and capsys.readouterr().out.splitlines()[-1] == (
        "dvc: dvc.lock not updated: the inputs of prepare changed while the run went on (data or code edited "
        "meanwhile), so its outputs are not theirs; run it again; `dvc status` lists the stages it does not describe; "
        "its ingredients are kept in data/cache/ingredients too; its soups are kept in data/cache/soups too")
    run_pipeline(params, Layout(tmp_path))  # again, nothing edited meanwhile: built from the new data, committed
    assert _ran(capsys.readouterr().out) == SKIPPABLE and commits == [Path(tmp_path)]


def test_a_stage_refuses_a_max_length_beyond_the_models_positions_before_any_work(tmp_path, tiny_model):
    from soupline.models import max_tokens

    assert max_tokens(tiny_model) == 128  # its position embeddings; its tokenizer would take 512
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.max_length=200")
    with pytest.raises(SouplineError, match=r"^train.max_length=200 is longer than the model takes \(128 tokens\)"):
        run_pipeline(params, Layout(tmp_path))
    assert not (tmp_path / "data" / "embeddings").exists()  # embed refused before encoding anything
    # train.method: probe reads no train.max_length (params warn that it does not apply): not refused for it, unless
    # the selection builds train's model (dealrec's effort pass)
    from tasks.common import base_model

    probe = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.max_length=200", "train.method=probe")
    assert base_model(probe) == tiny_model
    with pytest.raises(SouplineError, match=r"^train.max_length=200 is longer"):
        base_model(one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.max_length=200",
                                         "train.method=probe", "select.method=dealrec"))


def test_a_cuda_device_this_machine_lacks_stops_before_any_stage(tmp_path, tiny_model, monkeypatch):
    """`soupline run device=cuda` on a machine without CUDA ran prepare, embed and select (and restored ingredients)
    before a stage that loads a model said so; `soupline study` likewise: now one line before anything is written."""
    import torch

    from soupline.errors import SouplineError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "device=cuda")
    for run in (run_pipeline, study.run):
        with pytest.raises(SouplineError, match=r"^device 'cuda' asked for but CUDA is not available; use device"):
            run(params, layout)
        assert not layout.data.exists()
    pipeline.check_device("cpu")  # auto and cpu are not checked: they need no torch import
    pipeline.check_device("auto")


def test_fp16_on_a_cpu_device_stops_before_any_stage(tmp_path, tiny_model, monkeypatch):
    """train.precision: fp16 needs CUDA: `soupline run` and `soupline study` ran prepare, embed and select before the
    train stage said so (and `soupline doctor` passed it); now one line before anything is written."""
    import torch

    from soupline.errors import SouplineError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    for extra in (["train.precision=fp16"], ["train.sweep={precision: [fp32, fp16]}"]):
        params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "device=auto", *extra)
        for run in (run_pipeline, study.run):
            with pytest.raises(SouplineError, match=r"^train.precision: fp16 needs a CUDA device"):
                run(params, layout)
            assert not layout.data.exists()
    pipeline.check_device("auto", one_ingredient_params(tmp_path / "c.jsonl", tiny_model, "train.method=probe",
                                                        "train.precision=fp16").train)  # a probe reads no precision


def test_a_budget_the_pool_cannot_hold_stops_before_the_embeddings(tmp_path, tiny_model):
    """The select stage was the first to compare select.budget with the pool, so `soupline run` embedded every split
    (minutes on a real corpus) before saying the budget was too large: the run checks it once prepare has run."""
    from soupline.errors import SouplineError

    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    too_many = r"^select\.budget=22 asks for 22 examples but the pool has only 21; lower select\.budget$"
    for budget, error in (("22", too_many), ("0.01", r"^select\.budget=0\.01 of a pool of 21 is less than one")):
        with pytest.raises(SouplineError, match=error):
            params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, f"select.budget={budget}")
            run_pipeline(params, layout)
        assert not layout.embeddings.exists()
    run_pipeline(one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "select.budget=21"), layout)
    assert len(json.loads(layout.selection.read_text())["indices"]) == 21  # the whole pool is a budget it holds


def test_the_workspace_lock_clears_what_killed_writes_left(tmp_path, capsys):
    """A run killed mid-write leaves `.<name>.<random>.tmp` beside the artifact: the next run that takes the
    workspace lock (no other writer) deletes them, and nothing else."""
    layout = Layout(tmp_path)
    (tmp_path / "data/soups/.uniform.k2x_9a0q.tmp").mkdir(parents=True)
    (tmp_path / "data/soups/.uniform.k2x_9a0q.tmp/model.safetensors").write_bytes(b"half")
    (tmp_path / "data/metrics/plots").mkdir(parents=True)
    (tmp_path / "data/metrics/plots/.confusion.csv.hc_0g691.tmp").write_text("half")
    keep = [tmp_path / "data/.gitkeep", tmp_path / "data/metrics/plots/.notes.tmp", tmp_path / "data/soups/x.tmp"]
    for path in keep:
        path.write_text("mine")
    with workspace_lock(layout, "a test"):
        pass
    assert sorted(p.name for p in (tmp_path / "data").rglob("*.tmp")) == [".notes.tmp", "x.tmp"]
    assert all(p.exists() for p in keep)
    assert capsys.readouterr().out.startswith("removed 2 temporary file(s) a stopped run left: data/")


def test_the_workspace_lock_leaves_a_temporary_another_process_is_writing(tmp_path, capsys):
    """`soupline predict --out data/preds.csv` writes through a temporary it holds an OS lock on, outside the
    workspace lock: a run starting meanwhile leaves that file alone (it deleted it, and predict's rename failed)."""
    layout = Layout(tmp_path)
    live, orphan = tmp_path / "data/.preds.csv.ab12cd34.tmp", tmp_path / "data/.preds.csv.ef56gh78.tmp"
    live.parent.mkdir(parents=True)
    live.write_text("half")
    orphan.write_text("half")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", live],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with workspace_lock(layout, "a test"):
            pass
        assert live.exists() and not orphan.exists()
        assert capsys.readouterr().out.startswith("removed 1 temporary file(s) a stopped run left: data/.preds.csv.ef")
    finally:
        holder.communicate("")
    with open(live, "rb") as f:  # the holder is gone: its lock with it, so the next run takes the file
        assert fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB) is None
    with workspace_lock(layout, "a test"):
        pass
    assert not live.exists()


def test_the_workspace_lock_clears_what_killed_dvc_writes_left_once_it_holds_dvcs_lock(tmp_path, capsys):
    """DVC writes into the workspace through temporaries of its own (`.<22 characters>.tmp`): a SIGKILL in a run's
    closing `dvc commit` left its link test's file in data/metrics, and one in `dvc checkout` a partial copy inside an
    output folder, for good (one more per kill; .gitignore and .dvcignore hid them). The next run deletes them, but
    only once it holds DVC's lock as well (a `dvc checkout` running meanwhile is writing them); stage keys leave
    them out meanwhile, as DVC does."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "data/metrics").mkdir(parents=True)
    ingredient = tmp_path / "data/models/ingredients/lr0.001-seed0"
    ingredient.mkdir(parents=True)
    (ingredient / "model.safetensors").write_bytes(b"weights")
    before = (artifacts.sha256_tree(ingredient.parent), artifacts.file_sizes(ingredient))
    killed = [tmp_path / "data/metrics/.zWbAz7byOAbvdPJFU_unHw.tmp", ingredient / ".M6KEjy5XSg-JOE9dTeDKag.tmp"]
    for path in killed:
        path.write_bytes(b"test")
    (tmp_path / "data/metrics/.notes.tmp").write_text("mine")
    assert (artifacts.sha256_tree(ingredient.parent), artifacts.file_sizes(ingredient)) == before  # `is_intact` too
    (tmp_path / ".dvc/tmp").mkdir()
    with open(tmp_path / ".dvc/tmp/lock", "a+") as dvc:  # a DVC command at work here
        fcntl.flock(dvc, fcntl.LOCK_EX)
        with pytest.raises(SouplineError, match="another DVC process"), workspace_lock(Layout(tmp_path), "a test"):
            pass
    assert all(path.exists() for path in killed)
    with workspace_lock(Layout(tmp_path), "a test"):
        pass
    assert not any(path.exists() for path in killed)
    assert (tmp_path / "data/metrics/.notes.tmp").exists()
    assert capsys.readouterr().out.startswith("removed 2 temporary file(s) a stopped run left: data/")


@pytest.mark.parametrize("damaged", [b"", b'{"write": {"data/metrics": {"pid": 1, "cm'])
def test_the_workspace_lock_removes_dvcs_rwlock_a_stopped_dvc_write_left_unreadable(tmp_path, capsys, damaged):
    """DVC rewrites .dvc/tmp/rwlock in place around each stage it commits: SIGTERM or Ctrl-C in a run's closing `dvc
    commit` left it empty or cut (1 of 10 SIGTERMs 3.35 s into a tiny project's commit-only `soupline run`), and
    every later run's commit, every Prefect flow run and every `dvc` command there failed on it ('JSON structure is
    corrupted'). The next run deletes it once it holds DVC's lock, under which alone DVC edits it; a readable one
    stays."""
    from dvc.fs import localfs
    from dvc.rwlock import RWLockFileCorruptedError, _edit_rwlock

    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True)
    rwlock.write_bytes(damaged)
    with open(tmp_path / ".dvc/tmp/lock", "a+") as dvc:  # a DVC command at work here: its file is left as it is
        fcntl.flock(dvc, fcntl.LOCK_EX)
        with pytest.raises(SouplineError, match="another DVC process"), workspace_lock(Layout(tmp_path), "a test"):
            pass
    with pytest.raises(RWLockFileCorruptedError), _edit_rwlock(str(rwlock.parent), localfs, False):
        pass
    with workspace_lock(Layout(tmp_path), "a test"):
        with _edit_rwlock(str(rwlock.parent), localfs, False) as lock:  # DVC reads it again: no command at work
            assert lock == {"read": {}, "write": {}}
    assert capsys.readouterr().out == ("removed DVC's damaged .dvc/tmp/rwlock (a DVC command stopped while writing "
                                       "it left it unreadable to DVC)\n")
    with workspace_lock(Layout(tmp_path), "a test"):  # DVC's own, readable: kept
        pass
    assert json.loads(rwlock.read_text()) == {"write": {}, "read": {}} and capsys.readouterr().out == ""


def test_content_hashes_leave_out_what_killed_writes_left(tmp_path):
    """A kill mid-write leaves a temporary sibling inside an output folder (an ingredient being saved beside the
    built ones) until the next run takes the lock. DVC ignores it (.dvcignore), so must the stage keys: else
    `soupline status` calls soup, evaluate and report stale while `dvc status` is clean."""
    folder = tmp_path / "ingredients"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "model.safetensors").write_bytes(b"weights")
    before = (artifacts.sha256_tree(folder), artifacts.file_sizes(folder))
    (folder / ".b.k2x_9a0q.tmp").mkdir()
    (folder / ".b.k2x_9a0q.tmp" / "model.safetensors").write_bytes(b"half")
    (folder / "a" / ".train_info.json.hc_0g691.tmp").write_text("half")
    assert (artifacts.sha256_tree(folder), artifacts.file_sizes(folder)) == before
    (folder / "a" / "notes.tmp").write_text("mine")  # not a dot-file (`artifacts.hidden`): content
    assert artifacts.sha256_tree(folder) != before[0]


def test_code_hashes_leave_out_what_python_compiles(tmp_path):
    """A stage's code deps (src/soupline/select, ...) are hashed without __pycache__, which Python writes on the first
    import after a run computed its keys: else the next `soupline run` calls the stage stale and runs it again. So is
    an open editor's swap file (.dvcignore hides it from DVC)."""
    (tmp_path / "select").mkdir()
    (tmp_path / "select" / "kmeans.py").write_text("K = 1\n")
    before = keys.code_content(tmp_path / "select")
    (tmp_path / "select" / "__pycache__").mkdir()
    (tmp_path / "select" / "__pycache__" / "kmeans.cpython-312.pyc").write_bytes(b"compiled")
    assert keys.code_content(tmp_path / "select") == before
    (tmp_path / "select" / ".kmeans.py.swp").write_bytes(b"b0VIM")  # an editor's swap file: Python never reads it
    assert keys.code_content(tmp_path / "select") == before
    (tmp_path / "select" / "kmeans.py").write_text("K = 2\n")
    assert keys.code_content(tmp_path / "select") != before


def test_code_digest_sees_the_files_its_stages_list_and_no_other(monkeypatch):
    """What an ingredient's build, the evaluation cache and a study cell are keyed on: an edit to a file the stage's
    dvc.yaml deps list (a module of the select package included) is new code; one to report.py retrains nothing."""
    from tasks import train

    real, edited = keys.dep_content, set()
    monkeypatch.setattr(keys, "dep_content", lambda dep, root: "edited" if dep in edited else real(dep, root))
    stages = list(yaml.safe_load((Path(keys.__file__).parents[1] / "dvc.yaml").read_text())["stages"])

    def changed_by(dep: str) -> list[str]:
        before = {stage: keys.code_digest(stage) for stage in stages}
        edited.add(dep)
        return [stage for stage in stages if keys.code_digest(stage) != before[stage]]

    build = train.build_record("0123456789ab")
    assert changed_by("src/soupline/report.py") == ["report"]  # evaluate imports no report code
    assert train.build_record("0123456789ab") == build
    assert changed_by("src/soupline/select") == ["select"]
    assert changed_by("src/soupline/train.py") == ["select", "train", "soup", "evaluate", "report"]
    assert train.build_record("0123456789ab") != build
    assert changed_by("data/embeddings") == []  # data: the stage key's, not code


def test_artifacts_get_the_permissions_of_the_umask(tmp_path):
    """mkstemp/mkdtemp make 0600/0700: a report or model a teammate (or a worker as another user) cannot read."""
    import torch
    from safetensors.torch import save_file

    write_json(tmp_path / "a.json", {})
    with atomic_dir(tmp_path / "model") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors writes 0600 itself
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~artifacts.UMASK
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~artifacts.UMASK
    assert stat.S_IMODE((tmp_path / "model/model.safetensors").stat().st_mode) == 0o666 & ~artifacts.UMASK


def test_changing_a_param_and_back_restores_the_ingredients_instead_of_retraining(tmp_path, tiny_model, capsys):
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)

    def params(*extra):
        return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]", *extra)

    def build(*extra, stages=("select", "train")):
        for stage in stages:
            STAGES[stage](params(*extra), layout)

    layout = Layout(tmp_path)
    seed0 = layout.ingredients / "lr0.001-seed0"
    build(stages=("prepare", "embed", "select", "train"))
    weights, key = (seed0 / "model.safetensors").read_bytes(), json.loads((seed0 / "train_info.json").read_text())
    assert stage_status(params("train.checkpoint_every=5", "train.keep_replaced=1"), layout)["train"] is None
    shutil.rmtree(layout.curves / "lr0.001-seed0")  # deleted by hand: status names it, train rewrites it
    assert stage_status(params(), layout)["train"] == ("would rewrite the deleted curves of 1 ingredient(s) from "
                                                       "their history.json (no retraining): lr0.001-seed0")
    assert pipeline.why_stale("train", params(), layout) is None  # no stage after train reads the curves
    build(stages=("train",))
    assert "lr0.001-seed0: up to date (its curves rewritten" in capsys.readouterr().out
    assert (layout.curves / "lr0.001-seed0" / "plots").exists() and stage_status(params(), layout)["train"] is None
    curve = layout.curves / "lr0.001-seed0" / "plots" / "metrics" / "val" / "accuracy.tsv"
    written = curve.read_bytes()
    curve.unlink()  # one file deleted by hand: the same
    assert stage_status(params(), layout)["train"].startswith("would rewrite the deleted curves of 1 ingredient(s)")
    build(stages=("train",))
    assert "lr0.001-seed0: up to date (its curves rewritten" in capsys.readouterr().out
    assert curve.read_bytes() == written and stage_status(params(), layout)["train"] is None
    shutil.copytree(layout.curves / "lr0.001-seed0", layout.curves / "lr0.01-seed3")  # `dvc exp apply` of another sweep
    assert stage_status(params(), layout)["train"] == (
        "would remove the curves of 1 ingredient(s) outside the sweep (left by a run with other params, `dvc exp "
        "apply` or `git checkout`): lr0.01-seed3")
    build(stages=("train",))
    assert not (layout.curves / "lr0.01-seed3").exists() and stage_status(params(), layout)["train"] is None
    build("select.budget=10", "train.seeds=[0, 1]")  # new inputs: both ingredients trained
    out = capsys.readouterr().out
    assert "train: lr0.001-seed0: 2 steps" in out and "train: lr0.001-seed1: 2 steps" in out
    assert [p.name for p in layout.ingredient_cache.iterdir()] == [key["build"]["key"]]  # budget 12's, kept

    (layout.curves / "lr0.001-seed0" / "plots").rename(tmp_path / "budget-10-curves")
    build()  # back to budget 12: restored, not trained; seed1 (dropped) goes to the cache
    out = capsys.readouterr().out
    assert "train: lr0.001-seed0: restored from data/cache/ingredients (built earlier" in out and "steps" not in out
    assert (seed0 / "model.safetensors").read_bytes() == weights
    assert (layout.curves / "lr0.001-seed0" / "plots").exists()  # its own curves, rewritten from its history
    assert not (layout.curves / "lr0.001-seed1").exists() and len(list(layout.ingredient_cache.iterdir())) == 2

    build("train.min_steps=3")  # a train param: budget 12's ingredient goes to the cache
    assert stage_status(params(), layout)["train"] == (
        "1 of 1 ingredient(s) to train: lr0.001-seed0 (1 of them restorable from data/cache/ingredients)")
    build("select.budget=10", "train.seeds=[0, 1]")  # and forth: both restored
    assert capsys.readouterr().out.count(": restored from") == 2

    damaged = layout.ingredient_cache / key["build"]["key"] / "model.safetensors"  # cut short: not trusted
    damaged.write_bytes(damaged.read_bytes()[:-8])
    build("train.keep_replaced=0")
    assert "train: lr0.001-seed0: 2 steps" in capsys.readouterr().out
    assert not list(layout.ingredient_cache.iterdir())  # keep_replaced 0: none kept

    validation = pd.read_parquet(layout.split("validation"))  # another validation split, same pool and selection:
    validation.iloc[1:].to_parquet(layout.split("validation"))  # it picks the probe head's C and greedy's scores
    assert stage_status(params(), layout)["train"] == "1 of 1 ingredient(s) to train: lr0.001-seed0"


EIGHT_BYTES = {"model.safetensors": [8, hashlib.sha256(b"w" * 8).hexdigest()]}  # what train_info.json records of it


def _cached_ingredient(layout: Layout, key: str) -> Path:
    """A whole (8-byte) ingredient in the ingredient cache under `key`."""
    from tasks import train

    cached = layout.ingredient_cache / key
    cached.mkdir(parents=True)
    (cached / "model.safetensors").write_bytes(b"w" * 8)
    write_json(cached / "train_info.json", {"build": train.build_record(key), "files": EIGHT_BYTES})
    return cached


@pytest.mark.parametrize("damage", [b"{cut sh", b"[1, 2]", b"\xff\xfe", None],
                         ids=["cut-short", "not-a-record", "not-utf8", "missing"])
def test_a_cached_ingredient_whose_train_info_is_damaged_is_neither_restored_nor_a_failure(tmp_path, damage):
    from tasks import train

    def damaged() -> Path:
        cached = _cached_ingredient(layout, "0123456789ab")
        assert train.is_whole(cached, "0123456789ab")
        if damage is None:
            (cached / "train_info.json").unlink()
        else:
            (cached / "train_info.json").write_bytes(damage)
        return cached

    layout = Layout(tmp_path)
    cached = damaged()
    assert not train.unshelve(layout, "lr0.001-seed0", "0123456789ab")  # trained again, not a crash
    assert not (layout.ingredients / "lr0.001-seed0").exists() and not cached.exists()  # and it left the cache
    cached = damaged()
    layout.ingredients.mkdir(parents=True)
    cached.rename(layout.ingredients / "lr0.001-seed0")  # in place, as damaged: deleted, never cached
    train.shelve(layout, layout.ingredients / "lr0.001-seed0")
    assert not (layout.ingredients / "lr0.001-seed0").exists() and not any(layout.ingredient_cache.iterdir())


def test_a_run_that_built_nothing_commits_only_when_dvc_lock_is_behind(tmp_path, monkeypatch, capsys):
    """A `soupline run` with every stage up to date asks `dvc status -q` (about half the time of `dvc commit -f`,
    which was 60 % of such a run) and commits only when dvc.lock is behind, as after a run stopped before its
    closing commit; a run that built something commits without asking. The run's DVC lock is let go first (to DVC,
    in this process: `_handed_over`)."""
    import contextlib
    import types

    import dvc.repo

    calls, status = [], {"code": 0}
    repo = types.SimpleNamespace(  # the last stage's commit, with its deps, commits them all: one commit
        root_dir=str(tmp_path), close=lambda: None, lock=None,
        status=lambda targets, with_deps: calls.append("status") or ({"x": 1} if status["code"] else {}),
        commit=lambda target, with_deps, force: calls.append("commit") or [types.SimpleNamespace(name=s)
                                                                           for s in STAGES])
    monkeypatch.setattr(dvc.repo, "Repo", lambda root: repo)
    monkeypatch.setattr(dvc.repo, "lock_repo", lambda repo: contextlib.nullcontext())
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    monkeypatch.setattr(pipeline, "changed_while_running", lambda params, layout: None)
    layout = Layout(tmp_path)
    for code, built, asked in [(0, False, ["status"]), (1, False, ["status", "commit"]), (0, True, ["commit"])]:
        status["code"], calls[:] = code, []
        dvc_lock._held[tmp_path.resolve()] = open(tmp_path / "lock", "a+")
        pipeline.record_in_dvc(None, layout, "prepare", built)
        assert calls == asked and tmp_path.resolve() not in dvc_lock._held
        assert capsys.readouterr().out == "dvc: outputs recorded in dvc.lock (`dvc status` is clean)\n"


def test_a_dvc_lock_a_kill_left_empty_is_said_and_written_again(tmp_path, monkeypatch, capsys):
    """DVC writes dvc.lock in place (truncate, then write): a SIGKILL in a run's closing `dvc commit` left it empty
    (reproduced by killing `dvc commit -f` as dvc.lock appeared), and DVC then refuses every command there. Was:
    `soupline status` said everything was up to date, and every `soupline run` ended `dvc commit -f failed ...: no
    output`, for good. Now status says so, and the run's commit writes it again from the outputs."""
    _dvc_project(tmp_path)
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    dvc_lock.dvc_commit(tmp_path, ["make"])
    lock = tmp_path / "dvc.lock"
    whole = lock.read_text()
    assert dvc_lock.unreadable_lock(tmp_path) is None
    lock.write_text(whole[:whole.index("outs:") + 12])  # cut mid-entry: not what DVC's schema reads
    assert dvc_lock.unreadable_lock(tmp_path).startswith("cannot be read (")
    lock.write_text("")
    assert dvc_lock.unrecorded(None, tmp_path) == (
        "is empty (a run killed while DVC wrote it?): `dvc status` and `dvc repro` fail on it; `soupline run` "
        "writes it again from the outputs")
    assert dvc_lock.damaged_lock(None, tmp_path) == dvc_lock.unrecorded(None, tmp_path)  # said with stages to run too
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): "the run's params differ")
    assert dvc_lock.damaged_lock(None, tmp_path).endswith(
        "`soupline run` with params.yaml's values (a run with overrides does not write dvc.lock) writes it again "
        "from the outputs")
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    capsys.readouterr()
    dvc_lock.dvc_commit(tmp_path, ["make"])
    assert capsys.readouterr().out == ("dvc: dvc.lock is empty (a run killed while DVC wrote it?): written again "
                                       "from the outputs\n")
    assert lock.read_text() == whole
    assert subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=tmp_path).returncode == 0


_POLLER = """
import fcntl, os, select, sys, time
lock, unless = sys.argv[1], sys.argv[2:]
print("polling", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:  # until the test closes our stdin
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            if not (unless and os.path.exists(unless[0])):
                print("took it", flush=True)
                break
    time.sleep(0.0002)
"""


@contextlib.contextmanager
def _waiting_dvc_repro(root: Path, unless: Path | None = None) -> Iterator[list]:
    """A process trying for `root`'s DVC lock every 0.2 ms, as a `dvc repro` waiting for it does (every 0.5 s for
    3 s); yields the list it appends to when it gets the lock while `unless` (a path: the lock is harmless once it
    exists) does not exist, and stops at the block's end. A process, as DVC is: a thread of this one took the lock
    only where the GIL let it run, and missed the 0.1-10 ms gaps of a hand-off that let go and took it again."""
    took_it = []
    poller = subprocess.Popen([sys.executable, "-c", _POLLER, str(root / ".dvc" / "tmp" / "lock"),
                               *([str(unless)] if unless else [])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert poller.stdout.readline() == "polling\n"
    try:
        yield took_it
    finally:
        out, _ = poller.communicate("")
        took_it.extend([True] * ("took it" in out))


def _dvc_project(root: Path) -> None:
    """A DVC project (no git) with one stage whose output exists."""
    (root / "out.txt").write_text("x\n")
    (root / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo x > out.txt\n    outs: [out.txt]\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)


def test_the_closing_commit_leaves_no_gap_in_dvcs_lock_for_a_waiting_dvc_repro(tmp_path, monkeypatch):
    """A run holds DVC's lock (repo_lock) until its closing `dvc commit -f`. The commit ran as a `dvc` child process,
    which took a second or more to start after the run let go: a `dvc repro` started meanwhile (DVC tries every 0.5 s
    for 3 s) took the lock in that gap, deleted the stage outputs dvc.lock did not record yet, met the workspace lock
    in its stage, and the run ended `dvc commit -f failed ...: no output` with data/selections gone. Committing in this
    process, which let go and took the lock again, still left a gap of 0.1-10 ms: now DVC adopts the run's lock. A
    process trying for the lock as DVC does must not get it before dvc.lock is written."""
    _dvc_project(tmp_path)
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    with dvc_lock.repo_lock(tmp_path, "soupline run"):
        with _waiting_dvc_repro(tmp_path, unless=tmp_path / "dvc.lock") as took_it_first:
            dvc_lock.dvc_commit(tmp_path, ["make"])
    assert not took_it_first
    assert subprocess.run([sys.executable, "-m", "dvc", "status", "-q"], cwd=tmp_path).returncode == 0


def test_dvc_status_inside_a_run_leaves_no_gap_in_dvcs_lock_for_a_waiting_dvc_repro(tmp_path):
    """A run asks `dvc status` which stages dvc.lock records (`dvc_clean`) while it holds DVC's lock. It let go of the
    lock for a `dvc status` child process, which took a second or more to start: a waiting `dvc repro` took the lock
    then and deleted the outputs of the stage it began with (seen: an old selection deleted, rebuilt by the run).
    DVC, in this process, now adopts the run's lock and hands it back: a process trying for it as DVC does never
    gets it, the answer is DVC's, and the run holds the lock after."""
    _dvc_project(tmp_path)
    dvc_lock.dvc_commit(tmp_path, ["make"])
    (tmp_path / "out.txt").write_text("y\n")
    with dvc_lock.repo_lock(tmp_path, "soupline run"):
        with _waiting_dvc_repro(tmp_path) as took_it:
            assert dvc_lock.clean_stages(tmp_path, ["make"]) == []  # out.txt changed since dvc.lock
            (tmp_path / "out.txt").write_text("x\n")
            assert dvc_lock.clean_stages(tmp_path, ["make"]) == ["make"]
        assert dvc_lock.busy(tmp_path)  # held again, by this process
    assert not took_it and not dvc_lock.busy(tmp_path)


_DVC_TAKES = """
import sys
from dvc.lock import LockError
from dvc.repo import Repo, lock_repo
try:
    with lock_repo(Repo(sys.argv[1])):
        print("took it")
except LockError:
    print("refused")
"""


def test_a_run_under_dvcs_hardlink_lock_keeps_dvc_out_then_commits_and_leaves_dvc_usable(tmp_path, monkeypatch):
    """`core.hardlink_lock` (DVC's lock for NFS and other file systems without flock) is a hard link at
    .dvc/tmp/lock. Was: the run's flock created a plain file there, which DVC reads as its lock held for good: the
    run ended "`dvc commit -f` could not take ...'s DVC lock: another DVC process ... holds it", and every later DVC
    command failed "Unable to acquire lock" until the file was deleted by hand. Now the run holds DVC's own lock,
    and one DVC holds is a one-line refusal."""
    from dvc.lock import make_lock

    _dvc_project(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "config", "core.hardlink_lock", "true"], cwd=tmp_path, check=True)
    tmp = tmp_path / ".dvc" / "tmp"
    held_by_dvc = make_lock(str(tmp / "lock"), tmp_dir=str(tmp), hardlink_lock=True)
    held_by_dvc.lock()
    assert dvc_lock.busy(tmp_path)
    with pytest.raises(SouplineError, match="another DVC process .* holds"):
        with dvc_lock.repo_lock(tmp_path, "soupline run"):
            pass
    held_by_dvc.unlock()
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    dvc_takes = [sys.executable, "-c", _DVC_TAKES, str(tmp_path)]
    with dvc_lock.repo_lock(tmp_path, "soupline run"):
        assert subprocess.run(dvc_takes, capture_output=True, text=True).stdout == "refused\n"
        dvc_lock.dvc_commit(tmp_path, ["make"])
    assert not dvc_lock.busy(tmp_path)
    assert subprocess.run(dvc_takes, capture_output=True, text=True).stdout == "took it\n"
    assert subprocess.run([*dvc, "status", "-q"], cwd=tmp_path).returncode == 0


def test_the_closing_commit_records_the_runs_stages_and_the_dvc_files_they_read_only(tmp_path, monkeypatch):
    """A dvc.yaml stage the pipeline does not know (the user's own) and a .dvc file no stage reads are left to their
    own driver. Was: the closing `dvc commit -f` of everything failed the run on that stage's missing output (`output
    'other.txt' does not exist`), or recorded its stale output as up to date. A .dvc file a run's stage reads (the
    raw data, `dvc add`ed) is recorded with it, as `dvc repro` records it."""
    monkeypatch.chdir(tmp_path)  # as the drivers run it: DVC's run cache, in this process, reads paths from there
    for name in ("src.txt", "note.txt", "out.txt"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: cp src.txt out.txt\n    deps: [src.txt]\n"
                                       "    outs: [out.txt]\n  other:\n    cmd: cp note.txt other.txt\n"
                                       "    deps: [note.txt]\n    outs: [other.txt]\n")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "src.txt", "note.txt"], cwd=tmp_path, check=True)
    for name in ("src.txt", "note.txt", "out.txt"):
        (tmp_path / name).write_text("y\n")  # the data edited, `make` run again by the pipeline's driver
    dvc_lock.dvc_commit(tmp_path, ["make"])
    status = json.loads(subprocess.run([*dvc, "status", "--json"], cwd=tmp_path, capture_output=True, text=True,
                                       check=True).stdout)
    assert sorted(status) == ["note.txt.dvc", "other"], status
    dvc_lock.dvc_commit(tmp_path, ["make"], unless_recorded=True)  # recorded: nothing to commit, nothing said


def test_status_does_not_wait_for_the_dvc_lock_another_process_holds(tmp_path, monkeypatch):
    """`soupline status` while a `dvc repro` holds DVC's lock: whether dvc.lock records the outputs (`unrecorded`) is
    not asked, as `clean_stages` and `pullable` do not ask. Was: DVC waited 3 s for the lock, failed, and the
    answer was none anyway."""
    _dvc_project(tmp_path)  # no dvc.lock yet: it does not record out.txt
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    assert dvc_lock.unrecorded(None, tmp_path, ("make",)).startswith("does not record these outputs")
    with open(tmp_path / ".dvc" / "tmp" / "lock", "a+") as other:  # flock: per open file, so "another process"
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        start = time.monotonic()
        assert dvc_lock.unrecorded(None, tmp_path, ("make",)) is None
        assert time.monotonic() - start < 1.5


def test_dvc_yaml_is_parsed_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """`soupline status` reads each stage's deps and outs from dvc.yaml a dozen times: parsing it each time was 80 %
    of its stage checks. Parsed once per content: an edit to dvc.yaml is still seen by the next read."""
    parsed, parse = [], yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parsed.append(text) or parse(text))
    shutil.copy(keys.CODE_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.setattr(keys, "CODE_ROOT", tmp_path)
    keys._parse_stages.cache_clear()  # earlier tests parsed this dvc.yaml already
    specs = [keys.stage_spec(stage) for stage in SKIPPABLE]
    assert len(parsed) == 1 and specs[0]["outs"] == ["data/prepared"]
    text = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(text.replace("outs: [data/prepared]", "outs: [data/prepared, data/other]"))
    assert keys.stage_spec("prepare")["outs"] == ["data/prepared", "data/other"] and len(parsed) == 2


@pytest.mark.parametrize("text", ["stages:\n  prepare:\n    cmd: [\n", "", "- a list\n", "stages: 3\n", "\udcff"],
                         ids=["yaml-slip", "empty", "a-list", "no-stages-mapping", "not-utf8"])
def test_a_dvc_yaml_soupline_cannot_read_is_one_line(tmp_path, monkeypatch, text):
    """Every stage's key is made from dvc.yaml: a YAML slip in it was a parser traceback from `soupline status` and
    `soupline run`, and a stage removed from it a KeyError. One line each, naming the file and the fix."""
    from soupline.errors import SouplineError

    (tmp_path / "dvc.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    monkeypatch.setattr(keys, "CODE_ROOT", tmp_path)
    with pytest.raises(SouplineError, match=r"dvc\.yaml cannot be read \(.+\); soupline keys each stage on the deps "
                                            r"and params it lists: fix it, or `git checkout dvc.yaml`$"):
        keys.stage_spec("prepare")
    (tmp_path / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: python -m tasks.prepare\n")
    with pytest.raises(SouplineError, match="has no stage 'embed', which soupline runs"):
        keys.stage_spec("embed")
    assert keys.stage_spec("prepare") == {"deps": [], "params": [], "outs": []}


@pytest.mark.parametrize("damage", [b'{"key": ', b"[1, 2]", b"\xff\xfe"], ids=["cut-short", "not-a-record", "not-utf8"])
def test_a_damaged_stage_record_is_no_record_not_a_traceback(tmp_path, damage):
    """`soupline status`, `run` and `stage` read data/cache/stages: a record damaged on disk or by hand is no
    evidence (the stage runs again and rewrites it), not a JSONDecodeError / AttributeError traceback."""
    from soupline import config
    from tasks.pipeline import why_stale

    params, layout = config.load(tmp_path / "missing.yaml"), Layout(tmp_path)
    key = keys.stage_key("report", params, tmp_path)
    keys.record("report", key, tmp_path, params)
    assert keys.is_fresh("report", key, tmp_path) and why_stale("report", params, layout) is None
    keys.record_path("report", key, tmp_path).write_bytes(damage)
    assert not keys.is_fresh("report", key, tmp_path)
    assert keys.changed_outputs("report", key, tmp_path) == []
    assert why_stale("report", params, layout) == "no run recorded from these params and inputs"


@pytest.mark.parametrize("damage", [b"{", b"[]", b'{"indices": [1]}', b"\xff\xfe"])
def test_a_damaged_selection_is_one_line_and_nothing_built(tmp_path, damage):
    """`soupline status` counts every ingredient as to train; train stops in one line (as report and the probe do)."""
    from soupline import config
    from soupline.errors import SouplineError
    from tasks import train
    from tasks.pipeline import why_stale

    params, layout = config.load(tmp_path / "missing.yaml"), Layout(tmp_path)
    layout.selection.parent.mkdir(parents=True)
    layout.selection.write_bytes(damage)
    assert why_stale("train", params, layout).startswith("4 of 4 ingredient(s) to train")
    with pytest.raises(SouplineError, match="selection.json is damaged; run the select stage again"):
        train.run(params, layout)


@pytest.mark.parametrize("edit", ["out of range", "not an index", "another pool"])
def test_a_selection_that_does_not_fit_the_pool_is_one_line(tmp_path, edit):
    """selection.json edited by hand, or left from another pool (`soupline stage prepare` with other params, then
    `soupline stage train`, which only warns that select is stale): indices it does not hold were an IndexError
    traceback, and those of another pool would train on other examples."""
    from soupline import config
    from soupline.errors import SouplineError
    from tasks import select, train
    from tasks.common import read_selection

    params = config.load(tmp_path / "missing.yaml", ["select.method=random", "select.budget=5", "train.method=probe"])
    layout = Layout(tmp_path)
    layout.prepared.mkdir(parents=True)
    layout.embeddings.mkdir()
    for name, seed in (("pool", 0), ("validation", 2)):
        make_frame(10, seed).to_parquet(layout.split(name), index=False)
        artifacts.write_npy(layout.embedding(name), np.eye(30, 8, dtype=np.float32))
    (layout.prepared / "labels.json").write_text(json.dumps(["business", "sport", "tech"]))
    select.run(params, layout)
    rec = read_selection(layout)
    if edit == "another pool":
        make_frame(10, seed=1).to_parquet(layout.split("pool"), index=False)
    else:
        rec["indices"][0] = 9999 if edit == "out of range" else "7"
        write_json(layout.selection, rec)
    with pytest.raises(SouplineError, match=r"selection.json does not fit .*pool.parquet \(made from another pool, or "
                                            r"edited\); run the select stage again \(soupline stage select\)$"):
        train.run(params, layout)


def test_soup_stops_in_one_line_on_a_damaged_train_info(tmp_path):
    """`soupline stage soup` (which only warns that train is stale) names the record and the stage to run again."""
    from soupline import config
    from soupline.errors import SouplineError
    from tasks import soup, train

    params, layout = config.load(tmp_path / "missing.yaml"), Layout(tmp_path)
    for name in train.ingredient_names(params):
        (layout.ingredients / name).mkdir(parents=True)
        write_json(layout.ingredients / name / "train_info.json", {"val_accuracy": 0.5})
    (layout.ingredients / name / "train_info.json").write_bytes(b'{"val_accuracy": ')
    with pytest.raises(SouplineError, match=f"{name}/train_info.json is damaged; run the train stage again"):
        soup.run(params, layout)


def test_an_ingredient_is_restored_by_a_rename_even_when_data_models_is_gone(tmp_path):
    """Not a copy (hundreds of MB, twice the disk, half a folder in place if the run is killed)."""
    from tasks import train

    layout = Layout(tmp_path)
    cached = _cached_ingredient(layout, "0123456789ab")
    inode = (cached / "model.safetensors").stat().st_ino
    assert train.unshelve(layout, "lr0.001-seed0", "0123456789ab")
    assert (layout.ingredients / "lr0.001-seed0" / "model.safetensors").stat().st_ino == inode


def test_the_ingredient_cache_keeps_only_what_it_could_restore_and_a_record_names_no_other_folder(tmp_path):
    from tasks import shelf, train

    layout = Layout(tmp_path)
    kept = _cached_ingredient(layout, "0123456789ab")
    older = _cached_ingredient(layout, "ba9876543210")  # built by another library source: never restorable
    write_json(older / "train_info.json", {"build": {"key": older.name, "code": "an older soupline"},
                                           "files": EIGHT_BYTES})
    shelf.prune(layout.ingredient_cache, 8, train.is_whole)
    assert [p.name for p in layout.ingredient_cache.iterdir()] == [kept.name]

    folder = layout.ingredients / "lr0.001-seed0"  # a hand-made record whose key would name data/cache itself
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 8)
    write_json(folder / "train_info.json", {"build": train.build_record(".."), "files": EIGHT_BYTES})
    train.shelve(layout, folder)
    assert not folder.exists() and (kept / "model.safetensors").exists()


def test_the_ingredient_cache_keeps_every_ingredient_a_run_replaced_though_they_outnumber_keep_replaced(
        tmp_path, tiny_model, capsys):
    """A sweep of 3 ingredients, all replaced at once (select.budget changed) with train.keep_replaced 1: the cache
    kept the newest 1, so changing the budget back trained 2 again. It keeps what this run shelved; older ones are
    pruned down to keep_replaced as before."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)

    def params(*extra):
        return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                     "train.seeds=[0, 1, 2]", "train.keep_replaced=1", *extra)

    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params(), layout)
    first = {p.name: (p / "model.safetensors").read_bytes() for p in layout.ingredients.iterdir()}
    for stage in ("select", "train"):
        STAGES[stage](params("select.budget=10"), layout)
    assert len(list(layout.ingredient_cache.iterdir())) == 3
    capsys.readouterr()
    for stage in ("select", "train"):
        STAGES[stage](params(), layout)  # back: all three restored, budget 10's three shelved and kept
    assert capsys.readouterr().out.count(": restored from data/cache/ingredients") == 3
    assert {p.name: (p / "model.safetensors").read_bytes() for p in layout.ingredients.iterdir()} == first
    assert len(list(layout.ingredient_cache.iterdir())) == 3
    replaced = {json.loads((layout.ingredients / f"lr0.001-seed{s}" / "train_info.json").read_text())["build"]["key"]
                for s in (1, 2)}
    STAGES["train"](params("train.seeds=[0]"), layout)  # shelves seeds 1 and 2; budget 10's three are older
    assert {p.name for p in layout.ingredient_cache.iterdir()} == replaced


def test_the_shelf_keeps_what_was_shelved_since_its_last_prune_unless_keep_is_0(tmp_path):
    """A run stopped after shelving (Ctrl-C in train, a failed ingredient task of the flow) never got to its prune:
    the next run's prune keeps what it shelved, beside the `keep` newest, so changing the setting back restores it."""
    import os

    from tasks import shelf

    cache = tmp_path / "cache"
    for i, name in enumerate(["old1", "old2"]):
        (cache / name).mkdir(parents=True)
        os.utime(cache / name, (1000 + i, 1000 + i))
    for name in ["new1", "new2", "new3"]:  # shelved by a run that stopped before its prune
        (tmp_path / name).mkdir()
        shelf.shelve(tmp_path / name, cache, name, lambda folder, key: True)
    shelf.prune(cache, 1, lambda folder, key: key != "new2")  # not restorable: never kept
    assert sorted(p.name for p in cache.iterdir()) == ["new1", "new3"]  # the marks cleared with the prune
    shelf.prune(cache, 1, lambda folder, key: True)
    assert len(list(cache.iterdir())) == 1
    (tmp_path / "new4").mkdir()
    shelf.shelve(tmp_path / "new4", cache, "new4", lambda folder, key: True)
    shelf.prune(cache, 0, lambda folder, key: True)
    assert not list(cache.iterdir())


def test_a_cached_ingredient_damaged_at_its_size_is_not_restored_and_leaves_the_cache(tmp_path):
    """The size check let it into the cache and kept it there, counted against keep_replaced, though every run that
    wanted it trained the ingredient again (the content check refused it)."""
    from tasks import train

    layout = Layout(tmp_path)
    cached = _cached_ingredient(layout, "0123456789ab")
    (cached / "model.safetensors").write_bytes(b"x" * 8)  # the same size, other bytes
    assert train.is_whole(cached, cached.name) and not train.is_whole(cached, cached.name, verify=True)
    assert not train.unshelve(layout, "lr0.001-seed0", cached.name)
    assert not cached.exists() and not (layout.ingredients / "lr0.001-seed0").exists()


def test_a_sweep_axis_that_renames_an_ingredient_restores_it_under_its_new_name(tmp_path, tiny_model, capsys):
    """`lr0.001-seed0` and `lr0.001-seed0-epochs1` are the same model when train.epochs is 1: renamed, not retrained."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    weights = (layout.ingredients / "lr0.001-seed0" / "model.safetensors").read_bytes()
    capsys.readouterr()
    STAGES["train"](one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                          "train.sweep={epochs: [1]}", "train.keep_replaced=0"), layout)
    assert "train: lr0.001-seed0-epochs1: restored from" in capsys.readouterr().out
    assert (layout.ingredients / "lr0.001-seed0-epochs1" / "model.safetensors").read_bytes() == weights
    assert [p.name for p in layout.ingredients.iterdir()] == ["lr0.001-seed0-epochs1"]


def test_the_train_line_says_when_training_stopped_early(tmp_path, tiny_model, capsys):
    """Learning rates too small to move validation accuracy: no step beats the start, so patience 1 stops at
    step 1 and keeps step 0's weights."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-12]",
                                   "train.head_learning_rate=1e-12", "train.min_steps=8", "train.eval_every=1",
                                   "train.early_stopping_patience=1")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    assert "train: lr1e-12-seed0: 1 of 8 steps (stopped early, the weights of step 0) on 12 examples" in (
        capsys.readouterr().out)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-12]",
                                   "train.head_learning_rate=1e-12", "train.min_steps=3", "train.eval_every=1",
                                   "train.early_stopping_patience=8")  # not used up: step 3 is reached, step 0 kept
    STAGES["train"](params, layout)
    assert "train: lr1e-12-seed0: 3 steps (the weights of step 0, the best on validation) on 12 examples" in (
        capsys.readouterr().out)


def test_other_weights_saved_into_the_model_folder_rebuild_what_loads_it(tmp_path, tiny_model, capsys, monkeypatch):
    """`model:` a folder of the user's: weights saved into it again (a base model trained further in place) leave
    the params as they were, and dvc.yaml cannot list the folder; the stages that load the model must not stay
    "up to date" on the old one, and the ingredient trains again."""
    import torch
    from transformers import BertModel

    model = tmp_path / "base-model"
    shutil.copytree(tiny_model, model)
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", str(model), "train.learning_rates=[1e-3]")
    layout = Layout(tmp_path)
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda *args: None)
    run_pipeline(params, layout)
    capsys.readouterr()
    embeddings = (layout.embeddings / "pool.npy").read_bytes()
    assert stage_status(params, layout) == dict.fromkeys(STAGES)
    assert keys.dvc_can_vouch("embed", params, layout.root)

    torch.manual_seed(1)
    bert = BertModel.from_pretrained(model)
    with torch.no_grad():
        for weight in bert.parameters():
            weight.normal_(0, 0.05)
    bert.save_pretrained(model)
    stale = [stage for stage, why in stage_status(params, layout).items() if why]
    assert stale == [stage for stage in STAGES if "model" in keys.stage_spec(stage)["params"]], stale
    # dvc.lock, which cannot list the folder, does not vouch for outputs of the old model either (`dvc pull`)
    assert not keys.dvc_can_vouch("embed", params, layout.root) and keys.dvc_can_vouch("report", params, layout.root)
    run_pipeline(params, layout)
    out = capsys.readouterr().out
    assert "embed: up to date" not in out and "train: lr0.001-seed0: 2 steps" in out
    assert (layout.embeddings / "pool.npy").read_bytes() != embeddings
    assert stage_status(params, layout) == dict.fromkeys(STAGES)


def test_keys_leave_out_the_train_settings_that_cannot_change_the_result(tmp_path):
    """Without early stopping the last step's weights are kept: eval_every, and with a random head
    early_stopping_metric, change no ingredient's key; with a patience they choose the weights kept and do. Select's
    key holds only the train settings its method reads: none for kmeans, the starting model's for DEALRec's effort,
    an ingredient's (at the first learning rate) for dnc's finetune scorer."""
    from soupline import config
    from tasks.train import training_key

    def train_keys(*overrides: str) -> tuple[str, str]:
        params = config.load(tmp_path / "missing.yaml", list(overrides))
        ing = params.train.ingredients()[0]
        return (training_key(params, ing, {"indices": [0, 1], "pool_hash": "p"}, "v"),
                keys.stage_key("train", params, tmp_path, ing.name))

    def select_key(*overrides: str) -> str:
        return keys.stage_key("select", config.load(tmp_path / "missing.yaml", list(overrides)), tmp_path)

    assert train_keys("train.eval_every=5") == train_keys()
    assert train_keys("train.head_init=random", "train.early_stopping_metric=macro_f1") == \
        train_keys("train.head_init=random")
    assert train_keys("train.lora.r=4") == train_keys()  # method: full reads no lora setting
    # LP-FT's probe replaces the head head_init_seed draws: the same weights, byte for byte, were trained again
    assert train_keys("train.head_init_seed=3") == train_keys()
    for other in ("train.head_init=random", "train.method=lora", "train.pooling=cls"):
        assert train_keys(other, "train.head_init_seed=3") != train_keys(other)
    one_lr = "train.learning_rates=[0.0001]"  # head_learning_rate null means the body's rate: keyed as that rate
    assert train_keys(one_lr, "train.head_learning_rate=null") == train_keys(one_lr, "train.head_learning_rate=1e-4")
    assert train_keys(one_lr, "train.head_learning_rate=null") != train_keys(one_lr)
    for changed in ("train.early_stopping_metric=macro_f1", "train.epochs=3"):  # LP-FT's probe C: by the metric
        assert train_keys(changed) != train_keys()
    on = "train.early_stopping_patience=2"
    for changed in ("train.eval_every=5", "train.early_stopping_metric=macro_f1"):
        assert train_keys(on, changed, "train.head_init=random") != train_keys(on, "train.head_init=random")
    assert train_keys("train.method=lora", "train.lora.r=4") != train_keys("train.method=lora")
    assert train_keys("train.method=probe", "train.epochs=3") == train_keys("train.method=probe")
    for changed in ("train.learning_rates=[0.0003]", "train.seeds=[5]"):  # the probe reads neither
        assert train_keys("train.method=probe", changed) == train_keys("train.method=probe")
        assert train_keys(changed) != train_keys()

    for method in ("kmeans", "dealrec", "dnc"):
        assert select_key(f"select.method={method}", "train.epochs=3") == select_key(f"select.method={method}")
    assert select_key("select.method=kmeans", "train.pooling=mean") == select_key("select.method=kmeans")
    assert select_key("select.method=dealrec", "train.pooling=mean") != select_key("select.method=dealrec")
    finetune = ("select.method=dnc", "select.dnc.scorer=finetune")
    assert select_key(*finetune, "train.epochs=3") != select_key(*finetune)
    assert select_key(*finetune, "train.learning_rates=[0.0001,0.0003]") == select_key(*finetune)
    assert select_key(*finetune, "train.learning_rates=[0.0003,0.0002]") != select_key(*finetune)
    assert select_key(*finetune, "train.eval_every=5") == select_key(*finetune)
    assert select_key(*finetune, on, "train.eval_every=5") != select_key(*finetune, on)

    from tasks import study
    from tasks.layout import Layout

    layout = Layout(tmp_path)
    for folder in (layout.prepared, layout.embeddings):
        folder.mkdir(parents=True, exist_ok=True)

    def after_train_keys(*overrides: str) -> tuple[str, str]:  # soup and evaluate read what shapes the sweep's models
        params = config.load(tmp_path / "missing.yaml", list(overrides))
        return keys.stage_key("soup", params, tmp_path), keys.stage_key("evaluate", params, tmp_path)

    assert after_train_keys("train.eval_every=5") == after_train_keys()
    probe = "train.method=probe"
    assert after_train_keys(probe, "train.learning_rates=[0.0003]", "train.seeds=[5]") == after_train_keys(probe)
    for changed in ("train.epochs=3", "train.seeds=[0]", "train.early_stopping_metric=macro_f1"):
        assert after_train_keys(changed) != after_train_keys()
    assert after_train_keys("train.head_init=random", "train.early_stopping_metric=macro_f1") != \
        after_train_keys("train.head_init=random")  # evaluate's reference probe picks its C by it
    for sweep, changed in (("train.sweep={method: [full, lora]}", "train.lora.r=2"),  # what some ingredient reads
                           ("train.sweep={early_stopping_patience: [null, 2]}", "train.eval_every=5")):
        assert after_train_keys(sweep, changed) != after_train_keys(sweep)
        params = [config.load(tmp_path / "missing.yaml", [sweep, *extra]) for extra in ([], [changed])]
        assert study.cell_key(params[0], layout) != study.cell_key(params[1], layout)  # a cell hashes no models


def test_the_settings_of_a_soup_not_made_change_no_key(tmp_path):
    """Soup's, evaluate's and a study cell's keys hashed the whole soup section: `soup.learned.lr` edited while
    learned is not in soup.methods re-made every soup (and re-ran every study cell). A soup made still counts."""
    from soupline import config
    from tasks import study
    from tasks.layout import Layout

    layout = Layout(tmp_path)
    for folder in (layout.prepared, layout.embeddings):
        folder.mkdir(parents=True, exist_ok=True)

    def soup_keys(*overrides: str) -> tuple[str, str, str]:
        params = config.load(tmp_path / "missing.yaml", list(overrides))
        return (keys.stage_key("soup", params, tmp_path), keys.stage_key("evaluate", params, tmp_path),
                study.cell_key(params, layout))

    made = "soup.methods=[uniform,ties]"
    assert soup_keys(made, "soup.learned.lr=0.1", "soup.dare.drop=0.3", "soup.greedy.strict=false") == soup_keys(made)
    assert soup_keys(made, "soup.ties.top_k=50")[0::2] != soup_keys(made)[0::2]  # evaluate keys on soup.methods
    assert soup_keys("soup.methods=[uniform,ties,learned]", "soup.learned.lr=0.1") != \
        soup_keys("soup.methods=[uniform,ties,learned]")


def test_an_ingredient_key_holds_the_label_ids(tmp_path):
    """The same rows under another declared label order (or a declared label without examples) train a model with
    other outputs: the training key must change though no split's rows do."""
    import json

    from tasks.layout import Layout
    from tasks.train import validation_and_labels

    layout = Layout(tmp_path)
    layout.prepared.mkdir(parents=True)
    layout.split("validation").write_bytes(b"the same rows")
    (layout.prepared / "labels.json").write_text(json.dumps(["a", "b"]))
    before = validation_and_labels(layout)
    (layout.prepared / "labels.json").write_text(json.dumps(["b", "a"]))
    assert validation_and_labels(layout) != before
    (layout.prepared / "labels.json").write_text(json.dumps(["a", "b"]))
    assert validation_and_labels(layout) == before


def test_status_names_the_ingredients_a_stopped_run_resumes(tmp_path, tiny_model, monkeypatch, capsys):
    """Ctrl-C (or a kill) mid-train keeps the ingredient's checkpoint: `soupline status` says the next run resumes it
    from there (it said only "to train", as for an ingredient never started)."""
    import types

    import soupline.train
    from soupline.errors import SouplineError

    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                   "train.min_steps=4", "train.checkpoint_every=2")
    layout = Layout(tmp_path)
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda *args: None)
    steps = []

    def stop_at_the_fourth_step():
        steps.append(1)
        if len(steps) == 4:  # after the checkpoint of step 2
            raise KeyboardInterrupt

    monkeypatch.setattr(soupline.train, "interrupt", types.SimpleNamespace(check=stop_at_the_fourth_step))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(params, layout)
    assert stage_status(params, layout)["train"] == (
        "1 of 1 ingredient(s) to train: lr0.001-seed0 (1 of them stopped mid-training: resumed from their checkpoint "
        "in data/cache/checkpoints)")
    checkpoint = next(layout.checkpoints.iterdir())
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[:len(whole) // 2])  # cut short by hand (a kill cannot: writes are atomic)
    assert stage_status(params, layout)["train"] == (
        "1 of 1 ingredient(s) to train: lr0.001-seed0 (the checkpoint of lr0.001-seed0 in data/cache/checkpoints "
        "cannot be read: the run stops on it; delete it to start that ingredient over)")
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda *args: None)
    with pytest.raises(SouplineError, match="cannot be read .*delete it to start this ingredient over"):
        run_pipeline(params, layout)  # what status said
    checkpoint.write_bytes(whole)
    run_pipeline(params, layout)
    assert "train: lr0.001-seed0: resumed from step 2" in capsys.readouterr().out
    assert stage_status(params, layout)["train"] is None


def test_ingredients_a_stopped_run_finished_survive_the_checkout_dvc_exp_run_starts_with(tmp_path, tiny_model,
                                                                                          monkeypatch, capsys):
    """`dvc exp run` stopped (Ctrl-C) and started again begins with a forced `dvc checkout` of dvc.lock's outputs:
    the ingredients the stopped run had finished (train is one DVC stage, recorded at its end) were replaced by the
    last recorded ones, or deleted, and trained again. A finished ingredient is kept on the ingredient cache (hard
    links) until the train run ends, so it is moved back; a run that gets to its end leaves no such copy."""
    import types

    import soupline.train

    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3, 2e-3]")
    layout = Layout(tmp_path)
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda *args: None)
    steps = []

    def stop_in_the_second_ingredient():
        steps.append(1)
        if len(steps) == 3:  # each ingredient trains 2 steps (min_steps): the first is finished
            raise KeyboardInterrupt

    monkeypatch.setattr(soupline.train, "interrupt", types.SimpleNamespace(check=stop_in_the_second_ingredient))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(params, layout)
    first = layout.ingredients / "lr0.001-seed0"
    weights = (first / "model.safetensors").read_bytes()
    kept = layout.ingredient_cache / json.loads((first / "train_info.json").read_text())["build"]["key"]
    assert (kept / "model.safetensors").stat().st_ino == (first / "model.safetensors").stat().st_ino  # a link
    shutil.rmtree(first)  # the forced checkout: dvc.lock records no such ingredient
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "record_in_dvc", lambda *args: None)
    capsys.readouterr()
    run_pipeline(params, layout)
    out = capsys.readouterr().out
    assert "train: lr0.001-seed0: restored from data/cache/ingredients" in out and "lr0.002-seed0: 2 steps" in out
    assert (first / "model.safetensors").read_bytes() == weights
    assert not layout.ingredient_cache.exists() or not list(layout.ingredient_cache.iterdir())  # no copy left
    assert stage_status(params, layout)["train"] is None


def test_report_timings_of_outputs_made_elsewhere(tmp_path):
    """A fresh clone after `dvc pull` (or a `dvc checkout`) holds outputs no stage made here: data/timings is not
    shared and train_timing.json is out of DVC's hash. The table says those stages were not timed here; before, it
    read `train (0 ingredients) | 0.0`, left out prepare, embed and select, and gave the rest's sum as the total."""
    from soupline.report import timings_table

    from soupline import config
    params = config.validate(config.apply_overrides({}, ["train.learning_rates=[1e-3]", "train.seeds=[0, 1]"]))
    layout = Layout(tmp_path)
    for name in ("lr0.001-seed0", "lr0.001-seed1"):
        (layout.ingredients / name).mkdir(parents=True)  # pulled: no train_timing.json
    write_json(layout.timings / "soup.json", {"stage": "soup", "seconds": 2.0})  # soup ran here
    seconds = stage_seconds(params, layout)
    assert seconds == {"prepare": None, "embed": None, "select": None, "train (2 ingredients)": None, "soup": 2.0,
                       "evaluate": None}
    table = timings_table(seconds)
    assert "| train (2 ingredients) | not run here |" in table and "| prepare | not run here |" in table
    assert "| total (the stages run here) | 2.0 |" in table and "`dvc pull`" in table
    write_json(layout.ingredients / "lr0.001-seed0" / artifacts.TIMING_FILE, {"train_seconds": 5.0})
    assert stage_seconds(params, layout)["train (1 of 2 ingredients)"] == 5.0  # the other one was pulled
    # `dvc checkout` / `dvc exp apply` of other weights leaves the timing file of the ones trained here (DVC ignores
    # it): a timing counts only while the train_info.json it was written with is there
    seed1 = layout.ingredients / "lr0.001-seed1"
    write_json(seed1 / "train_info.json", {"build": {"key": "a"}})
    write_json(seed1 / artifacts.TIMING_FILE, {"train_seconds": 7.0,
                                              "train_info": artifacts.sha256_file(seed1 / "train_info.json")})
    assert stage_seconds(params, layout)["train (2 ingredients)"] == 12.0
    write_json(seed1 / "train_info.json", {"build": {"key": "b"}})  # checked out: another training's
    assert stage_seconds(params, layout)["train (1 of 2 ingredients)"] == 5.0
    every = {"prepare": 1.0, "train (2 ingredients)": 3.0}
    assert timings_table(every).splitlines()[-1] == "| total | 4.0 |"


def test_a_stage_timing_counts_only_for_the_outputs_its_run_made(tmp_path):
    """DVC's run cache (`Stage 'evaluate' is cached`), `dvc checkout` and `dvc exp apply` put back another run's
    outputs and leave data/timings as it was: the report showed the last evaluate run's seconds beside the other
    run's metrics. A timing names the record files its run wrote, and counts while they are those."""
    from soupline import config
    from tasks.common import timed

    params, layout = config.validate({}), Layout(tmp_path)

    def evaluate(params, layout):
        write_json(layout.metrics / "details.json", {"models": {"m": 0.9}})

    def soup(params, layout):
        for method in ("uniform", "greedy"):
            write_json(layout.soups / method / "soup.json", {"method": method})

    timed("evaluate", evaluate, params, layout)
    timed("soup", soup, params, layout)
    assert stage_seconds(params, layout)["evaluate"] is not None and stage_seconds(params, layout)["soup"] is not None
    write_json(layout.metrics / "details.json", {"models": {"m": 0.8}})  # restored: another run's scores
    write_json(layout.soups / "greedy" / "soup.json", {"method": "greedy", "ingredients": 1})
    assert stage_seconds(params, layout)["evaluate"] is None and stage_seconds(params, layout)["soup"] is None
    write_json(layout.timings / "select.json", {"stage": "select", "seconds": 3.0})  # written before the digest
    assert stage_seconds(params, layout)["select"] == 3.0


def test_the_report_says_when_the_models_changed_since_evaluate(tmp_path, tiny_model):
    """`soupline stage train` after an edit, then `soupline stage report`: the ingredients are these params' but
    details.json scored the ones before. report.md said nothing (its timings the new training's, its metrics the old
    models'); it now opens with a warning naming them."""
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)

    def params(*extra):
        return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *extra)

    run_pipeline(params(), layout)
    assert "Warning" not in (layout.reports / "report.md").read_text()
    run_recorded("train", params("train.epochs=3"), layout)
    with pytest.warns(UserWarning, match="changed since evaluate scored them"):
        run_recorded("report", params("train.epochs=3"), layout)
    assert ("> **Warning:** 2 model(s) (lr0.0001-seed0, lr0.0002-seed0) changed since evaluate scored them"
            in (layout.reports / "report.md").read_text())
    run_pipeline(params("train.epochs=3"), layout)
    run_recorded("train", params("train.epochs=3", "train.learning_rates=[0.0001]", "train.keep_replaced=0"), layout)
    with pytest.warns(UserWarning, match="removed since evaluate scored them"):
        run_recorded("report", params("train.epochs=3", "train.learning_rates=[0.0001]"), layout)
    assert ("> **Warning:** 1 model(s) (lr0.0002-seed0) removed since evaluate scored them: the metrics below are of "
            "the models before" in (layout.reports / "report.md").read_text())  # was: "changed", for a model gone


def test_a_setting_only_the_reference_probe_reads_re_makes_no_soup(tmp_path):
    """`train.early_stopping_metric` with a random head and no early stopping shapes no ingredient: it picks the C of
    evaluate's reference probe alone. It was in soup's key too, so editing it re-made every soup (greedy's and
    learned's validation passes included) to the same bytes."""
    from soupline import config

    def key(stage: str, *overrides: str) -> str:
        return keys.stage_key(stage, config.load(tmp_path / "missing.yaml", ["train.head_init=random", *overrides]),
                              tmp_path)

    edit = "train.early_stopping_metric=macro_f1"
    assert key("soup", edit) == key("soup")
    assert key("evaluate", edit) != key("evaluate")  # the reference probe's C is picked by it
    on = "train.early_stopping_patience=2"  # with early stopping it chooses the weights kept: every soup changes
    assert key("soup", on, edit) != key("soup", on)
    assert key("soup", "train.head_init=probe", edit) != key("soup", "train.head_init=probe")  # LP-FT's probe head


def test_a_lora_target_that_matches_no_layer_stops_before_any_stage(tmp_path, tiny_model):
    """`soupline run train.method=lora train.lora.target_modules=[query,vlaue]` ran prepare, embed and select before
    the train stage said the name matches no layer; now one line before anything is written."""
    from soupline.errors import SouplineError

    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.method=lora",
                                   "train.lora.target_modules=[query,vlaue]")
    with pytest.raises(SouplineError, match=r"^train.lora.target_modules \['query', 'vlaue'\]: vlaue names no"):
        run_pipeline(params, layout)
    assert not layout.data.exists()
