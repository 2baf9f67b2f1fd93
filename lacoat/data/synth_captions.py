"""SynthCaps captions: five per clip, naming its events, their attributes, how many there are and in
which order, from varied templates and synonyms.
"""

from __future__ import annotations

import numpy as np

from lacoat.data.synth_events import (
    COUNT_TIMES,
    COUNT_WORDS,
    EVENT_TYPES,
    ClipSpec,
    Event,
)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[rng.integers(len(options))]


def _counted(rng: np.random.Generator, count: int, singular: list[str], plural: list[str]) -> tuple[str, str]:
    """(determiner, noun) for ``count`` things: ("a", "click"), ("two", "clicks"), ("3", "clicks")."""
    if count == 1:
        return _pick(rng, ["a", "a single", "one"]), _pick(rng, singular)
    return (COUNT_WORDS[count] if rng.random() < 0.8 else str(count)), _pick(rng, plural)


PITCH_WORDS = {
    "low": ["low", "deep", "low-pitched"],
    "mid": ["medium", "mid-pitched", "steady"],
    "high": ["high", "shrill", "high-pitched"],
}


def describe_event(ev: Event, rng: np.random.Generator) -> str:
    """A noun phrase for one event, naming its count and (usually) its pitch, length and loudness."""
    pitch_adj = PITCH_WORDS[ev.pitch]
    length_adj = {"short": ["short", "brief", "quick"], "long": ["long", "sustained", "lingering"]}[ev.length]
    k = ev.kind
    det: str | None = None  # None: "a"/"an", chosen after the adjectives
    if k == "tone":
        core = f"{_pick(rng, pitch_adj)} {_pick(rng, ['beep', 'tone', 'note'])}"
        core = f"{_pick(rng, length_adj)} {core}" if rng.random() < 0.7 else core
    elif k == "hum":
        core = _pick(rng, ["low hum", "deep drone", "electrical hum", "humming drone"])
    elif k == "sweep_up":
        core = _pick(rng, ["rising sweep", "tone sliding upward", "upward glide", "rising whistle"])
    elif k == "sweep_down":
        core = _pick(rng, ["falling sweep", "tone sliding downward", "downward glide", "falling whistle"])
    elif k == "hiss":
        core = _pick(rng, ["burst of hiss", "rush of static", "hissing noise", "burst of white noise"])
        core = f"{_pick(rng, length_adj)} {core}" if rng.random() < 0.6 else core
    elif k == "rumble":
        core = _pick(rng, ["low rumble", "deep rumbling", "distant rumble", "rumbling noise"])
    elif k == "clicks":
        det, core = _counted(
            rng, ev.count, ["click", "tick", "sharp click"], ["clicks", "ticks", "sharp clicks"]
        )
    elif k == "knocks":
        det, core = _counted(
            rng, ev.count, ["knock", "thud", "dull knock"], ["knocks", "thuds", "dull knocks"]
        )
    elif k == "bell":
        bell = _pick(rng, ["bell", "chime"])
        if rng.random() < 0.5:
            core = f"{_pick(rng, pitch_adj)} {bell} ringing {COUNT_TIMES[ev.count]}"
        else:
            det, core = _counted(
                rng,
                ev.count,
                [f"{_pick(rng, pitch_adj)} {bell} strike", "ding"],
                [f"{_pick(rng, pitch_adj)} {bell} strikes", "dings"],
            )
    elif k == "buzz":
        core = f"{_pick(rng, pitch_adj)} {_pick(rng, ['buzz', 'buzzing', 'buzzer'])}"
    elif k == "chirps":
        det, core = _counted(rng, ev.count, ["chirp", "bird-like tweet"], ["chirps", "bird-like tweets"])
    elif k == "siren":
        core = _pick(rng, ["wailing siren", "warbling alarm", "siren"])
    elif k == "drips":
        det, core = _counted(rng, ev.count, ["drip", "water drop"], ["drips", "water drops"])
    else:  # pragma: no cover - the vocabulary is closed
        raise ValueError(k)
    if ev.loudness != "normal" and rng.random() < 0.7:
        loud = (
            _pick(rng, ["loud", "strong"])
            if ev.loudness == "loud"
            else _pick(rng, ["faint", "quiet", "soft"])
        )
        core = f"{loud} {core}"
    if det is None or det == "a":
        det = "an" if core[0] in "aeiou" else "a"
    return f"{det} {core}"


SINGLE = [
    "{0}",
    "the sound of {0}",
    "{0} can be heard",
    "a recording of {0}",
    "{0} in a quiet room",
    "there is {0}",
]
PAIR = [
    "{0}, then {1}",
    "{0} followed by {1}",
    "first {0}, and after that {1}",
    "{1} after {0}",
    "{0} and then {1}",
    "{1}, preceded by {0}",
    "{0} before {1}",
    "{0}; later {1}",
]
TRIPLE = [
    "{0}, then {1}, then {2}",
    "{0}, followed by {1} and finally {2}",
    "first {0}, next {1}, and lastly {2}",
    "{0} first, then {1}, and {2} at the end",
    "{0}, after which {1} and then {2}",
]
OVERLAP = [
    "{1} over {0}",
    "{1} while {0} continues",
    "{0} with {1} on top",
    "{1} against {0}",
    "{0} and {1} at the same time",
    "{1} with {0} in the background",
]


def stated(spec: ClipSpec, phrases: list[str]) -> list[str]:
    """What a caption made of ``phrases`` (one per event) states that a twin could change.

    ``order`` for a sequence of several events (every sequence template is explicit about it);
    ``count@i`` for an event with a count (always named, "a click" included); ``pitch@i`` when event
    i's phrase holds a word of its pitch (sweeps never do, bells rung as "dings" neither).
    """
    out = ["order"] if spec.arrangement == "sequence" and len(spec.events) > 1 else []
    for i, (ev, phrase) in enumerate(zip(spec.events, phrases, strict=True)):
        varied = EVENT_TYPES[ev.kind][0]
        if "count" in varied:
            out.append(f"count@{i}")
        words = set(phrase.lower().split())
        if "pitch" in varied and words & set(PITCH_WORDS[ev.pitch]):
            out.append(f"pitch@{i}")
    return out


def caption(spec: ClipSpec, rng: np.random.Generator) -> tuple[str, list[str]]:
    """One caption (every event named, counts stated, order or overlap explicit) and what it states."""
    phrases = [describe_event(ev, rng) for ev in spec.events]
    templates = OVERLAP if spec.arrangement == "overlap" else {1: SINGLE, 2: PAIR, 3: TRIPLE}[len(phrases)]
    text = _pick(rng, templates).format(*phrases)
    return text[0].upper() + text[1:] + ".", stated(spec, phrases)


def captions(spec: ClipSpec, rng: np.random.Generator, n: int = 5) -> tuple[list[str], list[list[str]]]:
    """``n`` distinct captions (distinct where the template space allows) and what each states."""
    out: list[str] = []
    states: list[list[str]] = []
    for _ in range(20 * n):
        c, st = caption(spec, rng)
        if c not in out:
            out.append(c)
            states.append(st)
        if len(out) == n:
            break
    while len(out) < n:  # a tiny template space (rare): repeat rather than fail
        c, st = caption(spec, rng)
        out.append(c)
        states.append(st)
    return out, states


# ---- file names and writing -----------------------------------------------------------------------
# Clotho's real file names hold leading spaces, commas, quotes, HTML entities and non-ASCII letters.
