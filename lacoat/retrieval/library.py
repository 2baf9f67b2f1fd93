"""Search a sound library: an incremental index of audio features and two-stage text search.

The index stores, per audio file, the model's projected audio tokens (fp16) and its bi-encoder
embedding, keyed by the file's relative path, size and modification time, together with the
fingerprint of the checkpoint that encoded them. Re-indexing encodes only new or changed files and
drops removed ones; a different checkpoint re-encodes everything. A search embeds the query, lets the
bi-encoder shortlist ``rerank_k`` clips and re-scores them with the co-attention cascade.
"""

from __future__ import annotations

import logging
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lacoat.data.collate import collate
from lacoat.data.datasets import AudioLoader
from lacoat.data.features import file_stat
from lacoat.errors import AudioReadError, LacoatError
from lacoat.io import atomic_torch_save
from lacoat.models.encoders.base import file_fingerprint
from lacoat.models.matcher import Tokens, after_shortlist

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
INDEX_VERSION = 1


@dataclass
class SearchHit:
    """One search result."""

    rank: int
    score: float
    file: str
    duration: float


def load_model(checkpoint: str | Path):
    """The ``LacoatModule`` of a checkpoint written by ``lacoat fit``, in eval mode on the CPU."""
    from lacoat.module import LacoatModule

    path = Path(checkpoint)
    if not path.is_file():
        raise LacoatError(f"checkpoint not found: '{path}'. Pass a .ckpt file written by `lacoat fit`.")
    try:
        model = LacoatModule.load_from_checkpoint(str(path), map_location="cpu")
    except (KeyError, TypeError, ValueError, ArgumentError) as err:  # jsonargparse: hparams incomplete
        raise LacoatError(
            f"cannot rebuild the model from '{path}': {err}. Was it written by `lacoat fit`?"
        ) from err
    return model.eval()


def audio_files(folder: Path) -> list[str]:
    """Audio files under ``folder`` (recursively), as sorted paths relative to it."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def read_index(path: str | Path) -> dict:
    """Load an index file, with a clear error for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise LacoatError(
            f"index not found: '{path}'. Build it with `lacoat index --ckpt CKPT --audio_dir DIR --out {path}`."
        )
    try:
        index = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign file
        raise LacoatError(f"cannot read index '{path}' ({err}); rebuild it with `lacoat index`.") from err
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        raise LacoatError(
            f"'{path}' is not a lacoat index of version {INDEX_VERSION}; rebuild it with `lacoat index`."
        )
    return index


def build_index(checkpoint: str, audio_dir: str, out: str, batch_size: int = 8) -> dict[str, int]:
    """Create or update the index ``out`` of every audio file under ``audio_dir``.

    Files whose size and modification time are unchanged since the last run with the same checkpoint
    are not re-encoded; removed files are dropped; unreadable files are skipped and counted.

    Returns:
        Counts: ``encoded``, ``kept``, ``removed``, ``skipped``, ``total``.
    """
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise LacoatError(f"audio folder not found: '{folder}'")
    model_id = file_fingerprint(Path(checkpoint))
    old: dict[str, dict] = {}
    if Path(out).is_file():
        previous = read_index(out)
        if previous["model_id"] == model_id and previous["audio_dir"] == str(folder.resolve()):
            old = {entry["file"]: entry for entry in previous["entries"]}
    names = audio_files(folder)
    entries, todo = [], []
    for name in names:
        size, mtime = file_stat(folder / name)
        entry = old.get(name)
        if entry is not None and (entry["size"], entry["mtime_ns"]) == (size, mtime):
            entries.append(entry)
        else:
            todo.append(name)
    model = load_model(checkpoint) if todo else None
    skipped = 0
    for start in range(0, len(todo), batch_size):
        new, skipped_now = _encode(model, folder, todo[start : start + batch_size])
        entries.extend(new)
        skipped += skipped_now
    entries.sort(key=lambda e: e["file"])
    index = {
        "version": INDEX_VERSION,
        "checkpoint": str(Path(checkpoint).resolve()),
        "model_id": model_id,
        "audio_dir": str(folder.resolve()),
        "entries": entries,
    }
    atomic_torch_save(index, out)
    return {
        "encoded": len(todo) - skipped,
        "kept": len(names) - len(todo),
        "removed": len(set(old) - set(names)),
        "skipped": skipped,
        "total": len(entries),
    }


@torch.no_grad()
def _encode(model, folder: Path, names: list[str]) -> tuple[list[dict], int]:
    """Encode a batch of files: projected tokens (fp16, valid ones only) and bi-encoder embeddings."""
    encoder = model.matcher.audio_encoder
    loader = AudioLoader(encoder.sample_rate, encoder.window_seconds)
    windows, kept = [], []
    for name in names:
        try:
            windows.append(loader.load(str(folder / name)))
            kept.append(name)
        except AudioReadError as err:
            log.warning("skipped: %s", err)
    if not kept:
        return [], len(names)
    batch = collate([{"audio": w.waveform, "valid_samples": w.valid_samples} for w in windows])
    audio, valid = batch["audio"], batch["audio_valid"]  # [B, W, S], [B, W]
    feats = model.matcher.encode_audio(audio, valid)
    emb = model.matcher.embed_audio(feats)
    out = []
    for i, name in enumerate(kept):
        size, mtime = file_stat(folder / name)
        mask = feats.mask[i]
        out.append(
            {
                "file": name,
                "size": size,
                "mtime_ns": mtime,
                "duration": float(valid[i].sum()) / encoder.sample_rate,
                "tokens": feats.tokens[i][mask].half().clone(),  # [T_valid, D]
                "embedding": emb[i].clone(),  # [E]
            }
        )
    return out, len(names) - len(kept)


def _gallery(entries: list[dict]) -> Tokens:
    """Stored tokens of ``entries`` as one padded batch."""
    return Tokens.cat(
        [
            Tokens(e["tokens"].float()[None], torch.ones(1, len(e["tokens"]), dtype=torch.bool))
            for e in entries
        ]
    )


@torch.no_grad()
def search(index_path: str, query: str, k: int = 10, rerank_k: int = 64, model=None) -> list[SearchHit]:
    """The ``k`` best clips of the index for ``query``: bi-encoder shortlist, co-attention re-score.

    Args:
        index_path: file written by ``build_index``.
        query: free text.
        k: results to return.
        rerank_k: clips the bi-encoder shortlists for the cascade (ignored without a cascade).
        model: the index's model, when already loaded (else it is loaded from the stored checkpoint).
    """
    index = read_index(index_path)
    entries = index["entries"]
    if not entries:
        raise LacoatError(
            f"index '{index_path}' holds no clips; check the audio folder and re-run `lacoat index`."
        )
    if not query.strip():
        raise LacoatError(
            'the query is empty; type what the sound should be, e.g. "a dog barks in the rain".'
        )
    model = model or load_model(index["checkpoint"])
    text = model.matcher.encode_text([query])
    bi = model.matcher.embed_text(text) @ torch.stack([e["embedding"] for e in entries]).T  # [1, N]
    scores: Tensor = bi[0]
    if model.matcher.cascade is not None:
        shortlist = bi[0].topk(min(rerank_k, len(entries))).indices  # [K]
        gallery = _gallery([entries[i] for i in shortlist.tolist()])
        co = model.matcher.score_candidates(text, gallery, torch.arange(len(shortlist))[None])  # [1, K]
        in_list = torch.zeros_like(bi[0], dtype=torch.bool)
        in_list[shortlist] = True
        fused = torch.zeros_like(bi[0])
        fused[shortlist] = co[0] + model.fusion_alpha * bi[0, shortlist]
        scores = after_shortlist(fused[None], bi, in_list[None], dim=1)[0]  # the rest just below, in order
    top = scores.topk(min(k, len(entries)))
    return [
        SearchHit(rank=r + 1, score=float(s), file=entries[i]["file"], duration=entries[i]["duration"])
        for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True))
    ]
