"""Audio I/O: read, mix to mono, resample, cut into fixed windows.

A clip becomes ``AudioWindows``: ``waveform [W, S]`` (W windows of S samples) and
``valid_samples [W]`` (how many samples of each window are real audio, the rest is zero padding).
Encoders derive frame masks from ``valid_samples`` at their own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from lacoat.errors import AudioReadError


@dataclass(frozen=True)
class AudioWindows:
    """A clip cut into fixed-length windows.

    Attributes:
        waveform: ``[W, S]`` float32 samples, zero-padded at the end of the last window.
        valid_samples: ``[W]`` int64, number of real samples in each window (≥ 1).
    """

    waveform: np.ndarray
    valid_samples: np.ndarray


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file, read without decoding; raises ``AudioReadError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise AudioReadError(f"audio file not found: '{path}'. Check the data root and the file name.")
    if path.is_dir():
        raise AudioReadError(f"'{path}' is a folder, not an audio file. Check the file_name in the CSV.")
    if not path.is_file():
        raise AudioReadError(
            f"'{path}' is not a regular file (a device or pipe?); copy the audio file there."
        )
    if path.stat().st_size == 0:
        raise AudioReadError(f"audio file is empty (0 bytes): '{path}'. Re-download or remove this clip.")
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        raise AudioReadError(
            f"cannot read audio file '{path}' ({err}). It is corrupt or in a format soundfile "
            "cannot decode (wav, flac, ogg, mp3 are supported); re-download or convert it."
        ) from err
    if info.frames == 0:
        raise AudioReadError(f"audio file holds no samples: '{path}'. Re-download or remove this clip.")
    return info


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate``.

    Channels are averaged; the file's rate is converted with soxr (high quality). Silence is valid
    audio (a clip of zeros is returned as it is); a WAV file cut short after its header is read up to
    where it stops (libsndfile's behaviour), while a cut FLAC or OGG stream fails to decode.

    Returns:
        ``[T]`` float32 samples.

    Raises:
        AudioReadError: the file is missing, a folder, empty, corrupt, in a format soundfile cannot
            decode, holds no samples, or decodes to NaN or infinite values; the message names it.
    """
    path = Path(path)
    audio_info(path)
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except Exception as err:
        raise AudioReadError(
            f"cannot decode audio file '{path}' ({err}). It is corrupt or truncated; re-download it."
        ) from err
    if data.shape[0] == 0:
        raise AudioReadError(f"audio file holds no samples: '{path}'. Re-download or remove this clip.")
    wave = data.mean(axis=1)  # [T]
    if file_rate != sample_rate:
        wave = soxr.resample(wave, file_rate, sample_rate, quality="HQ")
    if not np.all(np.isfinite(wave)):
        raise AudioReadError(f"audio file '{path}' decodes to NaN or infinite samples; re-encode it.")
    return np.ascontiguousarray(wave, dtype=np.float32)


def window_run(
    n_windows: int, max_windows: int | None, rng: np.random.Generator | None = None
) -> tuple[int, int]:
    """``(first, count)`` of the windows kept from ``n_windows``: all, the first ``max_windows``
    (evaluation), or a random run of them drawn with ``rng`` (training). ``cut_windows`` makes this
    choice on audio, the feature cache on cached tokens, so both agree."""
    if max_windows is None or n_windows <= max_windows:
        return 0, n_windows
    first = 0 if rng is None else int(rng.integers(0, n_windows - max_windows + 1))
    return first, max_windows


def cut_windows(
    wave: np.ndarray,
    window_samples: int,
    max_windows: int | None = None,
    min_last_window: float = 0.0,
    rng: np.random.Generator | None = None,
) -> AudioWindows:
    """Cut a mono signal into consecutive, non-overlapping windows.

    Args:
        wave: ``[T]`` samples.
        window_samples: S, samples per window.
        max_windows: keep at most this many windows (None: all).
        min_last_window: drop a trailing partial window shorter than this fraction of S, unless it is
            the only one (a short clip always gives one padded window).
        rng: when ``max_windows`` cuts, pick the first kept window at random with it (training);
            None keeps the first windows (evaluation is deterministic).

    Returns:
        ``AudioWindows`` with ``waveform [W, S]`` and ``valid_samples [W]``.
    """
    if window_samples <= 0:
        raise ValueError(f"window_samples must be positive, got {window_samples}")
    total = len(wave)
    n_windows = max(1, math.ceil(total / window_samples))
    last_len = total - (n_windows - 1) * window_samples
    if n_windows > 1 and last_len < min_last_window * window_samples:
        n_windows -= 1
    first, n_windows = window_run(n_windows, max_windows, rng)
    padded = np.zeros(((first + n_windows) * window_samples,), dtype=np.float32)
    kept = wave[: len(padded)]
    padded[: len(kept)] = kept
    windows = padded.reshape(-1, window_samples)[first:]  # [W, S]
    starts = np.arange(first, first + n_windows) * window_samples
    valid = np.clip(total - starts, 0, window_samples).astype(np.int64)
    return AudioWindows(waveform=np.ascontiguousarray(windows), valid_samples=valid)
