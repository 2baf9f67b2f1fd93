"""SynthCaps clips as events: the vocabulary of sound events and their attributes, random clips and
their twins (the same events in another order or count), and the rendering of a clip to samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.signal import lfilter

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
