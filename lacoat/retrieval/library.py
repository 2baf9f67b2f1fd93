"""Search a sound library: an incremental index of audio features and two-stage text search.

``build_index`` encodes every file under a folder that the audio reader can decode (see
``AUDIO_EXTENSIONS``) and stores, per clip, the model's projected audio tokens and its bi-encoder
embedding in an ``IndexStore`` (a folder read lazily). The index records the checkpoint's content
fingerprint and model settings: a search with any other checkpoint is refused, never silently
ranked by another model.

Long recordings are cut into segments of about ``segment_seconds`` (whole encoder windows), each
indexed with its offset, rather than skipped: a result then points at the moment in the recording,
a clip's embedding describes a stretch of sound the size the model was trained on, and memory and
time per encoded item do not depend on a file's length. Files are read as a stream (block by
block, resampled by a streaming resampler), so a file is never held whole in memory either.

A search embeds the query, lets the bi-encoder shortlist ``rerank_k`` clips (one matrix product
over the memory-mapped embeddings) and re-scores them with the co-attention cascade; the rest
follow just below, in bi-encoder order (``after_shortlist``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from argparse import ArgumentError
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lacoat.defaults import RERANK_K
from lacoat.errors import AudioReadError, LacoatError
from lacoat.retrieval.query_encoder import TRACED, load_query_encoder, save_query_encoder
from lacoat.retrieval.store import ClipVectors, IndexStore, path_id

if TYPE_CHECKING:
    from torch import Tensor, nn

    from lacoat.models.matcher import AudioTextMatcher

log = logging.getLogger(__name__)

# file-name extensions of the formats libsndfile decodes (soundfile.available_formats(): WAV, AIFF,
# AU, FLAC, OGG (Vorbis, Opus), MP3, CAF, W64, RF64, ...); RAW is left out: it has no header to check
AUDIO_EXTENSIONS = frozenset(
    [
        ".wav",
        ".wave",
        ".bwf",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".snd",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".caf",
        ".w64",
        ".rf64",
        ".avr",
        ".htk",
        ".iff",
        ".svx",
        ".8svx",
        ".mat",
        ".mpc",
        ".paf",
        ".pvf",
        ".sd2",
        ".sds",
        ".sf",
        ".ircam",
        ".voc",
        ".nist",
        ".sph",
        ".wve",
        ".xi",
    ]
)


@dataclass
class SearchHit:
    """One search result.

    Attributes:
        rank: 1 = best.
        score: fused co-attention score (a cosine-like value; monotone in rank).
        file: path relative to the library folder.
        path: absolute path.
        start: offset of the clip in the file (s; 0 unless a long recording was cut into segments).
        duration: clip duration (s).
    """

    rank: int
    score: float
    file: str
    path: str
    start: float
    duration: float


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


# ---- checkpoints -------------------------------------------------------------------------------
def checkpoint_fingerprint(path: str | Path) -> str:
    """Content fingerprint of a checkpoint: size plus its first and last MiB.

    A checkpoint is a zip archive whose central directory, at its end, holds a CRC-32 of every
    stored tensor, so any change of weights changes the last MiB; hashing those is enough and keeps
    ``lacoat search`` fast for large checkpoints.
    """
    from lacoat.io import file_fingerprint

    return file_fingerprint(_checkpoint_path(path))


def _checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise LacoatError(f"checkpoint {what}: '{path}'. Pass a .ckpt file written by `lacoat fit`.")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The contents of a checkpoint written by ``lacoat fit`` (memory-mapped tensors, no Lightning).

    Raises:
        LacoatError: missing, not a PyTorch file, or without the model settings ``lacoat fit`` stores.
    """
    import torch

    path = _checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip or format errors of a file that is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LacoatError(
            f"'{path}' is not a checkpoint written by `lacoat fit` ({first[:200]}); pass its .ckpt file."
        ) from err
    if not isinstance(ckpt, dict) or "matcher" not in ckpt.get("hyper_parameters", {}):
        raise LacoatError(
            f"'{path}' holds no lacoat model settings (hyper_parameters.matcher); pass a .ckpt file "
            "written by `lacoat fit`."
        )
    return ckpt


def model_settings(ckpt: dict) -> dict:
    """The settings an index records: the matcher's configuration and the score fusion weight."""
    hparams = ckpt["hyper_parameters"]
    return {"matcher": hparams["matcher"], "fusion_alpha": float(hparams.get("fusion_alpha", 0.0))}


def _absent(dim: int) -> nn.Module:
    """Stands in for the encoder a task does not run (search needs no audio encoder, indexing no
    text encoder): it only tells the matcher its width, and keeps a heavy import from happening."""
    from torch import nn

    module = nn.Module()
    module.dim = dim
    return module


def _class(class_path: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _instantiate(config: object) -> object:
    """Build a ``{"class_path": ..., "init_args": {...}}`` configuration (nested), as LightningCLI did."""
    if isinstance(config, dict) and "class_path" in config:
        return _class(config["class_path"])(
            **{k: _instantiate(v) for k, v in config.get("init_args", {}).items()}
        )
    return config


def load_matcher(
    checkpoint: str | Path, side: Literal["audio", "text", "both", "none"]
) -> tuple[AudioTextMatcher, dict]:
    """The matcher of a checkpoint, in eval mode on the CPU.

    Args:
        checkpoint: a .ckpt written by ``lacoat fit``.
        side: ``audio`` builds the audio encoder only (indexing), ``text`` the text encoder only
            (search): the other is a placeholder of the same width and its weights are not loaded;
            ``both`` builds both (attention maps), ``none`` neither (search with a saved text encoder).

    Returns:
        The matcher and ``model_settings`` of the checkpoint.
    """
    from lacoat.checkpoints import REBUILT, restore_rebuilt_encoders

    ckpt = read_checkpoint(checkpoint)
    settings = model_settings(ckpt)
    skip = {
        "audio": ("text_encoder",),
        "text": ("audio_encoder",),
        "both": (),
        "none": ("audio_encoder", "text_encoder"),
    }[side]
    config = settings["matcher"]
    if "text_encoder" not in skip:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar says nothing to a user
    try:
        init = {k: _instantiate(v) for k, v in config["init_args"].items() if k not in skip}
        for name in skip:
            init[name] = _absent(
                ckpt["state_dict"][f"matcher.{name.removesuffix('_encoder')}_proj.0.weight"].shape[1]
            )
        matcher = _class(config["class_path"])(**init)
        # frozen encoders a checkpoint leaves out are rebuilt from their source, which must be unchanged
        built = {
            f"matcher.{n}": getattr(matcher, n) for n in ("audio_encoder", "text_encoder") if n not in skip
        }
        view = {
            "state_dict": dict(ckpt["state_dict"]),
            REBUILT: {k: v for k, v in ckpt.get(REBUILT, {}).items() if k in built},
        }
        restore_rebuilt_encoders(view, built)
        state = {
            k.removeprefix("matcher."): v
            for k, v in view["state_dict"].items()
            if k.startswith("matcher.") and not any(k.startswith(f"matcher.{n}.") for n in skip)
        }
        missing, unexpected = matcher.load_state_dict(state, strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError, ImportError, AttributeError) as err:
        raise LacoatError(
            f"cannot rebuild the model of '{checkpoint}' from its settings ({err}); was it written by this "
            "lacoat version's `lacoat fit`?"
        ) from err
    if missing or unexpected:
        raise LacoatError(
            f"the weights of '{checkpoint}' do not fit its model settings (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); pass a checkpoint written by `lacoat fit`."
        )
    return matcher.eval(), settings


def load_model(checkpoint: str | Path):
    """The whole ``LacoatModule`` of a checkpoint written by ``lacoat fit``, in eval mode on the CPU
    (``lacoat explain``; an index and a search need only ``load_matcher``, which skips Lightning)."""
    from lacoat.module import LacoatModule

    path = Path(checkpoint)
    read_checkpoint(path)  # a clear error for a missing or foreign file
    try:
        model = LacoatModule.load_from_checkpoint(str(path), map_location="cpu")
    except (KeyError, TypeError, ValueError, ArgumentError) as err:  # jsonargparse: hparams incomplete
        raise LacoatError(
            f"cannot rebuild the model from '{path}': {err}. Was it written by `lacoat fit`?"
        ) from err
    return model.eval()


# ---- the library folder ------------------------------------------------------------------------
@dataclass
class _Scan:
    """Files under a library folder: audio candidates, broken links, ignored extensions."""

    audio: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def scan_folder(folder: Path, exclude: Path | None = None) -> _Scan:
    """Walk ``folder`` (following links to folders, each folder once however many links lead to it;
    ``exclude``, e.g. the index itself, left out)."""
    found = _Scan()
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: a link loop ends here
    for root, dirs, names in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if exclude is None or Path(root, d).resolve() != exclude)
        for name in names:
            path = Path(root, name)
            rel = str(path.relative_to(folder))
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                found.ignored[path.suffix.lower() or "(no extension)"] += 1
            elif path.is_symlink() and not path.exists():
                found.broken.append(rel)
            elif path.is_file():
                found.audio.append(rel)
    found.audio.sort()
    return found


def _probe(path: Path, min_seconds: float, max_seconds: float) -> tuple[str | None, float]:
    """``(skip reason or None, duration in s)`` of a file, from its header."""
    from lacoat.data.audio import audio_info

    if not os.access(path, os.R_OK):
        return "permission", 0.0
    try:
        info = audio_info(path)
    except AudioReadError as err:
        log.warning("skipped: %s", err)
        return "unreadable", 0.0
    except PermissionError:
        return "permission", 0.0
    duration = info.frames / info.samplerate
    if duration < min_seconds:
        return "too short", duration
    if duration > max_seconds:
        return "too long", duration
    return None, duration


def segment_samples(encoder: nn.Module, segment_seconds: float) -> int:
    """Samples of a segment: ``segment_seconds`` rounded down to whole windows of ``encoder`` (≥ 1)."""
    return max(1, math.floor(segment_seconds / encoder.window_seconds)) * encoder.window_samples


def read_segments(
    path: Path, sample_rate: int, segment_samples: int, block_seconds: float = 4.0
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream a file as mono float32 segments at ``sample_rate``: ``(start sample, [S_i] samples)``.

    Segments are ``segment_samples`` long, except the last, which takes the rest: between half and
    one and a half segments (a file shorter than that is one segment). The file is read in blocks of
    ``block_seconds`` and resampled with soxr's streaming resampler, so memory stays bounded.

    Raises:
        AudioReadError: the stream cannot be decoded or holds NaN or infinite samples.
    """
    import soundfile as sf
    import soxr

    def decoded() -> Iterator[np.ndarray]:
        with sf.SoundFile(str(path)) as handle:
            resampler = (
                soxr.ResampleStream(handle.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
                if handle.samplerate != sample_rate
                else None
            )
            for block in handle.blocks(
                blocksize=int(block_seconds * handle.samplerate), dtype="float32", always_2d=True
            ):
                mono = block.mean(axis=1)  # [T]
                yield mono if resampler is None else resampler.resample_chunk(mono)
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    pending: list[np.ndarray] = []
    held, start = 0, 0
    try:
        for chunk in decoded():
            if not np.all(np.isfinite(chunk)):
                raise AudioReadError(f"audio file '{path}' decodes to NaN or infinite samples; re-encode it.")
            pending.append(chunk)
            held += len(chunk)
            while held >= 2 * segment_samples:  # the rest is long enough to stand alone
                wave = np.concatenate(pending)
                yield start, wave[:segment_samples]
                pending, held, start = (
                    [wave[segment_samples:]],
                    held - segment_samples,
                    start + segment_samples,
                )
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioReadError(
            f"cannot decode audio file '{path}' ({err}); it is corrupt or truncated."
        ) from err
    wave = np.concatenate(pending) if pending else np.zeros(0, dtype=np.float32)
    if held > 1.5 * segment_samples:
        yield start, wave[:segment_samples]
        start, wave = start + segment_samples, wave[segment_samples:]
    if len(wave):
        yield start, wave


# ---- building ----------------------------------------------------------------------------------
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

    from lacoat.models.matcher import Tokens

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
    ckpt_path = _checkpoint_path(checkpoint).resolve()
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
        reason, duration = _probe(folder / name, min_seconds, max_seconds)
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


# ---- searching ---------------------------------------------------------------------------------
class Library:
    """An index opened for searching, with the text side of its model loaded once (``lacoat search``
    runs one query; ``lacoat serve`` keeps a ``Library`` for every request).

    Args:
        index: index folder written by ``build_index``.
        checkpoint: the checkpoint, when it is no longer where the index says (it must be the same
            file: its fingerprint is checked).

    Raises:
        LacoatError: the index is missing, unreadable or empty; the checkpoint is missing or is not
            the one the index was built with.
    """

    def __init__(self, index: str | Path, checkpoint: str | Path | None = None) -> None:
        import torch

        self.store = IndexStore.open(index)
        meta = self.store.meta
        ckpt = Path(checkpoint if checkpoint is not None else meta["checkpoint"])
        redo = f"lacoat index --ckpt CKPT --audio_dir '{meta['audio_dir']}' --out '{index}'"
        if checkpoint is None and not ckpt.is_file():
            raise LacoatError(
                f"the checkpoint index '{index}' was built with is gone from '{ckpt}': if it moved, pass "
                f"its new path with --ckpt PATH; otherwise re-index with `{redo}`."
            )
        fingerprint = checkpoint_fingerprint(ckpt)
        if fingerprint != meta["checkpoint_fingerprint"]:
            raise LacoatError(
                f"checkpoint '{ckpt}' (fingerprint {fingerprint}) is not the one index '{index}' was built "
                f"with (fingerprint {meta['checkpoint_fingerprint']}; overwritten, or another model): pass "
                f"the original with --ckpt PATH, or re-index with `{redo}`."
            )
        self.clips = self.store.clips()
        if not len(self.clips):
            raise LacoatError(
                f"index '{index}' holds no clips; check the audio folder and re-run `lacoat index`."
            )
        self.folder, self.checkpoint = Path(meta["audio_dir"]), ckpt
        traced = load_query_encoder(Path(index), fingerprint)
        if traced is not None:
            self.matcher, settings = load_matcher(ckpt, "none")
            self.matcher.text_encoder = traced
        else:
            self.matcher, settings = load_matcher(ckpt, "text")
        self.fusion_alpha = settings["fusion_alpha"]
        emb = np.asarray(self.store.embeddings()[self.clips.emb_row], dtype=np.float32)
        self.embeddings = torch.from_numpy(emb)  # [N, E]; tokens stay on disk until shortlisted

    def close(self) -> None:
        """Close the index."""
        self.store.close()

    def indexed_file(self, file: str) -> Path | None:
        """The absolute path of ``file`` (relative to the library) if the index holds it, else None:
        only indexed files are ever served, so no path outside the library can be asked for."""
        return self.folder / file if self.store.holds(file) else None

    def _gallery(self, rows: list[int]):
        """Stored tokens of clips ``rows`` as one padded ``Tokens`` batch ``[K, T_max, D]``."""
        import torch

        from lacoat.models.matcher import Tokens

        tokens = self.store.token_matrix()
        parts = []
        for i in rows:
            start, count = int(self.clips.tok_start[i]), int(self.clips.tok_count[i])
            block = torch.from_numpy(np.asarray(tokens[start : start + count], dtype=np.float32))  # [T_i, D]
            parts.append(Tokens(block[None], torch.ones(1, count, dtype=torch.bool)))
        return Tokens.cat(parts)

    def scores(self, query: str, rerank_k: int) -> Tensor:
        """Two-stage scores ``[N]`` of every clip for ``query`` (monotone, no internal offset)."""
        import torch

        from lacoat.models.matcher import after_shortlist

        with torch.inference_mode():
            text = self.matcher.encode_text([query])
            bi = self.matcher.embed_text(text) @ self.embeddings.T  # [1, N]
            if self.matcher.cascade is None:
                return bi[0]
            shortlist = bi[0].topk(min(rerank_k, bi.shape[1])).indices  # [K]
            gallery = self._gallery(shortlist.tolist())
            co = self.matcher.score_candidates(text, gallery, torch.arange(len(shortlist))[None])  # [1, K]
            in_list = torch.zeros_like(bi, dtype=torch.bool)
            in_list[0, shortlist] = True
            fused = torch.zeros_like(bi)
            fused[0, shortlist] = co[0].float() + self.fusion_alpha * bi[0, shortlist]
            return after_shortlist(fused, bi, in_list, dim=1)[0]  # the rest just below, in order

    def search(self, query: str, k: int = 10, rerank_k: int = RERANK_K) -> list[SearchHit]:
        """The ``k`` best clips for ``query``: bi-encoder shortlist of ``rerank_k``, co-attention re-score.

        Raises:
            LacoatError: an empty query, ``k`` or ``rerank_k`` below 1.
        """
        check_query(query, k, rerank_k)
        scores = self.scores(query, rerank_k)
        top = scores.topk(min(k, len(scores)))
        described = self.store.describe(self.clips.id[top.indices.numpy()].tolist())
        return [
            SearchHit(
                rank=r + 1,
                score=round(float(s), 6),
                file=file,
                path=str(self.folder / file),
                start=round(start, 3),
                duration=round(duration, 3),
            )
            for r, (s, (file, start, duration)) in enumerate(zip(top.values.tolist(), described, strict=True))
        ]


def check_query(query: str, k: int, rerank_k: int) -> None:
    """Raise ``LacoatError`` for an empty query or a result count below 1."""
    if not query.strip():
        raise LacoatError(
            'the query is empty; type what the sound should be, e.g. "a dog barks in the rain".'
        )
    if k < 1:
        raise LacoatError(f"-k must be at least 1 (results to show), got {k}")
    if rerank_k < 1:
        raise LacoatError(
            f"--rerank_k must be at least 1 (clips re-scored with co-attention), got {rerank_k}"
        )


def search(
    index_path: str, query: str, k: int = 10, rerank_k: int = RERANK_K, checkpoint: str | None = None
) -> list[SearchHit]:
    """One query against an index (opens it and loads its model: use ``Library`` for many queries)."""
    check_query(query, k, rerank_k)
    library = Library(index_path, checkpoint)
    try:
        return library.search(query, k, rerank_k)
    finally:
        library.close()
