"""The warm-up + cosine schedule and the run length it asks for late."""

import pytest
import torch

from lacoat.optim import WarmupCosine, make_scheduler


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_a_run_length_function_is_asked_only_after_warm_up_and_gives_the_same_schedule():
    asked = []

    def total() -> int:
        asked.append(1)
        return 10

    late = WarmupCosine(optimizer(), warmup_steps=3, total_steps=total)
    assert asked == []  # making the optimiser asks nothing (an epoch-based estimate builds the loader)
    early = lrs(late, 2)  # steps 0 and 1 taken: the schedule sits at step 2, still warming up
    assert asked == []
    got = early + lrs(late, 8)
    assert asked == [1]  # asked once
    assert got == pytest.approx(lrs(WarmupCosine(optimizer(), warmup_steps=3, total_steps=10), 10))
    assert late.state_dict()["_total_steps"] == 10  # saved resolved: a function cannot be saved


def test_make_scheduler_hands_warmup_cosine_a_function_and_others_a_number():
    calls = []

    def total() -> int:
        calls.append(1)
        return 20

    assert isinstance(make_scheduler(WarmupCosine, optimizer(), total), WarmupCosine) and calls == []
    other = make_scheduler(Counted, optimizer(), total)
    assert other.total_steps == 20 and calls == [1]


class Counted(torch.optim.lr_scheduler.LambdaLR):
    """Another scheduler that takes the run's length (as ``OneCycleLR`` does): it gets a number."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int = 1) -> None:
        self.total_steps = total_steps
        super().__init__(optimizer, lambda step: 1.0)
