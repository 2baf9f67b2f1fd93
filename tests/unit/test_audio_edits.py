"""Waveform edits behind the audio-side order and count negatives, on clips drawn by hand."""

import torch

from lacoat.negatives.audio_edits import (
    ORDER_EDIT,
    count_edit,
    edit_windows,
    recount,
    sounding_runs,
    swap_at_pause,
    swap_token_halves,
)


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


def test_edit_windows_keeps_the_window_layout():
    wave = clip((0, 1), (1, 2), (0, 2), (3, 1))  # 60 samples over windows of 40
    audio = torch.zeros(2, 2, 40)
    audio[0, 0], audio[0, 1, :20] = wave[:40], wave[40:]
    audio[1, 0, :30] = 1.0  # no pause: left alone
    valid = torch.tensor([[40, 20], [30, 0]])
    out, swapped = edit_windows(audio, valid, [ORDER_EDIT.wave] * 2, frame=10)
    assert swapped.tolist() == [True, False]
    assert torch.equal(torch.cat([out[0, 0], out[0, 1, :20]]), clip((0, 1), (3, 1), (0, 2), (1, 2)))
    assert (out[0, 1, 20:] == 0).all() and torch.equal(out[1], audio[1])


def test_swap_token_halves_leaves_padding():
    tokens = torch.arange(10.0).view(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert swap_token_halves(tokens, mask)[..., 0].tolist() == [[2, 3, 0, 1, 4], [6, 7, 5, 8, 9]]


def test_sounding_runs_in_samples():
    wave = clip((0, 2), (1, 3), (0, 1), (1, 1), (0, 4), (2, 2), (0, 3))
    assert sounding_runs(wave, frame=10) == [(20, 50), (60, 70), (110, 130)]
    assert sounding_runs(clip((0, 5)), frame=10) == []


def test_recount_repeats_or_drops_the_briefest_sound_with_its_pause():
    # a hum (4 frames), then three clicks (1 frame each, 2-frame pauses), then a long quiet tail
    wave = clip((0, 2), (3, 4), (0, 3), (1, 1), (0, 2), (1, 1), (0, 2), (1, 1), (0, 8))
    more = recount(wave, frame=10, more=True)
    fewer = recount(wave, frame=10, more=False)
    # the last click, with the pause before it, once more; the length made up from the tail
    assert torch.equal(
        more, clip((0, 2), (3, 4), (0, 3), (1, 1), (0, 2), (1, 1), (0, 2), (1, 1), (0, 2), (1, 1), (0, 5))
    )
    # the last click and its pause cut out; the pause's noise fills the end
    assert torch.equal(fewer, clip((0, 2), (3, 4), (0, 3), (1, 1), (0, 2), (1, 1), (0, 11)))
    assert [len(sounding_runs(w, 10)) for w in (wave, more, fewer)] == [4, 5, 3]


def test_recount_of_the_first_sound_and_clips_it_cannot_edit():
    wave = clip((0, 4), (1, 1), (0, 2), (3, 4), (0, 1))  # a click, then a hum
    assert torch.equal(
        recount(wave, frame=10, more=True), clip((0, 1), (1, 1), (0, 2), (1, 1), (0, 2), (3, 4), (0, 1))
    )
    assert torch.equal(recount(wave, frame=10, more=False), clip((0, 4), (3, 4), (0, 4)))
    assert recount(clip((0, 1), (1, 1), (0, 2), (3, 4), (0, 1)), frame=10, more=True) is None  # no room
    assert recount(clip((0, 2), (1, 6), (0, 9)), frame=10, more=True) is None  # one sound
    assert recount(clip((0, 5)), frame=10, more=False) is None  # silence


def test_edits_keep_the_clip_length_and_name_their_token_edit():
    wave = clip((0, 2), (3, 4), (0, 3), (1, 1), (0, 2), (1, 1), (0, 8))
    for edit in (ORDER_EDIT, count_edit(True), count_edit(False)):
        assert edit.wave(wave, 10).shape == wave.shape
    assert ORDER_EDIT.tokens is swap_token_halves and count_edit(True).tokens is None
