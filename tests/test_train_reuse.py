"""Train reuses what it can: an epochs edit that leaves the steps as they were, a checkpoint under an ingredient's
old name; status says so; a probe warns of settings it does not read."""

import warnings

import pytest

from soupline import config
from soupline.artifacts import read_json
from tasks.layout import Layout
from tasks.pipeline import STAGES, stage_status
from tests.conftest import killed_after_a_checkpoint, make_frame, one_ingredient_params


def test_status_says_a_renamed_sweeps_ingredients_are_restored_not_trained(tmp_path, tiny_model):
    """A sweep axis that lists the section's own value renames the ingredients; the run restores them under their new
    names, so `soupline status` must not announce them as only `to train`."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    swept = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                  "train.sweep={epochs: [1]}")
    assert "1 of them built under the sweep's old names: renamed, not trained" in stage_status(swept, layout)["train"]


def test_a_probe_run_warns_that_class_weighting_does_not_apply():
    """train.method: probe fits an unweighted logistic regression: class_weighting (meant for a skewed selection)
    would otherwise be ignored without a word."""
    with pytest.warns(UserWarning, match="train.class_weighting=balanced does not apply"):
        config.validate(config.apply_overrides({}, ["train.method=probe", "train.class_weighting=balanced"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.validate(config.apply_overrides({}, ["train.method=probe", "train.max_length=128"]))


def test_a_run_stopped_before_a_sweep_rename_resumes_under_the_new_name(tmp_path, tiny_model, monkeypatch, capsys):
    """Killed after a checkpoint, then run with `train.sweep={epochs: [1]}` (the section's own value: the same model
    and key under a new name): the run resumes that checkpoint instead of training from step 0 and deleting it."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    extra = ("train.learning_rates=[1e-3]", "train.min_steps=6", "train.checkpoint_every=2")
    layout = Layout(tmp_path)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *extra)
    for stage in ("prepare", "embed", "select"):
        STAGES[stage](params, layout)
    with killed_after_a_checkpoint(monkeypatch):
        STAGES["train"](params, layout)
    assert [p.name.rsplit("-", 1)[0] for p in layout.checkpoints.glob("*.pt")] == ["lr0.001-seed0"]
    capsys.readouterr()
    swept = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *extra, "train.sweep={epochs: [1]}")
    assert "1 of them stopped mid-training" in stage_status(swept, layout)["train"]
    STAGES["train"](swept, layout)
    out = capsys.readouterr().out
    assert "train: lr0.001-seed0-epochs1: resumed from step 2" in out
    assert not list(layout.checkpoints.glob("*.pt"))


def test_an_epochs_edit_that_leaves_the_steps_as_they_were_retrains_nothing(tmp_path, tiny_model, capsys):
    """steps = max(epochs x steps per epoch, min_steps): on a small selection min_steps wins, and `epochs: 1 -> 2`
    trains the very same model (same steps, batch order and schedule). The ingredient is kept, not trained again."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                   "train.min_steps=5")
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    weights = (layout.ingredients / "lr0.001-seed0" / "model.safetensors").read_bytes()
    capsys.readouterr()
    more = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                 "train.min_steps=5", "train.epochs=2")  # 12 examples, batch 16: 2 steps < 5
    assert stage_status(more, layout)["train"] is None
    STAGES["train"](more, layout)
    assert "train: lr0.001-seed0: up to date" in capsys.readouterr().out
    assert (layout.ingredients / "lr0.001-seed0" / "model.safetensors").read_bytes() == weights


def test_a_dot_file_beside_an_ingredient_leaves_it_built_and_shelved(tmp_path, tiny_model, capsys):
    """A .DS_Store (macOS Finder) or an editor's swap file in an ingredient folder made it count as changed: status
    said `to train`, train trained it again, and a replaced one was deleted, not shelved. Dot-files are no content
    (`artifacts.hidden`), to DVC too (.dvcignore: tests/test_gitignore.py)."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]")
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    folder = layout.ingredients / "lr0.001-seed0"
    weights = (folder / "model.safetensors").read_bytes()
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".config.json.swp").write_bytes(b"b0VIM 9.0")
    assert stage_status(params, layout)["train"] is None
    capsys.readouterr()
    STAGES["train"](params, layout)
    assert "train: lr0.001-seed0: up to date" in capsys.readouterr().out
    other = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[2e-3]")
    STAGES["train"](other, layout)  # lr0.001-seed0 is dropped from the sweep: shelved, with its litter
    STAGES["train"](params, layout)
    assert "train: lr0.001-seed0: restored from" in capsys.readouterr().out
    assert (folder / "model.safetensors").read_bytes() == weights


def test_a_sweep_fits_its_lp_ft_head_once_and_keeps_only_its_own(tmp_path, tiny_model, monkeypatch):
    """train.head_init: probe (the default): the first ingredient fits the head, the others of the sweep read it from
    data/cache/heads; once the sweep is built, heads of other keys (another selection's) are deleted."""
    from soupline import train

    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3, 2e-3]",
                                   "train.seeds=[0, 1]")
    for stage in ("prepare", "embed", "select"):
        STAGES[stage](params, layout)
    fits, features = [], train.head_features
    monkeypatch.setattr(train, "head_features", lambda *a, **k: fits.append(1) or features(*a, **k))
    STAGES["train"](params, layout)
    assert len(fits) == 2 and len(list(layout.ingredients.iterdir())) == 4  # selection + validation, once
    first = list(layout.head_cache.glob("*.safetensors"))
    assert len(first) == 1
    other = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3, 2e-3]",
                                  "train.seeds=[0, 1]", "select.budget=10")
    for stage in ("select", "train"):
        STAGES[stage](other, layout)
    assert len(fits) == 4 and [p.name for p in layout.head_cache.glob("*")] != [p.name for p in first]
    assert len(list(layout.head_cache.glob("*"))) == 1


def test_a_random_head_sweep_probes_its_starting_model_once_and_keeps_only_its_own(tmp_path, tiny_model, monkeypatch):
    """train.head_init: random at a rate that wrecks training: every ingredient ends at chance and compares a probe on
    its features with one on the starting model's, which the first ingredient computes and the others read from
    data/cache/heads (`<key>.start.json`); once the sweep is built, other keys' are deleted."""
    from soupline import train

    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    layout = Layout(tmp_path)
    sweep = ("train.head_init=random", "train.learning_rates=[0.2, 0.3]", "train.seeds=[0, 1]", "train.min_steps=4")
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *sweep)
    for stage in ("prepare", "embed", "select"):
        STAGES[stage](params, layout)
    probed, probe = [], train.features_probe
    monkeypatch.setattr(train, "features_probe", lambda *a: probed.append(1) or probe(*a))
    with pytest.warns(UserWarning, match="training failed"):
        STAGES["train"](params, layout)
    infos = [read_json(p / "train_info.json") for p in sorted(layout.ingredients.iterdir())]
    assert len(infos) == 4 and all("on the starting model's" in i["failed"] for i in infos)
    assert len(probed) == 5  # each trained model, and the starting model once
    first = [p.name for p in layout.head_cache.iterdir()]
    assert len(first) == 1 and first[0].endswith(".start.json")
    other = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *sweep, "select.budget=10")
    with pytest.warns(UserWarning, match="training failed"):
        for stage in ("select", "train"):
            STAGES[stage](other, layout)
    assert len(now := [p.name for p in layout.head_cache.iterdir()]) == 1 and now != first


# device=cuda with another setting: the built ingredient alone stays up to date on another device (no key holds it)
@pytest.mark.parametrize("bad", [["train.max_length=1000"], ["device=cuda", "train.weight_decay=0.02"],
                                 ["train.method=lora", "train.lora.target_modules=[foo]"]])
def test_a_value_the_model_refuses_leaves_the_built_ingredients_in_place(tmp_path, tiny_model, bad, monkeypatch):
    """`soupline run train.max_length=1000` (longer than the model takes) was one line, but only after train had moved
    the first ingredient to data/cache/ingredients: the workspace was left half moved (dvc status dirty, that
    ingredient gone from data/models/ingredients); `device: cuda` without CUDA likewise under `dvc repro`. The model
    and device checks now run before any folder is set aside."""
    from soupline.errors import SouplineError

    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]")
    layout = Layout(tmp_path)
    for stage in ("prepare", "embed", "select", "train"):
        STAGES[stage](params, layout)
    built = sorted(p.name for p in layout.ingredients.iterdir())
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # `dvc repro` with device: cuda on a CPU machine
    with pytest.raises(SouplineError):
        STAGES["train"](one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]",
                                              *bad), layout)
    assert sorted(p.name for p in layout.ingredients.iterdir()) == built
    assert stage_status(params, layout)["train"] is None
