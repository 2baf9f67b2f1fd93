"""Build or update a library index: every audio file under a folder, encoded by a trained model.

``build_index`` stores, per clip, the model's projected audio tokens and its bi-encoder embedding in
an ``IndexStore``. The index records the checkpoint's content fingerprint and model settings, so a
search with any other checkpoint is refused, never silently ranked by another model. Long recordings
are cut into segments of about ``segment_seconds`` (whole encoder windows), each indexed with its
offset: a result points at the moment in the recording, and memory per encoded clip does not depend
on a file's length. A file is the unit of resuming: an interrupted build keeps every finished file.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lacoat.errors import AudioReadError, LacoatError
from lacoat.retrieval.query_encoder import TRACED, save_query_encoder
from lacoat.retrieval.store import ClipVectors, IndexStore, path_id

if TYPE_CHECKING:
    from lacoat.models.matcher import AudioTextMatcher

from lacoat.checkpoints import checkpoint_file, checkpoint_fingerprint
from lacoat.data.folders import AUDIO_EXTENSIONS, probe, read_segments, scan_folder, segment_samples
from lacoat.models.factory import load_matcher

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What ``build_index`` did, in files (a long recording counts once, however many segments).

    Attributes:
        encoded: files encoded in this run; unchanged: files kept as they were; removed: files gone
            from the folder (or replaced with the index); skipped: reason → files not indexed;
            ignored: extension → number of files that are not audio; files / clips: in the index now;
            replaced: what an index of another checkpoint or folder held, when it was replaced.
    """

    encoded: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    ignored: Counter = field(default_factory=Counter)
    files: int = 0
    clips: int = 0
    replaced: str | None = None

    def counts(self) -> dict[str, int]:
        """Flat counts, for messages and tests."""
        return {
            "encoded": self.encoded,
            "unchanged": self.unchanged,
            "removed": self.removed,
            **{f"skipped {reason}": len(files) for reason, files in self.skipped.items()},
            "ignored": sum(self.ignored.values()),
            "files": self.files,
            "clips": self.clips,
        }


def _prepare_store(
    out: Path, folder: Path, checkpoint: Path, fingerprint: str, report: IndexReport
) -> IndexStore | None:
    """Open ``out`` for an incremental update, or None when a new index must be created there
    (replacing one of another checkpoint or folder: ``report.replaced`` says what it held)."""
    if out.is_file():
        raise LacoatError(
            f"--out '{out}' is a file; an index is a folder (one from an earlier lacoat version was a file): "
            "pass a new folder name, or delete the file."
        )
    if not IndexStore.is_index(out):
        if out.is_dir() and any(out.iterdir()):
            raise LacoatError(
                f"--out '{out}' is a folder that is not a lacoat index; pass a new (or empty) folder name."
            )
        return None
    store = IndexStore.open(out, write=True)
    meta = store.meta
    if meta["checkpoint_fingerprint"] == fingerprint and meta["audio_dir"] == str(folder):
        if meta["checkpoint"] != str(checkpoint):
            log.info(
                "checkpoint moved: %s -> %s (same fingerprint), recorded", meta["checkpoint"], checkpoint
            )
            store.set_meta(checkpoint=str(checkpoint))
        return store
    files = len(store.file_stats())
    why = "another checkpoint" if meta["checkpoint_fingerprint"] != fingerprint else "another folder"
    report.replaced = (
        f"replaced (built with {why}): {files} files of '{meta['audio_dir']}' encoded with "
        f"'{meta['checkpoint']}' (fingerprint {meta['checkpoint_fingerprint']})"
    )
    report.removed = files
    store.close()
    shutil.rmtree(out)
    return None


def index_meta(
    checkpoint: Path, folder: Path, matcher: AudioTextMatcher, settings: dict, segment_seconds: float
) -> dict:
    """What an index records about how it was made: checkpoint path and fingerprint, model settings,
    library folder, segment length, and the widths ``embed_dim`` (E) and ``token_dim`` (D) of its vectors."""
    import torch

    from lacoat.contracts import Tokens

    token_dim = matcher.audio_proj[0].out_features
    with torch.inference_mode():
        probe = Tokens(torch.zeros(1, 1, token_dim), torch.ones(1, 1, dtype=torch.bool))
        embed_dim = matcher.embed_audio(probe).shape[-1]
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_fingerprint": checkpoint_fingerprint(checkpoint),
        "model": settings,
        "audio_dir": str(folder),
        "segment_seconds": segment_seconds,
        "embed_dim": int(embed_dim),
        "token_dim": int(token_dim),
    }


class _Encoder:
    """Encodes clips in batches and commits each file once all its clips are encoded.

    A file is the unit of resuming: its clips reach the store together, in the first commit after
    its last one is encoded.
    """

    def __init__(
        self,
        matcher: AudioTextMatcher,
        store: IndexStore,
        stats: dict[str, tuple[int, int]],
        batch_size: int,
        report: IndexReport,
    ) -> None:
        self.matcher, self.store, self.stats, self.batch_size, self.report = (
            matcher,
            store,
            stats,
            batch_size,
            report,
        )
        self.pending: list[tuple[str, float, object]] = []  # (file, start s, AudioWindows)
        self.encoded: dict[str, list[ClipVectors]] = {}
        self.finished: list[str] = []

    def add(self, name: str, start: float, windows: object) -> None:
        """Queue one clip of ``name``, first encoding the queue if it is full (after the files
        queued so far were marked done, so that they are committed with it)."""
        if len(self.pending) >= self.batch_size:
            self.flush()
        self.pending.append((name, start, windows))

    def file_done(self, name: str) -> None:
        """All clips of ``name`` are queued; it is committed once they are encoded."""
        self.finished.append(name)

    def drop(self, name: str) -> None:
        """Forget the clips of a file that failed part-way."""
        self.pending = [p for p in self.pending if p[0] != name]
        self.encoded.pop(name, None)

    def flush(self) -> None:
        """Encode the queued clips, then commit every finished file."""
        from lacoat.data.collate import collate

        if self.pending:
            batch = collate(
                [{"audio": w.waveform, "valid_samples": w.valid_samples} for _, _, w in self.pending]
            )
            audio, valid = batch["audio"], batch["audio_valid"]  # [B, W, S], [B, W]
            feats = self.matcher.encode_audio(audio, valid)  # tokens [B, T, D], mask [B, T]
            emb = self.matcher.embed_audio(feats).numpy()  # [B, E]
            rate = self.matcher.audio_encoder.sample_rate
            for i, (name, start, _) in enumerate(self.pending):
                size, mtime = self.stats[name]
                self.encoded.setdefault(name, []).append(
                    ClipVectors(
                        file=name,
                        start=start,
                        duration=float(valid[i].sum()) / rate,
                        size=size,
                        mtime_ns=mtime,
                        embedding=emb[i],
                        tokens=feats.tokens[i][feats.mask[i]].numpy(),  # [T_valid, D]
                    )
                )
            self.pending = []
        self.store.add([clip for name in self.finished for clip in self.encoded.pop(name, [])])
        self.report.encoded += len(self.finished)
        self.finished = []


def build_index(
    checkpoint: str,
    audio_dir: str,
    out: str,
    batch_size: int = 8,
    segment_seconds: float = 30.0,
    min_seconds: float = 0.05,
    max_seconds: float = 24 * 3600.0,
    progress: bool | None = None,
) -> IndexReport:
    """Create or update the index folder ``out`` of every audio file under ``audio_dir``.

    Files whose size and modification time are unchanged since the last run with the same checkpoint
    and folder are kept; removed files are dropped; other files are encoded and committed batch by
    batch, so an interrupted build keeps its work and the next run encodes only the rest. An index
    of another checkpoint or folder at ``out`` is replaced (``report.replaced`` says what it held).

    Args:
        checkpoint: a .ckpt written by ``lacoat fit``.
        audio_dir: the library folder (searched recursively, links followed).
        out: index folder to create or update.
        batch_size: clips (files or segments) encoded at once; batches are grouped by length.
        segment_seconds: longer files are cut into segments of about this length (rounded down to
            whole encoder windows), each indexed with its offset; this bounds memory per clip.
        min_seconds: shorter files are skipped (``too short``).
        max_seconds: longer files are skipped (``too long``; default a day, which is hours to encode).
        progress: show a progress bar (None: when stderr is a terminal).

    Raises:
        LacoatError: missing folder or checkpoint, a folder without audio, ``out`` not an index,
            a value out of range.
    """
    import torch
    from tqdm import tqdm

    from lacoat.data.audio import cut_windows
    from lacoat.io import file_stat

    for name, value in (("batch_size", batch_size), ("segment_seconds", segment_seconds)):
        if value <= 0:
            raise LacoatError(f"--{name} must be positive, got {value}")
    folder, out_path = Path(audio_dir).resolve(), Path(out).resolve()
    if not folder.is_dir():
        raise LacoatError(f"audio folder not found: '{audio_dir}'")
    ckpt_path = checkpoint_file(checkpoint).resolve()
    fingerprint = checkpoint_fingerprint(ckpt_path)
    found = scan_folder(folder, exclude=out_path)
    if not found.audio and not found.broken:
        ignored = ", ".join(f"{n} {ext}" for ext, n in found.ignored.most_common(5))
        raise LacoatError(
            f"no audio files under '{audio_dir}'"
            + (f" (ignored: {ignored})" if ignored else " (the folder is empty)")
            + f"; formats read: {', '.join(sorted(AUDIO_EXTENSIONS))}. Nothing was indexed."
        )
    report = IndexReport(ignored=found.ignored)
    if found.broken:
        report.skipped["broken link"] = found.broken
    store = _prepare_store(out_path, folder, ckpt_path, fingerprint, report)
    stats = {name: file_stat(folder / name) for name in found.audio}
    ids = {name: path_id(name) for name in found.audio}
    known: dict[int, tuple[int, int]] = {}
    if store is not None:
        known = store.file_stats()  # all a re-index reads of the index: ~30 bytes a file
        gone = sorted(set(known) - set(ids.values()))
        changed = [ids[n] for n in stats if ids[n] in known and known[ids[n]] != stats[n]]
        report.removed = len(gone)
        store.remove(gone + changed)
    todo = [n for n in found.audio if known.get(ids[n]) != stats[n]]
    report.unchanged = len(found.audio) - len(todo)

    probed = []
    for name in todo:
        reason, duration = probe(folder / name, min_seconds, max_seconds)
        if reason is None:
            probed.append((duration, name))
        else:
            report.skipped.setdefault(reason, []).append(name)
    probed.sort()  # by length: a batch holds clips of similar length, so little padding

    matcher, settings = load_matcher(ckpt_path, "audio") if probed or store is None else (None, None)
    if store is None:
        store = IndexStore.create(out_path, index_meta(ckpt_path, folder, matcher, settings, segment_seconds))
    if not (out_path / TRACED).is_file():  # queries then need no transformers (query_encoder.py)
        save_query_encoder(load_matcher(ckpt_path, "text")[0].text_encoder, out_path, fingerprint)
    if probed:
        encoder = matcher.audio_encoder
        encode = _Encoder(matcher, store, stats, batch_size, report)
        bar = tqdm(  # counts milliseconds of audio, shown as seconds: whole steps, no float drift
            total=sum(round(d * 1000) for d, _ in probed),
            unit="s",
            unit_scale=0.001,
            desc="encoding (s of audio)",
            disable=None if progress is None else not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with torch.inference_mode(), bar:
            for duration, name in probed:
                try:
                    for start, wave in read_segments(
                        folder / name, encoder.sample_rate, segment_samples(encoder, segment_seconds)
                    ):
                        encode.add(
                            name, start / encoder.sample_rate, cut_windows(wave, encoder.window_samples)
                        )
                    encode.file_done(name)
                except AudioReadError as err:
                    log.warning("skipped: %s", err)
                    encode.drop(name)
                    report.skipped.setdefault("unreadable", []).append(name)
                bar.update(round(duration * 1000))
                bar.set_postfix_str(f"{report.encoded}/{len(probed)} files committed", refresh=False)
            encode.flush()
            bar.set_postfix_str(f"{report.encoded}/{len(probed)} files committed")
    if store.dead_fraction() > 0.5:
        store.compact()
    report.files = report.unchanged + report.encoded
    report.clips = store.clip_count()
    store.close()
    return report
