"""Training recipes on the tiny model: LoRA, LP-FT (probe head), schedules, accumulation, class weights, probes."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from soupline import soup
from soupline.config import TrainParams
from soupline.errors import SouplineError
from soupline.probe import C_GRID, fit_probe
from soupline.classifier import init_model
from soupline.train import class_weights, finetune
from tests.conftest import killed_after_a_checkpoint, make_frame
from tests.test_train_soup import LABELS, _data, _train


def test_lora_trains_adapters_merges_them_and_keeps_the_body_shape(tiny_model, tmp_path):
    from soupline.classifier import load_classifier

    info, state = _train(tiny_model, tmp_path, "lora", method="lora", lr=1e-2, lora={"r": 4, "alpha": 8})
    base = init_model(tiny_model, LABELS, 0).state_dict()
    assert state.keys() == base.keys()  # merged: a plain classifier, soupable with full ingredients
    changed = {k for k in base if not torch.equal(base[k], state[k])}
    assert any("attention.self.query.weight" in k for k in changed)  # W + B A x scaling
    assert not any("key.weight" in k or "intermediate" in k for k in changed)  # not an adapted layer
    assert "classifier.weight" in changed  # the head is trained too
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()
    load_classifier(tmp_path / "lora")
    assert info["method"] == "lora"


def test_lora_is_deterministic_and_soups(tiny_model, tmp_path):
    _, a = _train(tiny_model, tmp_path, "a", method="lora", lora={"r": 4})
    _, b = _train(tiny_model, tmp_path, "b", method="lora", lora={"r": 4})
    assert all(torch.allclose(a[k], b[k]) for k in a)
    _, c = _train(tiny_model, tmp_path, "c", method="lora", lora={"r": 4}, seed=1)
    dirs = [tmp_path / n for n in "ac"]
    soup.check_compatible(dirs, [a, c])
    assert soup.shared_head_init(dirs).keys() == {"classifier.weight", "classifier.bias"}


def test_lora_adapters_train_at_the_sweep_rate_times_the_scale(tiny_model, tmp_path):
    """LoRA's adapters need a higher rate than full fine-tuning (on all-MiniLM-L6-v2 and bbcnews the defaults
    [1e-4, 2e-4] left them near LP-FT's probe: README, `train.lora.learning_rate_scale`), while one
    `train.learning_rates` list serves a `method: [full, lora]` sweep: the adapters train at its rate x the scale,
    the head at its own rate; full fine-tuning reads no scale."""
    scaled = _train(tiny_model, tmp_path, "scaled", method="lora", lr=1e-4, lora={"r": 4, "learning_rate_scale": 10})
    listed = _train(tiny_model, tmp_path, "listed", method="lora", lr=1e-3, lora={"r": 4, "learning_rate_scale": 1})
    assert all(torch.equal(scaled[1][k], listed[1][k]) for k in listed[1])
    assert (scaled[0]["lr"], scaled[0]["adapter_lr"], listed[0]["adapter_lr"]) == (1e-4, 1e-3, 1e-3)
    unscaled = _train(tiny_model, tmp_path, "unscaled", method="lora", lr=1e-4, lora={"r": 4, "learning_rate_scale": 1})
    assert not torch.equal(unscaled[1]["bert.encoder.layer.0.attention.self.query.weight"],
                           listed[1]["bert.encoder.layer.0.attention.self.query.weight"])
    assert TrainParams(method="lora").body_rate(2e-4) == pytest.approx(2e-4 * TrainParams().lora.learning_rate_scale)
    assert TrainParams(method="full", lora={"learning_rate_scale": 10}).body_rate(2e-4) == 2e-4


@pytest.mark.parametrize("lora, message", [
    ({"r": 64}, "larger than the smallest adapted layer"),
    ({"target_modules": ["nope"]}, "match no Linear layer"),
    ({"target_modules": ["classifier"], "r": 2}, "names the classification head"),
])
def test_lora_bad_settings_fail_in_one_line(tiny_model, tmp_path, lora, message):
    with pytest.raises(SouplineError, match=message) as err:
        _train(tiny_model, tmp_path, "bad", method="lora", lora=lora)
    assert "\n" not in str(err.value)


def test_lp_ft_head_starts_from_the_probe_and_ingredients_share_it(tiny_model, tmp_path):
    info, _ = _train(tiny_model, tmp_path, "a", head_init="probe")
    _, _ = _train(tiny_model, tmp_path, "b", head_init="probe", seed=1, lr=1e-2)
    _, _ = _train(tiny_model, tmp_path, "r", head_init="random")
    heads = {n: load_file(str(tmp_path / n / "head_init.safetensors")) for n in "abr"}
    assert torch.equal(heads["a"]["classifier.weight"], heads["b"]["classifier.weight"])
    assert not torch.equal(heads["a"]["classifier.weight"], heads["r"]["classifier.weight"])
    assert info["head_init"] == "probe" and info["probe"]["C"] > 0
    with pytest.raises(SouplineError, match="different initialisations"):
        soup.shared_head_init([tmp_path / "a", tmp_path / "r"])


def test_the_lp_ft_head_is_fitted_once_for_a_sweep_and_trains_the_same_model(tiny_model, tmp_path, monkeypatch):
    """Every ingredient of a sweep starts from one probe head, and each computed it again (a forward pass over the
    selection and the validation split: most of a minute per ingredient on bbcnews at 10 % under load). With
    `head_cache` the first ingredient writes it and the others read it: the same weights as without the cache; an
    unreadable file is fitted again."""
    from soupline import train

    texts, y = _data()
    cfg = TrainParams(epochs=2, min_steps=0, batch_size=8, max_length=32, head_init="probe")
    cache = tmp_path / "heads" / "k.safetensors"

    def fit(name, seed, head_cache):
        info = finetune(tiny_model, LABELS, texts, y, texts[:12], y[:12], cfg, 5e-3, seed, tmp_path / name,
                        tmp_path / f"{name}.ckpt", progress=False, head_cache=head_cache)
        return info, soup.load_state(tmp_path / name)

    plain_info, plain = fit("plain", 1, None)
    fit("first", 0, cache)
    assert cache.exists()
    features = train.head_features
    monkeypatch.setattr(train, "head_features", lambda *a, **k: pytest.fail("the head was fitted again"))
    info, state = fit("second", 1, cache)
    assert info["probe"] == plain_info["probe"] and all(torch.equal(state[k], plain[k]) for k in plain)
    cache.write_bytes(b"\x10" + bytes(7) + b"{")  # cut short
    monkeypatch.setattr(train, "head_features", features)
    info, state = fit("third", 1, cache)
    assert info["probe"] == plain_info["probe"] and all(torch.equal(state[k], plain[k]) for k in plain)


def test_ingredients_of_a_batch_size_sweep_share_their_lp_ft_head(tiny_model, tmp_path):
    """The probe's features were computed in batches of train.batch_size x 2, whose shapes moved their last bits: a
    `train.sweep: {batch_size: [...]}` gave heads 1e-9 apart, and soup refused them as different initialisations.
    Heads a float rounding apart (a probe fit on a GPU's features and on a CPU's) soup too."""
    from safetensors.torch import save_file

    _train(tiny_model, tmp_path, "b8", head_init="probe", batch_size=8)
    _train(tiny_model, tmp_path, "b4", head_init="probe", batch_size=4)
    heads = {n: load_file(str(tmp_path / n / "head_init.safetensors")) for n in ("b8", "b4")}
    assert all(torch.equal(heads["b8"][k], heads["b4"][k]) for k in heads["b8"])
    nudged = {k: v + 1e-7 for k, v in heads["b4"].items()}
    save_file(nudged, str(tmp_path / "b4" / "head_init.safetensors"))
    assert soup.shared_head_init([tmp_path / "b8", tmp_path / "b4"]).keys() == heads["b8"].keys()


def test_probe_head_predicts_like_the_probe(tiny_model):
    """After LP-FT's first step the model's predictions are the probe's (the body is untouched)."""
    from transformers import AutoTokenizer

    from soupline.evaluate import predict_logits, tokenize
    from soupline.train import head_features, init_head_from_probe

    texts, y = _data()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = init_model(tiny_model, LABELS, 0)
    enc = tokenize(tok, texts, 32)
    init_head_from_probe(model, tok, enc, y, enc, y, 8, "cpu", "accuracy")
    probe = fit_probe(head_features(model, tok, enc, 8, "cpu"), y, head_features(model, tok, enc, 8, "cpu"), y, 3)
    np.testing.assert_allclose(predict_logits(model, tok, enc, 8, "cpu"), probe.logits(
        head_features(model, tok, enc, 8, "cpu")), atol=1e-4)


def test_probe_fills_absent_labels_and_checks_the_label_set():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)  # labels 0 and 1 of 3
    probe = fit_probe(x, y, x, y, num_labels=3)
    assert probe.weight.shape == (3, 5) and not probe.weight[2].any()
    assert (probe.logits(x).argmax(1) == y).mean() >= 0.9 and 2 not in probe.logits(x).argmax(1)
    with pytest.raises(SouplineError, match="share one label set"):
        fit_probe(x, y + 2, x, y, num_labels=3)


def test_probe_breaks_validation_ties_on_log_loss_not_toward_the_smallest_C():
    """Separable data: every C is 100 % accurate on validation; the confident probe (lowest log-loss) wins."""
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = (np.eye(3)[y] * 3 + rng.normal(scale=0.1, size=(30, 3))).astype(np.float32)
    probe = fit_probe(x, y, x, y, num_labels=3)
    assert probe.val_score == 1.0 and probe.C == max(C_GRID)
    assert probe.logits(x).max(1).mean() - probe.logits(x).min(1).mean() > 5  # not a near-uniform head


def test_probe_C_is_chosen_on_validation_not_on_training():
    """Separable training data; validation with every ninth label moved on: every C predicts the same labels, and
    validation log-loss prefers C=0.1, while training log-loss (what a fit judged on its own data sees) prefers 100."""
    from soupline.probe import score

    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = (np.eye(3)[y] * 3 + rng.normal(scale=0.1, size=(30, 3))).astype(np.float32)
    y_val = np.where(np.arange(30) % 9 == 0, (y + 1) % 3, y)
    probe = fit_probe(x, y, x, y_val, num_labels=3)
    assert probe.C == 0.1 and probe.val_score == score(probe.logits(x), y_val, "accuracy") == pytest.approx(26 / 30)


def test_lp_ft_probe_is_fit_on_the_selection_and_chosen_on_validation(tiny_model, monkeypatch):
    import soupline.train as train_mod
    from transformers import AutoTokenizer

    from soupline.evaluate import tokenize

    seen = []
    monkeypatch.setattr(train_mod, "fit_probe", lambda *args: seen.append(args) or fit_probe(*args))
    texts, y = _data()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    train_mod.init_head_from_probe(init_model(tiny_model, LABELS, 0), tok, tokenize(tok, texts[:30], 32), y[:30],
                                   tokenize(tok, texts[30:], 32), y[30:], 8, "cpu", "macro_f1")
    x, y_fit, x_val, y_val, num_labels, metric = seen[0]
    assert (len(x), len(x_val), num_labels, metric) == (30, 6, 3, "macro_f1")
    assert np.array_equal(y_fit, y[:30]) and np.array_equal(y_val, y[30:])


def test_grad_accumulation_matches_a_bigger_batch(tiny_model, tmp_path):
    """batch 4 x 2 accumulated == batch 8 in one step: same examples per step, same mean loss (no dropout)."""
    import json
    import shutil

    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    _, big = _train(str(model), tmp_path, "big", batch_size=8, epochs=1, min_steps=3)
    info, acc = _train(str(model), tmp_path, "acc", batch_size=4, grad_accumulation=2, epochs=1, min_steps=3)
    _, small = _train(str(model), tmp_path, "small", batch_size=4, epochs=1, min_steps=3)
    assert info["steps"] == info["planned_steps"] == 5  # ceil(36 / 8) optimizer steps per epoch
    assert all(torch.allclose(big[k], acc[k], atol=1e-5) for k in big)
    loss = {n: [r["train_loss"] for r in json.loads((tmp_path / n / "history.json").read_text())] for n in ("big", "acc")}
    assert np.allclose(loss["big"], loss["acc"], atol=1e-5)  # the curves: the step's mean loss, not a sum of micro-batches
    assert not all(torch.allclose(big[k], small[k], atol=1e-5) for k in big)


def test_grad_accumulation_matches_a_bigger_batch_with_balanced_loss_weights(tiny_model, tmp_path):
    """A balanced loss is the weighted mean over the whole step's batch: micro-batches of other label mixes
    (12 / 12 / 4 texts) must not each be averaged over their own weights."""
    import json
    import shutil

    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (model / "config.json").write_text(json.dumps(cfg))
    texts, y = _data()
    keep = np.flatnonzero(y != 2).tolist() + np.flatnonzero(y == 2)[:4].tolist()
    states = {}
    for name, batch_size, micro in (("big", 8, 1), ("acc", 4, 2)):
        params = TrainParams(epochs=1, min_steps=0, batch_size=batch_size, grad_accumulation=micro, max_length=32,
                             head_init="random", class_weighting="balanced")
        finetune(str(model), LABELS, [texts[i] for i in keep], y[keep], texts[:12], y[:12], params, 5e-3, 0,
                 tmp_path / name, tmp_path / f"{name}.ckpt", progress=False)
        states[name] = soup.load_state(tmp_path / name)
    assert all(torch.allclose(states["big"][k], states["acc"][k], atol=1e-5) for k in states["big"])


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedules_train(tiny_model, tmp_path, schedule):
    info, _ = _train(tiny_model, tmp_path, schedule, schedule=schedule)
    assert info["steps"] == 10


def test_lr_schedule_is_transformers_schedule_without_importing_peft():
    """The same factors as transformers' get_scheduler, bit for bit; and building it (with the train module)
    does not import transformers.optimization, which imports peft: 5 s in every train process."""
    import subprocess
    import sys

    from transformers import get_scheduler

    from soupline.train import lr_schedule

    def factors(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        out = []
        for _ in range(30):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    for schedule, hf_name in (("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")):
        ours = factors(lambda opt: lr_schedule(opt, schedule, 7, 25))
        assert ours == factors(lambda opt: get_scheduler(hf_name, opt, num_warmup_steps=7, num_training_steps=25))
    code = ("import sys, torch; from soupline.train import lr_schedule; "
            "lr_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 'cosine', 2, 9); "
            "assert 'peft' not in sys.modules and 'transformers.optimization' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_class_weights_balance_counts():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2, 1.0]))
    assert (w[0] * 3).item() == pytest.approx(w[1].item())  # each present label carries the same total weight


def test_class_balanced_sampling_evens_out_labels_and_is_seeded():
    from soupline.train import _batch_order

    y = np.array([0] * 90 + [1] * 10)
    batches = _batch_order(100, 10, seed=3, steps=50, labels=y)
    drawn = np.concatenate(batches)
    assert len(drawn) == 500 and 0.4 < (y[drawn] == 1).mean() < 0.6  # 10 % of the data, half of the draws
    assert all(np.array_equal(a, b) for a, b in zip(batches, _batch_order(100, 10, 3, 50, labels=y)))
    plain = np.concatenate(_batch_order(100, 10, seed=3, steps=10))
    assert sorted(plain) == list(range(100))  # without labels: one permutation per epoch


def test_training_length_and_a_new_data_order_each_epoch():
    from soupline.train import _batch_order, total_steps

    assert total_steps(28, 8, 1, 10) == 10 and total_steps(28, 8, 2, 5) == 8  # min_steps, else epochs x batches
    batches = _batch_order(20, 5, seed=0, steps=8)
    first, second = np.concatenate(batches[:4]), np.concatenate(batches[4:])
    assert sorted(first) == sorted(second) == list(range(20)) and not np.array_equal(first, second)


def test_the_recipe_keys_reach_the_training_loop(tiny_model, tmp_path, monkeypatch):
    """warmup_ratio, class_weighting: balanced, freeze_embeddings and head_learning_rate: a run that ignored one would
    still train and pass the other tests, so each is checked where it acts."""
    import soupline.train as train_mod
    from soupline.train import _optimizer, head_of

    seen = {"schedule": [], "weight": []}
    real_schedule, real_loss = train_mod.lr_schedule, torch.nn.functional.cross_entropy

    def schedule(opt, kind, warmup, total):
        seen["schedule"].append((warmup, total))
        return real_schedule(opt, kind, warmup, total)

    def loss(*args, weight=None, **kwargs):
        seen["weight"].append(weight)
        return real_loss(*args, weight=weight, **kwargs)

    monkeypatch.setattr(train_mod, "lr_schedule", schedule)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", loss)
    texts, y = _data()
    keep = np.flatnonzero(y != 2).tolist() + np.flatnonzero(y == 2)[:4].tolist()  # 12 / 12 / 4 texts
    cfg = TrainParams(epochs=1, min_steps=0, batch_size=8, max_length=32, head_init="random", warmup_ratio=0.5,
                      class_weighting="balanced")
    finetune(tiny_model, LABELS, [texts[i] for i in keep], y[keep], texts[:12], y[:12], cfg, 5e-3, 0, tmp_path / "a",
             tmp_path / "a.ckpt", progress=False)
    assert seen["schedule"] == [(2, 4)]  # 4 steps, half of them warm-up
    balanced = class_weights(y[keep], 3)
    assert len(seen["weight"]) == 4 and all(w is not None and torch.equal(w, balanced) for w in seen["weight"])
    words = "bert.embeddings.word_embeddings.weight"  # frozen: as the base model has them
    assert torch.equal(soup.load_state(tmp_path / "a")[words], init_model(tiny_model, LABELS, 0).state_dict()[words])
    model = init_model(tiny_model, LABELS, 0)
    head = {id(p) for p in head_of(model)[1].parameters()}
    for group in _optimizer(model, 1e-4, 2e-3, 0.01).param_groups:
        assert {id(p) in head for p in group["params"]} == {group["lr"] == 2e-3}
    assert {group["lr"] for group in _optimizer(model, 1e-4, None, 0.01).param_groups} == {1e-4}


def test_layer_lr_decay_lowers_each_layer_below_the_top_and_the_embeddings_most(tiny_model):
    """LLRD: the top layer at the body's rate, each layer below x decay once more, the embeddings x decay ** layers;
    the head keeps its own rate. The tiny model has 2 layers."""
    from soupline.train import _optimizer

    model = init_model(tiny_model, LABELS, 0)
    rate = {id(p): g["lr"] for g in _optimizer(model, 1e-4, 2e-3, 0.01, 0.5).param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert rate[id(params["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(1e-4)
    assert rate[id(params["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(5e-5)
    assert rate[id(params["bert.embeddings.LayerNorm.weight"])] == pytest.approx(2.5e-5)
    assert rate[id(params["classifier.weight"])] == 2e-3


def test_layer_lr_decay_on_a_model_without_numbered_layers_is_one_line():
    from soupline.train import layer_lr_factors

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.classifier = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    with pytest.raises(SouplineError, match="train.layer_lr_decay: 1") as err:
        layer_lr_factors(Flat(), 0.8)
    assert "\n" not in str(err.value)


def test_layer_lr_decay_is_checked_against_the_model_before_any_stage_runs(tmp_path, tiny_model):
    """ALBERT shares one layer across its depth, so it has no numbered layers to decay over: the drivers and `soupline
    doctor` say so in one line before any stage runs (`check_layers`), where the train stage alone said it, after
    prepare, embed and select had run. A decay of 1 (the default) and a model with layers check nothing / pass."""
    from transformers import AlbertConfig

    from soupline.train import check_layers, needs_layer_check

    AlbertConfig(vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16).save_pretrained(tmp_path)
    swept = TrainParams(sweep={"layer_lr_decay": [1.0, 0.8]})
    assert needs_layer_check(swept) and not needs_layer_check(TrainParams())
    assert not needs_layer_check(TrainParams(method="probe", layer_lr_decay=0.8))  # the probe trains no layers
    with pytest.raises(SouplineError, match=r"train.layer_lr_decay: \w+ has no numbered transformer layers") as err:
        check_layers(str(tmp_path), swept)
    assert "\n" not in str(err.value)
    check_layers(str(tmp_path), TrainParams())
    check_layers(tiny_model, swept)


def test_label_smoothing_and_layer_lr_decay_reach_the_training_loop(tiny_model, tmp_path, monkeypatch):
    """Each where it acts: the loss's label_smoothing, and the optimizer's per-layer rates."""
    import soupline.train as train_mod

    seen = {"smoothing": [], "rates": []}
    real_loss, real_optimizer = torch.nn.functional.cross_entropy, train_mod._optimizer

    def loss(*args, label_smoothing=0.0, **kwargs):
        seen["smoothing"].append(label_smoothing)
        return real_loss(*args, label_smoothing=label_smoothing, **kwargs)

    def optimizer(*args):
        opt = real_optimizer(*args)
        seen["rates"].append(sorted({g["lr"] for g in opt.param_groups}))
        return opt

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", loss)
    monkeypatch.setattr(train_mod, "_optimizer", optimizer)
    _train(tiny_model, tmp_path, "a", lr=1e-3, head_init="random", label_smoothing=0.1, layer_lr_decay=0.5)
    assert seen["smoothing"] and set(seen["smoothing"]) == {0.1}
    assert seen["rates"] == [pytest.approx([2.5e-4, 5e-4, 1e-3, 2e-3])]  # embeddings, layer 0, layer 1, head


def test_each_micro_batch_loss_goes_through_batch_loss(tiny_model, tmp_path, monkeypatch):
    """`finetune` computes every micro-batch's loss with `soupline.train.batch_loss`, the one place a benchmark swaps
    another loss in (benchmarks/rdrop_stage.py): a swapped loss is the one trained on, each step, each micro-batch."""
    import soupline.train as train_mod

    calls, real = [], train_mod.batch_loss

    def doubled(*args):
        calls.append(len(args[2]))
        return 2 * real(*args)

    _train(tiny_model, tmp_path, "plain", grad_accumulation=2)
    monkeypatch.setattr(train_mod, "batch_loss", doubled)
    info, _ = _train(tiny_model, tmp_path, "doubled", grad_accumulation=2)
    plain, twice = (next(r["train_loss"] for r in json.loads((tmp_path / n / "history.json").read_text())
                         if "train_loss" in r) for n in ("plain", "doubled"))  # the first step's: same weights
    assert len(calls) == 2 * info["steps"]  # two micro-batches a step
    assert twice == pytest.approx(2 * plain)


def test_new_train_settings_at_their_neutral_value_leave_the_keys_as_they_were():
    """label_smoothing: 0 and layer_lr_decay: 1 train as before the settings existed: out of the key (an upgrade
    retrains nothing); any other value is in it."""
    assert not {"label_smoothing", "layer_lr_decay"} & TrainParams().key_settings().keys()
    assert TrainParams(label_smoothing=0.1, layer_lr_decay=0.8).key_settings() == {
        **TrainParams().key_settings(), "label_smoothing": 0.1, "layer_lr_decay": 0.8}


@pytest.mark.parametrize("setting", [{"label_smoothing": 1}, {"label_smoothing": -0.1}, {"layer_lr_decay": 0},
                                     {"layer_lr_decay": 1.2}])
def test_bad_label_smoothing_or_layer_lr_decay_is_one_line(setting):
    from soupline import config

    with pytest.raises(SouplineError, match=f"train.{next(iter(setting))}") as err:
        config.validate({"train": setting})
    assert "\n" not in str(err.value)


def test_early_stopping_keeps_the_best_step_of_its_own_metric(tiny_model, tmp_path, monkeypatch):
    """Validation scores scripted per pass (step 0, then one each epoch of 5 steps): macro-F1 peaks at step 10,
    accuracy at step 5. With early_stopping_metric: macro_f1 and patience 2, training stops at step 20 and the
    ingredient is step 10's weights, with step 10's scores."""
    import soupline.train as train_mod

    scripted = {"accuracy": iter([0.1, 0.9, 0.5, 0.4, 0.3]), "macro_f1": iter([0.1, 0.5, 0.9, 0.4, 0.3])}
    monkeypatch.setattr(train_mod, "score", lambda logits, y, metric: next(scripted[metric]))
    weights, real = [], train_mod.predict_logits  # the weights each validation pass saw

    def predict(model, *args):
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args)

    monkeypatch.setattr(train_mod, "predict_logits", predict)
    info, state = _train(tiny_model, tmp_path, "es", head_init="random", epochs=6, early_stopping_patience=2,
                         early_stopping_metric="macro_f1")
    assert (info["steps"], info["best_step"], info["val_macro_f1"], info["val_accuracy"]) == (20, 10, 0.9, 0.5)
    assert all(torch.equal(state[k], weights[2][k]) for k in state)


@pytest.mark.parametrize("patience, kept, val", [(None, 15, 0.6), (5, 10, 0.9), (1, 10, 0.9)])
def test_best_step_is_the_step_of_the_weights_kept(tiny_model, tmp_path, monkeypatch, capsys, patience, kept, val):
    """Validation peaks at step 10 of 15 (evaluated every 5, and at step 0 with a patience). Without early stopping
    the ingredient is step 15's weights and scores, and train_info.json says step 15; with a patience, step 10's.
    Patience 1 runs out at the last step, which is no early stop."""
    import soupline.train as train_mod

    scripted = iter([0.1] * bool(patience) + [0.5, 0.9, 0.6])
    monkeypatch.setattr(train_mod, "score", lambda logits, y, metric: next(scripted) if metric == "accuracy" else 0.0)
    info, _ = _train(tiny_model, tmp_path, "es", head_init="random", epochs=3, eval_every=5,
                     early_stopping_patience=patience)
    assert (info["steps"], info["best_step"], info["val_accuracy"]) == (15, kept, val)
    assert "early stop" not in capsys.readouterr().out


def test_an_early_stop_line_names_its_ingredient(tiny_model, tmp_path, monkeypatch, capsys):
    """Ingredients trained side by side (the Prefect flow's workers) print into one log: the line says whose."""
    import soupline.train as train_mod

    scripted = iter([0.1, 0.9, 0.5])
    monkeypatch.setattr(train_mod, "score", lambda logits, y, metric: next(scripted) if metric == "accuracy" else 0.0)
    info, _ = _train(tiny_model, tmp_path, "lr0.001-seed3", head_init="random", epochs=3, eval_every=5,
                     early_stopping_patience=1)
    assert (info["steps"], info["best_step"]) == (10, 5)
    assert "train: lr0.001-seed3: early stop at step 10 (best val accuracy 0.9000 at step 5)" in capsys.readouterr().out


def test_early_stopping_keeps_step_0_when_fine_tuning_only_loses(tiny_model, tmp_path, monkeypatch):
    """LP-FT starts from the probe on frozen features. Here the selection is the validation set, so step 0 scores
    every text right and no later step can beat it, while learning rates of 10 wreck what training touches: the
    ingredient is step 0's weights (the pretrained body and the probe head) and says so. Killed after its first
    checkpoint and resumed, a run ends with the same weights and train_info.json."""
    import json

    cfg = {"epochs": 2, "eval_every": 1, "early_stopping_patience": 100, "head_learning_rate": 10.0}
    info, state = _train(tiny_model, tmp_path, "s0", lr=10.0, **cfg)
    history = json.loads((tmp_path / "s0" / "history.json").read_text())
    assert history[0] == {"step": 0, "val_accuracy": 1.0, "val_macro_f1": 1.0}
    assert min(r["val_accuracy"] for r in history[1:]) < 1.0  # training diverged
    assert (info["steps"], info["best_step"], info["val_accuracy"]) == (info["planned_steps"], 0, 1.0)
    start = {**init_model(tiny_model, LABELS, 0).state_dict(), **load_file(tmp_path / "s0" / "head_init.safetensors")}
    assert all(torch.equal(state[k], start[k]) for k in state)
    assert "0\t1.0" in (tmp_path / "curves-s0" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text()

    with killed_after_a_checkpoint(monkeypatch):
        _train(tiny_model, tmp_path, "resumed", lr=10.0, **cfg)
    resumed_info, resumed = _train(tiny_model, tmp_path, "resumed", lr=10.0, **cfg)
    assert resumed_info["resumed_from_step"] == 3
    assert all(torch.equal(state[k], resumed[k]) for k in state)
    assert (tmp_path / "s0/train_info.json").read_bytes() == (tmp_path / "resumed/train_info.json").read_bytes()
    assert (tmp_path / "s0/history.json").read_bytes() == (tmp_path / "resumed/history.json").read_bytes()


def test_macro_f1_early_stopping_metric_and_balanced_loss(tiny_model, tmp_path):
    info, _ = _train(tiny_model, tmp_path, "f1", early_stopping_metric="macro_f1", early_stopping_patience=2,
                     class_weighting="balanced", epochs=4)
    assert 0 <= info["val_macro_f1"] <= 1 and 0 <= info["val_accuracy"] <= 1
    info, _ = _train(tiny_model, tmp_path, "sampled", class_weighting="sampled")
    assert info["steps"] == 2 * 5  # 36 examples, batch 8: 5 steps per epoch, as without sampling


def test_a_diverged_loss_stops_training_in_one_line(tiny_model, tmp_path):
    """A learning rate of 1e12 made the loss NaN from step 2: every weight became NaN, and the ingredient trained on
    to a constant model that validation, the soups and evaluate scored as one (val acc 1/3 on 3 labels)."""
    with pytest.raises(SouplineError, match=r"train diverge: the loss is nan at step \d+ \(learning rate 1e\+12, "
                                            r"head 0\.5\): training diverged; lower train\.learning_rates") as err:
        _train(tiny_model, tmp_path, "diverge", lr=1e12, head_learning_rate=0.5)
    assert "\n" not in str(err.value) and not (tmp_path / "diverge").exists()  # no ingredient written
    info, state = _train(tiny_model, tmp_path, "fine", lr=1e-2)  # a high but sane rate trains as before
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()) and info["steps"] > 0


def test_a_too_high_finite_rate_records_that_training_failed(tiny_model, tmp_path):
    """A rate too high for the loss to stay low, yet finite (all-MiniLM-L6-v2 at 2e-2: the loss from 0.028 to 1.53,
    every validation text one label) trained a constant model silently: soups averaged it in and the report read
    its accuracy as a result. LP-FT's probe scored every validation text right; the wrecked model ends at the
    majority label's share, and train_info.json says why. A sane rate records nothing."""
    info, _ = _train(tiny_model, tmp_path, "wrecked", lr=10.0)
    majority = np.bincount(_data()[1][:12]).max() / 12  # _train validates on the first 12 texts
    assert info["val_accuracy"] <= majority == 5 / 12 and info["probe"]["val_accuracy"] == 1.0
    assert re.fullmatch(r"its validation accuracy ended at 0\.\d{4}, no better than predicting the majority label "
                        r"\(0\.4167\), down from 1\.0000 at its start and its training loss rose from \S+ at step 1 "
                        r"to \S+ over the last quarter of steps", info["failed"])
    assert json.loads((tmp_path / "wrecked" / "train_info.json").read_text())["failed"] == info["failed"]
    assert "failed" not in _train(tiny_model, tmp_path, "fine", lr=1e-3)[0]


@pytest.mark.parametrize("losses, start, end, features, fires", [
    ([1.10, 1.09, 1.10, 1.09], None, 0.33, None, False),  # a tiny model at chance from its random head: quiet
    ([1.10, 1.09, 1.10, 1.12], None, 0.33, None, False),  # ... its flat loss's last batch a little above the first
    ([1.10, 1.09, 1.30, 1.40], None, 0.33, None, True),  # ... whose loss climbed
    ([0.03, 0.02, 0.01, 0.01], 0.70, 0.33, None, True),  # LP-FT's probe head above chance, lost
    ([0.20, 5.00, 2.00, 1.40], 1.00, 0.67, None, False),  # the loss climbed, but it still beats the majority label
    ([0.03, 0.02, 0.01, 0.00], 0.70, 0.90, None, False),  # healthy
    ([1.60, 1.52, 1.55, 1.53], None, 0.33, (0.70, 0.33), True),  # a random head's body wrecked: features collapsed
    ([1.10, 1.09, 1.10, 1.09], None, 0.33, (1.00, 1.00), False),  # a head that has not learned yet, features intact
    ([1.10, 1.09, 1.10, 1.09], None, 0.33, (0.33, 0.33), False),  # features that never told the labels apart
])
def test_training_failed_compares_the_end_with_the_start(losses, start, end, features, fires):
    """A tiny model can sit at chance throughout (a random head starts there): only a fall from a start above the
    majority label's share, a loss that rose clearly, or head features a probe no longer separates, says training
    failed."""
    from soupline.train import training_failed

    assert (training_failed(losses, start, end, 1 / 3, "accuracy", features) is not None) == fires


def test_a_random_head_wrecked_by_a_finite_rate_records_that_training_failed(tiny_model, tmp_path):
    """`train.head_init: random` at a rate too high yet finite: the start is at chance and the loss stays near the
    entropy of the label shares, as for a tiny model that has not learned yet, so nothing was recorded (and a flat
    loss 1.10 to 1.10 read as rising at healthy rates). The wrecked body's features no longer tell the labels apart
    (a probe on them scores the majority share, from 1.0 on the starting model's); the healthy ones still do."""
    info, _ = _train(tiny_model, tmp_path, "wrecked", lr=0.2, head_init="random")
    assert re.fullmatch(r"its validation accuracy ended at 0\.\d{4}, no better than predicting the majority label "
                        r"\(0\.4167\), a linear probe on the features its head reads scores 0\.\d{4}, down from "
                        r"1\.0000 on the starting model's: they no longer tell the labels apart", info["failed"])
    for lr in (1e-3, 5e-3, 1e-2):  # at chance too (10 steps of the tiny model), but its features separate the labels
        assert "failed" not in _train(tiny_model, tmp_path, f"healthy{lr}", lr=lr, head_init="random")[0]


def test_a_random_heads_starting_model_is_probed_once_for_a_sweep(tiny_model, tmp_path, monkeypatch):
    """Each ingredient of a random-head sweep that ended at chance loaded the starting model and probed its features
    again, the same model and texts every time. With `head_cache` the first writes the score and the others read
    it: the same `failed` line as without the cache; an unreadable file is probed again."""
    from soupline import train

    texts, y = _data()
    cfg = TrainParams(epochs=2, min_steps=0, batch_size=8, max_length=32, head_init="random")
    cache = tmp_path / "heads" / "k.start.json"

    def failed(name, seed, head_cache):
        return finetune(tiny_model, LABELS, texts, y, texts[:12], y[:12], cfg, 0.2, seed, tmp_path / name,
                        tmp_path / f"{name}.ckpt", progress=False, head_cache=head_cache)["failed"]

    plain = failed("plain", 1, None)
    assert "down from 1.0000 on the starting model's" in failed("first", 0, cache)
    assert json.loads(cache.read_text()) == {"features_probe": 1.0}
    probed, probe = [], train.features_probe
    monkeypatch.setattr(train, "features_probe", lambda model, *a: probed.append(model) or probe(model, *a))
    assert failed("second", 1, cache) == plain and len(probed) == 1  # the trained model's alone
    cache.write_text("{")  # cut short
    assert failed("third", 1, cache) == plain and len(probed) == 3
    assert json.loads(cache.read_text()) == {"features_probe": 1.0}


def test_the_features_probe_reads_a_lora_models_head(tiny_model):
    """Under `method: lora` the head is peft's wrapper of the Linear it trains: the probe on its features was None,
    so a random head's LoRA run wrecked by a too-high rate went unflagged (the built-in model on the tiny data at
    0.1 or 0.5: val accuracy at the majority share, features probed at it, from 1.0). LoRA's adapters start as
    zero: the wrapped model's features are the model's own."""
    from soupline.evaluate import tokenize
    from soupline.models import load_tokenizer
    from soupline.train import apply_lora, features_probe

    texts, y = _data()
    tok = load_tokenizer(tiny_model)
    enc = tokenize(tok, texts, 32)

    def probe(model) -> float | None:
        return features_probe(model, tok, enc[12:], y[12:], enc[:12], y[:12], "cpu", "accuracy")

    plain = probe(init_model(tiny_model, LABELS, 0))
    assert plain is not None and probe(apply_lora(init_model(tiny_model, LABELS, 0), TrainParams().lora, 0)) == plain


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_majority_score_is_what_a_constant_model_scores(metric):
    from soupline.probe import score
    from soupline.train import majority_score

    y = np.array([2, 0, 2, 1, 2, 0])
    constant = np.zeros((len(y), 4))
    constant[:, 2] = 1.0  # the most frequent label for every text
    assert majority_score(y, metric) == score(constant, y, metric)
    assert majority_score(y, metric) == pytest.approx({"accuracy": 0.5, "macro_f1": 2 / 9}[metric])


def test_the_failed_training_line_names_the_rates_and_the_soups_that_average_it():
    from soupline.train import failed_line

    cfg = TrainParams()
    line = failed_line("lr0.02-seed0", "why", 0.02, cfg, ["uniform", "greedy", "ties", "dare"])
    assert line == ("train lr0.02-seed0: training failed (learning rate 0.02, head 0.002): why; lower "
                    "train.learning_rates (or train.head_learning_rate); the uniform, ties and dare soups average "
                    "it in")
    assert failed_line("x", "why", 0.02, cfg, ["ties", "greedy"]).endswith("; the ties soup averages it in")
    assert failed_line("x", "why", 0.02, cfg, ["greedy"]).endswith("(or train.head_learning_rate)")
    lora = TrainParams(method="lora", lora={"learning_rate_scale": 5})
    assert failed_line("x", "why", 2e-4, lora, []).startswith("train x: training failed (learning rate 0.0002 "
                                                             "(adapters 0.001: x train.lora.learning_rate_scale), head")


def test_fp16_on_cpu_fails_in_one_line(tiny_model, tmp_path):
    with pytest.raises(SouplineError, match="fp16 needs a CUDA device"):
        _train(tiny_model, tmp_path, "fp16", precision="fp16")


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_schedule(tiny_model, tmp_path, monkeypatch):
    """fp16's GradScaler skips the optimizer step of a gradient with inf/NaN (often the first steps, at scale 65536);
    the schedule stepped anyway, shifting warm-up, and torch warned 'lr_scheduler.step() before optimizer.step()'.
    A stand-in scaler (fp16 needs CUDA) that skips the first step and halves its scale."""
    import warnings

    import soupline.train

    class SkipsFirst:
        def __init__(self, *args, **kwargs):
            self.value, self.calls = 65536.0, 0

        def scale(self, loss):
            return loss

        def unscale_(self, opt):
            pass

        def get_scale(self):
            return self.value

        def step(self, opt):
            self.calls += 1
            if self.calls > 1:
                opt.step()

        def update(self):
            self.value /= 2 if self.calls == 1 else 1

        def state_dict(self):
            return {}

    schedules = []
    real = soupline.train.lr_schedule
    monkeypatch.setattr(torch.amp, "GradScaler", SkipsFirst)
    monkeypatch.setattr(soupline.train, "lr_schedule", lambda *a: schedules.append(real(*a)) or schedules[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warning about the order of the two steps
        info, _ = _train(tiny_model, tmp_path, "skip", epochs=1)
    assert schedules[0].last_epoch == info["steps"] - 1  # one step fewer than the loop took


def test_bf16_autocast_runs_on_cpu_and_records_validation_scores_in_fp32(tiny_model, tmp_path, monkeypatch):
    """Training's validation passes run under autocast, but the scores train_info.json keeps are measured in fp32,
    as the soup stage measures every soup greedy weighs against the best of them. Here predictions under autocast
    are skewed to label 0, so a score taken in bf16 would show it."""
    import json

    import soupline.train
    from soupline.classifier import load_classifier
    from soupline.evaluate import tokenize
    from soupline.models import load_tokenizer

    real = soupline.train.predict_logits

    def skewed(*args, **kwargs):
        logits = real(*args, **kwargs)
        if torch.is_autocast_enabled("cpu"):
            logits[:, 0] += 1e3
        return logits

    monkeypatch.setattr(soupline.train, "predict_logits", skewed)
    info, state = _train(tiny_model, tmp_path, "bf16", precision="bf16", epochs=4)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # weights stay fp32
    assert info["steps"] == 20
    texts, y = _data()
    tok = load_tokenizer(tmp_path / "bf16")
    fp32 = real(load_classifier(tmp_path / "bf16"), tok, tokenize(tok, texts[:12], 32), 16, "cpu").argmax(1)
    assert info["val_accuracy"] == pytest.approx(float((fp32 == y[:12]).mean()))
    last = json.loads((tmp_path / "bf16" / "history.json").read_text())[-1]  # the curves keep training's own pass
    assert last["val_accuracy"] == pytest.approx(float((y[:12] == 0).mean())) != info["val_accuracy"]


def test_resume_from_a_checkpoint_of_another_config_fails(tiny_model, tmp_path):
    texts, y = _data()
    cfg = TrainParams(epochs=2, min_steps=0, batch_size=8, max_length=32, checkpoint_every=3)
    model = init_model(tiny_model, LABELS, 0)
    torch.save({"model": model.state_dict(), "fingerprint": "other"}, tmp_path / "x.ckpt")
    with pytest.raises(SouplineError, match="different train config") as err:
        finetune(tiny_model, LABELS, texts, y, texts, y, cfg, 5e-3, 0, tmp_path / "x", tmp_path / "x.ckpt",
                 progress=False, fingerprint="mine")
    assert "\n" not in str(err.value) and (tmp_path / "x.ckpt").exists()  # nothing lost


def test_an_unreadable_checkpoint_is_one_line(tiny_model, tmp_path):
    """A damaged checkpoint (a kill cannot make one: writes are atomic; a disk or a copy can) names the file to
    delete instead of raising torch's unpickling traceback, and is kept."""
    texts, y = _data()
    cfg = TrainParams(epochs=2, min_steps=0, batch_size=8, max_length=32, checkpoint_every=3)
    torch.save([1, 2], tmp_path / "list.ckpt")  # loads, but is no checkpoint
    for damaged in (b"\xab" * 100, b"", b"garbage\n", (tmp_path / "list.ckpt").read_bytes()):  # garbage: ValueError
        (tmp_path / "x.ckpt").write_bytes(damaged)
        with pytest.raises(SouplineError, match=r"checkpoint .*x.ckpt cannot be read .*delete it") as err:
            finetune(tiny_model, LABELS, texts, y, texts, y, cfg, 5e-3, 0, tmp_path / "x", tmp_path / "x.ckpt",
                     progress=False, fingerprint="mine")
        assert "\n" not in str(err.value) and (tmp_path / "x.ckpt").read_bytes() == damaged


def test_head_learning_rate_must_be_positive():
    from soupline import config

    with pytest.raises(SouplineError, match="train.head_learning_rate"):
        config.validate({"train": {"head_learning_rate": 0}})
    with pytest.raises(SouplineError, match="train.early_stopping_metric"):
        config.validate({"train": {"early_stopping_metric": "loss"}})


def test_probe_reference_without_embeddings_is_one_line(tmp_path):
    from soupline import config
    from soupline.artifacts import sha256_file, write_json
    from tasks.evaluate import probe_reference
    from tasks.layout import Layout

    layout = Layout(tmp_path)
    (layout.prepared).mkdir(parents=True)
    make_frame(2).to_parquet(layout.split("pool"))
    make_frame(2).to_parquet(layout.split("validation"))
    write_json(layout.selection, {"indices": [0, 1], "pool_hash": sha256_file(layout.split("pool")), "pool_size": 6})
    with pytest.raises(SouplineError, match="run the embed stage first") as err:
        probe_reference(config.validate({}), layout, LABELS, np.zeros(6, dtype=int))
    assert "\n" not in str(err.value)


def test_a_sweep_whose_points_min_steps_makes_equal_is_a_warning(tmp_path, recwarn):
    """steps = max(epochs x steps per epoch, min_steps): on a small selection min_steps sets every point's length, so
    `train.sweep: {epochs: [1, 2]}` trained the same model twice, byte for byte, with no word."""
    from soupline import config
    from tasks.train import warn_same_length

    params = config.load(tmp_path / "missing.yaml", ["train.sweep={epochs: [1, 2]}", "train.seeds=[0]",
                                                  "train.learning_rates=[0.001]", "train.min_steps=30"])
    sweep = params.train.ingredients()
    assert warn_same_length(sweep, 24) == [["lr0.001-seed0-epochs1", "lr0.001-seed0-epochs2"]]
    assert "train the same model: on 24 examples each trains 30 steps" in str(recwarn.pop().message)
    assert warn_same_length(sweep, 400) == []  # 25 steps an epoch: 30 and 50 steps
    floors = config.load(tmp_path / "missing.yaml", ["train.sweep={min_steps: [10, 20]}", "train.seeds=[0]",
                                                  "train.learning_rates=[0.001]"]).train.ingredients()
    assert len(warn_same_length(floors, 400)) == 1  # epochs win over both floors: the fix is a floor above them
    assert re.search(r"; raise train.min_steps above \d+, or vary epochs instead$", str(recwarn.pop().message))
