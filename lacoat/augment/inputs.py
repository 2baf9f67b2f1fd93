"""The captions to paraphrase: a Clotho, AudioCaps or plain ``file_name,caption`` CSV, told apart by header.

Every format becomes a long table ``file_name, caption`` whose ``file_name`` is exactly what the
matching ``lacoat.data`` source uses, so that ``read_augmented`` can join the paraphrases to their
clips: Clotho's file names as written; for AudioCaps the clip path that ``lacoat.data.AudioCaps``
builds from ``audio_pattern`` (same default: ``{split}/{youtube_id}_{start_time}.wav``, or the
aac-datasets pattern when the CSV lies in an ``AUDIOCAPS`` folder).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from lacoat.data.audiocaps import AAC_DATASETS_PATTERN, AUDIOCAPS_COLUMNS, read_audiocaps_split
from lacoat.data.table import (
    Policy,
    drop_bad_rows,
    read_csv_strict,
    read_long_captions,
    record_lines,
    require_rows,
    wide_to_long,
)
from lacoat.errors import DataError

WIDE_CAPTION = re.compile(r"caption_(\d+)")


def detect_format(columns: list[str]) -> str | None:
    """``"clotho"``, ``"audiocaps"``, ``"plain"`` or None, from a CSV header."""
    if "file_name" in columns and any(WIDE_CAPTION.fullmatch(c) for c in columns):
        return "clotho"
    if all(c in columns for c in AUDIOCAPS_COLUMNS):
        return "audiocaps"
    if "file_name" in columns and "caption" in columns:
        return "plain"
    return None


def read_captions(
    path: str | Path, on_bad_caption: Policy = "error", audio_pattern: str | None = None
) -> tuple[pd.DataFrame, str]:
    """Read the captions of one CSV in any supported format.

    Args:
        path: Clotho ``clotho_captions_<split>.csv`` (``file_name,caption_1..caption_5``), an AudioCaps
            split CSV (``audiocap_id,youtube_id,start_time,caption``) or ``file_name,caption``.
        on_bad_caption: ``error`` stops at a bad row (blank caption or file name, line break, ...;
            see ``lacoat.data.table``), ``skip`` leaves it out with a warning.
        audio_pattern: AudioCaps only: the ``audio_pattern`` of the ``lacoat.data.AudioCaps`` source
            that will train on the paraphrases (default: that source's default).

    Returns:
        The table (``file_name``, ``caption``, one row per caption, file order) and the format's name.
    """
    path = Path(path)
    header = read_csv_strict(path, [])
    kind = detect_format(list(header.columns))
    if kind == "clotho":
        require_rows(header, path)
        columns = sorted((c for c in header.columns if WIDE_CAPTION.fullmatch(c)), key=lambda c: int(c[8:]))
        long, lines = wide_to_long(header, columns, record_lines(path, len(header)))
        table = drop_bad_rows(long, path, on_bad_caption, lines, columns * len(header))
    elif kind == "audiocaps":
        if audio_pattern is None and path.parent.name == "AUDIOCAPS":
            audio_pattern = AAC_DATASETS_PATTERN
        table = read_audiocaps_split(path.parent, path.stem, audio_pattern, on_bad_caption)
    elif kind == "plain":
        table = read_long_captions(path, on_bad_caption)
    else:
        raise DataError(
            f"'{path}' is not a captions CSV lacoat knows: its header is {list(header.columns)}. Expected "
            "Clotho (file_name,caption_1..caption_5), AudioCaps (audiocap_id,youtube_id,start_time,caption) "
            "or file_name,caption."
        )
    return table[["file_name", "caption"]].reset_index(drop=True), kind
