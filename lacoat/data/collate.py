"""Batch assembly: pad clips to the same number of windows, keep captions as strings."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

log = logging.getLogger(__name__)


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Collate dataset items into a batch; skipped bad clips (a ``{"skipped": path, "reason": …}``
    marker, or ``None``) are dropped and listed.

    Returns:
        A dict with whichever of these the items carry:
        ``audio [B, W, S]`` float32 (W = most windows in the batch, zero-padded),
        ``audio_valid [B, W]`` int64 real samples per window (0 = padding window),
        ``captions`` list of B strings, ``clip_index [B]`` and ``query_index [B]`` int64,
        cached encoder outputs ``audio_tokens [B, La, D]`` / ``audio_mask [B, La]`` and
        ``text_tokens [B, Lt, D]`` / ``text_mask [B, Lt]`` (float32, zero-padded, padding masked),
        ``audio_paths`` list of B audio files (when items name them), ``n_skipped`` (items dropped)
        and ``skipped``, the ``(path, reason)`` of each dropped item that has a marker.
    """
    kept = [item for item in items if item is not None and "skipped" not in item]
    batch: dict[str, Any] = {
        "n_skipped": len(items) - len(kept),
        "skipped": [(item["skipped"], item["reason"]) for item in items if item and "skipped" in item],
    }
    if not kept:
        return batch
    first = kept[0]
    if "audio" in first:
        n_windows = max(item["audio"].shape[0] for item in kept)
        n_samples = first["audio"].shape[1]
        audio = torch.zeros(len(kept), n_windows, n_samples)
        valid = torch.zeros(len(kept), n_windows, dtype=torch.long)
        for i, item in enumerate(kept):
            w = item["audio"].shape[0]
            audio[i, :w] = torch.as_tensor(item["audio"])
            valid[i, :w] = torch.as_tensor(item["valid_samples"])
        batch["audio"], batch["audio_valid"] = audio, valid
    for side in ("audio", "text"):
        if f"{side}_tokens" in first:
            tokens = pad_sequence([item[f"{side}_tokens"].float() for item in kept], batch_first=True)
            mask = pad_sequence([item[f"{side}_mask"] for item in kept], batch_first=True)
            batch[f"{side}_tokens"], batch[f"{side}_mask"] = tokens, mask
    if "caption" in first:
        batch["captions"] = [item["caption"] for item in kept]
    if "audio_path" in first:
        batch["audio_paths"] = [item["audio_path"] for item in kept]
    for key in ("clip_index", "query_index"):
        if key in first:
            batch[key] = torch.tensor([item[key] for item in kept], dtype=torch.long)
    return batch
