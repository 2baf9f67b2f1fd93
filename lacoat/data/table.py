"""Caption tables: strict CSV reading and the long ``file_name, caption`` form every data set becomes.

A *caption table* is a ``pandas.DataFrame`` with one row per caption and the columns
``file_name`` (the clip's name exactly as in the metadata), ``caption``, ``audio_path`` (absolute
path of the clip) and ``source`` (``"original"`` or ``"augmented"``). Clips are identified by
``file_name``; all captions of a clip are positives of each other.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from lacoat.errors import DataError

log = logging.getLogger(__name__)

Policy = Literal["error", "skip"]
TABLE_COLUMNS = ["file_name", "caption", "audio_path", "source"]


def read_csv_strict(path: str | Path, required: Sequence[str], encoding: str = "utf-8") -> pd.DataFrame:
    """Read a CSV as strings, exactly as written: no NaN conversion, no stripping, no re-encoding.

    Raises:
        DataError: the file is missing, cannot be decoded or parsed, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: '{path}'. Check the data root or the path in your config.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding=encoding)
    except UnicodeDecodeError as err:
        raise DataError(
            f"cannot decode '{path}' as {encoding} ({err}). Save it as UTF-8 "
            "(Clotho's clotho_metadata_*.csv files are ISO-8859-1: pass that encoding)."
        ) from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"cannot parse CSV '{path}': {err}. Check quoting and the header line.") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"'{path}' lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Expected a header with {list(required)}."
        )
    return df


def drop_empty_captions(
    df: pd.DataFrame, path: str | Path, policy: Policy, row_numbers: pd.Series
) -> pd.DataFrame:
    """Remove rows whose caption is empty or blank, or raise, by ``policy``.

    Args:
        df: long table with a ``caption`` column.
        path: the CSV the rows come from, for messages.
        policy: ``"error"`` raises on the first empty caption; ``"skip"`` drops them with a warning.
        row_numbers: for each row of ``df``, its line number in the CSV (header = line 1).
    """
    empty = df["caption"].str.strip() == ""
    if not empty.any():
        return df
    lines = row_numbers[empty].tolist()
    if policy == "error":
        raise DataError(
            f"'{path}' has {int(empty.sum())} empty caption(s), first on line {lines[0]} "
            f"(file_name '{df.loc[empty, 'file_name'].iloc[0]}'). Fill them in, or set "
            "on_empty_caption: skip to drop them."
        )
    log.warning("%s: skipped %d empty caption(s) on lines %s", path, int(empty.sum()), lines[:10])
    return df[~empty]


def wide_to_long(df: pd.DataFrame, caption_columns: Sequence[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Turn ``file_name, caption_1..caption_n`` into one row per caption, clip-major order.

    Returns:
        The long table (``file_name``, ``caption``) and each row's CSV line number.
    """
    n = len(caption_columns)
    file_names = df["file_name"].repeat(n).to_numpy()
    captions = df[list(caption_columns)].to_numpy().reshape(-1)
    lines = pd.Series((df.index.to_numpy() + 2).repeat(n))
    return pd.DataFrame({"file_name": file_names, "caption": captions}), lines


def read_long_captions(path: str | Path, policy: Policy) -> pd.DataFrame:
    """Read a plain ``file_name,caption`` CSV (several rows per clip allowed) in file order."""
    df = read_csv_strict(path, ["file_name", "caption"])
    extra = [c for c in df.columns if c not in ("file_name", "caption")]
    long = df[["file_name", "caption", *extra]].reset_index(drop=True)
    lines = pd.Series(long.index.to_numpy() + 2)
    return drop_empty_captions(long, path, policy, lines).reset_index(drop=True)


def read_augmented(path: str | Path, train_file_names: Sequence[str], policy: Policy) -> pd.DataFrame:
    """Read LLM-augmented captions (``file_name,caption`` + provenance columns) for the training split.

    Rows are joined on ``file_name`` with the training clips; rows naming other clips are dropped and
    counted (they may belong to another split). None matching at all is an error.

    Returns:
        The matching rows with ``source = "augmented"`` and their provenance columns.
    """
    aug = read_long_captions(path, policy)
    known = aug["file_name"].isin(set(train_file_names))
    if not known.any():
        raise DataError(
            f"none of the {len(aug)} augmented captions in '{path}' names a clip of the training split. "
            "Was it made from another data set or split?"
        )
    if not known.all():
        log.warning(
            "%s: %d augmented caption(s) name clips outside the training split; ignored",
            path,
            int((~known).sum()),
        )
    aug = aug[known].copy()
    aug["source"] = "augmented"
    return aug.reset_index(drop=True)


def read_multi_positive(path: str | Path) -> pd.DataFrame:
    """Read DCASE 2025 multi-positive annotations: ``query,audio_filenames`` (a Python list literal).

    Returns:
        A table with ``query`` (str) and ``file_names`` (list of str) columns.
    """
    df = read_csv_strict(path, ["query", "audio_filenames"])
    names: list[list[str]] = []
    for line, cell in enumerate(df["audio_filenames"], start=2):
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError) as err:
            raise DataError(
                f"'{path}' line {line}: audio_filenames is not a list literal ({cell[:80]!r}): {err}"
            ) from err
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise DataError(f"'{path}' line {line}: audio_filenames must be a non-empty list of file names")
        names.append(value)
    return pd.DataFrame({"query": df["query"], "file_names": names})
