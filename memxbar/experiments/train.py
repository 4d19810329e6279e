"""Plain (dense) training and evaluation loops, used for pretraining and as the timing baseline
that ADMM training is compared against.

Every function takes the device from the model's parameters, so the caller places the model
(``model.to(device)``) and the loops move each batch to match. A NaN/Inf loss (every step) or
weight (every epoch, before the checkpoint) raises ``admm.DivergenceError`` naming the step and
the layer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from memxbar.admm.pipeline import (
    DivergenceError,
    check_fingerprint,
    check_finite_weights,
    load_model_state,
    loader_rng_state,
    save_atomic,
    set_loader_rng_state,
    train_epoch,
)

__all__ = ["OPTIMIZERS", "evaluate", "fit", "make_optimizer", "train_epoch"]

OPTIMIZERS = ("adam", "sgd")
"""Names accepted by ``make_optimizer`` and ``fit``."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


_log = logging.getLogger("memxbar.experiments.train")

def _device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    return next(model.parameters(), torch.empty(0)).device


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``"adam"`` (Kingma and Ba, 2015) or ``"sgd"`` with heavy-ball ``momentum``.

    Raises:
        ValueError: unknown ``name`` or non-positive ``lr``.
    """
    if lr <= 0:
        raise ValueError(f"train.lr={lr!r} is invalid; allowed: lr > 0")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(
        f"train.optimizer={name!r} is not a known optimizer; allowed: {list(OPTIMIZERS)}"
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` in percent (eval mode; the previous
    train/eval mode is restored afterwards)."""
    device = _device(model)
    was_training = model.training
    model.eval()
    correct, count = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(dim=1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return 100.0 * correct / count


def fit(
    model: nn.Module,
    loaders: tuple[DataLoader, DataLoader],
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    fingerprint: Mapping | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` on ``loaders = (train_loader, test_loader)`` with a cosine
    learning-rate schedule from ``lr`` to 0, evaluating on the test loader after each epoch.

    ``seed`` seeds torch's global generator (dropout, any unseeded sampling); the training
    order is fixed by the loader's sampler (see ``make_loaders``).

    With ``checkpoint``, the state (model, optimizer, schedule, history, global and loader RNG,
    ``fingerprint``) is saved atomically after every epoch, and an existing checkpoint is
    resumed, so an interrupted run ends exactly as an uninterrupted one; a checkpoint of another
    model or ``fingerprint`` raises ``admm.CheckpointMismatchError``.

    Returns:
        One record per epoch: ``{"epoch", "train_loss", "test_acc", "lr"}``.
    """
    if epochs < 0:
        raise ValueError(f"train.epochs={epochs!r} is invalid; allowed: epochs >= 0")
    torch.manual_seed(seed)
    train_loader, test_loader = loaders
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    history: list[dict[str, float]] = []
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=_device(model), weights_only=True)
        check_fingerprint(checkpoint, state.get("fingerprint"), fingerprint)
        load_model_state(model, state["model"], checkpoint)
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history = list(state["history"])
        torch.set_rng_state(state["rng"])
        set_loader_rng_state(train_loader, state["loader_rng"])
    bar = tqdm(range(len(history) + 1, epochs + 1), total=epochs, initial=len(history),
               desc="fit", disable=not progress)
    for epoch in bar:
        epoch_lr = opt.param_groups[0]["lr"]
        try:
            loss = train_epoch(model, train_loader, opt, progress=progress)
            check_finite_weights(model, "the end of the epoch")
        except DivergenceError as exc:
            kept = f"; the last good checkpoint {checkpoint} is kept" \
                if checkpoint is not None and Path(checkpoint).exists() else ""
            raise DivergenceError(f"pretraining epoch {epoch}: {exc}{kept}") from None
        schedule.step()
        acc = evaluate(model, test_loader)
        history.append({"epoch": epoch, "train_loss": loss, "test_acc": acc, "lr": epoch_lr})
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}%")
        _log.info("pretrain epoch %d/%d: loss %.4f, test accuracy %.2f%%", epoch, epochs, loss,
                  acc)
        if checkpoint is not None:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "schedule": schedule.state_dict(), "history": history,
                         "rng": torch.get_rng_state(), "loader_rng": loader_rng_state(train_loader),
                         "fingerprint": None if fingerprint is None else dict(fingerprint)},
                        checkpoint)
    return history
