"""On-disk store of a library index: a folder read lazily, updated in place, safe to kill.

Layout of the folder ``INDEX``:

* ``index.sqlite`` — table ``clips``: one row per indexed clip (a whole file, or one segment of a
  long recording): relative path, segment start and duration, and where its vectors lie; table
  ``files``: one narrow row per file (a 64-bit hash of its path, its size and mtime), which is all
  a re-index reads to find what changed (~30 bytes a file, against ~8.5 KB of vectors a clip);
  table ``meta``: checkpoint fingerprint, model settings, library folder, vector widths, counts.
* ``embeddings.G.f16`` — bi-encoder embeddings, raw float16 ``[R, E]``, one row per clip stored;
* ``tokens.G.f16`` — projected audio tokens, raw float16 ``[T, D]``, each clip a run of rows
  (``G``: the files' generation, raised by each ``compact``).

The two vector files are append-only and memory-mapped: the first stage of a search reads the
embedding matrix (one matrix product), the re-rank reads only its shortlist's tokens. A re-index
appends what it encodes and updates rows in SQLite, so its cost follows what changed, not the
library's size. Every batch is committed as it is encoded: vectors are appended first, then one
SQLite transaction records the rows and the committed lengths; opening for writing cuts the vector
files back to those lengths, so a killed build leaves a valid index and the next run continues.

Rows of removed or re-encoded files stay in the vector files as dead space until ``compact`` (run
by a build when dead rows exceed the live ones) writes the live ones to files of the next
generation; the database switches to them in one transaction, then the old files are deleted.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lacoat.errors import LacoatError

STORE_VERSION = 3
DB = "index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,      -- path_id(relative path)
    size INTEGER NOT NULL,       -- size and mtime when encoded: unchanged files are kept
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL,    -- files.id
    file TEXT NOT NULL,          -- path relative to the library folder
    start REAL NOT NULL,         -- segment start in the file (s)
    duration REAL NOT NULL,      -- segment duration (s)
    emb_row INTEGER NOT NULL,    -- row of embeddings.G.f16
    tok_start INTEGER NOT NULL,  -- first row of tokens.G.f16
    tok_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS clips_file ON clips (file_id);
"""


def path_id(name: str) -> int:
    """A file's key in the index: 64-bit BLAKE2b of its relative path, as a signed SQLite integer
    (a collision among a million files has odds of about 3e-8)."""
    return int.from_bytes(
        hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
        "little",
        signed=True,
    )


@dataclass
class ClipVectors:
    """What a build stores for one clip (a file or a segment of it).

    Attributes:
        file: path relative to the library.
        start: segment start (s); 0 for a whole file.
        duration: segment duration (s).
        size, mtime_ns: the file's stat when it was read.
        embedding: ``[E]`` bi-encoder embedding.
        tokens: ``[T_valid, D]`` projected audio tokens (valid ones only).
    """

    file: str
    start: float
    duration: float
    size: int
    mtime_ns: int
    embedding: np.ndarray
    tokens: np.ndarray


@dataclass
class Clips:
    """Where the vectors of the live clips lie, in row order (what a search ranks); ``describe``
    gives the names of the few it shows.

    Attributes:
        id: ``[N]`` clip ids; emb_row: ``[N]`` rows of the embedding file;
        tok_start, tok_count: ``[N]`` token runs.
    """

    id: np.ndarray
    emb_row: np.ndarray
    tok_start: np.ndarray
    tok_count: np.ndarray

    def __len__(self) -> int:
        return len(self.id)


class IndexStore:
    """An index folder: metadata in SQLite, vectors in memory-mapped float16 files.

    Open with ``IndexStore.open`` (an existing index) or ``IndexStore.create`` (a new one).
    """

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.db = db
        self._clips: Clips | None = None

    # ---- opening ------------------------------------------------------------------------------
    @staticmethod
    def is_index(path: str | Path) -> bool:
        """Whether ``path`` is an index folder."""
        return (Path(path) / DB).is_file()

    @classmethod
    def open(cls, path: str | Path, write: bool = False) -> IndexStore:
        """Open the index folder ``path``; for writing, uncommitted vector bytes are cut off.

        Raises:
            LacoatError: ``path`` is missing, not an index, of another version, or unreadable.
        """
        path = Path(path)
        if not path.exists():
            raise LacoatError(
                f"index not found: '{path}'. Build it with `lacoat index --ckpt CKPT --audio_dir DIR --out {path}`."
            )
        if not cls.is_index(path):
            what = "a file" if path.is_file() else "a folder without index.sqlite"
            raise LacoatError(
                f"'{path}' is {what}, not a lacoat index (an index is a folder; one from an earlier lacoat "
                "version was a single file): rebuild it with `lacoat index --out NEW_FOLDER`."
            )
        uri = f"file:{path / DB}{'' if write else '?mode=ro'}"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)  # callers serialise (serve: a lock)
            version = db.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()
        except sqlite3.DatabaseError as err:
            raise LacoatError(f"cannot read index '{path}' ({err}); rebuild it with `lacoat index`.") from err
        if version is None or json.loads(version[0]) != STORE_VERSION:
            raise LacoatError(
                f"'{path}' is an index of another lacoat version; rebuild it with `lacoat index`."
            )
        store = cls(path, db)
        if write:
            store._cut_uncommitted()
        return store

    @classmethod
    def create(cls, path: str | Path, meta: dict) -> IndexStore:
        """A new, empty index in folder ``path`` (which must not exist, or be empty)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path / DB)
        with db:
            db.executescript(_SCHEMA)
            meta = {
                **meta,
                "store_version": STORE_VERSION,
                "emb_rows": 0,
                "tok_rows": 0,
                "clips": 0,
                "generation": 0,
            }
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        store = cls(path, db)
        for kind in ("embeddings", "tokens"):
            store._vector_file(kind, 0).touch()
        return store

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    # ---- metadata -----------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        """Everything in the ``meta`` table (decoded JSON values)."""
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values: object) -> None:
        """Update ``meta`` entries (committed at once)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )

    def file_stats(self) -> dict[int, tuple[int, int]]:
        """``{path_id(file): (size, mtime_ns)}`` of every indexed file."""
        return {i: (s, m) for i, s, m in self.db.execute("SELECT id, size, mtime_ns FROM files")}

    def holds(self, file: str) -> bool:
        """Whether ``file`` (relative path) has clips in the index."""
        query = "SELECT 1 FROM clips WHERE file_id = ? AND file = ? LIMIT 1"
        return self.db.execute(query, (path_id(file), file)).fetchone() is not None

    def _vector_file(self, kind: str, generation: int | None = None) -> Path:
        """``embeddings`` or ``tokens`` file of ``generation`` (default: the current one)."""
        generation = self.meta["generation"] if generation is None else generation
        return self.path / f"{kind}.{generation}.f16"

    # ---- writing ------------------------------------------------------------------------------
    def _cut_uncommitted(self) -> None:
        """Truncate the vector files to their committed lengths and delete other generations' files
        (what a killed build or compaction left)."""
        meta = self.meta
        for kind, rows, width in (
            ("embeddings", meta["emb_rows"], meta["embed_dim"]),
            ("tokens", meta["tok_rows"], meta["token_dim"]),
        ):
            current = self._vector_file(kind, meta["generation"])
            with open(current, "r+b") as handle:
                handle.truncate(rows * width * 2)
            for stale in self.path.glob(f"{kind}.*.f16"):
                if stale != current:
                    stale.unlink()

    def add(self, clips: list[ClipVectors]) -> None:
        """Append ``clips`` (all clips of their files) and commit them: vectors first, then their
        rows in one transaction."""
        if not clips:
            return
        meta = self.meta
        emb_rows, tok_rows = meta["emb_rows"], meta["tok_rows"]
        rows = []
        emb_path, tok_path = self._vector_file("embeddings"), self._vector_file("tokens")
        with open(emb_path, "ab") as emb_file, open(tok_path, "ab") as tok_file:
            for i, clip in enumerate(clips):
                emb_file.write(np.ascontiguousarray(clip.embedding, dtype=np.float16).tobytes())
                tok_file.write(np.ascontiguousarray(clip.tokens, dtype=np.float16).tobytes())
                rows.append(
                    (
                        path_id(clip.file),
                        clip.file,
                        clip.start,
                        clip.duration,
                        emb_rows + i,
                        tok_rows,
                        len(clip.tokens),
                    )
                )
                tok_rows += len(clip.tokens)
        with self.db:
            self.db.executemany(
                "INSERT INTO clips (file_id, file, start, duration, emb_row, tok_start, tok_count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            files = {path_id(c.file): (c.size, c.mtime_ns) for c in clips}
            self.db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?)", [(i, s, m) for i, (s, m) in files.items()]
            )
            values = {
                "emb_rows": emb_rows + len(clips),
                "tok_rows": tok_rows,
                "clips": meta["clips"] + len(clips),
            }
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )
        self._clips = None

    def remove(self, file_ids: list[int]) -> int:
        """Forget the files ``file_ids`` (their vectors become dead space); returns the clips removed."""
        with self.db:
            removed = sum(
                self.db.execute("DELETE FROM clips WHERE file_id = ?", (i,)).rowcount for i in file_ids
            )
            self.db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in file_ids])
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clips', ?)", (json.dumps(self.meta["clips"] - removed),)
            )
        self._clips = None
        return removed

    def clip_count(self) -> int:
        """Number of live clips."""
        return self.meta["clips"]

    def dead_fraction(self) -> float:
        """Share of the embedding file's rows that no live clip uses."""
        total = self.meta["emb_rows"]
        return 0.0 if total == 0 else 1.0 - self.clip_count() / total

    def compact(self) -> None:
        """Rewrite the vector files with live clips only, as the next generation (crash-safe)."""
        clips, generation = self.clips(), self.meta["generation"]
        emb, tok = self.embeddings(), self.token_matrix()
        new_tok_start = np.concatenate([[0], np.cumsum(clips.tok_count)[:-1]]).astype(np.int64)
        with open(self._vector_file("embeddings", generation + 1), "wb") as handle:
            handle.write(np.ascontiguousarray(emb[clips.emb_row]).tobytes())
        with open(self._vector_file("tokens", generation + 1), "wb") as handle:
            for start, count in zip(clips.tok_start.tolist(), clips.tok_count.tolist(), strict=True):
                handle.write(np.ascontiguousarray(tok[start : start + count]).tobytes())
        ids = clips.id.tolist()
        with self.db:  # one transaction switches rows and generation together
            self.db.executemany(
                "UPDATE clips SET emb_row = ?, tok_start = ? WHERE id = ?",
                zip(range(len(ids)), new_tok_start.tolist(), ids, strict=True),
            )
            values = {
                "emb_rows": len(ids),
                "tok_rows": int(clips.tok_count.sum()),
                "generation": generation + 1,
            }
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )
        for kind in ("embeddings", "tokens"):
            self._vector_file(kind, generation).unlink()
        self._clips = None

    # ---- reading ------------------------------------------------------------------------------
    def clips(self) -> Clips:
        """Where the live clips' vectors lie, in row order (read once, then cached)."""
        if self._clips is None:
            rows = self.db.execute(
                "SELECT id, emb_row, tok_start, tok_count FROM clips ORDER BY id"
            ).fetchall()
            table = np.asarray(rows, dtype=np.int64).reshape(-1, 4)  # [N, 4]
            self._clips = Clips(*(np.ascontiguousarray(table[:, c]) for c in range(4)))
        return self._clips

    def describe(self, ids: list[int]) -> list[tuple[str, float, float]]:
        """``(file, start, duration)`` of the clips ``ids``, in that order."""
        query = "SELECT file, start, duration FROM clips WHERE id = ?"
        return [self.db.execute(query, (int(i),)).fetchone() for i in ids]

    def _memmap(self, kind: str) -> np.ndarray:
        meta = self.meta
        rows, width = (
            (meta["emb_rows"], meta["embed_dim"])
            if kind == "embeddings"
            else (meta["tok_rows"], meta["token_dim"])
        )
        if rows == 0:
            return np.zeros((0, width), dtype=np.float16)
        return np.memmap(
            self._vector_file(kind, meta["generation"]), dtype=np.float16, mode="r", shape=(rows, width)
        )

    def embeddings(self) -> np.ndarray:
        """All embedding rows (live and dead), memory-mapped ``[R, E]`` float16."""
        return self._memmap("embeddings")

    def token_matrix(self) -> np.ndarray:
        """All token rows, memory-mapped ``[T, D]`` float16."""
        return self._memmap("tokens")
