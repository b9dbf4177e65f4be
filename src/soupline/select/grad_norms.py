"""Per-example gradient norms of a model's loss over chosen parameters, without per-example gradients.

DEALRec's effort score is ||d loss_i / d phi|| for every example i. Forming each example's gradient
(torch.func vmap(grad)) costs a weight-gradient product and a copy of phi per example. Here one
ordinary backward pass computes activation gradients only (phi stays frozen, so autograd skips every
weight-gradient product), and each parameter's share of every example's squared norm is read from
its layer's input a_t and output gradient g_t (t over tokens), which hooks capture:

- Linear (and GPT-2's Conv1D) weight: ||sum_t g_t a_t^T||^2, computed as
  sum_{t,s} (a_t . a_s)(g_t . g_s) (the "ghost norm", Goodfellow 2015; Li et al., ICLR 2022) when
  that is cheaper, T (n + m) < n m for T tokens, n inputs, m outputs; else from the formed gradient.
- LayerNorm weight: ||sum_t g_t * x_hat_t||^2 with x_hat_t the normalised input; RMSNorm's (Llama,
  Mistral, Qwen, ...: x_hat_t = x_t / rms(x_t), no mean removed) the same.
- Embedding: sum_{t,s} [i_t = i_s] (g_t . g_s) over the looked-up rows i_t.
- Every bias: ||sum_t g_t||^2.

Padding needs no care: under the attention mask a padded position's output gradient is zero, so it
adds nothing. A parameter used outside those layers' forward (a weight read directly, one tied to
another layer) would be missed silently, so `check` compares one example against autograd first.
"""

from __future__ import annotations

from typing import Callable

import torch

from soupline.errors import SouplineError

LAYERS = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding)


def _is_conv1d(module: torch.nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear with its weight stored transposed; the norm is the same."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _is_rms_norm(module: torch.nn.Module) -> bool:
    """torch's RMSNorm or a decoder's own (LlamaRMSNorm, MistralRMSNorm, ...): weight * x / sqrt(mean(x^2) + eps),
    or (Gemma) (1 + weight) * ..., whose weight gradient is the same. A variant computed otherwise fails `check`."""
    weight = getattr(module, "weight", None)
    return type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.Tensor) and weight.dim() == 1


def _rms_eps(module: torch.nn.Module, dtype: torch.dtype) -> float:
    for attr in ("variance_epsilon", "eps"):  # HF's name, torch's
        if isinstance(value := getattr(module, attr, None), (int, float)):
            return float(value)
    return torch.finfo(dtype).eps  # torch.nn.RMSNorm(eps=None)


def linear_sq(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B,) squared Frobenius norms of sum_t g_t a_t^T for a (B, T, n), g (B, T, m), the cheaper way."""
    t, n, m = a.shape[1], a.shape[2], g.shape[2]
    if t * (n + m) < n * m:
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return torch.bmm(g.transpose(1, 2), a).square().sum((1, 2))


def layer_sq(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, own: set[str]) -> torch.Tensor:
    """(B,) squared gradient norm over the parameters `own` (attribute names) of one layer call."""
    b = g.shape[0]
    g = g.reshape(b, -1, g.shape[-1]).float()
    total = torch.zeros(b, dtype=torch.float64, device=g.device)
    if isinstance(module, torch.nn.Embedding):
        ids = x.reshape(b, -1)
        same = (ids[:, :, None] == ids[:, None, :]).float()
        if module.padding_idx is not None:  # the padding row gets no gradient
            kept = (ids != module.padding_idx).float()
            same = same * kept[:, :, None] * kept[:, None, :]
        return total + (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2)).double()
    if "weight" in own:
        if isinstance(module, torch.nn.LayerNorm):
            dims = tuple(range(-len(module.normalized_shape), 0))
            xf = x.float()
            x_hat = (xf - xf.mean(dims, keepdim=True)) * torch.rsqrt(xf.var(dims, unbiased=False, keepdim=True)
                                                                     + module.eps)
            total += (g * x_hat.reshape(g.shape)).sum(1).square().sum(1).double()
        elif _is_rms_norm(module):
            xf = x.float()
            x_hat = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + _rms_eps(module, x.dtype))
            total += (g * x_hat.reshape(g.shape)).sum(1).square().sum(1).double()
        else:
            total += linear_sq(x.reshape(b, -1, x.shape[-1]).float(), g).double()
    if "bias" in own:
        total += g.sum(1).square().sum(1).double()
    return total


class GradNorms:
    """Hooks on the layers that own `names`; `__call__` runs one batch and returns (B,) float64 norms.

    Construction freezes every parameter of the model (requires_grad False), so a backward pass
    computes activation gradients only; `check` unfreezes `names` for its one reference pass.
    """

    def __init__(self, model: torch.nn.Module, names: set[str]):
        self.model, self.names = model, set(names)
        self.owners: list[tuple[torch.nn.Module, set[str]]] = []
        found: set[str] = set()
        for prefix, module in model.named_modules():
            full = {attr: f"{prefix}.{attr}" if prefix else attr for attr, _ in module.named_parameters(recurse=False)}
            own = {attr for attr, name in full.items() if name in self.names}
            if not own:
                continue
            if not (isinstance(module, LAYERS) or _is_conv1d(module) or _is_rms_norm(module)):
                raise SouplineError(f"per-example gradient norms: {', '.join(sorted(full[a] for a in own))} belongs to "
                                    f"a {type(module).__name__}, not a Linear, LayerNorm, RMSNorm or Embedding layer; "
                                    "use select.dealrec.effort_params=head")
            self.owners.append((module, own))
            found |= {full[a] for a in own}
        if missing := self.names - found:
            raise SouplineError(f"per-example gradient norms: no layer owns {sorted(missing)[:3]}")
        for p in model.parameters():
            p.requires_grad_(False)

    def __call__(self, logits_of: Callable[[], torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Squared-norm shares are summed as each layer's output gradient arrives; then the root."""
        sq = torch.zeros(len(labels), dtype=torch.float64, device=labels.device)
        called: set[int] = set()

        def on_forward(module, inputs, output, own):
            if id(module) in called:  # per-call shares of one weight do not add up to its norm
                raise SouplineError(f"per-example gradient norms: {type(self.model).__name__} calls one "
                                    f"{type(module).__name__} twice per forward (shared layers); use "
                                    "select.dealrec.effort_params=head")
            called.add(id(module))
            x = inputs[0].detach()
            if not output.requires_grad:  # nothing upstream is differentiated: start the graph here
                output.requires_grad_()
            if output.shape[0] != len(labels):
                if output.shape[0] != 1 or not isinstance(module, torch.nn.Embedding):  # DeBERTa's relative
                    raise SouplineError(f"per-example gradient norms: a {type(module).__name__} output of shape "
                                        f"{tuple(output.shape)} has no batch dimension of {len(labels)} (a layer "
                                        "shared by the batch's examples); use select.dealrec.effort_params=head")
                # one lookup broadcast over the batch (BERT's position ids): give each example its copy
                output, x = output.expand(len(labels), *output.shape[1:]), x.expand(len(labels), *x.shape[1:])

            def on_grad(g):  # returns None: the gradient itself is left as it is
                sq.add_(layer_sq(module, x, g, own))
            output.register_hook(on_grad)
            return output

        hooks = [m.register_forward_hook(lambda mod, i, o, own=own: on_forward(mod, i, o, own))
                 for m, own in self.owners]
        try:
            loss = torch.nn.functional.cross_entropy(logits_of().float(), labels, reduction="sum")
            if loss.requires_grad:  # no parameter requires grad: only activation gradients are computed
                loss.backward()
        finally:
            for h in hooks:
                h.remove()
        return sq.sqrt()

    def check(self, logits_of: Callable[[], torch.Tensor], label: torch.Tensor, got: float) -> None:
        """Raise unless autograd's gradient norm of one example's loss agrees with the hooks' `got`."""
        params = [p for n, p in self.model.named_parameters() if n in self.names]
        for p in params:
            p.requires_grad_(True)
        try:
            loss = torch.nn.functional.cross_entropy(logits_of().float(), label)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(False)
        want = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
        if abs(got - want) > 1e-3 * max(want, 1e-6):
            raise SouplineError(f"per-example gradient norms: hooks give {got:.6g}, autograd {want:.6g} on the first "
                                f"text: {type(self.model).__name__} uses some trainable weights outside a Linear, "
                                "LayerNorm, RMSNorm or Embedding forward; use select.dealrec.effort_params=head")
