"""Durable answers: a SQLite file that keeps every accepted answer as soon as it arrives.

Answers are keyed by ``(model, prompt_hash, caption, n)``: a re-run, or a run after a crash or a
kill, finds them and asks only for the rest; another model, prompt or ``n`` asks anew. Each answer is
committed on its own in WAL mode, so a killed process loses at most the requests in flight. Captions
that could not be paraphrased are recorded in ``failures`` (and asked again by the next run).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lacoat.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    model TEXT NOT NULL, prompt_hash TEXT NOT NULL, caption TEXT NOT NULL, n INTEGER NOT NULL,
    paraphrases TEXT NOT NULL,  -- JSON array of n strings
    backend TEXT NOT NULL, raw TEXT NOT NULL, attempts INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (model, prompt_hash, caption, n)
);
CREATE TABLE IF NOT EXISTS failures (
    model TEXT NOT NULL, prompt_hash TEXT NOT NULL, caption TEXT NOT NULL, n INTEGER NOT NULL,
    reason TEXT NOT NULL, attempts INTEGER NOT NULL, partial TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (model, prompt_hash, caption, n)
);
"""


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Answer:
    """An accepted answer: ``n`` paraphrases of one caption and where they came from."""

    caption: str
    paraphrases: list[str]
    backend: str
    raw: str
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    created_at: str


class AnswerStore:
    """The SQLite file of answers and failures of one or more ``lacoat augment`` runs.

    Args:
        path: the database file (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: one commit per write
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.DatabaseError) as err:
            raise DataError(
                f"cannot open the answer store '{self.path}': {err}. Pass another --store path, "
                "or remove the file if it is not a lacoat answer store."
            ) from err

    def answers(self, model: str, prompt_hash: str, n: int) -> dict[str, Answer]:
        """Every stored answer for this model, prompt and ``n``, by caption."""
        rows = self.db.execute(
            "SELECT caption, paraphrases, backend, raw, attempts, prompt_tokens, completion_tokens, "
            "created_at FROM answers WHERE model = ? AND prompt_hash = ? AND n = ?",
            (model, prompt_hash, n),
        )
        return {
            row[0]: Answer(row[0], json.loads(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])
            for row in rows
        }

    def put(self, model: str, prompt_hash: str, n: int, answer: Answer) -> None:
        """Store an accepted answer (committed at once) and clear an earlier failure of its caption."""
        key = (model, prompt_hash, answer.caption, n)
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *key,
                json.dumps(answer.paraphrases, ensure_ascii=False),
                answer.backend,
                answer.raw,
                answer.attempts,
                answer.prompt_tokens,
                answer.completion_tokens,
                answer.created_at,
            ),
        )
        self.db.execute(
            "DELETE FROM failures WHERE model = ? AND prompt_hash = ? AND caption = ? AND n = ?", key
        )
        self.db.execute("COMMIT")

    def put_failure(
        self,
        model: str,
        prompt_hash: str,
        n: int,
        caption: str,
        reason: str,
        attempts: int,
        partial: list[str],
    ) -> None:
        """Record that ``caption`` got no acceptable answer (``partial``: the paraphrases that passed)."""
        self.db.execute(
            "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model,
                prompt_hash,
                caption,
                n,
                reason,
                attempts,
                json.dumps(partial, ensure_ascii=False),
                now(),
            ),
        )

    def failures(self, model: str, prompt_hash: str, n: int) -> dict[str, tuple[str, int]]:
        """``caption -> (reason, attempts)`` of the recorded failures for this model, prompt and ``n``."""
        rows = self.db.execute(
            "SELECT caption, reason, attempts FROM failures WHERE model = ? AND prompt_hash = ? AND n = ?",
            (model, prompt_hash, n),
        )
        return {caption: (reason, attempts) for caption, reason, attempts in rows}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
