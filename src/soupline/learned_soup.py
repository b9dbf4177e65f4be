"""Learned soup (Wortsman et al. 2022, "Model soups", Sec. 3 and App. I): mixing coefficients fit
on held-out data by gradient descent.

theta(alpha) = sum_i softmax(alpha)_i theta_i, with one coefficient per ingredient (`per_tensor:
false`, the paper's learned soup) or one per ingredient and tensor (`per_tensor: true`, its
"learned soup by layer"). alpha starts at 0 (the uniform soup) and minimises the cross-entropy
of the souped model on the validation split with Adam; the forward pass is
`torch.func.functional_call` on the mixed tensors, so the gradient reaches alpha through every
weight. Unlike the other soups, every step needs every ingredient: this one holds all N of them
in memory (N x the model's floating-point weights, each tensor read once into its stack), and a
step's mixed weights and their gradient, not two models' worth.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from soupline.errors import SouplineError


def learned(states: Sequence[Mapping], model, batches: Callable[[int], list[tuple[dict, object]]], epochs: int,
            lr: float, per_tensor: bool = False, into: dict | None = None) -> tuple[dict, dict]:
    """Fit the mixing coefficients; return the souped state (written into `into` when given) and a log.

    `batches(epoch)` gives that epoch's list of (model inputs, label tensor) on the model's device.
    """
    import torch
    from torch.func import functional_call

    if len(states) < 2:
        raise SouplineError("a learned soup needs at least 2 ingredients")
    device = next(model.parameters()).device
    dtypes, fixed, stacks = {}, {}, {}  # integer buffers (fixed) from the first; floats stacked over ingredients
    for k in states[0]:
        t = states[0][k]  # a lazy state reads a tensor from disk on each access: each is read once, into its stack
        dtypes[k] = t.dtype
        if not t.dtype.is_floating_point:
            fixed[k] = t.to(device)
            continue
        stacks[k] = torch.empty((len(states), *t.shape), dtype=torch.float32, device=device)
        stacks[k][0] = t
        del t
        for i, s in enumerate(states[1:], 1):
            stacks[k][i] = s[k]
    floats = list(stacks)
    alpha = torch.zeros((len(floats) if per_tensor else 1, len(states)), device=device, requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=lr)

    def mix(w, i: int, k: str):
        return torch.tensordot(w[i if per_tensor else 0], stacks[k], dims=1)

    def mixed() -> dict:
        w = torch.softmax(alpha, dim=1)
        return {**fixed, **{k: mix(w, i, k) for i, k in enumerate(floats)}}

    model.eval()  # no dropout: the coefficients are fit to the model that will be evaluated
    losses = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for inputs, labels in batches(epoch):
            logits = functional_call(model, mixed(), args=(), kwargs=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(labels), count + len(labels)
        losses.append(round(total / count, 6))
    with torch.no_grad():  # tensor by tensor, straight into `into` when given: no whole soup beside the stacks
        w = torch.softmax(alpha, dim=1)
        state = {} if into is None else into
        for k, v in itertools.chain(fixed.items(), ((k, mix(w, i, k)) for i, k in enumerate(floats))):
            if into is None:
                state[k] = v.to(dtypes[k]).cpu()
            else:
                into[k].copy_(v)
        coefficients = w.cpu().numpy()
    log = {"weights": np.round(coefficients.mean(0), 6).tolist(), "val_loss_per_epoch": losses}
    if per_tensor:  # `weights` is their mean over tensors; each tensor's own mix, to rebuild the soup from the log
        log["weights_per_tensor"] = {k: np.round(coefficients[i], 6).tolist() for i, k in enumerate(floats)}
    return state, log
