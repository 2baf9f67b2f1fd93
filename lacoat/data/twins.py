"""Twin comparisons: does a caption's own clip outscore its *twin* (same events, another order, count
or pitch)? The compositional diagnostic of ``lacoat test`` on SynthCaps.

``synthcaps_events.json`` (written by ``lacoat synth``) names each twin and what it changes. For every
caption of a clip whose twin is in the same split, in both directions, one comparison ``(query, clip,
twin, change)`` is made, except for captions that describe the twin just as well: the same sentence
(up to case and punctuation) is among the twin's captions, or the manifest says the caption does not
state what the twin changes (a sweep's pitch is never named, for example).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from lacoat.errors import DataError

MANIFEST = "synthcaps_events.json"
CHANGES = ("order", "count", "pitch")


def read_twin_manifest(root: str | Path, split: str) -> list[dict] | None:
    """The clip specifications of ``split`` from ``root/synthcaps_events.json``; None without a manifest."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return list(manifest["splits"].get(split, []))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"'{path}' is not a SynthCaps events manifest ({err}); regenerate it with `lacoat synth`, or "
            "remove it to evaluate without the twin diagnostic."
        ) from err


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _states_change(states: list[str] | None, change: str, event: int | None) -> bool:
    """Whether a caption stating ``states`` tells its clip from a twin that changes ``change``."""
    if states is None:  # an older manifest: only the same-sentence rule applies
        return True
    return change in states if change == "order" else f"{change}@{event}" in states


def twin_comparisons(clips: pd.DataFrame, queries: pd.DataFrame, specs: list[dict]) -> pd.DataFrame:
    """The comparisons of an evaluation set.

    Args:
        clips: the set's clips (``file_name``), in evaluation order.
        queries: its queries (``text``, ``group``, ``relevant``: clip indices).
        specs: the split's clip specifications from the manifest (``file_name``, ``twin_of``,
            ``change``, optionally ``change_event`` and ``caption_states``).

    Returns:
        One row per comparison: ``query`` (row of ``queries``), ``clip`` (its clip), ``twin`` (the
        twin's clip index), ``change`` (``order``, ``count`` or ``pitch``).
    """
    index = {name: i for i, name in enumerate(clips["file_name"])}
    spec_of = {spec["file_name"]: spec for spec in specs}
    captions = queries[queries["group"] == "caption"]
    by_clip: dict[int, list[int]] = {}
    for q, relevant in zip(captions.index, captions["relevant"], strict=True):
        by_clip.setdefault(relevant[0], []).append(q)
    texts = queries["text"].tolist()
    rows = []
    for spec in specs:
        original = spec.get("twin_of")
        if original is None or spec["file_name"] not in index or original not in index:
            continue
        change, event = spec["change"], spec.get("change_event")
        for own, other in ((spec["file_name"], original), (original, spec["file_name"])):
            own_i, other_i = index[own], index[other]
            other_texts = {_normal(texts[q]) for q in by_clip.get(other_i, [])}
            states = dict(
                zip(spec_of[own]["captions"], spec_of[own].get("caption_states") or [], strict=False)
            )
            has_states = bool(spec_of[own].get("caption_states"))
            for q in by_clip.get(own_i, []):
                if _normal(texts[q]) in other_texts:
                    continue
                if not _states_change(states.get(texts[q]) if has_states else None, change, event):
                    continue
                rows.append((q, own_i, other_i, change))
    return pd.DataFrame(rows, columns=["query", "clip", "twin", "change"])
