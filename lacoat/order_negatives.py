"""Order negatives: each caption that states an order of events meets its own clip with the two halves
swapped, as a negative (after T-CLAP, Yuan et al. 2024, and Oncescu et al., ACM MM 2024).

Random batches, and even batches of mined neighbours, almost never hold a clip whose events are those
of another in reverse order, so the contrastive loss never rewards a model for hearing order. The
swapped clip has exactly the caption's events, in the wrong order: only a model that binds events to
time can score it below the original. The swap is done on the waveform (the encoder hears a real clip)
or, for cached encoder outputs, on the tokens of window-local encoders.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

# English words that state the order of events in a caption ("A, then B", "B after A", "first …").
ORDER_WORDS = re.compile(
    r"\b(then|after|afterwards|before|followed|follows|first|finally|later|next|preceded|precedes|"
    r"until|subsequently|eventually)\b",
    re.IGNORECASE,
)


def states_order(captions: list[str]) -> Tensor:
    """``[B]`` bool: whether each caption states an order of events (``ORDER_WORDS``)."""
    return torch.tensor([bool(ORDER_WORDS.search(c)) for c in captions], dtype=torch.bool)


def swap_audio_halves(audio: Tensor, audio_valid: Tensor) -> Tensor:
    """Each clip with its two halves (of its real samples) swapped, in the same window layout.

    Shape:
        audio: ``[B, W, S]`` windows (zero-padded), audio_valid: ``[B, W]`` real samples per window;
        returns ``[B, W, S]``.
    """
    b, w, s = audio.shape
    flat = audio.reshape(b, w * s)
    out = torch.zeros_like(flat)
    for i, n in enumerate(audio_valid.sum(1).tolist()):
        real = torch.cat([flat[i, j * s : j * s + int(v)] for j, v in enumerate(audio_valid[i].tolist())])
        cut = n // 2
        swapped = torch.cat([real[cut:], real[:cut]])
        start = 0
        for j, v in enumerate(audio_valid[i].tolist()):
            out[i, j * s : j * s + int(v)] = swapped[start : start + int(v)]
            start += int(v)
    return out.view(b, w, s)


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
