"""``lacoat extract``: run a config's frozen encoders over its splits once and cache their outputs.

Work is cut into shards of ``shard_size`` items in a fixed order; each finished shard is written
atomically, so a killed run keeps what it finished and a re-run encodes only the rest (or shards whose
files changed since). The split's ``manifest.json`` is written last: until then the cache reads as
incomplete and is never used. See ``lacoat.data.features`` for the layout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lacoat.data.collate import collate
from lacoat.data.datamodule import RetrievalDataModule
from lacoat.data.datasets import AudioLoader, ClipDataset
from lacoat.data.features import (
    CacheSpec,
    audio_spec,
    load_shard,
    pack_shard,
    save_shard,
    shard_path,
    text_spec,
    write_manifest,
)
from lacoat.errors import DataError
from lacoat.io import file_stat
from lacoat.models.encoders.base import AudioEncoder, TextEncoder

log = logging.getLogger(__name__)

Encoded = tuple[Tensor, Tensor]  # (tokens [L, D], mask [L]) of one item


@dataclass
class SplitReport:
    """What ``extract_split`` did for one split and side."""

    side: str
    split: str
    items: int
    encoded: int = 0
    reused: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def audio_batches(
    encoder: AudioEncoder, loader: AudioLoader, batch_size: int, num_workers: int, device: torch.device
) -> Callable[[list[str]], Iterator[dict[int, Encoded | str]]]:
    """A function encoding clip paths in batches; yields ``{position: (tokens, mask) | error}``."""

    def run(paths: list[str]) -> Iterator[dict[int, Encoded | str]]:
        clips = ClipDataset(paths, loader, on_bad_audio="skip")  # unreadable clips come back as markers
        reader = DataLoader(clips, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
        position = {path: i for i, path in enumerate(paths)}
        t = encoder.tokens_per_window
        for batch in reader:
            out: dict[int, Encoded | str] = {position[path]: reason for path, reason in batch["skipped"]}
            if "clip_index" in batch:
                valid = batch["audio_valid"]
                with torch.inference_mode():
                    tokens, mask = encoder(batch["audio"].to(device), valid.to(device))  # [B, W*T, D]
                for row, pos in enumerate(batch["clip_index"].tolist()):
                    length = int((valid[row] > 0).sum()) * t  # the clip's own windows
                    out[pos] = (tokens[row, :length].cpu(), mask[row, :length].cpu())
            yield out

    return run


def text_batches(
    encoder: TextEncoder, batch_size: int, device: torch.device
) -> Callable[[list[str]], Iterator[dict[int, Encoded | str]]]:
    """A function encoding caption texts in batches; yields ``{position: (tokens, mask)}`` (valid tokens)."""

    def run(texts: list[str]) -> Iterator[dict[int, Encoded | str]]:
        for start in range(0, len(texts), batch_size):
            with torch.inference_mode():
                tokens, mask = encoder(texts[start : start + batch_size])  # [b, L, D], [b, L]
            out: dict[int, Encoded | str] = {}
            for row in range(len(tokens)):
                keep = mask[row].cpu()
                out[start + row] = (tokens[row].cpu()[keep], keep[keep])
            yield out

    return run


def extract_split(
    spec: CacheSpec,
    split: str,
    names: list[str],
    paths: list[str] | None,
    encode: Callable[[list[str]], Iterator[dict[int, Encoded | str]]],
    shard_size: int = 256,
    on_bad_audio: str = "skip",
) -> SplitReport:
    """Cache the features of ``names`` (clip file names with their ``paths``, or caption texts).

    Finished shards whose items and file stats match are kept; the others are encoded again.

    Raises:
        DataError: an unreadable clip with ``on_bad_audio="error"`` (shards finished so far are kept).
    """
    start_time = time.perf_counter()
    split_dir = spec.split_dir(split)
    split_dir.mkdir(parents=True, exist_ok=True)
    spec.write_info()
    (split_dir / "manifest.json").unlink(missing_ok=True)  # incomplete until this run ends
    report = SplitReport(spec.side, split, len(names))
    n_shards = math.ceil(len(names) / shard_size)
    for stale in split_dir.glob("shard-*.pt"):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    bar = tqdm(total=len(names), desc=f"{spec.side} {split}", unit="item", leave=False)
    for i in range(n_shards):
        chunk = names[i * shard_size : (i + 1) * shard_size]
        chunk_paths = paths[i * shard_size : (i + 1) * shard_size] if paths is not None else None
        stats = [file_stat(p) if Path(p).is_file() else (0, 0) for p in chunk_paths] if chunk_paths else None
        path = shard_path(split_dir, i)
        previous = _reusable(path, chunk, stats)
        if previous is not None:
            report.reused += len(chunk)
            report.skipped |= previous
            bar.update(len(chunk))
            continue
        encoded: dict[int, Encoded | str] = {}
        for part in encode(chunk_paths if chunk_paths is not None else chunk):
            encoded |= part
            bar.update(len(part))
        errors = {chunk[j]: e for j, e in encoded.items() if isinstance(e, str)}
        if errors and on_bad_audio == "error":
            name, reason = next(iter(errors.items()))
            raise DataError(
                f"{reason} ({len(errors)} unreadable clip(s) in split '{split}'). Replace the file, or set "
                "data.on_bad_audio: skip to leave such clips out; finished shards are kept."
            )
        good = [j for j in range(len(chunk)) if not isinstance(encoded[j], str)]
        shard = pack_shard(
            [chunk[j] for j in good],
            [stats[j] if stats else (0, 0) for j in good],
            [encoded[j] for j in good],
        )
        shard["skipped"], shard["reasons"] = list(errors), list(errors.values())
        save_shard(path, shard)
        report.encoded += len(good)
        report.skipped |= errors
    bar.close()
    write_manifest(
        split_dir,
        {
            "complete": True,
            "side": spec.side,
            "split": split,
            "identity": spec.identity,
            "settings": spec.settings,
            "items": len(names),
            "shards": n_shards,
            "shard_size": shard_size,
            "skipped": report.skipped,
        },
    )
    report.seconds = time.perf_counter() - start_time
    return report


def _reusable(path: Path, names: list[str], stats: list[tuple[int, int]] | None) -> dict[str, str] | None:
    """The skipped items of an existing shard holding exactly ``names`` with unchanged ``stats``, else None."""
    if not path.is_file():
        return None
    try:
        shard = load_shard(path)
    except DataError as err:
        log.warning("%s; encoding it again", err)
        return None
    skipped = dict(zip(shard.get("skipped", []), shard.get("reasons", []), strict=True))
    kept = [n for n in names if n not in skipped]
    if shard["names"] != kept:
        return None
    if stats is not None:
        wanted = [s for n, s in zip(names, stats, strict=True) if n not in skipped]
        if shard["stats"].tolist() != [list(s) for s in wanted]:
            return None
    return skipped


def extract(
    data: RetrievalDataModule,
    audio_encoder: AudioEncoder | None,
    text_encoder: TextEncoder | None,
    stages: list[str],
    shard_size: int = 256,
    batch_size: int = 16,
    device: str | None = None,
) -> list[SplitReport]:
    """Cache the outputs of the given (frozen) encoders for every clip and caption of ``stages``.

    Returns:
        One ``SplitReport`` per stage and side.
    """
    if not data.feature_cache:
        raise DataError("the config sets no data.feature_cache: name the folder the features should go to.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reports = []
    for stage in stages:
        if stage not in data.source.splits:
            continue
        split = data.source.splits[stage]
        if stage == "train":
            table = data.training_table()
            clips = table.drop_duplicates("file_name")
            texts = list(dict.fromkeys(table["caption"]))
        else:
            eval_set = data.eval_set(stage)
            clips, texts = eval_set.clips, list(dict.fromkeys(eval_set.queries["text"]))
        if audio_encoder is not None:
            loader = data.eval_loader
            spec = audio_spec(
                data.feature_cache,
                audio_encoder,
                loader.sample_rate,
                loader.window_seconds,
                loader.min_last_window,
            )
            every_window = AudioLoader(
                loader.sample_rate, loader.window_seconds, None, loader.min_last_window
            )
            encode = audio_batches(audio_encoder.to(dev), every_window, batch_size, data.num_workers, dev)
            reports.append(
                extract_split(
                    spec,
                    split,
                    clips["file_name"].tolist(),
                    clips["audio_path"].tolist(),
                    encode,
                    shard_size,
                    data.on_bad_audio,
                )
            )
        if text_encoder is not None:
            spec = text_spec(data.feature_cache, text_encoder)
            encode = text_batches(text_encoder.to(dev), batch_size, dev)
            reports.append(extract_split(spec, split, texts, None, encode, shard_size))
    return reports
