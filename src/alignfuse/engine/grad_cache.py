"""Gradient caching for contrastive training, Gao et al. 2021 ("Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup").

A contrastive loss couples every pair of a batch, so the batch cannot simply be split into
accumulation steps. GradCache runs the towers without a graph over sub-batches to get all
embeddings, computes the loss and its gradient with respect to the embeddings (the "cache"),
then re-runs each sub-batch with a graph and backpropagates its slice of the cache. Peak
activation memory is one sub-batch's, and the parameter gradients equal the full batch's,
for towers whose output for an example does not depend on the other examples of the batch
(BatchNorm in training mode does; put it in eval mode or use LayerNorm towers).
"""

from __future__ import annotations

from typing import Any

import torch

from alignfuse.outputs import LossOutput


def _slice(prepared: dict[str, torch.Tensor], s: int, e: int) -> dict[str, torch.Tensor]:
    return {k: v[s:e] for k, v in prepared.items()}


def grad_cache_step(
    model: Any,
    loss_fn: Any,
    images: torch.Tensor,
    text: dict[str, torch.Tensor],
    chunk: int,
) -> LossOutput:
    """Forward and backward of ``loss_fn(model(images, text))`` in sub-batches of ``chunk``.

    Leaves the gradients in ``.grad`` of the model's and the loss's parameters (as
    ``loss.backward()`` on the full batch would) and returns the loss output (detached).
    The random state is replayed so dropout masks match between the two passes.
    """
    if chunk < 1:
        raise ValueError(f"grad cache chunk must be >= 1, got {chunk}")
    n = images.shape[0]
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    states = []
    with torch.no_grad():
        parts_a, parts_b = [], []
        for s, e in bounds:
            states.append(torch.get_rng_state())
            parts_a.append(model.encode_image(images[s:e]))
            parts_b.append(model.encode_text(_slice(text, s, e)))
    a = torch.cat(parts_a).requires_grad_(True)
    b = torch.cat(parts_b).requires_grad_(True)
    out: LossOutput = loss_fn(a, b)
    out.loss.backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None and b.grad is not None
    after = torch.get_rng_state()
    for (s, e), state in zip(bounds, states, strict=True):
        torch.set_rng_state(state)
        ea = model.encode_image(images[s:e])
        eb = model.encode_text(_slice(text, s, e))
        torch.autograd.backward([ea, eb], [a.grad[s:e], b.grad[s:e]])  # type: ignore[no-untyped-call]
    torch.set_rng_state(after)
    return LossOutput(out.loss.detach(), out.logs)
