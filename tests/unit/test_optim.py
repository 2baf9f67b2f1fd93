"""The warm-up + cosine schedule and the run length it asks for late."""

import pytest
import torch

from lacoat.train.optim import WarmupCosine, make_scheduler, param_groups


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


def test_param_groups_give_each_encoder_its_rate_and_share_groups_at_one_rate():
    torch.manual_seed(0)
    audio, text, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    model = torch.nn.ModuleDict({"audio": audio, "text": text, "head": head})

    def rates(groups):  # parameter name -> (lr, weight decay)
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}

    apart = param_groups(model, [(audio, 1e-3), (text, 2e-5)], lr=5e-4, weight_decay=0.1)
    assert rates(apart) == {
        "audio.weight": (1e-3, 0.1), "audio.bias": (1e-3, 0.0),
        "text.weight": (2e-5, 0.1), "text.bias": (2e-5, 0.0),
        "head.weight": (5e-4, 0.1), "head.bias": (5e-4, 0.0),
    }  # fmt: skip
    # one encoder rate: the four groups a checkpoint's optimiser state was saved with
    assert len(param_groups(model, [(audio, 1e-3), (text, 1e-3)], lr=1e-3, weight_decay=0.1)) == 4
