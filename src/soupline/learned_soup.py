"""Learned soup (Wortsman et al. 2022, "Model soups", Sec. 3 and App. I): mixing coefficients fit
on held-out data by gradient descent.

theta(alpha) = sum_i softmax(alpha)_i theta_i, with one coefficient per ingredient (`per_tensor:
false`, the paper's learned soup) or one per ingredient and tensor (`per_tensor: true`, its
"learned soup by layer"). alpha starts at 0 (the uniform soup) and minimises the cross-entropy
of the souped model on the validation split with Adam; the forward pass is
`torch.func.functional_call` on the mixed tensors, so the gradient reaches alpha through every
weight. Unlike the other soups, every step needs every ingredient: this one holds all N of them
in memory (N x the model's floating-point weights), not two models' worth.
"""

from __future__ import annotations

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
    first = {k: states[0][k] for k in states[0]}  # a lazy state reads a tensor from disk on each access
    floats = [k for k, v in first.items() if v.dtype.is_floating_point]
    fixed = {k: v.to(device) for k, v in first.items() if k not in floats}  # integer buffers: from the first
    stacks = {k: torch.stack([first[k]] + [s[k] for s in states[1:]]).to(device, torch.float32) for k in floats}
    alpha = torch.zeros((len(floats) if per_tensor else 1, len(states)), device=device, requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=lr)

    def mixed() -> dict:
        w = torch.softmax(alpha, dim=1)
        return {**fixed, **{k: torch.tensordot(w[i if per_tensor else 0], stacks[k], dims=1)
                            for i, k in enumerate(floats)}}

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
    with torch.no_grad():
        state = {k: v.detach().to(first[k].dtype).cpu() for k, v in mixed().items()}
        coefficients = torch.softmax(alpha, dim=1).cpu().numpy()
    if into is not None:
        for k, v in state.items():
            into[k].copy_(v)
        state = into
    log = {"weights": np.round(coefficients.mean(0), 6).tolist(), "val_loss_per_epoch": losses}
    if per_tensor:  # `weights` is their mean over tensors; each tensor's own mix, to rebuild the soup from the log
        log["weights_per_tensor"] = {k: np.round(coefficients[i], 6).tolist() for i, k in enumerate(floats)}
    return state, log
