"""Waveform edits that turn a clip into a compositional negative of its own caption: the events in the
other order (``swap_at_pause``) or one occurrence of a repeated sound more or fewer (``recount``).

Both work on the clip's *sounding runs*: 10-ms frames louder than a share of the loudest frame,
separated by quieter ones. Every cut and splice lies in a quiet stretch, so the edited clip keeps the
original's sounds, silences and noise floor, and differs from it only in what the edit changes: a
model cannot learn to hear the edit instead of the composition. A clip the edit cannot be made on (one
continuous sound, background noise with no pauses) gives None and must not serve as a negative.
Cached encoder outputs have no waveform: their order edit swaps the halves of the tokens
(``swap_token_halves``), the best tokens allow; counts are not edited on tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor

AudioEdit = Callable[[Tensor, int], "Tensor | None"]  # real samples [T], frame -> samples [T] or None
TokenEdit = Callable[[Tensor, Tensor], Tensor]  # tokens [B, T, D], mask [B, T] -> tokens [B, T, D]


def frame_samples(sample_rate: int) -> int:
    """Samples in one 10-ms frame, the unit the edits find sounds and pauses in."""
    return max(1, sample_rate // 100)


def sounding_runs(wave: Tensor, frame: int, quiet: float = 0.05) -> list[tuple[int, int]]:
    """The runs of loud frames, ``(start, end)`` in samples (end exclusive), in time order.

    Frames of ``frame`` samples whose RMS is below ``quiet`` × the loudest frame's are quiet.

    Shape:
        wave: ``[T]``.
    """
    n = wave.shape[0] // frame
    if n == 0:
        return []
    rms = wave[: n * frame].view(n, frame).square().mean(1).sqrt()  # [n]
    loud = (rms >= quiet * rms.max().clamp_min(1e-12)).tolist()
    runs, start = [], None
    for f, on in enumerate(loud + [False]):
        if on and start is None:
            start = f
        elif not on and start is not None:
            runs.append((start * frame, f * frame))
            start = None
    return runs


def swap_at_pause(wave: Tensor, frame: int, quiet: float = 0.05) -> Tensor | None:
    """``wave`` with the sound before and after its longest pause swapped, the pause kept between them.

    Within the sounding span (first to last loud frame) the longest quiet run is the pause:
    ``lead + A + pause + B + tail`` becomes ``lead + B + pause + A + tail``, so the swapped clip keeps
    the original's leading and trailing silence and its gap between events. A clip without an inner
    pause (one continuous sound) gives None: swapping it would only add a cut.

    Shape:
        wave: ``[T]``; returns ``[T]`` or None.
    """
    runs = sounding_runs(wave, frame, quiet)
    if len(runs) < 2:
        return None
    gaps = [(b0 - a1, a1, b0) for (_, a1), (b0, _) in pairwise(runs)]
    _, g0, g1 = max(gaps)  # the longest pause; the last of equally long ones
    a0, a1 = runs[0][0], runs[-1][1]
    return torch.cat([wave[:a0], wave[g1:a1], wave[g0:g1], wave[a0:g0], wave[a1:]])


def recount(wave: Tensor, frame: int, more: bool, quiet: float = 0.05) -> Tensor | None:
    """``wave`` with one occurrence of its briefest sound repeated (``more``) or left out.

    The briefest sounding run stands for one occurrence of a counted sound (a click, a knock, a bark:
    what captions count are brief sounds, repeated with pauses between). With the pause next to it
    (the one before; the one after for the first run), ``pause + run`` is inserted once more right
    after the run, or cut out, so the count of that sound goes up or down by one and the rest keeps
    its order and spacing. The clip keeps its length: a removal is made up with a copy of the removed
    pause's noise at the end; an insertion is taken out of the longest quiet stretch (leading,
    trailing or between runs) that has room for it with a frame to spare, or the edit is not made.
    A clip with fewer than two runs gives None (no pause to copy, or nothing left after a removal).

    Shape:
        wave: ``[T]``; returns ``[T]`` or None.
    """
    runs = sounding_runs(wave, frame, quiet)
    if len(runs) < 2:
        return None
    i = min(range(len(runs)), key=lambda k: (runs[k][1] - runs[k][0], -k))  # briefest, the last of ties
    # one occurrence with its pause: [start, end), pause first (or last, for the first run)
    start, end = (runs[i - 1][1], runs[i][1]) if i > 0 else (runs[0][0], runs[1][0])
    piece = wave[start:end]
    n = end - start
    if not more:
        pause = wave[start : runs[i][0]] if i > 0 else wave[runs[0][1] : end]  # >= one frame
        filler = pause.repeat(n // len(pause) + 1)[:n]
        return torch.cat([wave[:start], wave[end:], filler])
    at = runs[i][1] if i > 0 else runs[0][0]
    grown = torch.cat([wave[:at], piece, wave[at:]])
    # quiet stretches of the grown clip: leading, between runs, trailing (the inserted piece shifts
    # everything from ``at`` on by n samples)
    shifted = [(a + n * (a >= at), b + n * (b > at)) for a, b in runs] + [(at, at + n)]
    edges = sorted(shifted)
    quiet_spans = [(0, edges[0][0])] + [(b, c) for (_, b), (c, _) in pairwise(edges)]
    quiet_spans.append((edges[-1][1], len(grown)))
    room = [(b - a, a, b) for a, b in quiet_spans if b - a >= n + frame]
    if not room:
        return None
    _, a, b = max(room)
    cut = a + (b - a - n) // 2  # from the middle of that stretch
    return torch.cat([grown[:cut], grown[cut + n :]])


def swap_token_halves(tokens: Tensor, mask: Tensor) -> Tensor:
    """Each sequence with its two halves (of its valid tokens) swapped; padding stays where it was.

    Shape:
        tokens: ``[B, L, D]``, mask: ``[B, L]`` bool (valid tokens first); returns ``[B, L, D]``.
    """
    out = tokens.clone()
    for i, n in enumerate(mask.sum(1).tolist()):
        cut = n // 2
        out[i, :n] = torch.cat([tokens[i, cut:n], tokens[i, :cut]])
    return out


class Edit(NamedTuple):
    """One clip's edit: on its waveform, and on its cached encoder tokens where tokens allow one."""

    wave: AudioEdit
    tokens: TokenEdit | None = None


ORDER_EDIT = Edit(swap_at_pause, swap_token_halves)  # the events swapped; token halves swapped


def count_edit(more: bool) -> Edit:
    """One occurrence more or fewer (``recount``); no token edit."""
    return Edit(partial(recount, more=more))


def edit_windows(
    audio: Tensor, audio_valid: Tensor, edits: list[AudioEdit], frame: int
) -> tuple[Tensor, Tensor]:
    """Each clip's real samples through its edit (with ``frame``-sample frames), in the same window
    layout.

    Returns the edited windows and which clips the edit was made on (the others are left as they are
    and must not serve as negatives).

    Shape:
        audio: ``[B, W, S]`` windows (zero-padded), audio_valid: ``[B, W]`` real samples per window,
        edits: B of them; returns ``[B, W, S]`` and ``[B]`` bool.
    """
    b, w, s = audio.shape
    flat = audio.reshape(b, w * s)
    out, done = flat.clone(), torch.zeros(b, dtype=torch.bool)
    for i, edit in enumerate(edits):
        valid = audio_valid[i].tolist()
        real = torch.cat([flat[i, j * s : j * s + int(v)] for j, v in enumerate(valid)])
        edited = edit(real, frame)
        if edited is None:
            continue
        done[i], start = True, 0
        for j, v in enumerate(valid):
            out[i, j * s : j * s + int(v)] = edited[start : start + int(v)]
            start += int(v)
    return out.view(b, w, s), done
