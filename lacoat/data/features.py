"""Feature cache: frozen-encoder outputs on disk, so training and evaluation skip the encoders.

A frozen encoder gives the same tokens for the same input in every epoch; with CLAP's HTSAT that is
most of a training step's time. ``lacoat extract`` runs the frozen encoders once per split and stores
their outputs here; the DataModule then serves tokens instead of audio or text.

Layout under the cache folder (``data.feature_cache``)::

    audio-<key>/info.json                  encoder identity and data settings the key was made from
    audio-<key>/<split>/shard-00000.pt     {"names", "stats", "lengths", "tokens" fp16 [sum, D], "mask"}
    audio-<key>/<split>/manifest.json      written last: complete, counts, skipped clips
    text-<key>/...                         the same for caption token states (names = caption texts)

``key`` hashes the encoder's ``identity()`` (class, settings, weights fingerprint) and, for audio, the
rate and window settings, so changing any of them points at another folder. Audio items store every
window of a clip (``W * tokens_per_window`` tokens and their mask); a window-local encoder (CLAP) lets
the datasets cut windows from them as from audio. Each shard records the size and modification time of
its files, so a changed file makes the shard stale. Shards are written atomically; an interrupted
``extract`` keeps its finished shards and a re-run does only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lacoat.data.audio import window_run
from lacoat.errors import AudioReadError, DataError
from lacoat.io import atomic_torch_save, atomic_write, file_stat

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
Side = str  # "audio" | "text"


def cache_key(side: Side, identity: str, settings: dict) -> str:
    """Folder name of the features of one encoder configuration: ``<side>-<16 hex digits>``."""
    blob = json.dumps({"v": FORMAT_VERSION, "identity": identity, "settings": settings}, sort_keys=True)
    return f"{side}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class CacheSpec:
    """Where the features of one encoder configuration live, and what they were made from.

    Attributes:
        root: the cache folder (``data.feature_cache``).
        side: ``audio`` or ``text``.
        identity: the encoder's ``identity()``.
        settings: data settings that change the features (rate, window length, ...).
    """

    root: Path
    side: Side
    identity: str
    settings: dict

    @property
    def folder(self) -> Path:
        return self.root / cache_key(self.side, self.identity, self.settings)

    def split_dir(self, split: str) -> Path:
        return self.folder / split

    def write_info(self) -> None:
        """Record identity and settings beside the features (read back to explain mismatches)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = {
            "version": FORMAT_VERSION,
            "side": self.side,
            "identity": self.identity,
            "settings": self.settings,
        }
        with atomic_write(self.folder / "info.json", "w") as f:
            json.dump(info, f, indent=1)

    def others(self) -> list[str]:
        """Descriptions of the other configurations cached for this side under ``root``."""
        found = []
        for info in sorted(self.root.glob(f"{self.side}-*/info.json")):
            if info.parent == self.folder:
                continue
            try:
                data = json.loads(info.read_text())
                found.append(f"{data['identity']} {data['settings']}")
            except (OSError, ValueError, KeyError):
                found.append(f"{info.parent.name} (unreadable info.json)")
        return found


def shard_path(split_dir: Path, i: int) -> Path:
    return split_dir / f"shard-{i:05d}.pt"


def load_shard(path: Path) -> dict:
    """Load one shard (memory-mapped), with a clear error for a damaged file."""
    try:
        shard = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if not isinstance(shard, dict) or {"names", "lengths", "tokens", "mask"} - shard.keys():
            raise ValueError("not a lacoat feature shard")
    except Exception as err:  # truncated zip, foreign file, ...
        raise DataError(
            f"feature cache file '{path}' is damaged ({type(err).__name__}: {err}). Delete it and run "
            "`lacoat extract` again with the same config: it re-encodes only the missing shards."
        ) from err
    return shard


def pack_shard(names: list[str], stats: list[tuple[int, int]], items: list[tuple[Tensor, Tensor]]) -> dict:
    """One shard from per-item ``(tokens [L, D], mask [L])``; tokens stored as fp16, concatenated."""
    return {
        "names": names,
        "stats": torch.tensor(stats, dtype=torch.long).reshape(len(names), 2),
        "lengths": torch.tensor([len(t) for t, _ in items], dtype=torch.long),
        "tokens": torch.cat([t.to(torch.float16) for t, _ in items]),
        "mask": torch.cat([m.to(torch.bool) for _, m in items]),
    }


def save_shard(path: Path, shard: dict) -> None:
    atomic_torch_save(shard, path)


def read_manifest(split_dir: Path) -> dict | None:
    path = split_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise DataError(
            f"feature cache manifest '{path}' is damaged ({err}); run `lacoat extract` again."
        ) from err


def write_manifest(split_dir: Path, manifest: dict) -> None:
    with atomic_write(split_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)


class FeatureStore:
    """Read access to the cached features of one split: ``store[name] -> (tokens [L, D] fp16, mask [L])``.

    Args:
        spec: which encoder configuration.
        split: the split's folder name (e.g. ``development``).
        expected: name → file path of every item the split needs (audio), or the needed caption texts;
            each must be cached (or listed as skipped) and, for audio, unchanged since extraction.

    Raises:
        DataError: the cache is incomplete, stale or damaged; the message says which and what to run.
    """

    def __init__(self, spec: CacheSpec, split: str, expected: dict[str, str | None]) -> None:
        self.spec, self.split = spec, split
        split_dir = spec.split_dir(split)
        manifest = read_manifest(split_dir)
        if manifest is None or not manifest.get("complete"):
            raise DataError(
                f"the {spec.side} feature cache of split '{split}' in '{split_dir}' is incomplete (an "
                "interrupted `lacoat extract`?). Run `lacoat extract --config …` again to finish it, or "
                "remove data.feature_cache to encode online."
            )
        self.skipped: dict[str, str] = dict(manifest.get("skipped", {}))
        self._where: dict[str, tuple[int, int, int]] = {}  # name -> (shard, offset, length)
        self._shards: list[dict] = []
        stale = []
        for i in range(manifest["shards"]):
            shard = load_shard(shard_path(split_dir, i))
            offsets = torch.cumsum(shard["lengths"], 0) - shard["lengths"]
            for j, name in enumerate(shard["names"]):
                self._where[name] = (i, int(offsets[j]), int(shard["lengths"][j]))
                path = expected.get(name)
                if (
                    path is not None
                    and Path(path).is_file()
                    and tuple(shard["stats"][j].tolist()) != file_stat(path)
                ):
                    stale.append(path)
            self._shards.append(shard)
        if stale:
            raise DataError(
                f"{len(stale)} file(s) of split '{split}' changed after their features were cached "
                f"(first: '{stale[0]}'). Run `lacoat extract --config …` again: it re-encodes the shards "
                "that hold them."
            )
        missing = [n for n in expected if n not in self._where and n not in self.skipped]
        if missing:
            raise DataError(
                f"{len(missing)} {spec.side} item(s) of split '{split}' are not in the feature cache "
                f"'{split_dir}' (first: {missing[0]!r}); the data changed since extraction. Run "
                "`lacoat extract --config …` again."
            )

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __getitem__(self, name: str) -> tuple[Tensor, Tensor]:
        i, offset, length = self._where[name]
        shard = self._shards[i]
        return shard["tokens"][offset : offset + length], shard["mask"][offset : offset + length]


def audio_spec(
    root: str | Path, encoder, sample_rate: int, window_seconds: float, min_last_window: float
) -> CacheSpec:
    """``CacheSpec`` of an audio encoder reading windows cut with these settings."""
    settings = {
        "sample_rate": sample_rate,
        "window_seconds": window_seconds,
        "min_last_window": min_last_window,
    }
    return CacheSpec(Path(root), "audio", encoder.identity(), settings)


def text_spec(root: str | Path, encoder) -> CacheSpec:
    """``CacheSpec`` of a text encoder."""
    return CacheSpec(Path(root), "text", encoder.identity(), {})


@dataclass
class CachedFeatures:
    """The cached sides of one split, as dataset items.

    Attributes:
        audio: clip tokens keyed by ``file_name`` (None: read and encode audio online).
        text: caption tokens keyed by the caption text (None: encode text online).
        tokens_per_window: T of the audio encoder (to cut windows out of a clip's tokens).
    """

    audio: FeatureStore | None
    text: FeatureStore | None
    tokens_per_window: int = 1

    def audio_item(self, name: str, max_windows: int | None, rng=None) -> dict[str, Tensor]:
        """``audio_tokens [w*T, D]`` and ``audio_mask [w*T]`` of clip ``name``, windows chosen as on audio.

        Raises:
            AudioReadError: the clip was skipped at extraction (unreadable then).
        """
        if name not in self.audio:
            raise AudioReadError(
                f"clip '{name}' has no cached features: {self.audio.skipped.get(name, 'unknown')}"
            )
        tokens, mask = self.audio[name]
        t = self.tokens_per_window
        first, count = window_run(len(tokens) // t, max_windows, rng)
        span = slice(first * t, (first + count) * t)
        return {"audio_tokens": tokens[span], "audio_mask": mask[span]}

    def text_item(self, caption: str) -> dict[str, Tensor]:
        """``text_tokens [L, D]`` and ``text_mask [L]`` of ``caption``."""
        tokens, mask = self.text[caption]
        return {"text_tokens": tokens, "text_mask": mask}
