"""Optimisation defaults: parameter groups and the warm-up + cosine learning-rate schedule.

The optimiser and the schedule are LightningCLI callables (``model.optimizer``, ``model.lr_scheduler``
in YAML, any ``torch.optim`` class and scheduler); ``LacoatModule`` hands the optimiser its parameter
groups (encoders at ``encoder_lr``; no weight decay on biases, norms and the temperature).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over ``warmup_steps`` (at most half the run), then cosine decay to zero at
    ``total_steps`` (stepped every optimiser step).

    Args:
        optimizer: the optimiser.
        warmup_steps: warm-up steps.
        total_steps: steps of the whole run (``LacoatModule`` passes the trainer's estimate).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int = 100, total_steps: int = 1
    ) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, max(1, total_steps)
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``."""
        warmup = min(self.warmup_steps, self.total_steps // 2)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(
    model: nn.Module, encoders: list[nn.Module], lr: float, encoder_lr: float, weight_decay: float
) -> list[dict]:
    """Trainable parameters in groups: ``encoders``' at ``encoder_lr``, the rest at ``lr``; weight decay
    only on weight matrices (ndim ≥ 2)."""
    in_encoders = {id(p) for encoder in encoders for p in encoder.parameters()}
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in in_encoders, p.ndim >= 2), []).append(p)
    return [
        {
            "params": params,
            "lr": encoder_lr if encoder else lr,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (encoder, decays), params in groups.items()
    ]


def make_scheduler(
    factory: Callable[..., torch.optim.lr_scheduler.LRScheduler],
    optimizer: torch.optim.Optimizer,
    total_steps: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of ``optimizer``, given the run's ``total_steps`` when it takes them (``WarmupCosine``,
    ``OneCycleLR``); ``factory`` is a scheduler class or LightningCLI's partial of one."""
    takes = (
        "total_steps" in inspect.signature(factory).parameters
        if isinstance(factory, type)
        else "total_steps" in getattr(factory, "keywords", {})
    )
    return factory(optimizer, total_steps=max(1, total_steps)) if takes else factory(optimizer)
