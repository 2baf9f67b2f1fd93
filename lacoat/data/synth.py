"""SynthCaps: a generated audio–caption data set in Clotho layout, deterministic from a seed.

Each clip holds 1–3 sound events from a vocabulary of thirteen (tones, hums, sweeps, hiss, rumbles,
clicks, knocks, bells, buzzes, chirps, sirens, drips) with attributes (pitch, loudness, count,
length), in sequence or overlapping. Five captions per clip name the events, their attributes, how
many there are and in which **order** ("a low hum, then two sharp clicks"), from varied templates
and synonyms. Some clips come with a *twin*: the same events in another order or with another
count, so a model that ignores time or counts cannot tell them apart.

Output (Clotho layout, read by ``lacoat.data.Clotho``)::

    out/clotho_captions_{development,validation,evaluation}.csv
    out/{development,validation,evaluation}/<file_name>.wav     (16-bit PCM)
    out/synthcaps_events.json                                    (what each clip contains)
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from lacoat.io import atomic_write

SPLITS = ("development", "validation", "evaluation")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
COUNT_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times"}
PITCH_HZ = {"low": 180.0, "mid": 520.0, "high": 1500.0}
LOUDNESS_GAIN = {"quiet": 0.12, "normal": 0.35, "loud": 0.8}

# event type -> (attributes it varies, can be the background of an overlap)
EVENT_TYPES: dict[str, tuple[tuple[str, ...], bool]] = {
    "tone": (("pitch", "length"), False),
    "hum": (("length",), True),
    "sweep_up": (("pitch",), False),
    "sweep_down": (("pitch",), False),
    "hiss": (("length",), True),
    "rumble": (("length",), True),
    "clicks": (("count",), False),
    "knocks": (("count",), False),
    "bell": (("pitch", "count"), False),
    "buzz": (("pitch", "length"), True),
    "chirps": (("count",), False),
    "siren": (("length",), True),
    "drips": (("count",), False),
}


@dataclass
class Event:
    """One sound event of a clip. ``onset``/``offset`` in seconds, set when the clip is laid out."""

    kind: str
    pitch: str = "mid"
    loudness: str = "normal"
    count: int = 1
    length: str = "short"
    onset: float = 0.0
    offset: float = 0.0


@dataclass
class ClipSpec:
    """What a clip contains: events in time order and how they are arranged."""

    events: list[Event]
    arrangement: str  # "single", "sequence" or "overlap" (events[0] is the background)
    duration: float
    twin_of: str | None = None
    change: str | None = None  # what differs from the twin: "order", "count" or "pitch"
    change_event: int | None = None  # index of the event whose count or pitch differs
    file_name: str = ""
    captions: list[str] = field(default_factory=list)
    # per caption, what it states that a twin could change: "order", "count@i", "pitch@i" (event i)
    caption_states: list[list[str]] = field(default_factory=list)


# ---- sound synthesis ------------------------------------------------------------------------------
def _envelope(n: int, sr: int, attack: float = 0.01, release: float = 0.05) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n, int(attack * sr)), min(n, int(release * sr))
    if a:
        env[:a] = np.linspace(0, 1, a)
    if r:
        env[n - r :] *= np.linspace(1, 0, r)
    return env


def _lowpass(x: np.ndarray, alpha: float) -> np.ndarray:
    """One-pole low-pass filter ``y[n] = y[n-1] + alpha * (x[n] - y[n-1])``."""
    return lfilter([alpha], [1.0, alpha - 1.0], x)


def _repeated(unit: np.ndarray, count: int, period: int) -> np.ndarray:
    out = np.zeros(period * (count - 1) + len(unit))
    for k in range(count):
        out[k * period : k * period + len(unit)] += unit
    return out


def event_length(ev: Event) -> float:
    """Length in seconds that ``synthesize_event`` gives ``ev``."""
    long = ev.length == "long"
    fixed = {
        "tone": 1.2 if long else 0.35,
        "hum": 1.6 if long else 0.8,
        "hiss": 1.2 if long else 0.3,
        "rumble": 1.6 if long else 0.8,
        "buzz": 1.2 if long else 0.4,
        "siren": 1.8 if long else 1.0,
        "sweep_up": 0.6,
        "sweep_down": 0.6,
    }
    if ev.kind in fixed:
        return fixed[ev.kind]
    period, unit = {
        "clicks": (0.18, 0.01),
        "knocks": (0.3, 0.12),
        "bell": (0.55, 0.5),
        "chirps": (0.22, 0.08),
        "drips": (0.35, 0.06),
    }[ev.kind]
    return period * (ev.count - 1) + unit


def synthesize_event(ev: Event, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Samples of one event (peak about 1 before loudness), with small random variation."""
    n = int(event_length(ev) * sr)
    t = np.arange(n) / sr
    f0 = PITCH_HZ[ev.pitch] * rng.uniform(0.93, 1.07)
    if ev.kind == "tone":
        x = np.sin(2 * np.pi * f0 * t) * _envelope(n, sr)
    elif ev.kind == "hum":
        f = rng.uniform(55, 75)
        x = sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3, 4)) * _envelope(n, sr, 0.1, 0.1) / 1.6
    elif ev.kind in ("sweep_up", "sweep_down"):
        lo, hi = f0 / 2.5, f0 * 2.5
        f_start, f_end = (lo, hi) if ev.kind == "sweep_up" else (hi, lo)
        freq = f_start * (f_end / f_start) ** (t / t[-1])
        x = np.sin(2 * np.pi * np.cumsum(freq) / sr) * _envelope(n, sr, 0.02, 0.05)
    elif ev.kind == "hiss":
        white = rng.standard_normal(n)
        x = (white - _lowpass(white, 0.3)) * _envelope(n, sr, 0.02, 0.05) / 2.0
    elif ev.kind == "rumble":
        brown = _lowpass(rng.standard_normal(n), 0.01)
        x = brown / (np.abs(brown).max() + 1e-9) * _envelope(n, sr, 0.15, 0.2)
    elif ev.kind == "clicks":
        unit = rng.standard_normal(int(0.01 * sr)) * np.exp(-np.linspace(0, 8, int(0.01 * sr)))
        x = _repeated(unit, ev.count, int(0.18 * sr))
    elif ev.kind == "knocks":
        m = int(0.12 * sr)
        tt = np.arange(m) / sr
        unit = (np.sin(2 * np.pi * 140 * tt) + 0.3 * rng.standard_normal(m) * np.exp(-tt * 200)) * np.exp(
            -tt * 35
        )
        x = _repeated(unit, ev.count, int(0.3 * sr))
    elif ev.kind == "bell":
        m = int(0.5 * sr)
        tt = np.arange(m) / sr
        partials = ((1.0, 1.0), (2.76, 0.5), (5.4, 0.25), (8.9, 0.12))
        unit = sum(a * np.sin(2 * np.pi * f0 * r * tt) for r, a in partials) * np.exp(-tt * 7) / 1.5
        x = _repeated(unit, ev.count, int(0.55 * sr))
    elif ev.kind == "buzz":
        saw = 2 * ((f0 / 2 * t) % 1.0) - 1
        x = np.sign(saw) * 0.5 + 0.5 * saw
        x = x * _envelope(n, sr, 0.01, 0.03)
    elif ev.kind == "chirps":
        m = int(0.08 * sr)
        tt = np.arange(m) / sr
        freq = 2500 * (2.0 ** (tt / tt[-1]))
        unit = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(m)
        x = _repeated(unit, ev.count, int(0.22 * sr))
    elif ev.kind == "siren":
        rate = rng.uniform(1.5, 2.5)
        freq = 700 + 250 * np.sin(2 * np.pi * rate * t)
        x = np.sin(2 * np.pi * np.cumsum(freq) / sr) * _envelope(n, sr, 0.05, 0.1)
    elif ev.kind == "drips":
        m = int(0.06 * sr)
        tt = np.arange(m) / sr
        freq = 900 * (1 + 1.5 * tt / tt[-1])
        unit = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-tt * 60)
        x = _repeated(unit, ev.count, int(0.35 * sr))
    else:  # pragma: no cover - the vocabulary is closed
        raise ValueError(f"unknown event kind {ev.kind!r}")
    x = np.asarray(x, dtype=np.float64)
    return x / (np.abs(x).max() + 1e-9) * LOUDNESS_GAIN[ev.loudness]


def render(spec: ClipSpec, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Mix a clip's events at their onsets over a faint noise floor; returns ``[T]`` float32 in [-1, 1]."""
    out = rng.standard_normal(int(spec.duration * sr)) * 0.003
    for ev in spec.events:
        x = synthesize_event(ev, sr, rng)
        start = int(ev.onset * sr)
        out[start : start + len(x)] += x[: len(out) - start]
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# ---- clip specifications --------------------------------------------------------------------------
def random_event(rng: np.random.Generator, kinds: list[str]) -> Event:
    kind = kinds[rng.integers(len(kinds))]
    ev = Event(kind=kind)
    varied = EVENT_TYPES[kind][0]
    if "pitch" in varied:
        ev.pitch = ("low", "mid", "high")[rng.integers(3)]
    if "count" in varied:
        ev.count = int(rng.integers(1, 5))
    if "length" in varied:
        ev.length = ("short", "long")[rng.integers(2)]
    ev.loudness = ("quiet", "normal", "normal", "loud")[rng.integers(4)]
    return ev


def layout(spec: ClipSpec, rng: np.random.Generator) -> ClipSpec:
    """Place events in time (onsets, offsets) and set the clip duration (a few seconds)."""
    lengths = [event_length(ev) for ev in spec.events]
    if spec.arrangement == "overlap":
        bg, fg = spec.events
        bg.onset = rng.uniform(0.1, 0.4)
        bg.offset = bg.onset + lengths[0]
        fg.onset = bg.onset + rng.uniform(0.05, max(0.06, lengths[0] - lengths[1] * 0.5))
        fg.offset = fg.onset + lengths[1]
    else:
        t = rng.uniform(0.1, 0.5)
        for ev, n in zip(spec.events, lengths, strict=True):
            ev.onset, ev.offset = t, t + n
            t = ev.offset + rng.uniform(0.25, 0.6)
    end = max(ev.offset for ev in spec.events)
    spec.duration = round(max(3.0, end + rng.uniform(0.2, 0.8)), 3)
    return spec


def random_clip(rng: np.random.Generator) -> ClipSpec:
    """A clip of 1–3 distinct events, alone, in sequence, or a foreground event over a background."""
    n_events = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    kinds = list(EVENT_TYPES)
    if n_events == 2 and rng.random() < 0.35:
        backgrounds = [k for k in kinds if EVENT_TYPES[k][1]]
        bg = random_event(rng, backgrounds)
        bg.length = "long"
        fg = random_event(rng, [k for k in kinds if not EVENT_TYPES[k][1]])
        return layout(ClipSpec(events=[bg, fg], arrangement="overlap", duration=0.0), rng)
    events: list[Event] = []
    while len(events) < n_events:
        ev = random_event(rng, [k for k in kinds if k not in {e.kind for e in events}])
        events.append(ev)
    arrangement = "single" if n_events == 1 else "sequence"
    return layout(ClipSpec(events=events, arrangement=arrangement, duration=0.0), rng)


def make_twin(spec: ClipSpec, rng: np.random.Generator) -> ClipSpec | None:
    """A hard negative of ``spec``: the same events in reverse order (half the time when possible), or
    one count or pitch changed."""
    events = [replace(ev) for ev in spec.events]
    options = []
    if spec.arrangement == "sequence":
        options.append("order")
    if any("count" in EVENT_TYPES[ev.kind][0] for ev in events):
        options.append("count")
    if any("pitch" in EVENT_TYPES[ev.kind][0] for ev in events):
        options.append("pitch")
    if not options:
        return None
    # order is what only a time-aware model gets right: it is changed in half of the clips that allow it
    if "order" in options and (len(options) == 1 or rng.random() < 0.5):
        change = "order"
    else:
        others = [o for o in options if o != "order"]
        change = others[rng.integers(len(others))]
    changed = None
    if change == "order":
        events = events[::-1]
    elif change == "count":
        changed = next(i for i, ev in enumerate(events) if "count" in EVENT_TYPES[ev.kind][0])
        events[changed].count = int(rng.choice([c for c in (1, 2, 3, 4) if c != events[changed].count]))
    else:
        changed = next(i for i, ev in enumerate(events) if "pitch" in EVENT_TYPES[ev.kind][0])
        events[changed].pitch = str(
            rng.choice([p for p in ("low", "mid", "high") if p != events[changed].pitch])
        )
    twin = ClipSpec(
        events=events, arrangement=spec.arrangement, duration=0.0, change=change, change_event=changed
    )
    return layout(twin, rng)


# ---- captions -------------------------------------------------------------------------------------
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
TRICKY_NAMES = [" {0}.wav", "{0}, take 2.wav", '{0} "live".wav', "{0} café.wav", "{0} d&#39;eau.wav"]


def file_name(split: str, index: int, spec: ClipSpec) -> str:
    base = f"{split[:3]}_{index:05d} {'-'.join(ev.kind for ev in spec.events)}"
    if index % 25 == 7:
        return TRICKY_NAMES[(index // 25) % len(TRICKY_NAMES)].format(base)
    return f"{base}.wav"


def split_specs(n_clips: int, seed: int, split_id: int, twin_fraction: float) -> list[ClipSpec]:
    """Specifications of a split's clips; twins follow their originals."""
    specs: list[ClipSpec] = []
    base = 0
    while len(specs) < n_clips:
        rng = np.random.default_rng([seed, split_id, base])
        spec = random_clip(rng)
        specs.append(spec)
        if len(specs) < n_clips and rng.random() < twin_fraction:
            twin = make_twin(spec, rng)
            if twin is not None:
                twin.twin_of = str(len(specs) - 1)  # resolved to a file name below
                specs.append(twin)
        base += 1
    return specs


def synthesize(
    out: str,
    seed: int = 0,
    n_development: int = 1000,
    n_validation: int = 200,
    n_evaluation: int = 200,
    sample_rate: int = 16000,
    twin_fraction: float = 0.35,
    eval_twin_fraction: float | None = 1.0,
) -> dict[str, int]:
    """Write SynthCaps to ``out`` in Clotho layout; the same arguments give byte-identical files.

    Args:
        out: output folder (created; existing SynthCaps files are overwritten).
        seed: random seed.
        n_development: clips in the training split (five captions each).
        n_validation: clips in the validation split.
        n_evaluation: clips in the evaluation (test) split.
        sample_rate: sample rate of the written WAV files (Hz).
        twin_fraction: probability that a training clip is followed by its hard negative (same events,
            other order, count or pitch).
        eval_twin_fraction: the same for the validation and evaluation splits (None: ``twin_fraction``).
            At 1.0 (the default) about half of their clips are twins, so the twin win rates that
            ``lacoat test`` reports rest on about a hundred pairs per 200 clips.

    Returns:
        Number of clips written per split.
    """
    root = Path(out)
    sizes = {"development": n_development, "validation": n_validation, "evaluation": n_evaluation}
    manifest: dict[str, list[dict]] = {}
    for split_id, split in enumerate(SPLITS):
        audio_dir = root / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        twins = twin_fraction if split == "development" or eval_twin_fraction is None else eval_twin_fraction
        specs = split_specs(sizes[split], seed, split_id, twins)
        rows = []
        for i, spec in enumerate(specs):
            rng = np.random.default_rng([seed, split_id, 1_000_000 + i])
            spec.file_name = file_name(split, i, spec)
            if spec.twin_of is not None:
                spec.twin_of = specs[int(spec.twin_of)].file_name
            spec.captions, spec.caption_states = captions(spec, rng)
            wave = render(spec, sample_rate, rng)
            with atomic_write(audio_dir / spec.file_name) as handle:
                sf.write(handle, wave, sample_rate, subtype="PCM_16", format="WAV")
            rows.append([spec.file_name, *spec.captions])
        csv_path = root / f"clotho_captions_{split}.csv"

        with atomic_write(csv_path, "w") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")  # what open(newline="") + csv wrote
            writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
            writer.writerows(rows)
        manifest[split] = [asdict(spec) for spec in specs]
    with atomic_write(root / "synthcaps_events.json", "w") as handle:
        document = {"seed": seed, "sample_rate": sample_rate, "splits": manifest}
        handle.write(json.dumps(document, indent=1, ensure_ascii=False))
    return {split: sizes[split] for split in SPLITS}
