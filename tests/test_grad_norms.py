"""Per-example gradient norms from one activation-gradient backward pass (select/grad_norms.py):
equal to each example's own backward pass for every layer kind, both Linear branches (ghost norm and
formed gradient), a padding-row Embedding and a lookup broadcast over the batch; weights the hooks
cannot see are caught by the autograd check, not returned as a smaller norm."""

import pytest
import torch

from soupline.errors import SouplineError
from soupline.select.grad_norms import GradNorms, linear_sq


class Toy(torch.nn.Module):
    """Token + broadcast position embeddings -> LayerNorm -> wide Linear -> per-token head, mean over tokens."""

    def __init__(self, direct_head: bool = False):
        super().__init__()
        self.tok = torch.nn.Embedding(10, 8, padding_idx=0)
        self.pos = torch.nn.Embedding(6, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.wide = torch.nn.Linear(8, 64)  # 5 tokens: 5 x 72 < 8 x 64, the ghost norm
        self.head = torch.nn.Linear(64, 3)  # 5 x 67 >= 64 x 3, the formed gradient
        self.direct_head = direct_head

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1])[None])  # pos output (1, T, 8)
        h = torch.tanh(self.wide(self.norm(h)))
        if self.direct_head:  # the head's weight read outside its forward: invisible to hooks
            return torch.nn.functional.linear(h, self.head.weight, self.head.bias).mean(1)
        return self.head(h).mean(1)


def reference(model, names, ids, labels):
    out = []
    for i in range(len(ids)):
        params = [p for n, p in model.named_parameters() if n in names]
        loss = torch.nn.functional.cross_entropy(model(ids[i:i + 1]), labels[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("names", [None, {"head.weight", "head.bias"}, {"tok.weight", "pos.weight", "norm.weight"}])
def test_norms_equal_per_example_backward(names):
    torch.manual_seed(0)
    model = Toy()
    names = names or {n for n, _ in model.named_parameters()}
    ids = torch.randint(0, 10, (7, 5))
    ids[0, :2] = 0  # the padding row: no gradient
    labels = torch.randint(0, 3, (7,))
    want = reference(model, names, ids, labels)
    norms = GradNorms(model, names)
    got = norms(lambda: model(ids), labels)
    assert torch.allclose(got, want, rtol=1e-5)
    norms.check(lambda: model(ids[:1]), labels[:1], float(got[0]))  # agrees: no error
    assert not any(p.requires_grad for p in model.parameters())  # frozen: no weight gradients computed


def test_linear_sq_branches_agree():
    torch.manual_seed(0)
    for t, n, m in [(3, 16, 16), (40, 4, 2)]:  # ghost, then formed
        a, g = torch.randn(4, t, n), torch.randn(4, t, m)
        formed = torch.einsum("btm,btn->bmn", g, a).square().sum((1, 2))
        assert torch.allclose(linear_sq(a, g), formed, rtol=1e-4)


def test_weights_used_outside_a_layer_forward_fail_the_check():
    torch.manual_seed(0)
    model = Toy(direct_head=True)
    names = {n for n, _ in model.named_parameters()}
    ids, labels = torch.randint(1, 10, (3, 5)), torch.tensor([0, 1, 2])
    norms = GradNorms(model, names)
    got = norms(lambda: model(ids), labels)
    with pytest.raises(SouplineError, match="outside a Linear, LayerNorm, RMSNorm or Embedding forward"):
        norms.check(lambda: model(ids[:1]), labels[:1], float(got[0]))


def test_a_parameter_outside_the_supported_layers_is_one_clear_error():
    model = Toy()
    model.scale = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(SouplineError, match="scale.*not a Linear"):
        GradNorms(model, {"scale", "head.weight"})


def test_a_layer_called_twice_per_forward_is_one_clear_error():
    """Shared layers (ALBERT): each call's share is not the weight's norm, so refuse rather than guess."""
    model = torch.nn.Linear(4, 4)
    norms = GradNorms(model, {"weight"})
    with pytest.raises(SouplineError, match="twice per forward"):
        norms(lambda: model(model(torch.randn(2, 4))), torch.tensor([0, 1]))


class SharedProjection(torch.nn.Module):
    """DeBERTa's relative attention (share_att_key: false): a Linear run once on a table every example shares."""

    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(10, 8)
        self.rel = torch.nn.Parameter(torch.randn(1, 5, 8))
        self.proj = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.tok(ids) * self.proj(self.rel)).mean(1)


def test_a_layer_run_once_for_the_whole_batch_is_one_clear_error():
    """Its output of batch 1 was expanded as a position lookup's is, which changed the forward pass: a traceback
    ('Expected size for first two dimensions of batch2 tensor'). Only an Embedding's lookup is broadcast."""
    model = SharedProjection()
    with pytest.raises(SouplineError, match=r"a Linear output of shape \(1, 5, 8\) has no batch dimension of 4 "
                                            r"\(a layer shared by the batch's examples\); use select.dealrec."
                                            r"effort_params=head"):
        norms = GradNorms(model, {"proj.weight", "proj.bias", "head.weight"})
        norms(lambda: model(torch.zeros(4, 5, dtype=torch.long)), torch.zeros(4, dtype=torch.long))


def test_rms_norm_weights_equal_per_example_backward():
    """Llama's (and Mistral's, Qwen's, ...) LlamaRMSNorm and torch's own RMSNorm: weight x x / rms(x), no mean
    removed. Without them every decoder of that family refused effort_params last_layer and trainable."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    for norm in (LlamaRMSNorm(8, eps=1e-6), torch.nn.RMSNorm(8, eps=1e-5)):
        model = Toy()
        model.norm = norm
        torch.nn.init.normal_(norm.weight, 1.0, 0.2)
        names = {"norm.weight", "wide.weight"}
        ids, labels = torch.randint(1, 10, (5, 5)), torch.tensor([0, 1, 2, 0, 1])
        want = reference(model, names, ids, labels)
        got = GradNorms(model, names)(lambda: model(ids), labels)
        assert torch.allclose(got, want, rtol=1e-5)
