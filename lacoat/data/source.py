"""Where captions and audio come from: one ``CaptionSource`` per data set layout."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import pandas as pd

from lacoat.data.table import CaptionRules, Policy, read_long_captions
from lacoat.errors import DataError

STAGES = ("train", "val", "test")


class CaptionSource(ABC):
    """A data set on disk, read split by split into caption tables (see ``lacoat.data.table``).

    Args:
        splits: the split name used for each of ``train``, ``val`` and ``test``.
        max_missing_fraction: fraction of a split's clips that may be missing or unreadable (then
            skipped and counted) before loading fails.
    """

    def __init__(self, splits: dict[str, str], max_missing_fraction: float) -> None:
        if not 0.0 <= max_missing_fraction <= 1.0:
            raise DataError(f"max_missing_fraction must lie in [0, 1], got {max_missing_fraction}")
        self.splits = splits
        self.max_missing_fraction = max_missing_fraction

    @abstractmethod
    def read_split(self, split: str, captions: CaptionRules | Policy) -> pd.DataFrame:
        """Caption table of ``split``: ``file_name, caption, audio_path, source`` (+ extra columns).

        Bad rows follow ``captions`` (see ``lacoat.data.table``): an error naming the line, or dropped
        and recorded in ``captions.skipped``.
        """

    def read_stage(self, stage: str, captions: CaptionRules | Policy = "error") -> pd.DataFrame:
        """Caption table of the split used for ``stage`` (``train``, ``val`` or ``test``)."""
        if stage not in self.splits:
            raise DataError(f"{self!r} has no {stage} split; set it in the data source's config.")
        return self.read_split(self.splits[stage], captions)

    def twin_specs(self, stage: str) -> list[dict] | None:
        """Clip specifications of the stage's split from a SynthCaps events manifest (None: no manifest;
        see ``lacoat.data.twins``)."""
        return None


class CaptionCsv(CaptionSource):
    """A user's own library: ``file_name,caption`` CSVs (several rows per clip allowed) and a folder.

    A row identical to an earlier one is bad (its caption would count twice); add a column that tells
    two annotators' identical captions apart (e.g. an id) to keep both.

    Args:
        audio_dir: folder the ``file_name`` column is relative to (sub-folders allowed).
        train_csv: captions for training.
        val_csv: captions for validation (default: none; then ``fit`` runs without validation).
        test_csv: captions for testing (default: ``val_csv``).
        max_missing_fraction: fraction of clips that may be missing or unreadable before it is an error.
    """

    def __init__(
        self,
        audio_dir: str,
        train_csv: str | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        max_missing_fraction: float = 0.0,
    ) -> None:
        csvs = {"train": train_csv, "val": val_csv, "test": test_csv or val_csv}
        super().__init__({k: v for k, v in csvs.items() if v}, max_missing_fraction)
        self.audio_dir = audio_dir

    def read_split(self, split: str, captions: CaptionRules | Policy) -> pd.DataFrame:
        table = read_long_captions(split, captions, drop_repeats=True)
        table["audio_path"] = [str(Path(self.audio_dir) / name) for name in table["file_name"]]
        table["source"] = "original"
        return table

    def __repr__(self) -> str:
        return f"CaptionCsv(audio_dir={self.audio_dir!r}, splits={self.splits})"
