"""Text-side compositional negatives: a clip meets its own caption rewritten to state another order
of events (``lacoat.negatives.order.reverse_order``) or another count (``change_count``), each as
one more negative of the clip (CompA, Ghosh et al., ICLR 2024: contrastive audio-text models learn
order and counts only when they meet negatives that differ in nothing else).

A rewrite is a sentence of the data set's own kind ("three knocks, then a siren" → "two knocks, then
a siren"), so the model can tell it from the caption only by listening. Rewrites are deterministic:
where a caption offers several changes, a checksum of the caption picks the one a single negative
takes (the others follow it in ``count_changes``, for a clip that meets several), so a run and its
resume see the same negatives.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from lacoat.negatives.order import reverse_order

T = TypeVar("T")

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_NUMBER = {w: i + 1 for i, w in enumerate(NUMBER_WORDS)}
# A count of things: "two", "3", "a single" / "one" (then a noun phrase), or of repetitions: "once",
# "twice", "three times", "4 times".
_TIMES = re.compile(r"\b(once|twice|thrice|(?:" + "|".join(NUMBER_WORDS) + r"|\d+)\s+times)\b", re.IGNORECASE)
_COUNT = re.compile(r"\b(a single|" + "|".join(NUMBER_WORDS) + r"|\d+)\s+", re.IGNORECASE)
# Words that end a noun phrase after its count ("two knocks *before* a siren").
_BOUNDARY = {
    "then", "and", "or", "but", "before", "after", "followed", "preceded", "while", "with", "without",
    "on", "in", "over", "under", "as", "is", "are", "was", "were", "from", "of", "by", "at", "to",
    "that", "which", "ringing", "into", "near", "behind", "against", "during", "until", "can", "could",
    "will", "first", "for", "another", "other", "others",
}  # fmt: skip
# A count right after these is the end of a range, not a count of its own ("two *or three* birds").
_RANGE_BEFORE = re.compile(r"\b(?:or|to)\s+$|-$", re.IGNORECASE)
# Verbs that agree with the counted noun when they follow it ("one chirp *is*" → "two chirps *are*").
_AGREEING = {"is": "are", "was": "were", "has": "have"}
_AGREEING.update({plural: singular for singular, plural in _AGREEING.items()})
_VERB_AFTER = re.compile(r"\s+(" + "|".join(_AGREEING) + r")\b", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]")
_MAX_NOUN_WORDS = 3  # a count's noun phrase: up to 3 words ("two dull knocks", "a single high bell strike")


def pick(caption: str, options: Sequence[T]) -> T:
    """One of ``options``, the same for the same caption (a checksum, not Python's salted hash)."""
    return options[zlib.crc32(caption.encode()) % len(options)]


def _other_counts(n: int, least: int) -> list[int]:
    """The counts one away from ``n`` that are at least ``least`` (``n`` ± 1)."""
    return [m for m in (n - 1, n + 1) if m >= least]


def _number_word(m: int, like: str) -> str:
    """``m`` written as ``like`` writes its count: a digit, or a word in its case."""
    if like.isdigit() or m > len(NUMBER_WORDS):
        return str(m)
    word = NUMBER_WORDS[m - 1]
    return word.capitalize() if like[0].isupper() else word


def _times(m: int, like: str) -> str:
    """``m`` repetitions in ``like``'s style: once, twice, three times, 4 times."""
    spelled = {1: "once", 2: "twice"}.get(m) if not like[0].isdigit() else None
    out = spelled or f"{_number_word(m, like.split()[0])} times"
    return out.capitalize() if like[0].isupper() else out


def _noun(caption: str, start: int, plural: bool) -> re.Match | None:
    """The noun counted by the count that ends at ``start``: after a plural count, the first word in
    -s of the next ``_MAX_NOUN_WORDS`` ("two dull *knocks*"); after "a single" / "one", the last word
    of a noun phrase that ends (at punctuation, the end, or a ``_BOUNDARY`` word) within as many
    words ("a single high bell *strike*, then …"). None where there is none."""
    words: list[re.Match] = []
    for match in _TOKEN.finditer(caption, start):
        word = match.group(0)
        if not word[0].isalpha() or word.lower() in _BOUNDARY:
            break
        if plural and _singular(word):
            return match
        words.append(match)
        if len(words) > _MAX_NOUN_WORDS:
            return None
    return words[-1] if words and not plural and _plural(words[-1].group(0)) else None


def _plural(word: str) -> str | None:
    """English plural of a singular noun, or None where ``word`` does not look like one."""
    low = word.lower()
    if low.endswith(("s", "ed", "ly")) or (low.endswith("ing") and len(low) > 5) or not low.isalpha():
        return None
    if low.endswith(("sh", "ch", "x", "z")):
        return word + "es"
    if low.endswith("y") and low[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _singular(word: str) -> str | None:
    """Singular of a regular English plural, or None where ``word`` does not look like one."""
    low = word.lower()
    if not low.isalpha() or not low.endswith("s") or low.endswith(("ss", "us", "is")) or len(low) < 3:
        return None
    if low.endswith("ies"):
        return word[:-3] + "y"
    if low.endswith(("shes", "ches", "xes", "zes")):
        return word[:-2]
    return word[:-1]


def _repetition_changes(caption: str) -> list[str]:
    """Captions with one stated number of repetitions ("twice", "three times") one off."""
    out = []
    for match in _TIMES.finditer(caption):
        said = match.group(1)
        first = said.split()[0].lower()
        n = {"once": 1, "twice": 2, "thrice": 3}.get(first) or _NUMBER.get(first) or int(first)
        for m in _other_counts(n, least=1):
            out.append(caption[: match.start(1)] + _times(m, said) + caption[match.end(1) :])
    return out


def _thing_changes(caption: str) -> list[str]:
    """Captions with one stated number of things ("two knocks", "a single drip") one off, the noun
    and a verb right after it made singular or plural to agree ("a single drip" → "two drips", "two
    knocks are" → "a single knock is"). Not the end of a range ("two or *three* birds") nor "one
    another"."""
    out = []
    for match in _COUNT.finditer(caption):
        said = match.group(1)
        if _TIMES.match(caption, match.start(1)):
            continue  # "three times": a repetition
        n = 1 if said.lower() in ("a single", "one") else _NUMBER.get(said.lower()) or int(said)
        noun = _noun(caption, match.end(), plural=n > 1) if n > 0 else None
        if noun is None or _RANGE_BEFORE.search(caption, 0, match.start(1)):
            continue
        verb = _VERB_AFTER.match(caption, noun.end())
        for m in _other_counts(n, least=1):
            if m == 1:
                count, new_noun = "a single", _singular(noun.group(0))
            else:
                count, new_noun = _number_word(m, said), noun.group(0) if n > 1 else _plural(noun.group(0))
            if said[0].isupper() or match.start(1) == 0:  # "2 drips, …" → "A single drip, …"
                count = count[0].upper() + count[1:]
            rest = caption[noun.end() :]
            if verb is not None and (m == 1) != (n == 1):  # the verb agrees with the new number
                agreeing = _AGREEING[verb.group(1).lower()]
                rest = caption[noun.end() : verb.start(1)] + agreeing + caption[verb.end(1) :]
            out.append(
                caption[: match.start(1)] + count + caption[match.end(1) : noun.start()] + new_noun + rest
            )
    return out


def count_changes(caption: str) -> list[str]:
    """Every caption with one count ``caption`` states changed by one, ``change_count``'s pick first,
    then the others (repetitions, then counts of things); empty when it states no count this knows.

    Counts of things ("two knocks" → "three knocks" or "a single knock"; "a single drip" / "one drip"
    → "two drips") and of repetitions ("twice" → "once" or "three times"; "4 times" → "3 times"),
    in words or digits as the caption writes them. A bare "a drip" is not read as a count; nor is
    "one" without a noun phrase after it ("one of the dogs").
    """
    changes = _repetition_changes(caption) + _thing_changes(caption)
    if not changes:
        return []
    first = pick(caption, changes)
    return list(dict.fromkeys([first, *changes]))


def change_count(caption: str) -> str | None:
    """``caption`` with one count it states changed by one (``count_changes``), or None when it states
    no count this knows. Where a caption states several counts, or a count can go up or down, a
    checksum of the caption picks one change."""
    changes = count_changes(caption)
    return changes[0] if changes else None


Rewrite = Callable[[str], "str | None"]
# kind -> every rewrite of a caption, the one a single negative takes first
REWRITES: dict[str, Callable[[str], list[str]]] = {
    "order": lambda caption: [r] if (r := reverse_order(caption)) is not None else [],
    "count": count_changes,
}


def states_count(captions: list[str]) -> Tensor:
    """``[B]`` bool: whether each caption states a count ``change_count`` can change."""
    return rewritten(captions, change_count)[1]


def rewritten(captions: list[str], rewrite: Rewrite) -> tuple[list[str], Tensor]:
    """Each caption through ``rewrite`` (unchanged where it gives None) and ``[B]`` bool: which changed."""
    turned = [rewrite(c) for c in captions]
    done = torch.tensor([t is not None and t != c for t, c in zip(turned, captions, strict=True)])
    return [t if t is not None else c for t, c in zip(turned, captions, strict=True)], done
