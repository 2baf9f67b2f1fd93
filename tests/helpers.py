"""Small generators of test fixtures (audio files, CSVs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_tone(
    path: str | Path,
    seconds: float = 0.5,
    sample_rate: int = 16000,
    channels: int = 1,
    freq: float = 440.0,
    fmt: str | None = None,
) -> np.ndarray:
    """Write a sine tone (one channel per column) and return the samples written ``[T, C]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    data = np.stack([0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1)
    sf.write(str(path), data.astype(np.float32), sample_rate, format=fmt)
    return data
