"""Two-stage text search over a library index.

A search embeds the query, lets the bi-encoder shortlist ``rerank_k`` clips (one matrix product over
the memory-mapped embeddings) and re-scores them with the co-attention cascade; the rest follow just
below, in bi-encoder order (``after_shortlist``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lacoat.defaults import RERANK_K
from lacoat.errors import LacoatError
from lacoat.retrieval.query_encoder import load_query_encoder
from lacoat.retrieval.store import IndexStore

if TYPE_CHECKING:
    from torch import Tensor


from lacoat.checkpoints import checkpoint_fingerprint
from lacoat.models.factory import load_matcher

log = logging.getLogger(__name__)


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

        from lacoat.contracts import Tokens

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
