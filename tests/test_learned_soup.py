"""Learned soup: mixing coefficients fit on validation by gradient descent (tiny model, seconds)."""

import numpy as np
import pytest
import torch

from soupline.errors import SouplineError
from soupline.evaluate import collate, tokenize
from soupline.learned_soup import learned
from soupline.classifier import init_model
from tests.test_train_soup import LABELS, _data, _train


def _setup(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    # [CLS] pooling: on a random tiny BERT its features separate the texts at once (mean-pooled ones
    # barely do), so the noisy copy is clearly worse; the learned soup itself is pooling-agnostic
    _, good = _train(tiny_model, tmp_path, "good", lr=1e-2, pooling="cls")
    noise = torch.Generator().manual_seed(0)
    bad = {k: v + 0.5 * torch.randn(v.shape, generator=noise) if v.dtype.is_floating_point else v
           for k, v in good.items()}
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = init_model(tiny_model, LABELS, 0, "cls")
    texts, y = _data()
    enc = tokenize(tok, texts, 32)

    def batches(epoch):
        order = np.random.default_rng(epoch).permutation(len(enc))
        return [(collate(tok, [enc[i] for i in idx], "cpu"), torch.as_tensor(y[idx]))
                for idx in np.array_split(order, 3)]

    return good, bad, model, batches


@pytest.mark.parametrize("per_tensor", [False, True])
def test_learned_soup_moves_weight_to_the_better_ingredient(tiny_model, tmp_path, per_tensor):
    good, bad, model, batches = _setup(tiny_model, tmp_path)
    state, log = learned([bad, good], model, batches, epochs=8, lr=0.2, per_tensor=per_tensor)
    assert abs(sum(log["weights"]) - 1) < 1e-5
    assert log["weights"][1] > (0.5 if per_tensor else 0.6)  # the noisy ingredient is down-weighted
    assert log["val_loss_per_epoch"][-1] < log["val_loss_per_epoch"][0]
    assert state.keys() == good.keys()
    assert all(state[k].dtype == good[k].dtype for k in good)
    assert all(torch.equal(state[k], good[k]) for k in good if not good[k].dtype.is_floating_point)
    floats = [k for k in good if good[k].dtype.is_floating_point]
    if per_tensor:  # each tensor's own mix is in the log: the soup can be rebuilt from it
        assert list(log["weights_per_tensor"]) == floats
        for k, (wb, wg) in log["weights_per_tensor"].items():
            assert torch.allclose(state[k], wb * bad[k] + wg * good[k], atol=1e-5)
    else:
        assert "weights_per_tensor" not in log
        assert all(torch.allclose(state[k], log["weights"][0] * bad[k] + log["weights"][1] * good[k], atol=1e-5)
                   for k in floats)


def test_learned_soup_is_deterministic_and_writes_into(tiny_model, tmp_path):
    good, bad, model, batches = _setup(tiny_model, tmp_path)
    a, _ = learned([bad, good], model, batches, epochs=2, lr=0.1)
    into = {k: torch.zeros_like(v) for k, v in good.items()}
    b, _ = learned([bad, good], model, batches, epochs=2, lr=0.1, into=into)
    assert b is into and all(torch.equal(a[k], b[k]) for k in a)


def test_learned_soup_of_identical_ingredients_is_that_ingredient(tiny_model, tmp_path):
    good, _, model, batches = _setup(tiny_model, tmp_path)
    state, log = learned([good, good], model, batches, epochs=1, lr=0.1)
    # Identical ingredients: the mixing gradient is 0 up to float noise, which Adam's normalisation turns into
    # steps of about lr on the logits (3 batches x 0.1 moves a weight by at most ~0.15); the soup is the ingredient
    assert log["weights"] == pytest.approx([0.5, 0.5], abs=0.15) and sum(log["weights"]) == pytest.approx(1)
    assert all(torch.allclose(state[k].float(), good[k].float(), atol=1e-6) for k in good)


def test_learned_soup_needs_two_ingredients(tiny_model, tmp_path):
    good, _, model, batches = _setup(tiny_model, tmp_path)
    with pytest.raises(SouplineError, match="at least 2 ingredients"):
        learned([good], model, batches, epochs=1, lr=0.1)


LEARNED_SOUP_PEAK = """
import sys, types
from pathlib import Path
import torch
from safetensors.torch import save_file
from soupline.learned_soup import learned
from soupline.soup import LazyState

class Model(torch.nn.Module):  # one 51 MB tensor: above glibc's mmap threshold, so what is freed leaves RSS
    def __init__(self):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(100_000, 128), torch.nn.Linear(128, 3)
    def forward(self, input_ids):
        return types.SimpleNamespace(logits=self.head(self.emb(input_ids).mean(1)))
model, states = Model(), []
for i in range(4):
    (folder := Path(sys.argv[1], str(i))).mkdir()
    save_file({k: v + i for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    states.append(LazyState(folder))
size = sum(v.numel() * v.element_size() for v in model.state_dict().values())
# VmHWM, this process's own peak RSS (ru_maxrss also counts the parent's RSS at the fork)
kb = lambda field: int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
before = kb("VmRSS")
batch = [({"input_ids": torch.randint(0, 100_000, (8, 16))}, torch.randint(0, 3, (8,)))]
learned(states, model, lambda epoch: batch, epochs=2, lr=0.05, into=model.state_dict())
print((kb("VmHWM") - before) / size)
"""


def test_learned_soup_holds_the_ingredients_and_no_extra_copies(tmp_path):
    """Beside the n ingredients' stacks, a step's mixed weights and their gradient (and backward's temporaries): no
    second copy of the first ingredient, no whole soup at the end (4 ingredients: 8.0 models above the loaded model
    before, 6.7 now)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LEARNED_SOUP_PEAK, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    models = float(out.split()[-1])
    print(f"learned soup of 4 ingredients: peak {models:.2f} models above the loaded model")
    assert models < 4 + 3.3
