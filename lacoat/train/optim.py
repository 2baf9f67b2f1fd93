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
        total_steps: steps of the whole run, or a function that returns them, asked only once warm-up
            is over. ``LacoatModule`` passes the trainer's estimate as such a function: for a run that
            stops by epochs, asking for it while the optimiser is made would build the training loader
            before a resumed run's loader position is restored, and Lightning would then never load
            it (the epoch would restart). Until the function is asked, warm-up is not capped at half
            the run.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 100,
        total_steps: int | Callable[[], int] = 1,
    ) -> None:
        self.warmup_steps, self._total_steps = warmup_steps, total_steps
        super().__init__(optimizer, self.factor)

    @property
    def total_steps(self) -> int:
        """Steps of the whole run (a function given for them is asked now, once)."""
        self._resolve_total_steps()
        return max(1, int(self._total_steps))

    def _resolve_total_steps(self) -> None:
        """Replace a function given for the run's length by its answer."""
        if callable(self._total_steps):
            self._total_steps = int(self._total_steps())

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``."""
        if callable(self._total_steps) and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # the run's length is not needed yet
        warmup = min(self.warmup_steps, self.total_steps // 2)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def state_dict(self) -> dict:
        """As ``LambdaLR``'s, with the run's length resolved (a function cannot be saved)."""
        self._resolve_total_steps()
        return super().state_dict()


def param_groups(
    model: nn.Module, encoders: list[tuple[nn.Module, float]], lr: float, weight_decay: float
) -> list[dict]:
    """Trainable parameters in groups: each of ``encoders``' ``(module, lr)`` at its rate, the rest at
    ``lr``; weight decay only on weight matrices (ndim ≥ 2). Encoders at the same rate share groups,
    so the groups (and a checkpoint's optimiser state) stay those of one encoder rate unless the rates
    differ."""
    rate_of = {id(p): rate for encoder, rate in encoders for p in encoder.parameters()}
    groups: dict[tuple[float | None, bool], list[Tensor]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((rate_of.get(id(p)), p.ndim >= 2), []).append(p)
    return [
        {
            "params": params,
            "lr": lr if rate is None else rate,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (rate, decays), params in groups.items()
    ]


def make_scheduler(
    factory: Callable[..., torch.optim.lr_scheduler.LRScheduler],
    optimizer: torch.optim.Optimizer,
    total_steps: Callable[[], int],
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of ``optimizer``, given the run's length when it takes it (``WarmupCosine`` gets the
    function ``total_steps`` and asks it late; ``OneCycleLR`` and others get its value now);
    ``factory`` is a scheduler class or LightningCLI's partial of one."""
    cls = _scheduler_class(factory)
    takes = "total_steps" in getattr(factory, "keywords", {}) or (
        cls is not None and "total_steps" in inspect.signature(cls).parameters
    )
    if not takes:
        return factory(optimizer)
    if isinstance(cls, type) and issubclass(cls, WarmupCosine):
        return factory(optimizer, total_steps=lambda: max(1, total_steps()))
    return factory(optimizer, total_steps=max(1, total_steps()))


def _scheduler_class(factory: Callable[..., object]) -> type | None:
    """The class a scheduler factory makes: itself, or the class a partial (LightningCLI's wraps it in
    jsonargparse's instantiator) holds."""
    if isinstance(factory, type):
        return factory
    parts = (getattr(factory, "func", None), *getattr(factory, "args", ()))
    return next((p for p in parts if isinstance(p, type)), None)
