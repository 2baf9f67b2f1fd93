"""Order negatives: which captions get one, their reversal in words, and the loss's extra column."""

import math

import pytest
import torch

from lacoat.negatives.order import reverse_order, states_order
from lacoat.train.losses import ExtraNegatives, NTXentLoss


def test_captions_that_state_an_order():
    captions = [
        "A hum, then a click.",
        "Two knocks followed by a bell.",
        "A siren after three knocks.",
        "First a beep, and lastly a hiss.",
        "A bell rings.",
        "A buzz while a hum continues.",
        "Athens thenceforth",  # no whole word
    ]
    assert states_order(captions).tolist() == [True, True, True, True, False, False, False]


def test_extra_column_is_one_more_negative_per_caption():
    loss = NTXentLoss(temperature=0.1, learnable_temperature=False)
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    clip = torch.tensor([0, 1])
    extra = torch.tensor([0.5, float("-inf")])  # caption 0 has a swapped clip, caption 1 none
    z = sim / 0.1
    t2a = [
        -z[0, 0] + torch.logsumexp(torch.tensor([z[0, 0], z[0, 1], 0.5 / 0.1]), 0),
        -z[1, 1] + torch.logsumexp(z[1], 0),
    ]
    a2t = [-z[0, 0] + torch.logsumexp(z[:, 0], 0), -z[1, 1] + torch.logsumexp(z[:, 1], 0)]
    expected = (sum(t2a) / 2 + sum(a2t) / 2) / 2
    assert loss.contrastive(sim, clip, clip, ExtraNegatives(t2a=extra)).item() == pytest.approx(
        expected.item(), rel=1e-4
    )
    none = torch.full((2,), -math.inf)
    assert loss.contrastive(sim, clip, clip, ExtraNegatives(none, none)).item() == pytest.approx(
        loss.contrastive(sim, clip, clip).item(), rel=1e-4
    )
    out = loss(
        sim, clip, clip, aux_sim=sim, extra=ExtraNegatives(t2a=extra), aux_extra=ExtraNegatives(t2a=extra)
    )
    assert out["loss_aux"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_text_extra_column_is_one_more_negative_per_clip():
    loss = NTXentLoss(temperature=0.1, learnable_temperature=False)
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    clip = torch.tensor([0, 1])
    extra = torch.tensor([float("-inf"), 0.6])  # clip 1's caption reversed scores 0.6 with it
    z = sim / 0.1
    t2a = [-z[0, 0] + torch.logsumexp(z[0], 0), -z[1, 1] + torch.logsumexp(z[1], 0)]
    a2t = [
        -z[0, 0] + torch.logsumexp(z[:, 0], 0),
        -z[1, 1] + torch.logsumexp(torch.tensor([z[0, 1], z[1, 1], 0.6 / 0.1]), 0),
    ]
    expected = (sum(t2a) / 2 + sum(a2t) / 2) / 2
    got = loss.contrastive(sim, clip, clip, ExtraNegatives(a2t=extra))
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize(
    ("caption", "reversed_"),
    [
        ("A hum, then a click.", "A click, then a hum."),
        ("A buzzer and then a drip.", "A drip and then a buzzer."),
        ("2 drips, then a hiss, then a tone.", "A tone, then a hiss, then 2 drips."),
        ("First a beep, next a hiss, and lastly a click.", "First a click, next a hiss, and lastly a beep."),
        ("Two knocks followed by a bell.", "Two knocks preceded by a bell."),
        ("A siren after three knocks.", "A siren before three knocks."),
        ("Before a horse neighs, a cow moos", "After a horse neighs, a cow moos"),
        ("A mid-pitched buzz; later a single soft drip.", "A mid-pitched buzz; earlier a single soft drip."),
        ("a man speaks then a door closes", "a door closes then a man speaks"),
        ("A bell rings.", None),
        ("A buzz while a hum continues.", None),
        ("Finally, silence.", None),  # a connective with nothing before it
        ("Cars are driving by one after another.", None),  # a succession, not an order of two events
        ("Vehicle starts up, and after a while the door shuts.", None),  # a stretch of time
        (
            "After a few seconds of silence, a bang followed by a thud.",
            "After a few seconds of silence, a bang preceded by a thud.",
        ),
    ],
)
def test_reverse_order(caption, reversed_):
    assert reverse_order(caption) == reversed_


def test_rewritten_marks_the_reversed_captions():
    from lacoat.negatives.text import rewritten

    turned, done = rewritten(["A hum, then a click.", "A bell rings."], reverse_order)
    assert turned == ["A click, then a hum.", "A bell rings."] and done.tolist() == [True, False]


def test_captions_without_an_extra_negative_give_finite_gradients():
    loss = NTXentLoss(temperature=0.1, learnable_temperature=True)
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8]], requires_grad=True)
    extra = torch.tensor([0.5, float("-inf")], requires_grad=True)
    out = loss(sim, torch.tensor([0, 1]), torch.tensor([0, 1]), extra=ExtraNegatives(t2a=extra))
    out["loss"].backward()
    assert torch.isfinite(loss.log_logit_scale.grad) and torch.isfinite(sim.grad).all()
    assert extra.grad[1] == 0 and extra.grad[0] > 0


def test_candidate_loss_skips_missing_order_negatives():
    loss = NTXentLoss(temperature=0.1, learnable_temperature=True)
    pos = torch.tensor([0.8, 0.6], requires_grad=True)
    neg = torch.tensor([[0.1, 0.2], [0.3, 0.0]])
    swap = torch.tensor([[0.7], [float("-inf")]])
    with_swap = loss.candidate_loss(pos, torch.cat([neg, swap], 1))
    by_hand = (
        loss.candidate_loss(pos[:1], torch.cat([neg[:1], swap[:1]], 1))
        + loss.candidate_loss(pos[1:], neg[1:])
    ) / 2
    assert with_swap.item() == pytest.approx(by_hand.item(), rel=1e-5)
    with_swap.backward()
    assert torch.isfinite(loss.log_logit_scale.grad) and torch.isfinite(pos.grad).all()
