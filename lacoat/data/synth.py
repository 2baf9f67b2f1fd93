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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf

from lacoat.data.synth_captions import (
    captions,
)
from lacoat.data.synth_events import (
    ClipSpec,
    make_twin,
    random_clip,
    render,
)
from lacoat.io import atomic_write

SPLITS = ("development", "validation", "evaluation")


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
