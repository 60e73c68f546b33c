"""The epoch loop shared by the library's trainable components outside the image-text
:class:`~alignfuse.engine.trainer.Trainer` (deep CCA, the graph matcher, ...).

It owns what every training run needs: a progress bar, an atomic checkpoint (safetensors +
JSON, :mod:`alignfuse.engine.checkpoint`) after every epoch, exact resumption from the latest
checkpoint (weights, optimiser state, epoch, loss history) and a clear error when the loss
stops being finite. The caller supplies one epoch of work.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
    >>> def epoch(e):
    ...     return optimizer_step(opt, torch.nn.functional.mse_loss(net(x), y), "regression", e)
    >>> history = fit_epochs(net, opt, 3, epoch, progress=False)
    >>> len(history)
    3
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from alignfuse.engine.checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from alignfuse.errors import TrainingDivergedError


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, what: str, epoch: int) -> float:
    """Backpropagate ``loss`` and step; raise :class:`TrainingDivergedError` if not finite."""
    if not torch.isfinite(loss.detach()):
        raise TrainingDivergedError(
            f"{what}: the loss is {float(loss.detach())} in epoch {epoch + 1}; lower the learning "
            "rate or raise the regularisation"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return float(loss.detach())


def fit_epochs(
    module: nn.Module,
    opt: torch.optim.Optimizer,
    epochs: int,
    run_epoch: Callable[[int], float],
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> list[float]:
    """Run ``run_epoch(epoch)`` (which returns the epoch's mean loss) for ``epochs`` epochs.

    With ``checkpoint_dir``, resume from its latest checkpoint if there is one and write one
    after every epoch. ``progress=None`` shows a bar when stderr is a terminal. Returns the
    loss history (including epochs run before a resume).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    start, history = 0, []
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    if folder is not None and (latest := latest_checkpoint(folder)) is not None:
        tensors, opt_tensors, state = load_checkpoint(latest)
        device = next(iter(module.state_dict().values())).device
        module.load_state_dict({k: v.to(device) for k, v in tensors.items()})
        opt.load_state_dict(unflatten_optimizer(opt_tensors, state["optimizer"]))
        start, history = int(state["epoch"]), [float(h) for h in state["history"]]
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(range(start, epochs), desc=desc, disable=not show, leave=False)
    for epoch in bar:
        module.train()
        history.append(float(run_epoch(epoch)))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if folder is not None:
            opt_t, opt_meta = flatten_optimizer(opt.state_dict())
            save_checkpoint(
                folder,
                f"epoch-{epoch + 1:05d}",
                module.state_dict(),
                opt_t,
                {"epoch": epoch + 1, "history": history, "optimizer": opt_meta},
            )
    bar.close()
    module.eval()
    return history
