"""The audio files of a library folder: which to index, and each read as a stream of segments.

``scan_folder`` walks a folder for files the audio reader can decode (``AUDIO_EXTENSIONS``);
``read_segments`` streams one file (block by block, through a streaming resampler) as segments of
whole encoder windows, so a long recording is neither held whole in memory nor skipped.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lacoat.errors import AudioReadError

if TYPE_CHECKING:
    from torch import nn


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
class Scan:
    """Files under a library folder: audio candidates, broken links, ignored extensions."""

    audio: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def scan_folder(folder: Path, exclude: Path | None = None) -> Scan:
    """Walk ``folder`` (following links to folders, each folder once however many links lead to it;
    ``exclude``, e.g. the index itself, left out)."""
    found = Scan()
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


def probe(path: Path, min_seconds: float, max_seconds: float) -> tuple[str | None, float]:
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
