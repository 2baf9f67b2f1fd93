"""Parse a model's answer into paraphrases and reject the ones that are no use for training.

A paraphrase is rejected when it is empty, the same as the caption (ignoring case, punctuation and
spacing), a repeat of another paraphrase, or far off in length (character ratio outside
``[min_ratio, max_ratio]`` of the caption's).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
LIST_ITEM = re.compile(r"^\s*(?:\(?\d+[.):]|[-*\u2022])\s+(.+?)\s*$")
QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def normalise(text: str) -> str:
    """Lower case without punctuation and with single spaces: what "identical" compares."""
    kept = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text.casefold())
    return " ".join(kept.split())


def _strings(value: object) -> list[str] | None:
    """A list of strings from a parsed JSON value: an array, or an object holding one array."""
    if isinstance(value, dict):
        arrays = [v for v in value.values() if isinstance(v, list)]
        value = arrays[0] if len(arrays) == 1 else None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


def parse_answer(text: str | None, n: int) -> list[str] | None:
    """The paraphrases in a model's answer, or None when it holds none that can be read.

    Accepted forms: a JSON array of strings (also inside a code fence, after some words, or as the
    only array of a JSON object), a numbered or bulleted list, and, when one paraphrase was asked
    for, a single line of text.
    """
    if not text or not text.strip():
        return None
    body = FENCE.sub("", text.strip()).strip()
    candidates = [body]
    start, end = body.find("["), body.rfind("]")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    for candidate in candidates:
        try:
            found = _strings(json.loads(candidate))
        except json.JSONDecodeError:
            continue
        if found is not None:
            return found
    items = [m.group(1).strip(QUOTES + " ") for m in map(LIST_ITEM.match, body.splitlines()) if m]
    if items:
        return items
    lines = [line for line in body.splitlines() if line.strip()]
    if n == 1 and len(lines) == 1 and not body.startswith(("[", "{")):
        return [lines[0].strip(QUOTES + " ")]
    return None


@dataclass(frozen=True)
class Limits:
    """What an acceptable paraphrase looks like.

    Args:
        min_ratio: shortest acceptable length, as a fraction of the caption's length (characters).
        max_ratio: longest acceptable length, as a multiple of the caption's length.
    """

    min_ratio: float = 0.5
    max_ratio: float = 2.0


def rejection(paraphrase: str, caption: str, limits: Limits) -> str | None:
    """Why ``paraphrase`` is no use as a paraphrase of ``caption`` (None: it is acceptable)."""
    text = normalise(paraphrase)
    if not text:
        return "empty"
    if text == normalise(caption):
        return "identical"
    ratio = len(paraphrase.strip()) / max(len(caption.strip()), 1)
    if not limits.min_ratio <= ratio <= limits.max_ratio:
        return "length"
    return None


def select(
    paraphrases: list[str], caption: str, n: int, limits: Limits, accepted: list[str]
) -> tuple[list[str], list[str]]:
    """Add acceptable, new paraphrases to ``accepted`` until it holds ``n``.

    Returns:
        The paraphrases taken and the reasons of those rejected (``"duplicate"`` for repeats).
    """
    seen = {normalise(p) for p in accepted}
    taken, reasons = [], []
    for paraphrase in paraphrases:
        if len(accepted) + len(taken) >= n:
            break
        reason = rejection(paraphrase, caption, limits)
        if reason is None and normalise(paraphrase) in seen:
            reason = "duplicate"
        if reason is None:
            taken.append(paraphrase.strip())
            seen.add(normalise(paraphrase))
        else:
            reasons.append(reason)
    return taken, reasons
