"""``AudioTextMatcher``: encoders → projections → co-attention cascade → pools → cosine scores.

Two scores come out of one model:

* the **co-attention score** ``cos(pool_t(t | a), pool_a(a | t))``, computed per (text, clip) pair
  through the cascade (a cross-encoder: an embedding depends on its partner);
* the **bi-encoder score** ``cos(pool_t(t), pool_a(a))`` from the same pools and projections applied
  to the unimodal tokens: a matrix product, the baseline and the cheap first stage of retrieval.

Without a cascade the model is a bi-encoder and both scores coincide. Optional ``towers``
(``lacoat.models.towers``) give each modality its own self-attention stack after its projection, run
once per item: the unimodal tokens above are then the towers' outputs, for the pools and for a
cascade alike (the bi-encoder of the cascade's depth, or ALBEF's towers-then-fusion layout).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lacoat.contracts import Tokens
from lacoat.errors import ModelError
from lacoat.models.cascade import Cascade, Side
from lacoat.models.encoders.base import AudioEncoder, TextEncoder
from lacoat.models.pooling import AttentionPool, MaskedMeanPool
from lacoat.models.positions import TokenPositions
from lacoat.models.towers import Towers


class AudioTextMatcher(nn.Module):
    """The retrieval model without its training loop.

    Args:
        audio_encoder: returns ``(audio_tokens [B, T, Da], audio_mask [B, T])`` from ``(audio, audio_valid)``.
        text_encoder: returns ``(text_tokens [B, L, Dt], text_mask [B, L])`` from a list of strings.
        cascade: co-attention cascade; None gives the bi-encoder baseline.
        d_model: token width D after projection when there is no cascade (a cascade sets its own).
        embed_dim: width E of the joint embedding space.
        pool: ``attention`` (MCAN AttFlat) or ``mean``.
        pool_mass: which attention pools also read how much of what they attend to there is
            (``AttentionPool(mass=True)``: AttFlat's softmax mean is the same for two barks as for
            three): ``none``, ``audio`` (counting is about the sound) or ``both``.
        audio_glimpses: attention maps of the audio pool (MCAN AttFlat's glimpses, concatenated before
            its linear merge): with several, each can attend to another sound of the clip and, with
            ``pool_mass``, read that sound's own mass rather than one mass of everything attended.
        pair_chunk: pairs per cascade pass when scoring many pairs (memory budget).
        audio_positions: time-position code added to the projected audio tokens (index = window *
            frames + frame): ``sinusoidal``, ``learned`` or ``none``. Projected CLAP frames carry no
            position of their own, and the order of events is what co-attention must see.
        audio_max_positions: audio tokens a ``learned`` position table covers.
        recompute: share in [0, 1] of the pair chunks whose activations are not kept when gradients
            are needed (training): a recomputed chunk keeps only its inputs and is run again in
            backward (``torch.utils.checkpoint``, dropout masks replayed from the saved RNG state).
            0 keeps every activation (fastest; memory grows with B²); 1 recomputes every chunk (the
            memory of B×B pair training then grows with ``recompute_chunk``, not with B², at the cost
            of one more forward of the pair passes). In between, memory and time trade linearly:
            ``floor(n · recompute)`` of a step's ``n`` chunks are recomputed, spread evenly
            (``recomputed_chunks``). Gradients are those of the plain path whatever the share.
        recompute_chunk: pairs per chunk when ``recompute`` is above 0 (the activations of one
            recomputed chunk are alive at a time in backward). Without gradients, or with
            ``recompute`` 0, ``pair_chunk`` applies. ``true`` / ``false`` (configs and checkpoints
            made before the share existed) mean 1 and 0.
        towers: a self-attention stack per modality (``Towers``), run after the projections and
            before everything else, once per text and per clip: without a cascade, the bi-encoder of
            a cascade's depth; with one, the first stage the cascade re-ranks. None: no towers. Sets
            the token width D when there is no cascade.

    Raises:
        ModelError: If ``recompute`` lies outside [0, 1], ``audio_glimpses`` is below 1,
            ``pool_mass`` or several glimpses are set with mean pools, or the towers' width is not
            the cascade's.
    """

    def __init__(
        self,
        audio_encoder: AudioEncoder,
        text_encoder: TextEncoder,
        cascade: Cascade | None = None,
        d_model: int = 512,
        embed_dim: int = 512,
        pool: Literal["attention", "mean"] = "attention",
        pool_mass: Literal["none", "audio", "both"] = "none",
        audio_glimpses: int = 1,
        pair_chunk: int = 1024,
        audio_positions: Literal["sinusoidal", "learned", "none"] = "sinusoidal",
        audio_max_positions: int = 4096,
        recompute: float | bool = 0.0,
        recompute_chunk: int = 64,
        towers: Towers | None = None,
    ) -> None:
        if not 0.0 <= recompute <= 1.0:
            raise ModelError(
                f"model.matcher recompute must lie in [0, 1] (the share of pair chunks recomputed in "
                f"backward: 0 none, 1 all), got {recompute}"
            )
        if pool == "mean" and pool_mass != "none":
            raise ModelError(
                f"model.matcher pool_mass: {pool_mass} needs attention pools (the mass is that of an "
                "attention map); set pool: attention or pool_mass: none"
            )
        if audio_glimpses < 1 or (pool == "mean" and audio_glimpses != 1):
            raise ModelError(
                f"model.matcher audio_glimpses must be a whole number >= 1 with attention pools (1 with "
                f"pool: mean), got {audio_glimpses} with pool: {pool}"
            )
        if towers is not None and cascade is not None and towers.dim != cascade.dim:
            raise ModelError(
                f"model.matcher towers dim ({towers.dim}) must equal the cascade's dim ({cascade.dim}): "
                "the cascade reads the towers' outputs"
            )
        super().__init__()
        self.audio_encoder, self.text_encoder, self.cascade = audio_encoder, text_encoder, cascade
        self.towers = towers
        width = cascade.dim if cascade is not None else towers.dim if towers is not None else d_model
        self.audio_proj = nn.Sequential(nn.Linear(audio_encoder.dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.Linear(text_encoder.dim, width), nn.LayerNorm(width))
        self.audio_positions = TokenPositions(width, audio_positions, audio_max_positions)

        def make_pool(mass: bool, glimpses: int = 1) -> nn.Module:
            return (
                MaskedMeanPool(width, embed_dim)
                if pool == "mean"
                else AttentionPool(width, embed_dim, glimpses=glimpses, mass=mass)
            )

        self.text_pool = make_pool(pool_mass == "both")
        self.audio_pool = make_pool(pool_mass != "none", audio_glimpses)
        self.pair_chunk = pair_chunk
        self.recompute, self.recompute_chunk = float(recompute), recompute_chunk

    # ---- per-item work --------------------------------------------------------------------------
    def encode_text(self, texts: list[str]) -> Tokens:
        """Text encoder + projection. Returns ``Tokens`` with ``[B, L, D]``."""
        return self.project_text(*self.text_encoder(texts))

    def encode_audio(self, audio: Tensor, audio_valid: Tensor) -> Tokens:
        """Audio encoder + projection of ``audio [B, W, S]``, ``audio_valid [B, W]``."""
        return self.project_audio(*self.audio_encoder(audio, audio_valid))

    def project_text(self, tokens: Tensor, mask: Tensor) -> Tokens:
        """Projection of text encoder outputs ``[B, L, Dt]`` (e.g. cached ones) to ``Tokens [B, L, D]``,
        through the text tower when there are towers."""
        x = self.text_proj(tokens)
        return Tokens(self.towers.text(x, mask) if self.towers is not None else x, mask)

    def project_audio(self, tokens: Tensor, mask: Tensor) -> Tokens:
        """Projection of audio encoder outputs ``[B, T, Da]`` (e.g. cached ones) to ``Tokens [B, T, D]``,
        with the time-position code of each token added, then through the audio tower when there are
        towers."""
        x = self.audio_positions(self.audio_proj(tokens))
        return Tokens(self.towers.audio(x, mask) if self.towers is not None else x, mask)

    def text_of(self, batch: dict) -> Tokens:
        """``Tokens`` of a batch's captions: from its cached ``text_tokens`` or through the encoder."""
        if "text_tokens" in batch:
            return self.project_text(batch["text_tokens"], batch["text_mask"])
        return self.encode_text(batch["captions"])

    def audio_of(self, batch: dict) -> Tokens:
        """``Tokens`` of a batch's clips: from its cached ``audio_tokens`` or through the encoder."""
        if "audio_tokens" in batch:
            return self.project_audio(batch["audio_tokens"], batch["audio_mask"])
        return self.encode_audio(batch["audio"], batch["audio_valid"])

    def embed_text(self, text: Tokens) -> Tensor:
        """Bi-encoder text embedding ``[B, E]``, L2-normalised."""
        return F.normalize(self.text_pool(text.tokens, text.mask), dim=-1)

    def embed_audio(self, audio: Tokens) -> Tensor:
        """Bi-encoder audio embedding ``[B, E]``, L2-normalised."""
        return F.normalize(self.audio_pool(audio.tokens, audio.mask), dim=-1)

    def bi_scores(self, text: Tokens, audio: Tokens) -> Tensor:
        """Bi-encoder cosine similarities ``[n_text, n_audio]``."""
        return self.embed_text(text) @ self.embed_audio(audio).T

    # ---- per-pair work --------------------------------------------------------------------------
    def _pair_cosines(self, text: Side, audio: Side, text_index: Tensor, audio_index: Tensor) -> Tensor:
        """Co-attention cosine of pairs ``(text_index[p], audio_index[p])``, chunked. Returns ``[P]``.

        A side the cascade leaves unchanged (the leader of an iterating cascade) is pooled once per
        item instead of once per pair. With a ``recompute`` share above 0 and gradients enabled, the
        chunks ``recomputed_chunks`` selects drop their activations after forward and recompute them
        in backward; the others keep theirs.
        """
        static = self.cascade.static_side
        t_fixed = F.normalize(self.text_pool(text.tokens, text.mask), dim=-1) if static == "text" else None
        a_fixed = (
            F.normalize(self.audio_pool(audio.tokens, audio.mask), dim=-1) if static == "audio" else None
        )
        share = self.recompute if torch.is_grad_enabled() else 0.0
        chunk = self.recompute_chunk if share > 0 else self.pair_chunk
        starts = range(0, len(text_index), chunk)
        recomputed = recomputed_chunks(len(starts), share)
        out = []
        for start, again in zip(starts, recomputed, strict=True):
            ti, ai = text_index[start : start + chunk], audio_index[start : start + chunk]
            if again:  # saves only its inputs: the per-item sides and the chunk's indices
                out.append(
                    checkpoint(
                        self._chunk_cosines, text, audio, t_fixed, a_fixed, ti, ai, use_reentrant=False
                    )
                )
            else:
                out.append(self._chunk_cosines(text, audio, t_fixed, a_fixed, ti, ai))
        return torch.cat(out) if out else text.tokens.new_zeros(0)

    def _chunk_cosines(
        self,
        text: Side,
        audio: Side,
        t_fixed: Tensor | None,
        a_fixed: Tensor | None,
        ti: Tensor,
        ai: Tensor,
    ) -> Tensor:
        """Cosines of the pairs ``(ti[p], ai[p])`` (``[p]`` each) through the cascade. Returns ``[p]``.

        ``t_fixed`` / ``a_fixed``: the static side's per-item embeddings ``[B, E]``, or None.
        """
        t, a = text.take(ti), audio.take(ai)
        t_out, a_out = self.cascade.pairs(t, a)  # [p, Lt, D], [p, La, D]
        t_emb = t_fixed[ti] if t_fixed is not None else F.normalize(self.text_pool(t_out, t.mask), dim=-1)
        a_emb = a_fixed[ai] if a_fixed is not None else F.normalize(self.audio_pool(a_out, a.mask), dim=-1)
        return (t_emb * a_emb).sum(-1)

    def score_index_pairs(
        self, text: Tokens, audio: Tokens, text_index: Tensor, audio_index: Tensor
    ) -> Tensor:
        """Scores of the pairs ``(text[text_index[p]], audio[audio_index[p]])``. Returns ``[P]``.

        Item-only work is done once per text and per clip, however often each is paired.
        """
        if self.cascade is None:
            return (self.embed_text(text)[text_index] * self.embed_audio(audio)[audio_index]).sum(-1)
        t = self.cascade.prepare_text(text.tokens, text.mask)
        a = self.cascade.prepare_audio(audio.tokens, audio.mask)
        return self._pair_cosines(t, a, text_index, audio_index)

    def pair_scores(self, text: Tokens, audio: Tokens) -> Tensor:
        """Scores of aligned pairs (text p with clip p). Returns ``[P]``."""
        index = torch.arange(len(text), device=text.tokens.device)
        return self.score_index_pairs(text, audio, index, index)

    def score_candidates(self, text: Tokens, audio: Tokens, candidates: Tensor) -> Tensor:
        """Scores of each text with its candidate clips ``candidates [Q, K]`` (indices into ``audio``).

        Returns ``[Q, K]``.
        """
        q, k = candidates.shape
        text_index = torch.arange(q, device=candidates.device).repeat_interleave(k)
        return self.score_index_pairs(text, audio, text_index, candidates.reshape(-1)).view(q, k)

    def score_matrix(self, text: Tokens, audio: Tokens, text_block: int = 256) -> Tensor:
        """Scores of every (text, clip) pair, text-major ``[n_text, n_audio]``.

        Clips are prepared once; texts in blocks of ``text_block`` (bounding the memory of the
        per-item state); pairs run through the cascade ``pair_chunk`` at a time.
        """
        if self.cascade is None:
            return self.bi_scores(text, audio)
        n = len(audio)
        a = self.cascade.prepare_audio(audio.tokens, audio.mask)
        rows = []
        for start in range(0, len(text), text_block):
            block = text[start : start + text_block]
            t = self.cascade.prepare_text(block.tokens, block.mask)
            q = len(block)
            text_index = torch.arange(q, device=block.tokens.device).repeat_interleave(n)
            audio_index = torch.arange(n, device=block.tokens.device).repeat(q)
            rows.append(self._pair_cosines(t, a, text_index, audio_index).view(q, n))
        return torch.cat(rows)

    def rerank_scores(
        self,
        text: Tokens,
        audio: Tokens,
        k: int,
        alpha: float = 0.0,
        bi: Tensor | None = None,
        score_pairs: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Two-stage scores: the bi-encoder shortlists, co-attention re-scores. Returns ``(t2a, a2t)``,
        each ``[n_text, n_audio]``.

        ``t2a`` ranks each text's clips from that text's own top ``k`` (by bi-encoder score) and ``a2t``
        each clip's texts from that clip's own top ``k``, so a query's ranking never depends on which
        other queries are evaluated: it is what ``lacoat search`` returns. A re-scored pair gets
        ``s_co + alpha * s_bi`` (score fusion); the others rank after the shortlist in bi-encoder order
        (``after_shortlist``). Pairs shortlisted in both directions are scored once. With ``k`` at least
        the gallery size, both equal ``score_matrix + alpha * bi``. ``bi`` may pass the bi-encoder
        scores when they are already computed; ``score_pairs(text_index, audio_index)`` may replace
        ``score_index_pairs`` of these tokens (e.g. split across ranks).
        """
        bi = self.bi_scores(text, audio) if bi is None else bi  # [Q, N]
        if self.cascade is None:
            return bi.float(), bi.float()
        in_row = torch.zeros_like(bi, dtype=torch.bool)
        in_row.scatter_(1, bi.topk(min(k, bi.shape[1]), dim=1).indices, True)  # each text's clips
        in_col = torch.zeros_like(bi, dtype=torch.bool)
        in_col.scatter_(0, bi.topk(min(k, bi.shape[0]), dim=0).indices, True)  # each clip's texts
        text_index, audio_index = (in_row | in_col).nonzero(as_tuple=True)
        fused = torch.zeros_like(bi, dtype=torch.float32)
        if score_pairs is None:
            co = self.score_index_pairs(text, audio, text_index, audio_index).float()
        else:
            co = score_pairs(text_index, audio_index).float()
        fused[text_index, audio_index] = co + alpha * bi[text_index, audio_index].float()
        return after_shortlist(fused, bi, in_row, dim=1), after_shortlist(fused, bi, in_col, dim=0)


def recomputed_chunks(n: int, share: float) -> list[bool]:
    """Which of ``n`` pair chunks are recomputed in backward at ``share`` (``AudioTextMatcher``'s
    ``recompute``): chunk ``i`` is iff ``floor((i + 1) · share) > floor(i · share)``, so
    ``floor(n · share)`` chunks, evenly spread (gaps differ by at most one chunk) and the same at every
    step; share 1 selects all, share 0 none."""
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(n)]


def after_shortlist(scores: Tensor, bi: Tensor, shortlist: Tensor, dim: int = -1) -> Tensor:
    """Two-stage ranking scores along ``dim``: shortlisted entries keep ``scores``; the others follow,
    in bi-encoder order, just below the lowest shortlisted score of their row (``dim=1``) or column.

    The result is a meaningful, monotone score for every item (no internal offset reaches a user):
    the best unshortlisted item lies 1e-3 below the worst shortlisted one, and the gaps between
    unshortlisted items are their bi-encoder gaps. Computed in float32.

    Shape:
        scores, bi, shortlist: ``[..., N]`` along ``dim`` (any 2-D layout); returns float32 of that shape.
    """
    scores, bi = scores.float(), bi.float()
    inf = torch.tensor(float("inf"), device=scores.device)
    floor = torch.where(shortlist, scores, inf).amin(dim, keepdim=True)  # lowest re-scored
    top_rest = torch.where(shortlist, -inf, bi).amax(dim, keepdim=True)  # best bi-encoder score left out
    rest = floor - 1e-3 - (top_rest - bi)
    return torch.where(shortlist, scores, rest)
