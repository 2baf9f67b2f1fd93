"""Clotho v2.1: caption tables and the DataModule.

Two layouts are recognised under ``root``:

* flat (Zenodo archives unpacked side by side)::

    root/clotho_captions_{development,validation,evaluation}.csv
    root/{development,validation,evaluation}/<file_name>

* aac-datasets (``root`` as given to ``aac_datasets.Clotho``, or its ``CLOTHO_v2.1`` folder)::

    root/CLOTHO_v2.1/clotho_csv_files/clotho_captions_<split>.csv
    root/CLOTHO_v2.1/clotho_audio_files/<split>/<file_name>
"""

from __future__ import annotations

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
    require_rows,
    wide_to_long,
)
from lacoat.data.twins import read_twin_manifest
from lacoat.errors import DataError

CLOTHO_SPLITS = ("development", "validation", "evaluation")
CAPTION_COLUMNS = [f"caption_{i}" for i in range(1, 6)]


def clotho_layout(root: str | Path) -> tuple[Path, Path]:
    """Find Clotho's caption-CSV folder and audio folder under ``root``.

    Returns:
        ``(csv_dir, audio_dir)``; split ``s`` has ``csv_dir/clotho_captions_s.csv`` and ``audio_dir/s/``.
    """
    root = Path(root).expanduser()
    candidates = [
        (root, root),
        (root / "CLOTHO_v2.1" / "clotho_csv_files", root / "CLOTHO_v2.1" / "clotho_audio_files"),
        (root / "clotho_csv_files", root / "clotho_audio_files"),
    ]
    for csv_dir, audio_dir in candidates:
        if any((csv_dir / f"clotho_captions_{s}.csv").is_file() for s in CLOTHO_SPLITS):
            return csv_dir, audio_dir
    raise DataError(
        f"no Clotho data found under '{root}': expected clotho_captions_<split>.csv there (flat layout) "
        "or in CLOTHO_v2.1/clotho_csv_files/ (aac-datasets layout). Download Clotho v2.1 from Zenodo "
        "(record 4783391), or run `lacoat synth --out DIR` for the demo data set."
    )


def read_clotho_split(
    root: str | Path, split: str, captions: CaptionRules | Policy = "error"
) -> pd.DataFrame:
    """Read one Clotho split as a caption table (five rows per clip, file names untouched).

    Bad rows follow ``captions`` (see ``lacoat.data.table``); a clip listed on a second line is bad
    as a whole (all five captions of the later line), since its captions would count twice.
    """
    csv_dir, audio_dir = clotho_layout(root)
    path = csv_dir / f"clotho_captions_{split}.csv"
    wide = read_csv_strict(path, ["file_name", *CAPTION_COLUMNS])
    require_rows(wide, path)
    wide_lines = record_lines(path, len(wide))
    first_line = wide_lines.groupby(wide["file_name"].to_numpy()).transform("first").to_numpy()
    repeats = np.where(wide["file_name"].duplicated().to_numpy(), first_line, 0)
    long, lines = wide_to_long(wide, CAPTION_COLUMNS, wide_lines)
    problems = [f"clip already listed on line {k}" if k else "" for k in repeats.repeat(len(CAPTION_COLUMNS))]
    fields = CAPTION_COLUMNS * len(wide)
    long = drop_bad_rows(long, path, captions, lines, fields, problems)
    split_dir = audio_dir / split
    long["audio_path"] = [str(split_dir / name) for name in long["file_name"]]
    long["source"] = "original"
    return long.reset_index(drop=True)


class Clotho(CaptionSource):
    """Clotho v2.1, or SynthCaps, which has its layout.

    Args:
        root: folder holding Clotho in the flat or the aac-datasets layout.
        train_split: split for training.
        val_split: split for validation.
        test_split: split for testing and prediction.
        max_missing_fraction: fraction of a split's clips that may be missing or unreadable (and are
            then skipped) before it is an error. Clotho is complete, so the default is 0.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "development",
        val_split: str = "validation",
        test_split: str = "evaluation",
        max_missing_fraction: float = 0.0,
    ) -> None:
        super().__init__({"train": train_split, "val": val_split, "test": test_split}, max_missing_fraction)
        self.root = root
        clotho_layout(root)  # fail at configuration time, with the fix, if the folder is wrong

    def read_split(self, split: str, captions: CaptionRules | Policy) -> pd.DataFrame:
        return read_clotho_split(self.root, split, captions)

    def twin_specs(self, stage: str) -> list[dict] | None:
        return read_twin_manifest(self.root, self.splits[stage])

    def __repr__(self) -> str:
        return f"Clotho(root={self.root!r})"
