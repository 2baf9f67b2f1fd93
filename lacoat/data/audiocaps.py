"""AudioCaps: ``root/{train,val,test}.csv`` (``audiocap_id,youtube_id,start_time,caption``) + audio.

Copies of AudioCaps name their audio files differently, so the path of a clip is a pattern relative
to ``root`` with the fields ``{split}``, ``{youtube_id}``, ``{start_time}`` and ``{end_time}``
(start + 10 s). The layout that aac-datasets writes (``root/AUDIOCAPS/...``) is recognised by itself.
Clips removed from YouTube are missing in every copy: they are skipped and counted, and more than
``max_missing_fraction`` of a split missing is an error.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd

from lacoat.data.source import CaptionSource
from lacoat.data.table import (
    CaptionRules,
    Policy,
    drop_bad_rows,
    read_csv_strict,
    record_lines,
    repeated_lines,
    require_rows,
)
from lacoat.errors import DataError

AUDIOCAPS_COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]
PATTERN_FIELDS = {"split", "youtube_id", "start_time", "end_time"}
FLAT_PATTERN = "{split}/{youtube_id}_{start_time}.wav"
AAC_DATASETS_PATTERN = "audio_32000Hz/{split}/{youtube_id}_{start_time}.flac"


def audiocaps_layout(root: str | Path, audio_pattern: str | None) -> tuple[Path, str]:
    """Resolve the folder holding the split CSVs and the audio pattern (given, or the layout's own)."""
    root = Path(root).expanduser()
    for base, default_pattern in ((root, FLAT_PATTERN), (root / "AUDIOCAPS", AAC_DATASETS_PATTERN)):
        if any((base / f"{s}.csv").is_file() for s in ("train", "val", "test")):
            pattern = audio_pattern or default_pattern
            fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f}
            if fields - PATTERN_FIELDS:
                raise DataError(
                    f"audio_pattern '{pattern}' uses unknown field(s) {sorted(fields - PATTERN_FIELDS)}; "
                    f"allowed: {sorted(PATTERN_FIELDS)}."
                )
            return base, pattern
    raise DataError(
        f"no AudioCaps data found under '{root}': expected train.csv, val.csv, test.csv there or in "
        "AUDIOCAPS/ (aac-datasets layout). Get them with aac-datasets or from the AudioCaps repository."
    )


def read_audiocaps_split(
    root: str | Path, split: str, audio_pattern: str | None, captions: CaptionRules | Policy = "error"
) -> pd.DataFrame:
    """Read one AudioCaps split as a caption table; ``file_name`` is the clip's path relative to root.

    Bad rows follow ``captions`` (see ``lacoat.data.table``); a start_time that is not a number and
    a row identical to an earlier one are bad too. Identical captions of one clip with different
    ``audiocap_id`` are kept: AudioCaps has such pairs (118 in test), and evaluations count both.
    """
    base, pattern = audiocaps_layout(root, audio_pattern)
    path = base / f"{split}.csv"
    df = read_csv_strict(path, AUDIOCAPS_COLUMNS)
    require_rows(df, path)
    lines = record_lines(path, len(df))
    start = pd.to_numeric(df["start_time"], errors="coerce").to_numpy()
    valid = np.isfinite(start)
    repeats = repeated_lines(df, AUDIOCAPS_COLUMNS, lines)
    problems = [
        f"start_time {text!r} is not a number" if not ok else (f"repeats line {k}" if k else "")
        for text, ok, k in zip(df["start_time"], valid, repeats, strict=True)
    ]
    start_text = df["start_time"].str.strip()  # as written: "20", not "20.0"
    end_text = [
        "" if not ok else str(int(s + 10)) if float(s).is_integer() else str(s + 10)
        for s, ok in zip(start, valid, strict=True)
    ]
    names = [
        pattern.format(split=split, youtube_id=y, start_time=s, end_time=e)
        for y, s, e in zip(df["youtube_id"], start_text, end_text, strict=True)
    ]
    table = pd.DataFrame({"file_name": names, "caption": df["caption"], "audiocap_id": df["audiocap_id"]})
    table = drop_bad_rows(table, path, captions, lines, problems=problems)
    table["audio_path"] = [str(base / name) for name in table["file_name"]]
    table["source"] = "original"
    return table.reset_index(drop=True)


class AudioCaps(CaptionSource):
    """AudioCaps 1.0.

    Args:
        root: folder with ``train.csv``, ``val.csv``, ``test.csv`` (or aac-datasets' root).
        audio_pattern: clip path relative to the CSV folder, e.g. ``{split}/{youtube_id}_{start_time}.wav``
            (default: that one, or ``audio_32000Hz/{split}/{youtube_id}_{start_time}.flac`` in the
            aac-datasets layout).
        train_split: split for training.
        val_split: split for validation.
        test_split: split for testing and prediction.
        max_missing_fraction: fraction of a split's clips that may be missing (removed from YouTube)
            or unreadable before it is an error; those below it are skipped and counted.
    """

    def __init__(
        self,
        root: str,
        audio_pattern: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        max_missing_fraction: float = 0.2,
    ) -> None:
        super().__init__({"train": train_split, "val": val_split, "test": test_split}, max_missing_fraction)
        self.root = root
        self.audio_pattern = audio_pattern
        audiocaps_layout(root, audio_pattern)

    def read_split(self, split: str, captions: CaptionRules | Policy) -> pd.DataFrame:
        return read_audiocaps_split(self.root, split, self.audio_pattern, captions)

    def __repr__(self) -> str:
        return f"AudioCaps(root={self.root!r}, audio_pattern={self.audio_pattern!r})"
