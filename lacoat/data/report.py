"""The skip report: every clip and caption row left out under ``skip``, written at the end of a run.

``RetrievalDataModule`` collects what it skips while loading tables (missing or unreadable audio, bad
caption rows) and what its loaders skip in batches (a file that broke after the setup check), and
writes them, as ``skipped.csv``, into the run's checkpoint folder (else ``trainer.default_root_dir``)
when ``fit``, ``validate``, ``test`` or ``predict`` ends or fails. Columns:

- ``stage``: ``train``, ``val`` or ``test``; ``split``: the data set's split name;
- ``path``: the audio file, or ``CSV:LINE`` for a caption row;
- ``reason``: the message the error policy would have stopped with;
- ``when``: ``setup`` (found while loading tables) or ``batch`` (found while loading a batch);
- ``count``: how many items the row stands for: the captions of a CSV line dropped for one reason
  (a Clotho line holds five), or the times a clip was dropped from a batch (once per caption and epoch).

A later run in the same folder replaces the rows of the stages it ran and keeps the others, so
``lacoat test`` after ``lacoat fit`` leaves one report for both. A run that skipped nothing removes the
rows of its stages (and the file, once empty).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from lacoat.io import atomic_write

log = logging.getLogger(__name__)

REPORT_NAME = "skipped.csv"
COLUMNS = ["stage", "split", "path", "reason", "when", "count"]
STAGES_OF = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
STAGE_OF_RUNNING = {  # Lightning's RunningStage value -> data stage
    "train": "train",
    "sanity_check": "val",
    "validate": "val",
    "test": "test",
    "predict": "test",
}


def skip_table(
    setup: dict[str, list[tuple[str, str]]], batches: list[tuple[str, str, str]], splits: dict
) -> pd.DataFrame:
    """The report as a table, one row per distinct skipped item with how often it was skipped.

    Args:
        setup: stage -> ``(path, reason)`` of what loading the tables skipped.
        batches: ``(stage, path, reason)`` of every item dropped from a batch.
        splits: stage -> split name.
    """
    rows = [
        (stage, splits.get(stage, ""), path, reason, "setup")
        for stage, items in setup.items()
        for path, reason in items
    ]
    rows += [(stage, splits.get(stage, ""), path, reason, "batch") for stage, path, reason in batches]
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    return frame.groupby(COLUMNS[:-1], sort=False).size().reset_index(name="count")[COLUMNS]


def report_folder(trainer: Any) -> Path:
    """Where a run's report goes: its checkpoint folder, else ``trainer.default_root_dir``."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir)


def gather(items: list, trainer: Any) -> list:
    """``items`` of every process concatenated (this process's alone when not distributed)."""
    import torch.distributed as dist

    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return items
    parts: list[list] = [[] for _ in range(trainer.world_size)]
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def write_report(report: pd.DataFrame, folder: str | Path, stages: tuple[str, ...]) -> Path | None:
    """Write ``report`` (the rows of ``stages``) into ``folder/skipped.csv``, keeping other stages' rows.

    Returns:
        The file written, or None when nothing is left to report (then no file remains).
    """
    path = Path(folder) / REPORT_NAME
    kept = pd.DataFrame(columns=COLUMNS)
    if path.is_file():
        try:
            old = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
            kept = old[~old["stage"].isin(stages)][COLUMNS]
        except (KeyError, ValueError, pd.errors.ParserError) as err:
            log.warning("replacing unreadable skip report %s (%s)", path, err)
    merged = pd.concat([kept.astype(str), report.astype(str)], ignore_index=True)
    if merged.empty:
        path.unlink(missing_ok=True)
        return None
    with atomic_write(path, "w") as f:
        merged.to_csv(f, index=False)
    return path


def publish(
    setup: dict[str, list[tuple[str, str]]],
    batches: list[tuple[str, str, str]],
    splits: dict[str, str],
    trainer: Any,
    fn: str,
    collective: bool = True,
) -> Path | None:
    """Report what a run of ``fn`` (``fit``, ``validate``, ``test``, ``predict``) skipped: the count of
    skipped items per stage to the trainer's logger (``skipped/<stage>``) and as a warning, and the
    items to ``skipped.csv`` (rank 0).

    Args:
        setup: stage -> ``(path, reason)`` skipped while loading tables (the same on every process).
        batches: ``(stage, path, reason)`` dropped from this process's batches.
        splits: stage -> split name.
        trainer: the Lightning trainer.
        fn: the trainer function that ran.
        collective: gather ``batches`` from every process (all must call this); False after a failure.

    Returns:
        The report file on rank 0 when something was skipped, else None.
    """
    stages = STAGES_OF.get(fn, ())
    if collective:
        batches = gather(batches, trainer)
    report = skip_table(
        {stage: setup.get(stage, []) for stage in stages},
        [item for item in batches if item[0] in stages],
        splits,
    )
    if not trainer.is_global_zero:
        return None
    counts = {stage: int((report["stage"] == stage).sum()) for stage in stages if stage in splits}
    if trainer.logger is not None and counts:
        trainer.logger.log_metrics(
            {f"skipped/{stage}": n for stage, n in counts.items()}, trainer.global_step
        )
    try:
        path = write_report(report, report_folder(trainer), stages)
    except OSError as err:  # a full disk must not turn a finished run into a failed one
        log.error("could not write the skip report to %s: %s", report_folder(trainer), err)
        path = None
    for stage, n in counts.items():
        if n:
            log.warning("%s: %d item(s) of split '%s' were skipped; see %s", stage, n, splits[stage], path)
    return path
