"""The cache-key audit: after a run, editing a params key makes `soupline status` (and so `soupline run`, the Prefect
flow: one `stage_key`) name the stages that read it, and no other; an input a stage reads outside its key (a probe's
embeddings, the embed cache's code) re-runs it too. A key that misses one serves a stale, wrong artifact."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from soupline import config
from soupline.models import pick_device
from tasks import keys
from tasks.layout import Layout
from tasks.pipeline import STAGES, run_pipeline, stage_status
from tests.conftest import make_frame

# edit -> the stages `soupline status` names after a run of BASE (the first that read it: those after them re-run only
# when its outputs change). `seed` draws the splits and, with select.seed null, the selection; `embed` and `model` are
# select's too (GOT-D's target file); soup and evaluate hold the settings that shape any ingredient.
AUDIT = {
    "seed=7": {"prepare", "select"},
    "select.seed=42": set(),  # the global seed it stands for: the same selection
    "select.seed=3": {"select"},
    "prepare.validation_size=0.15": {"prepare"},
    "prepare.max_examples=50": {"prepare"},
    "prepare.duplicates=drop": {"prepare"},
    "embed.batch_size=8": {"embed", "select"},
    "embed.max_length=24": {"embed", "select"},
    "select.method=random": {"select"},
    "select.budget=10": {"select"},
    "select.stratify=label": {"select"},
    "select.dedup_threshold=0.99": {"select"},
    "select.kmeans.niter=10": {"select"},
    "select.dnc.k=3": set(),  # a method not in use
    "select.gotd.eps_scale=0.1": set(),
    "train.method=lora": {"train", "soup", "evaluate"},
    "train.lora.r=4": set(),  # read by method: lora alone
    "train.lora.learning_rate_scale=10": set(),  # so full fine-tuning's keys stayed as they were when it came
    "train.pooling=mean": {"train", "soup", "evaluate"},
    "train.head_init=random": {"train", "soup", "evaluate"},
    "train.head_init_seed=3": set(),  # LP-FT's probe replaces the head it draws
    "train.learning_rates=[1e-3]": {"train", "soup", "evaluate"},
    "train.seeds=[0, 1]": {"train", "soup", "evaluate"},
    "train.epochs=3": {"train", "soup", "evaluate"},
    "train.batch_size=4": {"train", "soup", "evaluate"},
    "train.max_length=24": {"train", "soup", "evaluate"},
    "train.weight_decay=0.0": {"train", "soup", "evaluate"},
    "train.warmup_ratio=0.5": {"train", "soup", "evaluate"},  # 1 warm-up step of 2, not 0
    "train.warmup_ratio=0.3": set(),  # 0 of 2, as 0.1 gives: soup and evaluate hold the steps, as training does
    "train.epochs=2": set(),  # 2 steps, as min_steps gives 1 epoch
    "train.schedule=cosine": {"train", "soup", "evaluate"},
    "train.early_stopping_patience=2": {"train", "soup", "evaluate"},
    "train.eval_every=4": set(),  # without early stopping the last step's weights are kept
    "train.checkpoint_every=7": set(),
    "train.keep_replaced=2": set(),
    "soup.methods=[uniform]": {"soup", "evaluate"},
    "soup.ties.top_k=30.0": {"soup"},
    "soup.dare.seed=2": set(),  # dare is not made
    "soup.learned.lr=0.1": set(),
    "soup.keep_replaced=2": set(),
    "evaluate.batch_size=8": {"soup", "evaluate"},
    "study.methods=[random]": set(),
    # the device `auto` picks (CPU and CUDA floats differ)
    "device=auto": {"embed", "soup", "evaluate"} if torch.cuda.is_available() else set(),
}
BASE = {"device": "cpu", "prepare": {"source": "corpus.jsonl"}, "embed": {"max_length": 32},
        "select": {"budget": 12}, "train": {"learning_rates": [1e-3, 2e-3], "seeds": [0], "epochs": 1,
                                            "min_steps": 2, "max_length": 32},
        "soup": {"methods": ["uniform", "ties"]}}


def test_each_params_key_re_runs_the_stages_that_read_it_and_no_other(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_frame(20).to_json("corpus.jsonl", orient="records", lines=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**BASE, "model": tiny_model}))
    layout = Layout(tmp_path)
    run_pipeline(config.load("params.yaml"), layout)
    stale = {edit: {s for s, why in stage_status(config.load("params.yaml", [edit]), layout).items() if why}
             for edit in AUDIT}
    assert {edit: s for edit, s in stale.items() if s != AUDIT[edit]} == {}
    # the model folder by another spelling of its path: the same files, read from the same place
    for spelling in (f"{tiny_model}/", f"{os.path.relpath(tiny_model)}/.", f"{tiny_model}/../{Path(tiny_model).name}"):
        assert stage_status(config.load("params.yaml", [f"model={spelling}"]), layout) == dict.fromkeys(STAGES)

    # no edit but the spelling: comments, key order, flow style
    text = yaml.safe_dump({**BASE, "model": tiny_model}, sort_keys=True, default_flow_style=True)
    (tmp_path / "params.yaml").write_text("# the same run\n" + text.replace(", ", ",  # a comment\n "))
    assert stage_status(config.load("params.yaml"), layout) == dict.fromkeys(STAGES)
    capsys.readouterr()
    run_pipeline(config.load("params.yaml", ["select.seed=42", "train.eval_every=1"]), layout)
    out = capsys.readouterr().out
    assert all(f"{s}: up to date" in out for s in STAGES if s != "train") and "steps on" not in out


def test_spellings_of_one_schedule_train_the_same_key(tmp_path):
    """Training reads warmup_ratio as its warm-up steps and, with early stopping, eval_every as the steps between
    evaluations (0: an epoch's): a ratio or an interval that gives the same count trained the same model again."""
    from tasks.train import training_key

    def key(*overrides: str, examples: int = 40) -> str:  # batch 16: 3 steps an epoch, 18 in 6 epochs
        params = config.load(tmp_path / "missing.yaml", ["train.min_steps=0", *overrides])
        return training_key(params, params.train.ingredients()[0], {"indices": list(range(examples)),
                                                                    "pool_hash": "p"}, "v")

    assert key("train.warmup_ratio=0.11") == key()  # of 18 steps: int(1.8) == int(1.98) == 1
    assert key("train.warmup_ratio=0.2") != key()  # 3 steps
    assert key("train.warmup_ratio=0.11", examples=200) != key(examples=200)  # of 78 steps: 7, 8
    on = "train.early_stopping_patience=2"
    assert key(on, "train.eval_every=3") == key(on)  # one epoch's steps
    assert key(on, "train.eval_every=18") == key(on, "train.eval_every=50")  # the last step alone
    assert key(on, "train.eval_every=2") != key(on)
    assert key("train.eval_every=2") == key()  # no early stopping: not read
    assert keys.stage_key("select", config.load(tmp_path / "missing.yaml", ["select.seed=42"]), tmp_path) == \
        keys.stage_key("select", config.load(tmp_path / "missing.yaml", []), tmp_path)
    assert keys.stage_key("select", config.load(tmp_path / "missing.yaml", ["select.seed=5", "seed=7"]), tmp_path) \
        == keys.stage_key("select", config.load(tmp_path / "missing.yaml", ["select.seed=5"]), tmp_path)


def test_no_training_key_holds_the_device(tmp_path, monkeypatch):
    """The same params and seed train the same weights within float tolerance on CPU and CUDA, so an ingredient's key
    holds no device, and LP-FT's head key neither: it held one, and a sweep built on CPU and extended on CUDA (a new
    seed, a Prefect worker with a GPU) fitted the head again for its new ingredients, unlike the one its others had."""
    from tasks import train

    monkeypatch.setattr(train, "pick_device", lambda device: device)  # as if each device were here

    def both(device: str) -> tuple[str, str]:
        params = config.load(tmp_path / "missing.yaml", [f"device={device}"])
        ing, selection = params.train.ingredients()[0], {"indices": list(range(40)), "pool_hash": "p"}
        return train.training_key(params, ing, selection, "v"), train.head_key(params, ing, selection, "v")

    assert both("cpu") == both("cuda") == both("cuda:1")


def test_a_probe_is_fit_again_when_the_embeddings_it_reads_change(tmp_path, tiny_model, capsys):
    """train.method: probe was keyed on the embed settings, not the vectors: an embed run that wrote others from the
    same settings (its code edited, `dvc repro` re-running embed then train) left the probe fit on the old ones
    "up to date", and evaluate scored it on the new test embeddings."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = config.validate(config.apply_overrides({}, [
        f"model={tiny_model}", "device=cpu", f"prepare.source={tmp_path / 'corpus.jsonl'}", "embed.max_length=32",
        "select.budget=12", "train.method=probe", "train.max_length=32"]))
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    probe = (layout.ingredients / "linear-probe" / "probe.safetensors").read_bytes()
    for split in ("pool", "validation", "test"):  # what another embed code writes: here, the vectors reflected
        np.save(layout.embedding(split), -np.load(layout.embedding(split)))
    assert stage_status(params, layout)["train"] == "1 of 1 ingredient(s) to train: linear-probe"
    capsys.readouterr()
    STAGES["train"](params, layout)
    assert "up to date" not in capsys.readouterr().out
    assert (layout.ingredients / "linear-probe" / "probe.safetensors").read_bytes() != probe


def test_the_embed_cache_is_keyed_on_the_code_that_encodes(tmp_path, tiny_model, monkeypatch):
    """An edit to soupline/embed.py (or models.py, which loads the model) re-runs the embed stage, a dvc.yaml dep:
    the cache keyed on the model, max_length and texts alone served it the vectors of the code before."""
    import soupline.embed
    import soupline.models

    before = soupline.embed.Encoder(tiny_model, 8, 32).fingerprint
    for module in (soupline.embed, soupline.models):
        edited = tmp_path / f"{module.__name__}.py"
        edited.write_text(open(module.__file__).read() + "\n# encodes otherwise\n")
        with monkeypatch.context() as m:
            m.setattr(module, "__file__", str(edited))
            assert soupline.embed.Encoder(tiny_model, 8, 32).fingerprint != before
    assert soupline.embed.Encoder(tiny_model, 8, 32).fingerprint == before


@pytest.mark.filterwarnings("ignore:train.method. probe is fit")  # config's word on the probe, not on DEALRec
def test_a_study_cell_holds_the_train_settings_its_selection_reads(tmp_path):
    """DEALRec's effort pass builds the model train starts from (pooling, max_length, head) even under
    `train.method: probe`, whose sweep settings hold none of them: editing one changed select's stage key but not the
    study cell's, and the study served the cell of the old selection. A method that reads none keys as before."""
    from tasks import study

    layout = Layout(tmp_path)
    for folder in (layout.prepared, layout.embeddings):
        folder.mkdir(parents=True)

    def cell_and_select(*overrides: str) -> tuple[str, str]:
        params = config.load(tmp_path / "missing.yaml", ["train.method=probe", *overrides])
        return study.cell_key(params, layout), keys.stage_key("select", params, tmp_path)

    for edit in ("train.pooling=mean", "train.max_length=64", "train.head_init=random"):
        for a, b in zip(cell_and_select("select.method=dealrec", edit), cell_and_select("select.method=dealrec")):
            assert a != b, edit
        assert cell_and_select("select.method=kmeans", edit) == cell_and_select("select.method=kmeans")


def test_select_and_a_study_cell_are_keyed_on_what_they_read(tmp_path, monkeypatch):
    """DEALRec's effort pass reads train.head_init_seed only where the head it draws survives (LP-FT's probe replaces
    it, but not `pooling: cls`'s drawn layers or LoRA's adapters): a seed edit re-selected for nothing. A study cell
    holds `device: auto` as the device it picks, and a model folder by one spelling of its path."""
    from tasks import study

    monkeypatch.chdir(tmp_path)
    layout = Layout(tmp_path)
    for folder in (layout.prepared, layout.embeddings, tmp_path / "model"):
        folder.mkdir(parents=True)

    def select_key(*overrides: str) -> str:
        return keys.stage_key("select", config.load("missing.yaml", ["select.method=dealrec", *overrides]), tmp_path)

    assert select_key("train.head_init_seed=3") == select_key()
    for read in (["train.head_init=random"], ["train.pooling=cls"],
                 ["select.dealrec.effort_params=trainable", "train.method=lora"]):
        assert select_key(*read, "train.head_init_seed=3") != select_key(*read), read

    def cell(*overrides: str) -> str:
        return study.cell_key(config.load("missing.yaml", list(overrides)), layout)

    assert (cell("device=auto") == cell("device=cpu")) is not torch.cuda.is_available()
    assert keys.auto_device() == pick_device()  # told without torch where no GPU driver is installed
    assert cell("model=model/") == cell("model=./model") == cell(f"model={tmp_path / 'model'}") != cell("model=other")
    # an absolute path through a link (macOS' /tmp, a linked home): the working directory is the link's target
    (tmp_path.parent / f"{tmp_path.name}-link").symlink_to(tmp_path)
    assert keys.model_spelling(str(tmp_path.parent / f"{tmp_path.name}-link" / "model")) == "model"


def test_dnc_finetune_keys_its_scorers_schedule_as_the_steps_it_trains(tmp_path):
    """dnc's `scorer: finetune` trains on the selection so far, fewer texts than the budget: where min_steps outlasts
    `epochs` passes over the budget's texts, every round trains min_steps steps, and an epochs or warm-up edit that
    changes no step re-ran minutes of scoring into the same selection."""
    layout = Layout(tmp_path)
    layout.prepared.mkdir(parents=True)
    make_frame(20).to_parquet(layout.split("pool"))  # 60 texts

    def key(*overrides: str) -> str:
        params = config.load(tmp_path / "missing.yaml", ["select.method=dnc", "select.dnc.scorer=finetune",
                                                         "select.budget=12", *overrides])  # batch 16: min_steps 60
        return keys.stage_key("select", params, tmp_path)

    assert key("train.epochs=5") == key("train.warmup_ratio=0.11") == key()  # 60 steps, 6 of warm-up
    for edit in ("train.min_steps=50", "train.warmup_ratio=0.2", "select.budget=0.2"):
        assert key(edit) != key(), edit
    assert key("train.batch_size=1", "train.epochs=9") != key("train.batch_size=1")  # 12 texts: 108 steps, not 72
    assert key("select.dnc.scorer=proxy", "train.epochs=5") == key("select.dnc.scorer=proxy")


def test_a_probe_is_fit_again_when_its_model_folder_moves(tmp_path, tiny_model, monkeypatch, capsys):
    """A probe's train_info.json names the model folder `soupline predict` embeds new texts with: keyed on the folder's
    content alone, the probe stayed "up to date" after the folder moved (`model:` edited to its new path), named the
    old path, and predict found no model there. Another spelling of the same path fits nothing again."""
    import shutil

    from soupline.artifacts import read_json
    from soupline.predict import class_probabilities

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model, "models/m")
    make_frame(20).to_json("corpus.jsonl", orient="records", lines=True)

    def params(model: str) -> config.Params:
        return config.validate(config.apply_overrides({}, [
            f"model={model}", "device=cpu", "prepare.source=corpus.jsonl", "embed.max_length=32", "select.budget=12",
            "train.method=probe", "train.max_length=32"]))

    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params("models/m"), layout)
    assert stage_status(params("./models/m/"), layout)["train"] is None
    Path("models/m").rename("moved")
    capsys.readouterr()
    for stage in ("embed", "select", "train"):
        STAGES[stage](params("moved"), layout)
    assert "linear-probe: up to date" not in capsys.readouterr().out
    probe = layout.ingredients / "linear-probe"
    assert read_json(probe / "train_info.json")["embed"]["model"] == "moved"
    assert class_probabilities(probe, ["the team won the match"], "cpu", 8, 32, [])[0].shape == (1, 3)


def test_a_copied_workspace_runs_nothing_again(tmp_path, tiny_model, monkeypatch, capsys):
    """A copy of a workspace (`cp -r`, another folder; a teammate's, whose home holds the same model files at
    `~/models/m`) is up to date, and its embed stage, run again, is served by the embedding cache: the keys hold
    content, paths relative to the workspace, and a model folder under the home folder as `~/...` (an absolute path
    there re-ran embed, select, soup, evaluate and report in the other home, on the same files)."""
    import shutil

    for name in ("a", "b"):
        shutil.copytree(tiny_model, tmp_path / name / "models" / "m")
    first = tmp_path / "a" / "ws"
    first.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    make_frame(20).to_json("corpus.jsonl", orient="records", lines=True)
    Path("params.yaml").write_text(yaml.safe_dump({**BASE, "model": "~/models/m"}))
    run_pipeline(config.load("params.yaml"), Layout(first))
    for name, copy in (("a", tmp_path / "a" / "copy"), ("b", tmp_path / "b" / "ws")):
        shutil.copytree(first, copy)
        monkeypatch.chdir(copy)
        monkeypatch.setenv("HOME", str(tmp_path / name))
        assert stage_status(config.load("params.yaml"), Layout(copy)) == dict.fromkeys(STAGES), copy
        shutil.rmtree(Layout(copy).embeddings)
        capsys.readouterr()
        run_pipeline(config.load("params.yaml"), Layout(copy))
        out = capsys.readouterr().out
        assert "cache hits: {'pool': True, 'validation': True, 'test': True}" in out
        assert all(f"{s}: up to date" in out for s in STAGES if s not in ("embed", "train")), out
