"""Fine-tuning, resume, souping and evaluation on a tiny model (seconds each)."""

import contextlib
import json

import numpy as np
import pytest
import torch
import yaml

from soupline import config, soup
from soupline.config import TrainParams
from soupline.errors import SouplineError
from soupline.evaluate import label_scores, metrics
from soupline.probe import score
from soupline.classifier import init_model
from soupline.train import finetune
from tests.conftest import make_frame, one_ingredient_params

LABELS = ["business", "sport", "tech"]


def _data(n=12):
    df = make_frame(n)
    y = np.array([LABELS.index(x) for x in df["label"]])
    return df["text"].tolist(), y


def _train(tiny_model, tmp_path, name, lr=5e-3, seed=0, **cfg):
    texts, y = _data()
    params = TrainParams(**{"epochs": 2, "min_steps": 0, "batch_size": 8, "max_length": 32, "checkpoint_every": 3, **cfg})
    info = finetune(tiny_model, LABELS, texts, y, texts[:12], y[:12], params, lr, seed, tmp_path / name,
                    tmp_path / f"{name}.ckpt", tmp_path / f"curves-{name}", progress=False)
    return info, soup.load_state(tmp_path / name)


@pytest.mark.parametrize("pooling", ["mean_normalized", "mean", "cls"])
def test_init_model_head_depends_on_its_seed_only_and_leaves_the_rng_alone(tiny_model, pooling, monkeypatch):
    from soupline.classifier import init_model
    from soupline.config import TrainParams
    from soupline.train import apply_lora

    reseeded = []  # torch.manual_seed reseeds every CUDA generator, which fork_rng(devices=[]) does not restore
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    apply_lora(init_model(tiny_model, LABELS, 0, pooling), TrainParams(method="lora").lora, 0)
    assert reseeded == []

    def head(seed):
        return {k: v for k, v in init_model(tiny_model, LABELS, seed, pooling).state_dict().items() if "classifier" in k}

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = head(0)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    b, c = head(0), head(1)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["classifier.weight"], c["classifier.weight"])


@pytest.mark.parametrize("pooling", ["mean_normalized", "mean", "cls"])
def test_finetune_writes_a_loadable_model(tiny_model, tmp_path, pooling):
    from transformers import AutoModel, AutoModelForSequenceClassification

    from soupline.classifier import load_classifier, pooling_of
    from soupline.evaluate import predict_logits, tokenize

    info, state = _train(tiny_model, tmp_path, "a", pooling=pooling)
    model = load_classifier(tmp_path / "a")
    assert pooling_of(tmp_path / "a") == info["pooling"] == pooling
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.state_dict().keys() == state.keys() and ("bert.pooler.dense.weight" in state) == (pooling == "cls")
    encoder = AutoModel.from_pretrained(tmp_path / "a")  # the fine-tuned encoder, for either pooling
    assert torch.equal(encoder.state_dict()["encoder.layer.0.attention.self.query.weight"],
                       state["bert.encoder.layer.0.attention.self.query.weight"])
    if pooling == "cls":  # Hugging Face's own classifier, loadable without soupline
        assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "a").config.num_labels == len(LABELS)
    else:  # the head reads the masked mean of the last hidden states
        from transformers import AutoTokenizer

        texts, _ = _data()
        tok = AutoTokenizer.from_pretrained(tmp_path / "a")
        enc = tokenize(tok, texts[:6], 32)
        batch = tok.pad(enc, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            expected = model.classifier(torch.nn.functional.normalize(pooled, dim=-1) if pooling == "mean_normalized"
                                        else pooled)
        assert np.allclose(predict_logits(model, tok, enc, 4, "cpu"), expected.numpy(), atol=1e-5)
    assert info["steps"] == 2 * 5 and 0 <= info["val_accuracy"] <= 1
    curves = tmp_path / "curves-a" / "plots" / "metrics"
    assert (curves / "train" / "loss.tsv").exists() and not (tmp_path / "curves-a" / "metrics.json").exists()
    val = (curves / "val" / "accuracy.tsv").read_text().splitlines()
    assert val[0] == "step\taccuracy" and float(val[-1].split("\t")[1]) == info["val_accuracy"]
    assert info["val_macro_f1"] == float((curves / "val" / "macro_f1.tsv").read_text().splitlines()[-1].split("\t")[1])
    assert not (tmp_path / "a.ckpt").exists()


def test_sweep_curves_put_every_ingredient_in_one_file_per_metric(tmp_path):
    from soupline.train import write_curves, write_sweep_curves

    write_curves(tmp_path / "a", [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5, "val_accuracy": 0.5,
                                                                     "val_macro_f1": 0.4}])
    write_curves(tmp_path / "b", [{"step": 1, "train_loss": 3.0}])
    write_sweep_curves(tmp_path, ["b", "a", "gone"])  # sweep order; an ingredient without curve files: left out
    rows = [line.split("\t") for line in (tmp_path / "train_loss.tsv").read_text().splitlines()]
    assert rows == [["step", "loss", "ingredient"], ["1", "3.0", "b"], ["1", "2.0", "a"], ["2", "1.5", "a"]]
    assert (tmp_path / "val_accuracy.tsv").read_text().splitlines()[1:] == ["2\t0.5\ta"]
    write_sweep_curves(tmp_path / "none", ["gone"])  # no curve files at all: the header only, no error
    assert (tmp_path / "none" / "val_macro_f1.tsv").read_text() == "step\tmacro_f1\tingredient\n"


@pytest.mark.parametrize("commits", [0, 1])
def test_curves_written_in_a_git_repository_without_dvc_leave_it_as_it_was(tmp_path, monkeypatch, commits):
    """`soupline run` works in a project that is no DVC repository; its curves must not `dvc init` the git repository
    it runs in (dvclive's Live did, from the working directory, and staged .dvc/ in git) nor fail in one without
    commits yet (Live raised scmrepo's 'Empty git repo' there, after the whole training)."""
    from tests.conftest import run_cmd

    from soupline.train import write_curves

    run_cmd(["git", "init", "-q"], tmp_path)
    for _ in range(commits):
        run_cmd(["git", "commit", "-q", "--allow-empty", "-m", "init"], tmp_path)
    monkeypatch.chdir(tmp_path)
    write_curves(tmp_path / "curves", [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5,
                                                                         "val_accuracy": 0.5}])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "curves"]
    metrics = tmp_path / "curves" / "plots" / "metrics"
    assert (metrics / "train" / "loss.tsv").read_text().splitlines() == ["step\tloss", "1\t2.0", "2\t1.5"]
    assert (metrics / "val" / "accuracy.tsv").read_text().splitlines() == ["step\taccuracy", "2\t0.5"]


def test_training_learns_separable_texts(tiny_model, tmp_path):
    info, _ = _train(tiny_model, tmp_path, "a", lr=3e-3, epochs=10, freeze_embeddings=False)
    assert info["val_accuracy"] >= 0.9


def test_same_seed_same_weights_different_seed_differs(tiny_model, tmp_path):
    _, a = _train(tiny_model, tmp_path, "a")
    _, b = _train(tiny_model, tmp_path, "b")
    _, c = _train(tiny_model, tmp_path, "c", seed=1)
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert not all(torch.allclose(a[k], c[k]) for k in a)


def test_ingredients_share_initialisation(tiny_model):
    a = init_model(tiny_model, LABELS, head_init_seed=0).state_dict()
    b = init_model(tiny_model, LABELS, head_init_seed=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
import soupline.artifacts as art
real_replace = os.replace
def replace_then_die(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".ckpt"):
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no finally blocks
art.os.replace = replace_then_die
sys.path.insert(0, sys.argv[1])
from tests.test_train_soup import _train
from pathlib import Path
_train(sys.argv[2], Path(sys.argv[3]), "resumed")
"""


def test_resume_after_sigkill_matches_uninterrupted(tiny_model, tmp_path):
    """SIGKILL training right after its first checkpoint, start again: same weights as a run that never stopped."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    _, reference = _train(tiny_model, tmp_path, "ref")
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_CHECKPOINT, str(ROOT), tiny_model, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp_path / "resumed.ckpt").exists() and not (tmp_path / "resumed").exists()
    assert not list(tmp_path.glob(".resumed*"))  # no half-written model left behind to trust
    before = torch.load(tmp_path / "resumed.ckpt", weights_only=False)["state"]["seconds"]
    info, resumed = _train(tiny_model, tmp_path, "resumed")
    assert info["resumed_from_step"] == 3
    assert 0 < before < info["train_seconds"]  # the killed run's training time counts too
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)  # the same bytes, as README says
    # how the run went is in train_timing.json, apart: the two train_info.json are the same bytes
    assert (tmp_path / "ref/train_info.json").read_bytes() == (tmp_path / "resumed/train_info.json").read_bytes()
    assert json.loads((tmp_path / "resumed/train_timing.json").read_text())["resumed_from_step"] == 3


def test_uniform_soup_is_the_mean():
    states = [{"w": torch.full((2, 2), float(i)), "step": torch.tensor([i])} for i in range(3)]
    out = soup.uniform(states)
    assert torch.allclose(out["w"], torch.full((2, 2), 1.0))
    assert torch.equal(out["step"], states[0]["step"])


def test_greedy_soup_never_drops_validation_and_keeps_best_first():
    states = [{"w": torch.tensor([float(i)])} for i in range(4)]
    scores = [0.5, 0.9, 0.7, 0.8]
    target = 1.5  # a soup scores higher the closer its weight is to 1.5

    def evaluate(state):
        return 1.0 - abs(float(state["w"]) - target) / 10

    out, kept, log = soup.greedy(states, scores, evaluate)
    assert log[0]["ingredient"] == 1 and kept[0] <= 1 <= kept[-1]
    accs = [r["val_accuracy"] for r in log if r["kept"]]
    assert accs == sorted(accs)
    assert float(out["w"]) == pytest.approx(np.mean([float(states[i]["w"]) for i in kept]))


def test_greedy_soup_compares_each_candidate_with_the_soup_so_far():
    """A candidate must beat the current soup's score, not the first ingredient's."""
    states = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}]

    def evaluate(state):  # soup {0, 1} (w = 1) scores 0.95; adding 2 (w = 2) drops to 0.92, still above 0.9
        return {1.0: 0.95, 2.0: 0.92}[float(state["w"])]

    out, kept, log = soup.greedy(states, [0.9, 0.8, 0.7], evaluate)
    assert kept == [0, 1] and float(out["w"]) == 1.0
    assert [(r["ingredient"], r["kept"]) for r in log] == [(0, True), (1, True), (2, False)]


def test_greedy_soup_keeps_a_tied_ingredient_only_when_not_strict():
    states = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}]

    def evaluate(state):  # every soup ties with the first ingredient
        return 0.8

    out, kept, log = soup.greedy(states, [0.8, 0.7], evaluate)
    assert kept == [0] and float(out["w"]) == 1.0 and log[1]["kept"] is False
    out, kept, _ = soup.greedy(states, [0.8, 0.7], evaluate, strict=False)
    assert kept == [0, 1] and float(out["w"]) == 2.0


def test_soup_of_incompatible_models_fails(tiny_model, tmp_path):
    from pathlib import Path

    _train(tiny_model, tmp_path, "a")
    other = init_model(tiny_model, ["x", "y"], 0)
    other.save_pretrained(tmp_path / "b")
    dirs = [tmp_path / "a", Path(tmp_path / "b")]
    with pytest.raises(SouplineError, match="different label sets"):
        soup.check_compatible(dirs, [soup.load_state(d) for d in dirs])
    # same shapes and labels, another function of them: mean-pooled vs unit-normalised mean-pooled
    _train(tiny_model, tmp_path, "c", pooling="mean")
    dirs = [tmp_path / "a", tmp_path / "c"]
    with pytest.raises(SouplineError, match=r"different train.pooling \(mean vs mean_normalized\)"):
        soup.check_compatible(dirs, [soup.load_state(d) for d in dirs])


def test_metrics():
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    y = np.array([0, 1, 2, 2])
    m = metrics(logits, y, LABELS)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # the mean of the per-class F1 (micro would be 0.75)
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert m["per_class_f1"] == pytest.approx({"business": 1.0, "sport": 2 / 3, "tech": 2 / 3})
    top = np.exp(2) / (np.exp(2) + 2)  # every text's softmax confidence (0.787): one bin, 3 of 4 right
    assert m["ece"] == pytest.approx(top - 0.75)
    assert m["confidence"] == pytest.approx(top)  # above the accuracy: over-confident, which ECE alone does not say
    assert (score(logits, y, "accuracy"), score(logits, y, "macro_f1")) == (m["accuracy"], m["macro_f1"])  # early stopping
    # a label that no text has and none is predicted (sport) is left out of the macro mean; the others keep their names
    absent = label_scores(np.array([0, 0, 2, 0]), np.array([0, 0, 2, 2]), LABELS)
    assert absent["per_class_f1"] == pytest.approx({"business": 0.8, "tech": 2 / 3})
    assert absent["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_calibration_error_bins_confidence_by_tenths_weighted_by_share():
    from soupline.evaluate import expected_calibration_error

    probs = np.array([[0.95, 0.03, 0.02], [0.61, 0.39, 0.0], [0.69, 0.31, 0.0]])
    y = np.array([0, 1, 0])  # right at 0.95; in the bin (0.6, 0.7]: wrong at 0.61, right at 0.69
    assert expected_calibration_error(probs, y) == pytest.approx((1 - 0.95) / 3 + (0.65 - 0.5) * 2 / 3)


def _states(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(4, 5, generator=g), "n": torch.tensor([7])}
    return base, [{"w": base["w"] + torch.randn(4, 5, generator=g), "n": base["n"]} for _ in range(n)]


def test_task_arithmetic_plain_mean_equals_uniform():
    base, states = _states()
    assert torch.allclose(soup.task_arithmetic(states, base)["w"], soup.uniform(states)["w"], atol=1e-6)


def test_ties_trims_elects_sign_and_averages_agreeing_entries():
    base = {"w": torch.zeros(4)}
    states = [{"w": torch.tensor([3.0, -1.0, 0.1, 2.0])}, {"w": torch.tensor([1.0, 2.0, -0.2, -4.0])}]
    out = soup.task_arithmetic(states, base, top_k=50, elect_sign=True)["w"]
    # trim keeps [3, 2] of the first and [2, -4] of the second; signs: +, +, 0, - (2 - 4 < 0)
    assert torch.allclose(out, torch.tensor([3.0, 2.0, 0.0, -4.0]))


def test_dare_is_seeded_and_unbiased_in_expectation():
    base, states = _states(n=2)
    a = soup.task_arithmetic(states, base, drop=0.5, seed=1)["w"]
    b = soup.task_arithmetic(states, base, drop=0.5, seed=1)["w"]
    c = soup.task_arithmetic(states, base, drop=0.5, seed=2)["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = [{"w": torch.ones(200, 200)}]
    mean = soup.task_arithmetic(big, {"w": torch.zeros(200, 200)}, drop=0.9, seed=0)["w"].mean()
    assert abs(float(mean) - 1.0) < 0.05
    assert torch.equal(a.new_tensor(0) + soup.task_arithmetic(states, base, drop=0.5)["n"], base["n"])


def test_dare_masks_hold_one_generator_state_per_ingredient_whatever_the_block_size(monkeypatch):
    """Each ingredient has its own mask generator: the generator states kept (to draw a tensor's masks again after
    the TIES trim pass) are one per ingredient and tensor, not per row block, and neither the soup nor an
    ingredient's mask depends on the block size or on the other ingredients."""
    class Counting(torch.Generator):
        kept = 0

        def get_state(self):
            Counting.kept += 1
            return super().get_state()

    monkeypatch.setattr(torch, "Generator", Counting)
    n = 5
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(64, 16, generator=g), "b": torch.randn(16, generator=g), "n": torch.tensor([7])}
    states = [{k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
              for _ in range(n)]
    runs = {}
    for block in (soup.BLOCK_ELEMENTS, 300, 16 * n):  # one block per tensor, a few, one row each
        monkeypatch.setattr(soup, "BLOCK_ELEMENTS", block)
        for merge in ({}, {"top_k": 30.0, "elect_sign": True}):
            Counting.kept = 0
            result = soup.task_arithmetic(states, base, drop=0.4, seed=2, **merge)
            runs.setdefault(bool(merge), []).append((result, Counting.kept))
    assert len(soup._blocks((64, 16), n)) == 64  # the last runs had one block per row
    for trim, results in runs.items():
        for result, kept in results:
            _equal(result, results[0][0])
            assert kept == (n * 2 if trim else 0)  # 2 floating-point tensors
    ones = {"w": torch.ones(64, 16)}
    zeros = {"w": torch.zeros(64, 16)}
    alone = soup.task_arithmetic([ones], zeros, drop=0.5, seed=4)["w"]  # ingredient 0's mask x 2
    assert set(alone.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(soup.task_arithmetic([ones, zeros], zeros, drop=0.5, seed=4)["w"] * 2, alone)
    assert 1.0 in soup.task_arithmetic([ones, ones], zeros, drop=0.5, seed=4)["w"].unique().tolist()  # masks differ


def test_soup_presets_mean_what_the_readme_says():
    """The ties/dare soups' settings (their entries' presets): DARE that drops nothing is the plain task-vector mean
    when merged linearly and the TIES soup (same top_k, sign election) with `dare.merge: ties`; a TIES preset trims
    and elects."""
    from soupline.config import SoupParams
    from soupline.soup_methods import dare_preset, ties_preset

    base, states = _states()
    cfg = SoupParams.model_validate({"ties": {"top_k": 40, "scale": 0.8}, "dare": {"drop": 0, "scale": 0.8}})
    linear = soup.task_arithmetic(states, base, **dare_preset(cfg))["w"]
    assert torch.allclose(linear, soup.task_arithmetic(states, base, scale=0.8)["w"], atol=1e-6)
    ties = soup.task_arithmetic(states, base, **ties_preset(cfg))["w"]
    assert torch.allclose(ties, soup.task_arithmetic(states, base, top_k=40, elect_sign=True, scale=0.8)["w"])
    assert not torch.allclose(ties, linear, atol=1e-3)
    cfg = SoupParams.model_validate({"ties": {"top_k": 40, "scale": 0.8},
                                     "dare": {"drop": 0, "scale": 0.8, "merge": "ties"}})
    assert torch.allclose(soup.task_arithmetic(states, base, **dare_preset(cfg))["w"], ties, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, r"TIES top-k must be in \(0, 100\]"), ({"top_k": 150}, r"TIES top-k must be in \(0, 100\]"),
    ({"drop": 1.0}, r"DARE drop probability must be in \[0, 1\)"), ({"drop": -0.1}, "DARE drop probability"),
])
def test_merge_bad_settings(kwargs, message):
    base, states = _states()
    with pytest.raises(SouplineError, match=message):
        soup.task_arithmetic(states, base, **kwargs)


def test_merge_with_wrong_base_fails():
    base, states = _states()
    with pytest.raises(SouplineError, match="lacks 1 ingredient tensors"):
        soup.task_arithmetic(states, {"other": base["w"]} | {"n": base["n"]})


# Streaming soups (LazyState over the safetensors files) against the in-memory implementation they replaced.

def _ingredients(tiny_model, tmp_path, n=4, labels=LABELS, pooling="mean_normalized", **cfg_overrides):
    """n tiny-model ingredients: the shared init plus seeded perturbations of every tensor, saved in HF layout."""
    from transformers import BertConfig

    if cfg_overrides:  # another base model: the tiny BERT with other shapes
        from transformers import BertModel

        BertModel(BertConfig.from_pretrained(tiny_model, **cfg_overrides)).save_pretrained(tmp_path / "base")
        tiny_model = tmp_path / "base"
    dirs = []
    for i in range(n):
        model = init_model(tiny_model, labels, 0, pooling)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01 * (i + 1))
        model.save_pretrained(tmp_path / f"ing{i}")
        dirs.append(tmp_path / f"ing{i}")
    return dirs


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_lazy_state_reads_what_load_state_reads_in_the_same_order(tiny_model, tmp_path):
    (d,) = _ingredients(tiny_model, tmp_path, n=1)
    lazy, eager = soup.LazyState(d), soup.load_state(d)
    _equal(lazy, eager)
    assert lazy.shapes == {k: tuple(v.shape) for k, v in eager.items()} and len(lazy) == len(eager)
    assert "classifier.weight" in lazy and "nope" not in lazy
    assert torch.equal(lazy.rows("classifier.weight", slice(1, 3)), eager["classifier.weight"][1:3])
    assert lazy.rows("classifier.weight", slice(2, 99)).shape == eager["classifier.weight"][2:99].shape
    assert lazy.dtype("classifier.weight") == torch.float32
    with pytest.raises(SouplineError, match="no .safetensors weights"):
        soup.LazyState(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")
    with pytest.raises(SouplineError, match="not a readable .safetensors file"):
        soup.LazyState(tmp_path / "bad")


MERGES = {
    "ties": {"top_k": 20.0, "elect_sign": True},
    "dare": {"drop": 0.5, "seed": 3},
    "dare-ties": {"drop": 0.3, "top_k": 30.0, "elect_sign": True, "seed": 1, "scale": 0.7},
    "trim-only": {"top_k": 50.0, "scale": 1.3},
}


@pytest.mark.parametrize("into, block", [(False, None), (True, None), (False, 4096), (True, 4096)],
                         ids=["dict", "into-model", "dict-small-blocks", "into-model-small-blocks"])
def test_streaming_soups_equal_the_in_memory_implementation(tiny_model, tmp_path, monkeypatch, into, block):
    from tests import soup_reference as ref

    if block:  # many row blocks per tensor: masks, thresholds and sums must still match the whole-tensor code
        monkeypatch.setattr(soup, "BLOCK_ELEMENTS", block)
    dirs = _ingredients(tiny_model, tmp_path)
    eager = [soup.load_state(d) for d in dirs]
    lazy = [soup.LazyState(d) for d in dirs]
    soup.check_compatible(dirs, lazy)
    base = init_model(tiny_model, LABELS, 0).state_dict()
    target = init_model(tiny_model, LABELS, 0).state_dict() if into else None  # the stage's evaluation model

    def out():
        return {k: v.clone() for k, v in target.items()} if into else None

    _equal(soup.uniform(lazy, into=target), ref.uniform(eager))
    for name, kwargs in MERGES.items():
        _equal(soup.task_arithmetic(lazy, base, into=target, **kwargs), ref.task_arithmetic(eager, base, **kwargs))
    _equal(base, init_model(tiny_model, LABELS, 0).state_dict())  # the base is read, not written

    probe = torch.Generator().manual_seed(7)
    direction = {k: torch.randn(v.shape, generator=probe) for k, v in eager[0].items() if v.is_floating_point()}

    def evaluate(state):  # a deterministic "validation accuracy" of a state: some candidates kept, some not
        return round(float(sum((state[k].double() * d).sum() for k, d in direction.items())) % 1.0, 6)

    scores = [0.2, 0.5, 0.3, 0.4]
    logs = []
    for strict in (False, True):
        got, kept, log = soup.greedy(lazy, scores, evaluate, strict, into=out())
        want, kept_ref, log_ref = ref.greedy(eager, scores, evaluate, strict)
        assert (kept, log) == (kept_ref, log_ref)
        _equal(got, want)
        logs += log_ref[1:]
    assert {r["kept"] for r in logs} == {True, False}, logs  # candidates both kept and refused
    for a, b in zip(eager, [soup.load_state(d) for d in dirs]):
        _equal(a, b)  # the in-memory inputs were not written to


def test_streaming_soups_leave_in_memory_inputs_untouched():
    base, states = _states()
    states = [{k: v.double() for k, v in s.items()} for s in states]  # float64: .to(float64) would not copy
    before = [{k: v.clone() for k, v in s.items()} for s in states]
    soup.uniform(states)
    soup.task_arithmetic(states, {k: v.double() for k, v in base.items()}, top_k=50, elect_sign=True, drop=0.2)
    into = {k: v.clone() for k, v in states[0].items()}
    soup.greedy(states, [0.1, 0.3, 0.2], lambda s: float(s["w"].sum()), into=into)
    for a, b in zip(states, before):
        _equal(a, b)


def test_lazy_soup_of_incompatible_models_fails_in_one_line(tiny_model, tmp_path):
    a = _ingredients(tiny_model, tmp_path / "a", n=1)
    other_labels = _ingredients(tiny_model, tmp_path / "b", n=1, labels=["x", "y", "z"])
    wider = _ingredients(tiny_model, tmp_path / "c", n=1, intermediate_size=48)
    cls = _ingredients(tiny_model, tmp_path / "d", n=1, pooling="cls")
    for other, message in [(other_labels, "different label sets"), (wider, "parameter names or shapes differ"),
                           (cls, "different architectures")]:
        dirs = a + other
        with pytest.raises(SouplineError, match=message) as err:
            soup.check_compatible(dirs, [soup.LazyState(d) for d in dirs])
        assert "\n" not in str(err.value)


def _pipeline_params(tmp_path, tiny_model, *extra):
    """A one-ingredient pipeline on the tiny model (seconds), with `extra` overrides."""
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, *extra)


@pytest.mark.parametrize("extra, why", [
    (["train.learning_rates=[1e-3]"], "one ingredient, lr0.001-seed0; a soup averages 2 or more"),
    (["train.learning_rates=[1e-3, 2e-3]", "soup.methods=[]"], "soup.methods is empty"),
])
def test_a_run_without_soups_evaluates_its_ingredients(tmp_path, tiny_model, extra, why, capsys):
    """One ingredient (nothing to average) or `soup.methods: []`: the soup stage says why it made none, and
    evaluate and report cover the ingredients alone (it used to fail after training)."""
    import json

    from tasks.layout import Layout
    from tasks.pipeline import run_pipeline

    params = _pipeline_params(tmp_path, tiny_model, *extra)
    layout = Layout(tmp_path)
    run_pipeline(params, layout)
    assert "report: data/reports/report.md\n" in capsys.readouterr().out  # from the project root, as dvc repro says
    assert why in json.loads((layout.soups / "soups.json").read_text())["why"]
    assert not [p for p in layout.soups.iterdir() if p.is_dir()]
    metrics = json.loads((layout.metrics / "metrics.json").read_text())
    assert metrics["soups"] == {} and len(metrics["ingredients"]) == len(params.train.ingredients())
    report = (layout.reports / "report.md").read_text()
    assert "lr0.001-seed0" in report and "No soups: " in report and why in report  # the reader learns why
    final = metrics["final"]  # the first line says which model to use (the best ingredient, with no soup) and its scores
    assert report.split("\n\n")[1].startswith(f"**Model to use: `{final['model']}`** (`soupline predict` uses it): "
                                               f"test accuracy {final['accuracy']:.4f}, macro-F1 {final['macro_f1']:.4f}"
                                               f"; the probe ")


@pytest.mark.parametrize("extra, fix", [
    (["soup.methods=[ties]", "soup.ties.scale=1e30"], "lower soup.ties.scale (now 1e+30)"),
    (["soup.methods=[dare]", "soup.dare.scale=1e25", "soup.dare.drop=0.9"],
     "lower soup.dare.scale (now 1e+25) or soup.dare.drop (now 0.9: kept deltas x 10)"),
])
def test_a_soup_whose_logits_overflow_is_one_line(tmp_path, tiny_model, extra, fix):
    """TIES / DARE with a scale that overflows float32 in the forward pass: one line naming the setting, and no soup
    saved; such a soup was kept, its nan logits scoring every text label 0 (test accuracy 0.33) with ECE 0."""
    from tasks.layout import Layout
    from tasks.pipeline import run_pipeline

    layout = Layout(tmp_path)
    with pytest.raises(SouplineError, match="logits on validation hold inf or nan") as err:
        run_pipeline(_pipeline_params(tmp_path, tiny_model, "train.learning_rates=[1e-3, 2e-3]", *extra), layout)
    assert str(err.value).endswith(fix) and "\n" not in str(err.value)
    assert not list(layout.soups.glob("*/soup.json"))


def test_evaluate_predicts_once_for_models_with_the_same_weights(tmp_path, tiny_model, monkeypatch, capsys):
    """A model whose config and weights equal one already evaluated (a greedy soup that kept one ingredient)
    reuses its predictions: same metrics, one forward pass fewer."""
    import shutil

    import tasks.evaluate
    from tasks.layout import Layout
    from tasks.pipeline import run_pipeline

    COPY = "copy-of-lr0.001-seed0-under-a-long-name"
    params = _pipeline_params(tmp_path, tiny_model, "train.learning_rates=[1e-3]", "soup.methods=[]")
    layout = Layout(tmp_path)
    run_pipeline(params, layout)
    shutil.rmtree(layout.evaluation_cache)  # within one run (across runs: the next test)
    shutil.copytree(layout.ingredients / "lr0.001-seed0", layout.ingredients / COPY)
    (layout.ingredients / COPY / "train_info.json").write_text('{"val_accuracy": 0.5}')  # not part of the digest
    calls = []
    predict = tasks.evaluate.predict_logits
    monkeypatch.setattr(tasks.evaluate, "predict_logits", lambda *a, **k: calls.append(1) or predict(*a, **k))
    capsys.readouterr()
    summary = tasks.evaluate.run(params, layout, ingredients=["lr0.001-seed0", COPY])
    out = capsys.readouterr().out
    assert len(calls) == 1 and f"{COPY}: the same weights as lr0.001-seed0" in out
    columns = {line.index("test acc") for line in out.splitlines() if "test acc" in line}
    assert len(columns) == 1, out  # the scores line up under a name longer than 24 characters
    assert summary["ingredients"][COPY] == summary["ingredients"]["lr0.001-seed0"]
    from safetensors.torch import save_file

    state = soup.load_state(layout.ingredients / COPY)  # a changed weight is another model
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 1.0
    save_file(state, str(layout.ingredients / COPY / "model.safetensors"), metadata={"format": "pt"})
    tasks.evaluate.run(params, layout, ingredients=["lr0.001-seed0", COPY])
    assert len(calls) == 2  # the changed copy only: lr0.001-seed0's metrics are in the evaluation cache


def test_editing_one_soups_setting_remakes_that_soup_only(two_ingredient_run, tmp_path, capsys):
    """Editing `soup.ties.top_k` re-made every soup (a soup stage of 8 ingredients spends minutes on greedy and
    learned): a soup in data/soups made from the same inputs and settings is kept, file for file; one whose
    settings changed, or that lost a file, is made again, and a soup dropped from soup.methods is removed. A soup
    replaced or dropped moves to data/cache/soups and back when its settings come back (it was made again: under
    `dvc repro` too, which keeps no run cache of a persisted stage), up to soup.keep_replaced of them."""
    import tasks.soup
    from soupline import config
    from tasks.pipeline import stage_status

    params, layout = _copy_of(two_ingredient_run, tmp_path)

    def soups(*overrides):
        return config.validate(config.apply_overrides(params.model_dump(mode="json"), list(overrides)))

    tasks.soup.run(soups("soup.methods=[greedy, ties]"), layout)  # greedy: the run's own, kept
    assert "soup: greedy: up to date" in capsys.readouterr().out
    files = {m: (layout.soups / m / "model.safetensors").stat() for m in ("greedy", "ties")}
    capsys.readouterr()
    out = tasks.soup.run(soups("soup.methods=[greedy, ties]", "soup.ties.top_k=0.5"), layout)
    printed = capsys.readouterr().out
    assert "soup: greedy: up to date (made from these ingredients and settings)" in printed
    assert "soup: ties: 2/2 ingredients" in printed and out["ties"]["settings"]["top_k"] == 0.5
    greedy, ties = ((layout.soups / m / "model.safetensors").stat() for m in ("greedy", "ties"))
    assert (greedy.st_ino, greedy.st_mtime_ns) == (files["greedy"].st_ino, files["greedy"].st_mtime_ns)
    assert ties.st_ino != files["ties"].st_ino
    (layout.soups / "greedy" / "config.json").unlink()
    capsys.readouterr()
    tasks.soup.run(soups("soup.methods=[greedy]", "soup.ties.top_k=0.5"), layout)
    printed = capsys.readouterr().out
    assert "greedy: up to date" not in printed and "ingredients, val acc" in printed  # a file gone: made again
    assert (layout.soups / "greedy" / "config.json").exists() and not (layout.soups / "ties").exists()

    assert len(list(layout.soup_cache.iterdir())) == 2  # both TIES soups (replaced, then dropped); not the damaged one
    assert tasks.soup.restorable(soups("soup.methods=[greedy, ties]"), layout) == ["ties"]  # what status says
    assert stage_status(soups("soup.methods=[greedy, ties]"), layout)["soup"].endswith(
        "(1 of its soups restorable from data/cache/soups: ties)")
    capsys.readouterr()
    back = tasks.soup.run(soups("soup.methods=[greedy, ties]"), layout)  # top_k changed back
    printed = capsys.readouterr().out
    assert "soup: ties: restored from data/cache/soups (made earlier from these ingredients and settings)" in printed
    assert (layout.soups / "ties" / "model.safetensors").stat().st_ino == files["ties"].st_ino  # moved, not made
    assert back["ties"]["settings"]["top_k"] == params.soup.ties.top_k and "ingredients, val acc" not in printed
    tasks.soup.run(soups("soup.methods=[greedy, ties]", "soup.keep_replaced=1"), layout)
    assert len(list(layout.soup_cache.iterdir())) == 1  # the newest kept
    tasks.soup.run(soups("soup.methods=[greedy, ties]", "soup.keep_replaced=0"), layout)
    assert not any(layout.soup_cache.iterdir())


def test_the_soup_stage_scores_the_same_weights_on_validation_once(two_ingredient_run, tmp_path, monkeypatch):
    """Greedy's first candidate of two ingredients is their uniform soup, to the bit: its validation pass is the
    uniform soup's, not a second one; a soup of other weights (TIES) gets its own."""
    import shutil

    import tasks.soup

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    shutil.rmtree(layout.soups / "greedy")  # the run's own: made again below
    calls = []
    predict = tasks.soup.predict_logits
    monkeypatch.setattr(tasks.soup, "predict_logits", lambda *a, **k: calls.append(1) or predict(*a, **k))
    out = tasks.soup.run(config.validate(config.apply_overrides(params.model_dump(mode="json"),
                                                                ["soup.methods=[uniform, greedy, ties]"])), layout)
    assert len(calls) == 2  # uniform (greedy's candidate: the same weights) and TIES
    assert out["greedy"]["log"][1]["val_accuracy"] == out["uniform"]["val_accuracy"]
    assert soup.state_digest(soup.load_state(layout.soups / "uniform")) != \
        soup.state_digest(soup.load_state(layout.soups / "ties"))


def test_a_run_that_makes_no_soup_moves_the_soups_to_the_cache(two_ingredient_run, tmp_path, capsys):
    """A run with no soups to make (`soup.methods: []`, one ingredient, a probe) replaced data/soups whole, deleting
    every soup there, so the next run with soups made them all again. The cache keeps every soup it shelved, though
    they outnumber soup.keep_replaced (a run of all five methods, cut to the 4 newest, made one again)."""
    import tasks.soup
    from soupline import config

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    three = config.validate(config.apply_overrides(params.model_dump(mode="json"),
                                                   ["soup.methods=[uniform, greedy, ties]"]))
    tasks.soup.run(three, layout)
    made = {m: (layout.soups / m / "model.safetensors").stat().st_ino for m in three.soup.methods}
    assert tasks.soup.run(config.validate(config.apply_overrides(params.model_dump(mode="json"),
                                                                 ["soup.methods=[]", "soup.keep_replaced=2"])),
                          layout) == {}
    assert [p.name for p in layout.soups.iterdir()] == ["soups.json"]
    assert len(list(layout.soup_cache.iterdir())) == len(made)
    capsys.readouterr()
    tasks.soup.run(three, layout)
    printed = capsys.readouterr().out
    assert printed.count("restored from data/cache/soups") == len(made) and "val acc" not in printed, printed
    assert {m: (layout.soups / m / "model.safetensors").stat().st_ino for m in made} == made  # moved back, not made


def test_a_run_dvc_lock_does_not_record_keeps_copies_of_its_soups(two_ingredient_run, tmp_path, capsys):
    """`dvc exp run` checks dvc.lock's soups out over those a `soupline run key=value` made, and made every one
    again: the run keeps hard-linked copies in data/cache/soups (`keep_copies`), which the soup stage moves back
    for the same ingredients and settings, makes again for others, and drops once the soup is in place."""
    import shutil

    import tasks.soup
    from soupline import config

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    made = (layout.soups / "greedy" / "model.safetensors").stat().st_ino
    assert tasks.soup.keep_copies(params, layout) == ["greedy"]
    assert [(p / "model.safetensors").stat().st_ino for p in layout.soup_cache.iterdir()] == [made]  # a link
    tasks.soup.run(params, layout)  # the soup in place: the copy goes
    assert "soup: greedy: up to date" in capsys.readouterr().out and not any(layout.soup_cache.iterdir())
    tasks.soup.keep_copies(params, layout)
    shutil.rmtree(layout.soups)  # `dvc checkout` of another run's soups
    tasks.soup.run(params, layout)
    printed = capsys.readouterr().out
    assert "soup: greedy: restored from data/cache/soups" in printed and "val acc" not in printed, printed
    assert (layout.soups / "greedy" / "model.safetensors").stat().st_ino == made
    tasks.soup.keep_copies(params, layout)
    shutil.rmtree(layout.soups)
    tasks.soup.run(config.validate(config.apply_overrides(params.model_dump(mode="json"),
                                                          ["soup.greedy.strict=false"])), layout)
    printed = capsys.readouterr().out
    assert "restored" not in printed and "ingredients, val acc" in printed, printed  # other settings: made again
    assert tasks.soup.keep_copies(params.model_copy(update={"soup": params.soup.model_copy(
        update={"methods": []})}), layout) == []


def test_evaluate_runs_no_model_it_evaluated_before(two_ingredient_run, tmp_path, monkeypatch, capsys):
    """Editing a soup's setting re-made every soup and evaluate ran every ingredient and soup again: a model with
    the weights of one evaluated before on the same test inputs has its metrics read from data/cache/evaluations,
    byte for byte the same details.json; a damaged cache file, or a cleared cache, is a model run again."""
    import tasks.evaluate
    from tasks import caches

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    details = (layout.metrics / "details.json").read_bytes()
    calls = []
    predict = tasks.evaluate.predict_logits
    monkeypatch.setattr(tasks.evaluate, "predict_logits", lambda *a, **k: calls.append(1) or predict(*a, **k))
    capsys.readouterr()
    tasks.evaluate.run(params, layout)
    out = capsys.readouterr().out
    assert calls == [] and out.count("evaluated before (the same weights on the same test inputs)") == 2, out
    assert (layout.metrics / "details.json").read_bytes() == details
    damaged = sorted(layout.evaluation_cache.iterdir())[0]
    damaged.write_text('{"accuracy": 0.5')
    tasks.evaluate.run(params, layout)
    assert len(calls) == 1 and (layout.metrics / "details.json").read_bytes() == details
    assert damaged.read_text().startswith("{") and "macro_f1" in damaged.read_text()  # rewritten whole
    probe = next(layout.evaluation_cache.glob("probe-*.json"))  # the probe reference's entry: the same rule
    probe.write_text('{"row": {"accuracy": 0.5}}')
    tasks.evaluate.run(params, layout)
    assert len(calls) == 1 and (layout.metrics / "details.json").read_bytes() == details
    assert '"metrics"' in probe.read_text()
    caches.clear(layout, ["evaluations"])
    tasks.evaluate.run(params, layout)
    assert len(calls) == 3 and (layout.metrics / "details.json").read_bytes() == details
    tasks.evaluate.run(params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"batch_size": 3})}),
                       layout)
    assert len(calls) == 5  # another batch size: other inputs to the model, run again



@pytest.fixture(scope="module")
def two_ingredient_run(tmp_path_factory, tiny_model):
    """A whole run with two fine-tuned ingredients and a greedy soup: (params, its project folder); copy it."""
    from tasks.layout import Layout
    from tasks.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("two-ingredients")
    params = _pipeline_params(root, tiny_model, "train.learning_rates=[1e-3, 2e-3]", "soup.methods=[greedy]")
    run_pipeline(params, Layout(root))
    return params, root


def _copy_of(run, tmp_path):
    import shutil

    from tasks.layout import Layout

    params, root = run
    shutil.copytree(root / "data", tmp_path / "data")
    return params, Layout(tmp_path)


def test_train_rewrites_a_deleted_curves_folder_without_retraining(two_ingredient_run, tmp_path, capsys):
    """An ingredient's curves folder deleted by hand comes back, byte for byte, from the history.json saved with
    the ingredient; the ingredient itself is not trained again."""
    import shutil

    import tasks.train
    from soupline.artifacts import sha256_tree

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    name = tasks.train.ingredient_names(params)[0]
    curves, weights = sha256_tree(layout.curves), sha256_tree(layout.ingredients)
    shutil.rmtree(layout.curves / name)
    capsys.readouterr()
    tasks.train.run(params, layout, progress=False)
    assert f"train: {name}: up to date (its curves rewritten from its history.json)" in capsys.readouterr().out
    assert sha256_tree(layout.curves) == curves and sha256_tree(layout.ingredients) == weights


def test_report_confusion_of_many_labels_lists_the_top_confusions():
    """200 labels: the report gives the largest off-diagonal cells, not a 200 x 201 markdown table; a few
    labels keep the whole matrix."""
    from soupline.report import confusion_section

    labels = [f"L{i}" for i in range(200)]
    confusion = np.eye(200, dtype=int) * 5
    confusion[3, 7], confusion[9, 1], confusion[150, 2] = 4, 1, 2
    text = "\n".join(confusion_section("soup:greedy", labels, confusion.tolist()))
    assert len(text) < 2000 and "| actual / predicted |" not in text
    assert text.index("| L3 | L7 | 4 | 44.4% |") < text.index("| L150 | L2 | 2 | 28.6% |") < text.index("| L9 | L1 | 1 |")
    perfect = confusion_section("soup:greedy", labels, (np.eye(200, dtype=int) * 5).tolist())
    assert perfect == ["`soup:greedy` confuses no test text (200 labels; the whole matrix is in "
                       "`data/metrics/details.json` and `data/metrics/plots/confusion.csv`, `dvc plots show` draws it)."]
    small = "\n".join(confusion_section("soup:greedy", labels[:3], [[1, 0, 0], [0, 1, 0], [0, 1, 1]]))
    assert "| actual / predicted | L0 | L1 | L2 |" in small and "| L2 | 0 | 1 | 1 |" in small


def test_dvc_confusion_plot_orders_its_axes_by_label_id():
    """`dvc plots show` drew integer labels in text order (1, 10, 2): DVC's confusion template sorts the names.
    The project's template sorts both axes by the label ids that confusion.csv carries (1, 2, 10; a declared
    order), as the report's matrix is."""
    from dvc_render import VegaRenderer
    from dvc_render.vega_templates import get_template

    from tasks.evaluate import confusion_rows
    from tests.conftest import ROOT

    names = ["1", "2", "10"]
    rows = confusion_rows([[2, 0, 1], [0, 1, 0], [1, 0, 3]], names)
    assert len(rows) == 8 and all(names[r["actual_id"]] == r["actual"] and names[r["predicted_id"]] == r["predicted"]
                                  for r in rows)
    assert {(r["actual"], r["predicted"]) for r in rows} == {("1", "1"), ("1", "10"), ("2", "2"), ("10", "1"),
                                                             ("10", "10")}
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]["plots"]
    plot = next(p["data/metrics/plots/confusion.csv"] for p in stage if "data/metrics/plots/confusion.csv" in p)
    template = get_template(plot["template"], str(ROOT / ".dvc" / "plots"))
    as_dvc_reads_the_csv = [{**{k: str(v) for k, v in r.items()}, "rev": "workspace"} for r in rows]  # ids as text
    filled = VegaRenderer(as_dvc_reads_the_csv, "confusion.csv", template=template, x=plot["x"],
                          y=plot["y"]).get_filled_template()
    assert filled["data"]["format"]["parse"] == {"actual_id": "number", "predicted_id": "number"}  # sorted as numbers
    spec = filled["spec"]
    assert spec["encoding"]["x"]["sort"] == {"field": f"{plot['x']}_id", "op": "min"}
    assert spec["encoding"]["y"]["sort"] == {"field": f"{plot['y']}_id", "op": "min"}
    assert {"actual_id", "predicted_id"} <= set(spec["transform"][0]["groupby"])  # the ids survive the count


def test_dvc_models_plot_draws_bars_from_zero():
    """`dvc plots show` / `dvc plots diff` drew models.csv with DVC's bar_horizontal template, whose accuracy axis
    starts near the lowest score: the weakest model's bar had almost no length, and an experiment 3 points behind
    looked a fraction of the other. The project's template draws every bar from 0 on an axis of 0 to 1."""
    from dvc_render import VegaRenderer
    from dvc_render.vega_templates import get_template

    from tests.conftest import ROOT

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]["plots"]
    plot = next(p["data/metrics/plots/models.csv"] for p in stage if "data/metrics/plots/models.csv" in p)
    template = get_template(plot["template"], str(ROOT / ".dvc" / "plots"))
    rows = [{"model": "soup:greedy", "kind": "soup", "accuracy": a, "macro_f1": a, "rev": rev}
            for a, rev in (("0.7", "master"), ("0.9167", "piano-tier"))]  # as DVC reads the CSV: text
    filled = VegaRenderer(rows, "models.csv", template=template, x=plot["x"], y=plot["y"]).get_filled_template()
    assert filled["mark"]["type"] == "bar" and filled["encoding"]["x"]["field"] == "accuracy"
    assert filled["encoding"]["x"]["scale"] == {"zero": True, "domain": [0, 1]}
    assert filled["encoding"]["yOffset"]["field"] == "rev"  # revisions side by side, as DVC's template


def test_learned_soup_steps_by_its_own_batch_size_not_the_inference_batch(two_ingredient_run, tmp_path):
    """The learned soup took one Adam step per `evaluate.batch_size` validation texts: raising that inference batch
    (for speed) gave a different learned soup. Its steps are `soup.learned.batch_size` texts now."""
    import json

    import tasks.soup

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    soup_section = params.soup.model_copy(update={"methods": ["learned"]})

    def weights(evaluate_batch: int, learned_batch: int) -> list[float]:
        learned = soup_section.learned.model_copy(update={"batch_size": learned_batch})
        run = params.model_copy(update={"soup": soup_section.model_copy(update={"learned": learned}),
                                        "evaluate": params.evaluate.model_copy(update={"batch_size": evaluate_batch})})
        tasks.soup.run(run, layout)
        return json.loads((layout.soups / "learned" / "soup.json").read_text())["weights"]

    assert weights(64, 2) == weights(1, 2)  # the inference batch changes no soup
    assert weights(64, 2) != weights(64, 64)  # more steps per epoch: another mix


@contextlib.contextmanager
def registered_first_soup():
    """A toy soup, the first ingredient as it is (no merge, no settings), registered while inside, then not."""
    from soupline.soup_methods import REGISTRY, Made, register

    @register("first")
    def first(ctx):
        """The first ingredient alone, logged as kept."""
        return Made(ctx.states[0], [0], [{"ingredient": 0, "val_accuracy": ctx.val_scores[0], "kept": True}],
                    {"toy": "first"}, ctx.val_accuracy(ctx.states[0]))

    try:
        yield
    finally:
        del REGISTRY["first"]


def test_a_soup_registered_as_one_entry_is_validated_made_and_recorded(two_ingredient_run, tmp_path):
    """Adding a soup is one entry in `soupline.soup_methods`: `soup.methods` takes its name, with no settings to key;
    the soup stage makes it (here the first ingredient's weights, to the bit) and soup.json records what it
    returned; its overflow line is the one of a soup without scale knobs. Unregistered, its name is refused again."""
    import tasks.soup
    from soupline.soup_methods import register
    from tasks.train import ingredient_names

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    names = ingredient_names(params)
    with registered_first_soup():
        run = config.validate(config.apply_overrides(params.model_dump(mode="json"), ["soup.methods=[first, greedy]"]))
        assert run.soup.in_use() == {"methods": ["first", "greedy"], "greedy": {"strict": True}}
        made = tasks.soup.run(run, layout)["first"]
        with pytest.raises(ValueError, match="'first' is already registered"):
            register("first")
        assert tasks.soup.not_finite("first", run) == ("soup: first: its logits on validation hold inf or nan: its "
                                                       "ingredients' outputs overflow float32; re-run train")
    val = json.loads((layout.ingredients / names[0] / "train_info.json").read_text())["val_accuracy"]
    assert made["ingredients"] == [names[0]] and made["toy"] == "first"
    assert made["log"] == [{"ingredient": names[0], "val_accuracy": val, "kept": True}]
    assert json.loads((layout.soups / "first" / "soup.json").read_text()) == made
    assert soup.state_digest(soup.load_state(layout.soups / "first")) == soup.state_digest(
        soup.load_state(layout.ingredients / names[0]))
    with pytest.raises(SouplineError, match=r"soup.methods.0: Input should be 'uniform', 'greedy', 'ties', 'dare' "
                                            r"or 'learned' \(got 'first'\)"):
        config.validate(config.apply_overrides(params.model_dump(mode="json"), ["soup.methods=[first]"]))
    with pytest.raises(ValueError, match="lowercase identifier, got 'First'"):
        register("First")


def test_report_and_details_say_which_settings_made_each_soup(two_ingredient_run, tmp_path):
    """A run with `soup.greedy.strict: false` (or another `soup.ties.top_k`) wrote the same report as the default
    but for the numbers: the soups' settings, in soup.json, reached neither details.json nor the report."""
    import json

    from soupline.report import soup_settings

    _, layout = _copy_of(two_ingredient_run, tmp_path)
    models = json.loads((layout.metrics / "details.json").read_text())["models"]
    assert models["soup:greedy"]["settings"] == {"strict": True} and "settings" not in models["lr0.001-seed0"]
    assert "Soups made with `soup.greedy`: strict=True." in (layout.reports / "report.md").read_text()
    assert soup_settings({"soup:uniform": {"kind": "soup"}, "soup:dare": {"settings": {"drop": 0.5, "merge": "ties"}},
                          "soup:ties": {"settings": {"top_k": 20.0, "scale": 1.0}}}) == (
        "Soups made with `soup.dare`: drop=0.5, merge=ties; `soup.ties`: top_k=20.0, scale=1.0.")
    assert soup_settings({"a": {"kind": "ingredient"}}) == ""


def test_the_progress_bar_names_the_ingredient_so_sweep_points_of_one_lr_and_seed_differ(tiny_model, tmp_path, capsys):
    """A `train.sweep` axis makes ingredients of the same learning rate and seed (`...-class_weightingsampled`):
    the bar names the one it trains, as the stage's `train: <name>: ...` line does."""
    texts, y = _data()
    params = TrainParams(epochs=1, min_steps=0, batch_size=8, max_length=32, class_weighting="sampled")
    name = "lr0.005-seed0-class_weightingsampled"
    finetune(tiny_model, LABELS, texts, y, texts[:12], y[:12], params, 5e-3, 0, tmp_path / name,
             tmp_path / "ckpt", progress=True)
    assert f"train {name}:" in capsys.readouterr().err


def test_dvc_curves_legend_shows_whole_ingredient_names():
    """`dvc plots show` cut the legend's names at 160 px (Vega-Lite's default `labelLimit`): the ingredients of a
    `train.sweep` axis differ only at the end (`lr0.0002-seed0-early_stopping_patience1` / `...2`), so two lines
    read `lr0.0002-seed0-early_stopping_p...` and could not be told apart. The curves' template lifts the limit."""
    from dvc_render import VegaRenderer
    from dvc_render.vega_templates import get_template

    from tests.conftest import ROOT

    names = [i.name for i in config.load(ROOT / "params.yaml", [
        "train.learning_rates=[0.0002]", "train.seeds=[0]", "train.eval_every=2",
        "train.sweep={early_stopping_patience: [1, 2]}"]).train.ingredients()]
    assert len(names) == 2 and names[0][:-1] == names[1][:-1] and len(names[0]) > 30
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    curves = [next(iter(p.values())) for p in plots if next(iter(p.values())).get("template") == "ingredients"]
    assert curves
    for plot in curves:
        template = get_template(plot["template"], str(ROOT / ".dvc" / "plots"))
        rows = [{"step": "1", "loss": "0.5", "ingredient": name, "rev": "workspace"} for name in names]
        spec = VegaRenderer(rows, "curve.tsv", template=template, x="step", y="loss").get_filled_template()
        assert spec["encoding"]["color"]["legend"]["labelLimit"] == 0  # 0: no limit, the whole name


def test_dvc_plots_diff_tells_two_revisions_points_apart():
    """`dvc plots diff exp1 exp2` told revisions apart by line dash alone: with the default `train.eval_every: 0`
    each ingredient's validation curve is one point, so two experiments with the same steps (another
    `select.method`, learning rate, ...) drew the same dot of the same colour for an ingredient, whichever
    revision it came from. The curves' template gives each revision's points a hollow shape of their own."""
    from dvc_render import VegaRenderer
    from dvc_render.vega_templates import get_template

    from tests.conftest import ROOT

    template = get_template("ingredients", str(ROOT / ".dvc" / "plots"))
    rows = [{"step": "6", "accuracy": "0.9", "ingredient": "lr0.0001-seed0", "rev": rev} for rev in ("exp1", "exp2")]
    spec = VegaRenderer(rows, "val_accuracy.tsv", template=template, x="step", y="accuracy").get_filled_template()
    assert spec["encoding"]["shape"] == {"field": "rev", "type": "nominal", "title": "revision"}
    assert spec["mark"]["point"]["filled"] is False  # one revision's point drawn over the other's leaves it seen
    assert spec["encoding"]["strokeDash"]["legend"] is None  # one legend for the revisions: the shapes'


def test_a_weights_file_replaced_at_the_same_size_is_neither_the_ingredient_nor_the_soup(two_ingredient_run,
                                                                                          tmp_path, capsys):
    """Another model's weights copied over an ingredient's or a soup's (the same architecture: the same size) were
    taken for the saved ones (`whole_record` compared sizes): the stages said `up to date`, evaluate scored the copy
    under the soup's name, and `dvc repro` recorded it in dvc.lock. The stages check content now: the ingredient is
    trained again (the same bytes as before), the soup made again; the cheap size check still passes (status)."""
    import shutil

    import tasks.soup
    import tasks.train
    from tasks.common import whole_record

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    a, b = layout.ingredients / "lr0.001-seed0", layout.ingredients / "lr0.002-seed0"
    weights = (a / "model.safetensors").read_bytes()
    shutil.copy(b / "model.safetensors", a / "model.safetensors")
    assert (a / "model.safetensors").read_bytes() != weights
    assert whole_record(a, "train_info.json") is not None and whole_record(a, "train_info.json", verify=True) is None
    shutil.copy(b / "model.safetensors", layout.soups / "greedy" / "model.safetensors")
    capsys.readouterr()
    tasks.train.run(params, layout)
    tasks.soup.run(params, layout)
    printed = capsys.readouterr().out
    assert "lr0.001-seed0: up to date" not in printed and "lr0.002-seed0: up to date" in printed, printed
    assert (a / "model.safetensors").read_bytes() == weights
    assert any(line.startswith("soup: greedy: ") and "ingredients, val acc" in line for line in printed.splitlines())


def test_a_truncated_weights_file_is_one_line_when_its_state_is_opened(tiny_model, tmp_path):
    """A weights file cut short (a copy stopped midway) is found from its header's offsets when LazyState opens it:
    the soup stage loads the first ingredient's model with safetensors' own reader after that, which raised a
    SafetensorError traceback ("incomplete metadata, file not fully covered")."""
    import os

    (d,) = _ingredients(tiny_model, tmp_path, n=1)
    f = d / "model.safetensors"
    os.truncate(f, f.stat().st_size - 100)
    with pytest.raises(SouplineError, match="is truncated; re-run the train stage") as err:
        soup.LazyState(d)
    assert "\n" not in str(err.value)


def test_evaluate_fits_the_probe_once_for_the_same_inputs(two_ingredient_run, tmp_path, monkeypatch):
    """The probe reference's five logistic regressions were fit again on every evaluate, most of a re-run whose models
    the evaluation cache holds: it is kept there too, byte for byte the same details.json, and fit again when what
    it is fit on changes (another selection) or the cache is cleared."""
    import tasks.evaluate
    from soupline.artifacts import read_json, write_json
    from tasks import caches

    params, layout = _copy_of(two_ingredient_run, tmp_path)
    tasks.evaluate.run(params, layout)  # the cache as this code keeps it
    details = (layout.metrics / "details.json").read_bytes()
    calls = []
    fit = tasks.evaluate.selection_probe
    monkeypatch.setattr(tasks.evaluate, "selection_probe", lambda *a: calls.append(1) or fit(*a))
    tasks.evaluate.run(params, layout)
    assert calls == [] and (layout.metrics / "details.json").read_bytes() == details
    caches.clear(layout, ["evaluations"])
    tasks.evaluate.run(params, layout)
    assert calls == [1] and (layout.metrics / "details.json").read_bytes() == details
    selection = read_json(layout.selection)
    write_json(layout.selection, {**selection, "indices": selection["indices"][:-1]})
    tasks.evaluate.run(params, layout)
    assert calls == [1, 1]
