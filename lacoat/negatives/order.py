"""Order negatives: a caption that states an order of events meets its own clip with the events swapped
(``audio``), and a clip meets its caption with the order reversed in words (``text``), each as one more
negative (after T-CLAP, Yuan et al. 2024, CompA, Ghosh et al., ICLR 2024, and Oncescu et al., ACM MM
2024).

Random batches, and even batches of mined neighbours, almost never hold a clip whose events are those
of another in reverse order, so the contrastive loss never rewards a model for hearing order. The
swapped clip has exactly the caption's events, in the wrong order: only a model that binds events to
time can score it below the original. The swap is done on the waveform at the clip's longest pause
(``lacoat.negatives.audio_edits.swap_at_pause``), so the negative keeps the original's silences and differs
only in the order of what sounds (a cut anywhere else is itself a cue a model can learn to hear
instead of the order); for cached encoder outputs, on the tokens (halves), the best that tokens allow (``lacoat.negatives.audio_edits.swap_token_halves``).

The text side has no such artefact: "A, then B" reversed is "B, then A", "A before B" is "A after
B", sentences a data set writes for other clips too, so a model can tell the reversed caption from the
original only by listening to the order (``reverse_order``).
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


# Words whose swap reverses the stated order and keeps the sentence grammatical.
_FLIPS = {
    "before": "after",
    "after": "before",
    "preceded": "followed",
    "followed": "preceded",
    "precedes": "follows",
    "follows": "precedes",
    "later": "earlier",
    "afterwards": "beforehand",
}
_FLIP_WORDS = re.compile(r"\b(" + "|".join(_FLIPS) + r")\b", re.IGNORECASE)
# Phrases with a relation word that state no order of two events: a succession ("one after another",
# "time after time") or a stretch of time ("after a while", "before a few seconds have passed").
_SUCCESSION = r"\b(?:one|day|time|year|step)\s+after\s+(?:another|the\s+other|day|time|year|step)\b"
_SPAN = r"(?:a|an|some|several|a\s+few|a\s+short|a\s+brief|a\s+couple\s+of|\d+|two|three|four|five|ten)"
_STRETCH = (
    r"\b(?:after|before)\s+(?:" + _SPAN + r"\s+)?(?:while|moments?|bit|seconds?|minutes?|time|little)\b"
)
_NO_ORDER = re.compile(f"{_SUCCESSION}|{_STRETCH}", re.IGNORECASE)
# Connectives between events listed in time order: ", then", " and then", "; next", ", and lastly", …
_SEQUENCE = re.compile(r"\s*[,;]?\s*\b(?:and\s+)?(?:then|next|finally|lastly)\b\s*", re.IGNORECASE)
_FIRST = re.compile(r"^(first|at first)\s+", re.IGNORECASE)


def _same_case(word: str, like: str) -> str:
    return word.capitalize() if like[0].isupper() else word


def reverse_order(caption: str) -> str | None:
    """``caption`` with the order of its events reversed, or None when it states no order this knows.

    A relation word is flipped where there is one ("A before B" → "A after B", "B, preceded by A" →
    "B, followed by A", "A; later B" → "A; earlier B"); otherwise the events between sequence
    connectives are listed backwards ("First A, next B, and lastly C." → "First C, next B, and lastly
    A.", "A, then B" → "B, then A"), connectives, a leading "first" and the final stop kept in place.
    Real captions sharing a subject across clauses ("A car revs up then stops") come out less
    grammatical, but still state the wrong order. Phrases that name no order of two events ("one
    after another", "after a while") are left as they are.
    """
    idioms = [m.span() for m in _NO_ORDER.finditer(caption)]

    def flip(m: re.Match[str]) -> str:
        if any(a <= m.start() < b for a, b in idioms):
            return m.group(1)
        return _same_case(_FLIPS[m.group(1).lower()], m.group(1))

    flipped = _FLIP_WORDS.sub(flip, caption)  # every flip changes a word: unchanged means no flip
    if flipped != caption:
        return flipped
    text = caption.strip()
    stop = text[-1] if text and text[-1] in ".!?" else ""
    text = text[: len(text) - len(stop)]
    first = _FIRST.match(text)
    lead = first.group(0) if first else ""
    body = text[len(lead) :]
    cuts = list(_SEQUENCE.finditer(body))
    events, start = [], 0
    for cut in cuts:
        events.append(body[start : cut.start()])
        start = cut.end()
    events.append(body[start:])
    if len(events) < 2 or not all(e.strip() for e in events):
        return None
    events = [e[0].lower() + e[1:] for e in events[::-1]]
    out = lead + events[0] + "".join(c.group(0) + e for c, e in zip(cuts, events[1:], strict=True))
    return (out if caption[:1].islower() else out[0].upper() + out[1:]) + stop
