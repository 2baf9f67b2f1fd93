"""Caption tables: strict CSV reading and the long ``file_name, caption`` form every data set becomes.

A *caption table* is a ``pandas.DataFrame`` with one row per caption and the columns
``file_name`` (the clip's name exactly as in the metadata), ``caption``, ``audio_path`` (absolute
path of the clip) and ``source`` (``"original"`` or ``"augmented"``). Clips are identified by
``file_name``; all captions of a clip are positives of each other.

Every reader checks what it reads. A CSV that cannot be used as a whole (missing, undecodable,
unparseable, damaged, wrong columns, no rows) is always an error. A bad *row* follows the policy
``error`` (stop, naming the file, line and fix) or ``skip`` (drop it, warn, and record it for the skip
report, see ``CaptionRules``). A row is bad when its ``file_name`` is blank; when its caption is empty
or blank, holds a line break (the trace of an unclosed quote that swallowed the following lines) or a
control character, or is longer than ``max_caption_chars``; or when it repeats an earlier row exactly
(a duplicated caption would be counted twice in evaluation). Captions are kept as written: ``NA``,
``nan``, ``None`` and ``null`` are text, not missing values.
"""

from __future__ import annotations

import ast
import csv
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from lacoat.errors import DataError

log = logging.getLogger(__name__)

Policy = Literal["error", "skip"]
TABLE_COLUMNS = ["file_name", "caption", "audio_path", "source"]
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL; tab allowed
SKIP_HINT = (
    "Correct the CSV, or set data.on_bad_caption: skip to leave such rows out (they are then counted and "
    "listed in skipped.csv)."
)


@dataclass
class CaptionRules:
    """How the rows of caption CSVs are checked, and a record of the rows dropped under ``skip``.

    Attributes:
        policy: ``error`` stops at a bad row, naming its file, line and the fix; ``skip`` drops bad rows
            with a warning and records them in ``skipped``.
        max_caption_chars: longest caption accepted (None: no limit). Real captions are short (Clotho
            ≤ 126 characters, AudioCaps ≤ 292); a much longer one is almost always a broken row, e.g.
            several CSV lines merged by a stray quote. Captions longer than the text encoder's
            ``max_length`` tokens but under this limit are kept and truncated by the tokenizer.
        skipped: ``(where, reason)`` of every dropped row, ``where`` being ``CSV:LINE``.
    """

    policy: Policy = "error"
    max_caption_chars: int | None = 1000
    skipped: list[tuple[str, str]] = field(default_factory=list)


def caption_rules(rules: CaptionRules | Policy) -> CaptionRules:
    """``rules`` as ``CaptionRules`` (a bare policy gets the default checks)."""
    return rules if isinstance(rules, CaptionRules) else CaptionRules(policy=rules)


def read_csv_strict(path: str | Path, required: Sequence[str], encoding: str = "utf-8") -> pd.DataFrame:
    """Read a CSV as strings, exactly as written: no NaN conversion, no stripping, no re-encoding.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted. A header-only file gives an empty table.

    Raises:
        DataError: the file is missing, empty, damaged (NUL bytes), cannot be decoded or parsed, has
            rows with more fields than the header, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file not found: '{path}'. Check the data root or the path in your config.")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"CSV file '{path}' is empty; expected a header line with {list(required)}.")
    if b"\x00" in raw:  # the C parser would silently cut each field at the NUL
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise DataError(
            f"'{path}' holds NUL bytes (first on line {line}): it is damaged (e.g. a write cut by a crash) "
            "or saved as UTF-16. Restore it, or save it as UTF-8."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                encoding=encoding,
                index_col=False,  # never take a first column as the index: rows would shift silently
            )
    except UnicodeDecodeError as err:
        raise DataError(
            f"cannot decode '{path}' as {encoding} ({err}). Save it as UTF-8 "
            "(Clotho's clotho_metadata_*.csv files are ISO-8859-1: pass that encoding)."
        ) from err
    except (pd.errors.ParserWarning, pd.errors.ParserError) as err:
        line = _first_long_row(path, encoding)  # pandas warns when the first row is too long, else fails
        if line is not None:
            raise DataError(
                f"'{path}' line {line} has more fields than the header: a caption or file name with a "
                'comma must be quoted ("a dog barks, then stops"), and lines must not end with a comma.'
            ) from err
        raise DataError(f"cannot parse CSV '{path}': {err}. Check quoting and the header line.") from err
    except pd.errors.EmptyDataError as err:
        raise DataError(f"cannot parse CSV '{path}': {err}. Check the header line.") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"'{path}' lacks column(s) {missing}; it has {list(df.columns)}. "
            f"Expected a header with {list(required)}."
        )
    return df


def _first_long_row(path: Path, encoding: str) -> int | None:
    """Line number of the first row with more fields than the header (None if there is none)."""
    try:
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.reader(f)
            width = len(next(reader, []))
            for row in reader:
                if len(row) > width:
                    return reader.line_num
    except csv.Error:
        pass
    return None


def record_lines(path: str | Path, n_rows: int, encoding: str = "utf-8") -> pd.Series:
    """The CSV line (header = line 1) on which each of the ``n_rows`` data rows starts.

    Quoted fields may span lines and blank lines are skipped, so row ``i`` is not always on line
    ``i + 2``; messages and the skip report name the line a user finds in an editor.
    """
    starts: list[int] = []
    try:
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.reader(f)
            next(reader, None)
            end = reader.line_num
            for row in reader:
                if len(row) > 1 or (row and row[0].strip()):  # pandas skips blank lines
                    starts.append(end + 1)
                end = reader.line_num
    except (csv.Error, UnicodeDecodeError):
        starts = []
    if len(starts) != n_rows:  # read differently from pandas: fall back to one line per row
        return pd.Series(np.arange(n_rows) + 2)
    return pd.Series(starts)


def require_rows(df: pd.DataFrame, path: str | Path) -> None:
    """Raise if a caption CSV has a header but no rows."""
    if df.empty:
        raise DataError(
            f"'{path}' has a header but no rows; fill it in or point the config at the right file."
        )


def repeated_lines(df: pd.DataFrame, columns: Sequence[str], lines: pd.Series) -> np.ndarray:
    """For each row, the line of the earlier row it repeats in ``columns`` (0 where it repeats none)."""
    repeat = df.duplicated(subset=list(columns), keep="first").to_numpy()
    if not repeat.any():
        return np.zeros(len(df), dtype=np.int64)
    group = df.groupby(list(columns), sort=False).ngroup().to_numpy()
    first = pd.Series(lines.to_numpy()).groupby(group).transform("first").to_numpy()
    return np.where(repeat, first, 0)


def caption_problem(
    file_name: str, caption: str, max_caption_chars: int | None, name: str = "caption"
) -> str:
    """What is wrong with one row's ``file_name`` and caption (``""`` when nothing is).

    Args:
        file_name: the row's clip name.
        caption: the row's caption.
        max_caption_chars: longest caption accepted (None: no limit).
        name: the caption's column, for the message.
    """
    if not file_name.strip():
        return "file_name is blank"
    if caption == "":
        return f"{name} is empty"
    if not caption.strip():
        return f"{name} is blank (spaces only)"
    if "\n" in caption or "\r" in caption:
        return f"{name} holds a line break (an unclosed quote may have merged the lines after it)"
    control = CONTROL_CHARACTERS.search(caption)
    if control:
        return f"{name} holds control character U+{ord(control.group()):04X}"
    if max_caption_chars is not None and len(caption) > max_caption_chars:
        return (
            f"{name} has {len(caption)} characters, more than max_caption_chars={max_caption_chars} "
            "(a broken row? raise the limit if such captions are real)"
        )
    return ""


def drop_bad_rows(
    df: pd.DataFrame,
    path: str | Path,
    rules: CaptionRules | Policy,
    lines: pd.Series,
    fields: Sequence[str] | None = None,
    problems: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Check every row of a long caption table; drop the bad ones (``skip``) or raise (``error``).

    Args:
        df: long table with ``file_name`` and ``caption`` columns.
        path: the CSV the rows come from, for messages and the skip report.
        rules: policy and limits; under ``skip`` each dropped row is appended to ``rules.skipped``.
        lines: for each row of ``df``, its line number in the CSV (header = line 1).
        fields: for each row, the name of its caption column (default ``caption``).
        problems: problems the caller found already (e.g. a repeated row), ``""`` where none; they
            take precedence over the caption checks.

    Returns:
        The good rows, in order, index reset.

    Raises:
        DataError: under ``error``, at the first bad row: file, line, file_name, what is wrong, the fix.
    """
    rules = caption_rules(rules)
    given = [""] * len(df) if problems is None else problems
    columns = ["caption"] * len(df) if fields is None else fields
    found = np.array(
        [
            known or caption_problem(str(name), str(caption), rules.max_caption_chars, column)
            for known, name, caption, column in zip(
                given, df["file_name"], df["caption"], columns, strict=True
            )
        ],
        dtype=object,
    )
    bad = found != ""
    if not bad.any():
        return df.reset_index(drop=True)
    line_of = lines.to_numpy()
    names = df["file_name"].to_numpy()
    first = int(np.flatnonzero(bad)[0])
    if rules.policy == "error":
        raise DataError(
            f"'{path}' has {int(bad.sum())} bad row(s), first on line {line_of[first]} "
            f"(file_name '{names[first]}'): {found[first]}. {SKIP_HINT}"
        )
    for i in np.flatnonzero(bad):
        rules.skipped.append((f"{path}:{line_of[i]}", f"{found[i]} (file_name '{names[i]}')"))
    log.warning(
        "%s: skipped %d bad row(s), first on line %s: %s",
        path,
        int(bad.sum()),
        line_of[first],
        found[first],
    )
    return df[~bad].reset_index(drop=True)


def wide_to_long(
    df: pd.DataFrame, caption_columns: Sequence[str], lines: pd.Series | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """Turn ``file_name, caption_1..caption_n`` into one row per caption, clip-major order.

    Args:
        df: the wide table.
        caption_columns: its caption columns, in order.
        lines: the CSV line of each wide row (default: ``index + 2``, one line per row).

    Returns:
        The long table (``file_name``, ``caption``) and each row's CSV line number.
    """
    n = len(caption_columns)
    file_names = df["file_name"].repeat(n).to_numpy()
    captions = df[list(caption_columns)].to_numpy().reshape(-1)
    wide_lines = df.index.to_numpy() + 2 if lines is None else lines.to_numpy()
    return pd.DataFrame({"file_name": file_names, "caption": captions}), pd.Series(wide_lines.repeat(n))


def read_long_captions(
    path: str | Path, rules: CaptionRules | Policy, drop_repeats: bool = False
) -> pd.DataFrame:
    """Read a plain ``file_name,caption`` CSV (several rows per clip allowed) in file order.

    Args:
        path: the CSV.
        rules: policy and limits for bad rows (see the module docstring).
        drop_repeats: treat a row identical to an earlier one in every column as bad. Two annotators'
            identical captions of one clip stay apart through a column that tells them apart (an id).
    """
    df = read_csv_strict(path, ["file_name", "caption"])
    require_rows(df, path)
    extra = [c for c in df.columns if c not in ("file_name", "caption")]
    long = df[["file_name", "caption", *extra]].reset_index(drop=True)
    lines = record_lines(path, len(long))
    repeats = repeated_lines(long, long.columns, lines) if drop_repeats else np.zeros(len(long), np.int64)
    problems = np.where(repeats > 0, [f"repeats line {k}" for k in repeats], "")
    return drop_bad_rows(long, path, rules, lines, problems=problems)


def read_augmented(
    path: str | Path, train_file_names: Sequence[str], rules: CaptionRules | Policy
) -> pd.DataFrame:
    """Read LLM-augmented captions (``file_name,caption`` + provenance columns) for the training split.

    Rows are joined on ``file_name`` with the training clips; rows naming other clips are dropped and
    counted (they may belong to another split). None matching at all is an error.

    Returns:
        The matching rows with ``source = "augmented"`` and their provenance columns.
    """
    aug = read_long_captions(path, rules)
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
