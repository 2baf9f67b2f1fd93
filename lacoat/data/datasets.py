"""Torch datasets over caption tables: training pairs, evaluation clips, evaluation queries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lacoat.data.audio import AudioWindows, cut_windows, read_audio
from lacoat.data.features import CachedFeatures
from lacoat.data.table import Policy
from lacoat.data.twins import twin_comparisons
from lacoat.errors import AudioReadError, DataError
from lacoat.negatives.audio_edits import frame_samples, sounding_runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioLoader:
    """Reads a clip and cuts it into windows for the audio encoder.

    Attributes:
        sample_rate: encoder rate (Hz).
        window_seconds: window length (s).
        max_windows: windows kept per clip; None keeps all.
        min_last_window: drop a trailing partial window shorter than this fraction of a window.
        max_shift_seconds: with an ``rng`` (training), start the clip up to this much later, skipping
            samples of its leading quiet stretch only (``quiet_lead``), so its sounds fall on another
            token grid each time it is read; 0 reads every clip from its first sample.
    """

    sample_rate: int
    window_seconds: float
    max_windows: int | None = None
    min_last_window: float = 0.0
    max_shift_seconds: float = 0.0

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_seconds)

    @property
    def random(self) -> bool:
        """Whether reading a clip draws from an ``rng`` (a random run of windows, a random start)."""
        return self.max_windows is not None or self.max_shift_seconds > 0

    def load(self, path: str, rng: np.random.Generator | None = None) -> AudioWindows:
        """Read ``path`` into ``AudioWindows``; ``rng`` (training) picks a random start within the
        leading quiet (``max_shift_seconds``), then a random run of windows."""
        wave = read_audio(path, self.sample_rate)
        if rng is not None and self.max_shift_seconds > 0:
            most = min(round(self.max_shift_seconds * self.sample_rate), quiet_lead(wave, self.sample_rate))
            wave = wave[int(rng.integers(0, most + 1)) :]
        return cut_windows(wave, self.window_samples, self.max_windows, self.min_last_window, rng)


def quiet_lead(wave: np.ndarray, sample_rate: int) -> int:
    """Samples before the first sounding 10-ms frame (``lacoat.negatives.audio_edits.sounding_runs``): what a
    training read may skip without cutting into a sound. 0 for a clip without a quiet start.

    Shape:
        wave: ``[T]``.
    """
    runs = sounding_runs(torch.from_numpy(wave), frame_samples(sample_rate))
    return runs[0][0] if runs else 0


class PairDataset(Dataset):
    """Training pairs: one item per caption, with the index of its clip (same clip = positive).

    Args:
        table: caption table (``caption``, ``audio_path`` columns).
        clip_index: ``[len(table)]`` clip identity of each row.
        loader: audio reader.
        on_bad_audio: ``skip`` returns a marker ``{"skipped": path, "reason": message}`` for an
            unreadable clip (``collate`` drops it from the batch and lists it); ``error`` raises.
        seed: seed of the random window choice and start shift.
        features: cached encoder outputs to serve instead of audio and/or text (``lacoat extract``).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        clip_index: np.ndarray,
        loader: AudioLoader,
        on_bad_audio: Policy,
        seed: int = 0,
        features: CachedFeatures | None = None,
    ) -> None:
        self.captions = table["caption"].tolist()
        self.names = table["file_name"].tolist()
        self.features = features
        self.paths = table["audio_path"].tolist()
        self.clip_index = clip_index
        self.loader = loader
        self.on_bad_audio = on_bad_audio
        self.generator = torch.Generator().manual_seed(seed)  # used in the main process (no workers)

    def _rng(self) -> np.random.Generator | None:
        """Random source for window choice and start shift: a worker's torch RNG (seeded by the
        DataLoader's generator) or, without workers, this dataset's own generator. Both follow from
        the seed."""
        if not self.loader.random:
            return None
        in_worker = torch.utils.data.get_worker_info() is not None
        draw = torch.randint(0, 2**31 - 1, (1,), generator=None if in_worker else self.generator)
        return np.random.default_rng(int(draw))

    def __len__(self) -> int:
        return len(self.captions)

    def state_dict(self) -> dict[str, Tensor]:
        """The window-choice generator's state (saved with a stateful loader's position)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        cached = self.features
        try:
            if cached is not None and cached.audio is not None:
                item = cached.audio_item(self.names[i], self.loader.max_windows, self._rng())
            else:
                windows = self.loader.load(self.paths[i], self._rng())
                item = {"audio": windows.waveform, "valid_samples": windows.valid_samples}
        except AudioReadError as err:
            return bad_clip(self.paths[i], err, self.on_bad_audio, "training")
        if cached is not None and cached.text is not None:
            item |= cached.text_item(self.captions[i])
        return item | {
            "caption": self.captions[i],
            "clip_index": int(self.clip_index[i]),
            "audio_path": self.paths[i],
        }


def bad_clip(path: str, err: AudioReadError, policy: Policy, role: str) -> dict[str, str]:
    """A clip that failed to load while making a batch: the skip marker, or the error with its fix."""
    if policy == "error":
        raise AudioReadError(
            f"{err} (met while loading a {role} batch; set data.on_bad_audio: skip to leave such clips "
            "out and list them in skipped.csv)"
        ) from err
    log.warning("skipped %s clip: %s", role, err)
    return {"skipped": path, "reason": str(err)}


class ClipDataset(Dataset):
    """Evaluation gallery: each unique clip once, deterministic windows.

    Args:
        paths: audio files.
        loader: audio reader.
        names: the clips' ``file_name`` (keys of cached features).
        features: cached encoder outputs; when they hold audio, tokens are served instead of audio.
        on_bad_audio: ``skip`` returns a skip marker for an unreadable clip (see ``PairDataset``);
            the clip then drops out of the evaluation with its captions; ``error`` raises.
    """

    def __init__(
        self,
        paths: list[str],
        loader: AudioLoader,
        names: list[str] | None = None,
        features: CachedFeatures | None = None,
        on_bad_audio: Policy = "error",
    ) -> None:
        self.paths = paths
        self.loader = loader
        self.names = names
        self.on_bad_audio = on_bad_audio
        self.features = features if features is not None and features.audio is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            if self.features is not None:
                item = self.features.audio_item(self.names[i], self.loader.max_windows)
            else:
                windows = self.loader.load(self.paths[i])
                item = {"audio": windows.waveform, "valid_samples": windows.valid_samples}
        except AudioReadError as err:
            return bad_clip(self.paths[i], err, self.on_bad_audio, "evaluation")
        return item | {"clip_index": i, "audio_path": self.paths[i]}


class QueryDataset(Dataset):
    """Evaluation queries (caption texts), with their cached token states when ``features`` hold text."""

    def __init__(self, texts: list[str], features: CachedFeatures | None = None) -> None:
        self.texts = texts
        self.features = features if features is not None and features.text is not None else None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"caption": self.texts[i], "query_index": i}
        return item | self.features.text_item(self.texts[i]) if self.features is not None else item


@dataclass
class EvalSet:
    """An evaluation split: unique clips, text queries and which clips each query should find.

    Attributes:
        clips: one row per clip (``file_name``, ``audio_path``), in first-seen order.
        queries: one row per query: ``text``, ``group`` (``caption``: the split's own captions, one
            relevant clip each; ``multi``: multi-positive annotations) and ``relevant`` (clip indices).
        twins: the twin comparisons (``query``, ``clip``, ``twin``, ``change``) where the data has a
            SynthCaps events manifest (``lacoat.data.twins``), else None.
    """

    clips: pd.DataFrame
    queries: pd.DataFrame
    twins: pd.DataFrame | None = None

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        multi_positive: pd.DataFrame | None = None,
        twin_specs: list[dict] | None = None,
    ) -> EvalSet:
        """Build from a caption table, optionally adding DCASE 2025 multi-positive queries and the twin
        comparisons of a SynthCaps manifest's clip specifications."""
        clips = table.drop_duplicates("file_name")[["file_name", "audio_path"]].reset_index(drop=True)
        index = {name: i for i, name in enumerate(clips["file_name"])}
        queries = pd.DataFrame(
            {
                "text": table["caption"].to_numpy(),
                "group": "caption",
                "relevant": [[index[n]] for n in table["file_name"]],
            }
        )
        if multi_positive is not None:
            unknown = sorted({n for names in multi_positive["file_names"] for n in names if n not in index})
            if unknown:
                raise DataError(
                    f"multi-positive annotations name {len(unknown)} clip(s) that are not in this split "
                    f"(first: {unknown[:3]}). Use the annotations of the same split, or skip fewer clips."
                )
            multi = pd.DataFrame(
                {
                    "text": multi_positive["query"].to_numpy(),
                    "group": "multi",
                    "relevant": [[index[n] for n in names] for names in multi_positive["file_names"]],
                }
            )
            queries = pd.concat([queries, multi], ignore_index=True)
        twins = twin_comparisons(clips, queries, twin_specs) if twin_specs is not None else None
        return cls(clips=clips, queries=queries, twins=twins)

    def groups(self) -> list[str]:
        """Query groups present (``caption``, and ``multi`` when annotations were given)."""
        return list(dict.fromkeys(self.queries["group"]))

    def relevance(self, group: str | None = "caption") -> torch.Tensor:
        """``[Q_group, N]`` bool: whether clip n is relevant to query q of ``group`` (None: all queries).

        Its transpose is the audio→text relevance (for ``caption``: a clip's own captions).
        """
        rows = self.queries if group is None else self.queries[self.queries["group"] == group]
        rel = torch.zeros(len(rows), len(self.clips), dtype=torch.bool)
        for q, clips in enumerate(rows["relevant"]):
            rel[q, clips] = True
        return rel

    def query_indices(self, group: str = "caption") -> torch.Tensor:
        """Positions in ``queries`` of the rows of ``group``."""
        return torch.as_tensor(np.flatnonzero(self.queries["group"].to_numpy() == group))
