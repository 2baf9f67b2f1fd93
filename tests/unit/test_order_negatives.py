"""Order negatives: which captions get one, the swap of a clip's halves, and the loss's extra column."""

import math

import pytest
import torch

from lacoat.losses import ExtraNegatives, NTXentLoss
from lacoat.order_negatives import (
    reverse_order,
    states_order,
    swap_at_pause,
    swap_audio_events,
    swap_token_halves,
)


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


def clip(*parts):
    """Concatenated segments of (value, frames) with 10-sample frames: 0 = silence."""
    return torch.cat([torch.full((10 * n,), float(v)) for v, n in parts])


def test_swap_at_the_longest_pause_keeps_silences_and_the_gap():
    wave = clip(
        (0, 2), (1, 3), (0, 1), (1, 1), (0, 4), (2, 2), (0, 3)
    )  # lead, A (with a short dip), pause, B, tail
    out = swap_at_pause(wave, frame=10)
    assert torch.equal(out, clip((0, 2), (2, 2), (0, 4), (1, 3), (0, 1), (1, 1), (0, 3)))
    assert swap_at_pause(clip((0, 2), (1, 6), (0, 2)), frame=10) is None  # one continuous sound
    assert swap_at_pause(clip((0, 5)), frame=10) is None  # silence


def test_swap_audio_events_keeps_the_window_layout():
    wave = clip((0, 1), (1, 2), (0, 2), (3, 1))  # 60 samples over windows of 40
    audio = torch.zeros(2, 2, 40)
    audio[0, 0], audio[0, 1, :20] = wave[:40], wave[40:]
    audio[1, 0, :30] = 1.0  # no pause: left alone
    valid = torch.tensor([[40, 20], [30, 0]])
    out, swapped = swap_audio_events(audio, valid, frame=10)
    assert swapped.tolist() == [True, False]
    assert torch.equal(torch.cat([out[0, 0], out[0, 1, :20]]), clip((0, 1), (3, 1), (0, 2), (1, 2)))
    assert (out[0, 1, 20:] == 0).all() and torch.equal(out[1], audio[1])


def test_swap_token_halves_leaves_padding():
    tokens = torch.arange(10.0).view(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert swap_token_halves(tokens, mask)[..., 0].tolist() == [[2, 3, 0, 1, 4], [6, 7, 5, 8, 9]]


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
    from lacoat.text_negatives import rewritten

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
