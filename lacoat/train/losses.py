"""Contrastive objectives for text–audio retrieval.

``NTXentLoss`` is the symmetric NT-Xent (InfoNCE) loss of the paper, made multi-positive by clip identity:
a batch may hold several captions of one clip, and those same-clip pairs off the diagonal are masked out
of the softmax (neither positive nor negative). ``candidate_loss`` is the same objective restricted to a
query's positive and its hardest in-batch negatives, which ``hardest_negatives`` selects (ALBEF / BLIP
style), so that the co-attention cross-encoder scores ``B * (1 + M)`` pairs instead of ``B * B``.

Convention: ``sim`` is text-major ``[n_text, n_audio]``; row ``i`` is the caption of pair ``i``, column
``j`` the audio of pair ``j``; the diagonal holds the matching pairs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ExtraNegatives", "NTXentLoss", "hardest_negatives", "same_clip_mask"]


class ExtraNegatives(NamedTuple):
    """More negative scores per row of a batch, ``-inf`` where a row has none (``lacoat.train.objectives``).

    ``t2a`` ``[B]`` or ``[B, K]``: each caption against its own clip edited, the events swapped or a
    count changed (``lacoat.negatives.audio_edits``; extra columns of the caption → audio softmax); ``a2t``
    ``[B]`` or ``[B, K]``: each clip against its caption with the order reversed or a count changed
    in words (``lacoat.negatives.text``; extra columns of the audio → caption softmax).
    """

    t2a: Tensor | None = None
    a2t: Tensor | None = None


def same_clip_mask(text_clip: Tensor, audio_clip: Tensor) -> Tensor:
    """Marks the off-diagonal entries of a square ``sim`` whose caption and audio share a clip.

    Args:
        text_clip: Clip identity of each row (caption).
        audio_clip: Clip identity of each column (audio).

    Returns:
        Boolean mask, True where the entry is masked out of the softmax (same clip, not the diagonal).

    Shape:
        - text_clip: ``[B]``
        - audio_clip: ``[B]``
        - output: ``[B, B]``
    """
    same = text_clip[:, None] == audio_clip[None, :]  # [B, B]
    return same & ~torch.eye(same.shape[0], dtype=torch.bool, device=same.device)  # [B, B]


def _check_square(name: str, sim: Tensor, text_clip: Tensor, audio_clip: Tensor) -> None:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"{name} must be a square [B, B] matrix, got shape {tuple(sim.shape)}")
    b = sim.shape[0]
    if text_clip.shape != (b,) or audio_clip.shape != (b,):
        raise ValueError(
            f"text_clip and audio_clip must have shape [{b}] to match {name} {tuple(sim.shape)}, "
            f"got {tuple(text_clip.shape)} and {tuple(audio_clip.shape)}"
        )


class NTXentLoss(nn.Module):
    """Symmetric, multi-positive NT-Xent (InfoNCE) loss with a learnable or fixed temperature.

    With logits ``z = sim / τ`` and ``M`` the same-clip off-diagonal mask (entries set to ``-inf``)::

        L_t2a = mean_i [ -z_ii + logsumexp_{j : not M_ij} z_ij ]   # rows: caption → audio
        L_a2t = mean_j [ -z_jj + logsumexp_{i : not M_ij} z_ij ]   # columns: audio → caption
        loss_main = (L_t2a + L_a2t) / 2

    The temperature is kept CLIP-style as ``log_logit_scale = log(1 / τ)``; the scale ``1 / τ`` used in
    the loss is clamped to at most ``max_logit_scale`` (the clamp stops the gradient once it bites).

    Args:
        temperature: Initial (or fixed) temperature ``τ > 0``.
        learnable_temperature: Learn ``log(1 / τ)`` as a parameter; otherwise it is a fixed buffer.
        max_logit_scale: Upper bound on ``1 / τ`` (CLIP uses 100).
        aux_weight: Weight of the auxiliary loss on ``aux_sim`` (the bi-encoder's similarity).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learnable_temperature: bool = True,
        max_logit_scale: float = 100.0,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not max_logit_scale > 0:
            raise ValueError(f"max_logit_scale must be > 0, got {max_logit_scale}")
        if 1.0 / temperature > max_logit_scale:
            raise ValueError(
                f"temperature={temperature} gives a logit scale 1/τ={1.0 / temperature:g} above "
                f"max_logit_scale={max_logit_scale:g}; raise max_logit_scale or the temperature"
            )
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.learnable_temperature = learnable_temperature
        self.max_logit_scale = float(max_logit_scale)
        self.aux_weight = float(aux_weight)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init)

    @property
    def logit_scale(self) -> Tensor:
        """The clamped scale ``1 / τ`` applied to cosine similarities (0-dim, differentiable)."""
        return self.log_logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    @property
    def temperature(self) -> Tensor:
        """The effective temperature ``τ = 1 / logit_scale`` (0-dim, detached)."""
        return 1.0 / self.logit_scale.detach()

    def _logits(self, sim: Tensor) -> Tensor:
        # At least float32: the softmax of bf16/fp16 logits is too coarse for a loss.
        sim = sim.to(torch.promote_types(sim.dtype, torch.float32))
        return sim * self.logit_scale

    def contrastive(
        self, sim: Tensor, text_clip: Tensor, audio_clip: Tensor, extra: ExtraNegatives | None = None
    ) -> Tensor:
        """Symmetric multi-positive NT-Xent of one similarity matrix (unweighted).

        Args:
            sim: Cosine similarities, text-major; the diagonal holds the matching pairs.
            text_clip: Clip identity of each caption (row).
            audio_clip: Clip identity of each audio (column).
            extra: more negatives of each row's own, either way (``ExtraNegatives``).

        Returns:
            The scalar loss ``(L_t2a + L_a2t) / 2``.

        Shape:
            - sim: ``[B, B]``
            - text_clip: ``[B]``
            - audio_clip: ``[B]``
            - extra: ``[B]`` or ``[B, K]`` each
            - output: ``[]``
        """
        _check_square("sim", sim, text_clip, audio_clip)
        return self.sharded_contrastive(sim, sim.T, text_clip, audio_clip, text_clip, audio_clip, 0, extra)

    def sharded_contrastive(
        self,
        t2a: Tensor,
        a2t: Tensor,
        text_clip: Tensor,
        audio_clip: Tensor,
        all_text_clip: Tensor,
        all_audio_clip: Tensor,
        offset: int,
        extra: ExtraNegatives | None = None,
    ) -> Tensor:
        """NT-Xent of one rank's rows against the candidates of all ranks (negatives gathered in DDP).

        Row ``i`` of ``t2a`` is this rank's caption ``i`` against every clip of the global batch; its
        positive is column ``offset + i``. ``a2t`` likewise for this rank's clips against every caption.
        Averaged over ranks of equal batch size this equals ``contrastive`` of the global batch.
        ``extra`` adds columns to the rows of either direction (see ``contrastive``).

        Shape:
            - t2a, a2t: ``[b, N]`` (N = global batch)
            - text_clip, audio_clip: ``[b]``; all_text_clip, all_audio_clip: ``[N]``; extra: ``[b]`` or
              ``[b, K]`` each
            - output: ``[]``
        """
        rows = torch.arange(t2a.shape[0], device=t2a.device)  # [b]
        target = rows + offset
        extra = extra or ExtraNegatives()
        losses = []
        for sim, own, other, more in (
            (t2a, text_clip, all_audio_clip, extra.t2a),
            (a2t, audio_clip, all_text_clip, extra.a2t),
        ):
            mask = own[:, None] == other[None, :]  # [b, N] same clip ...
            mask[rows, target] = False  # ... apart from the positive itself
            logits = self._logits(sim).masked_fill(mask, float("-inf"))
            if more is not None:  # -inf = no extra negative (masked after scaling:
                none = ~torch.isfinite(more)  # -inf * scale would give the temperature a NaN gradient)
                more = self._logits(more.masked_fill(none, 0.0)).masked_fill(none, float("-inf"))
                logits = torch.cat([logits, more.reshape(len(more), -1)], dim=1)  # [b, N + K]
            losses.append(F.cross_entropy(logits, target))
        return (losses[0] + losses[1]) / 2

    def forward(
        self,
        sim: Tensor,
        text_clip: Tensor,
        audio_clip: Tensor,
        aux_sim: Tensor | None = None,
        extra: ExtraNegatives | None = None,
        aux_extra: ExtraNegatives | None = None,
    ) -> dict[str, Tensor]:
        """Computes the loss on the main (co-attention) scores and, if given, the auxiliary scores.

        Args:
            sim: Cosine similarities, text-major; the diagonal holds the matching pairs.
            text_clip: Clip identity of each caption (int64).
            audio_clip: Clip identity of each audio (int64).
            aux_sim: Optional bi-encoder cosine similarities, same layout as ``sim``.
            extra: Optional extra negatives of each row under ``sim`` (``ExtraNegatives``);
                ``aux_extra`` the same under ``aux_sim``.

        Returns:
            ``loss`` = ``loss_main + aux_weight * loss_aux``; ``loss_main``; ``loss_aux`` (unweighted,
            a 0 tensor when ``aux_sim`` is None); ``temperature`` (detached).

        Shape:
            - sim: ``[B, B]``
            - text_clip: ``[B]``
            - audio_clip: ``[B]``
            - aux_sim: ``[B, B]``
            - outputs: ``[]`` each
        """
        loss_main = self.contrastive(sim, text_clip, audio_clip, extra)
        if aux_sim is None:
            loss_aux = loss_main.new_zeros(())
            loss = loss_main
        else:
            loss_aux = self.contrastive(aux_sim, text_clip, audio_clip, aux_extra)
            loss = loss_main + self.aux_weight * loss_aux
        return {"loss": loss, "loss_main": loss_main, "loss_aux": loss_aux, "temperature": self.temperature}

    def candidate_loss(self, pos: Tensor, neg: Tensor) -> Tensor:
        """NT-Xent over each query's positive and its hardest negatives (target index 0).

        ``mean_b [ -z_b0 + logsumexp_k z_bk ]`` with ``z_b = [pos_b, neg_b1..neg_bM] / τ``. The caller
        applies it in both directions (text → audio and audio → text) and averages.

        Args:
            pos: Cosine score of each query with its positive.
            neg: Cosine scores of each query with its M hardest negatives.

        Returns:
            The scalar loss.

        Shape:
            - pos: ``[B]``
            - neg: ``[B, M]``
            - output: ``[]``
        """
        if pos.dim() != 1 or neg.dim() != 2 or neg.shape[0] != pos.shape[0]:
            raise ValueError(
                f"candidate_loss expects pos [B] and neg [B, M], got {tuple(pos.shape)} and {tuple(neg.shape)}"
            )
        candidates = torch.cat([pos[:, None], neg], dim=1)  # [B, 1 + M]; -inf: no such negative
        none = ~torch.isfinite(candidates)  # masked after scaling (see sharded_contrastive)
        logits = self._logits(candidates.masked_fill(none, 0.0)).masked_fill(none, float("-inf"))
        target = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)  # [B]
        return F.cross_entropy(logits, target)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature.item():.4g}, learnable={self.learnable_temperature}, "
            f"max_logit_scale={self.max_logit_scale:g}, aux_weight={self.aux_weight:g}"
        )


@torch.no_grad()
def hardest_negatives(sim: Tensor, clip_ids_rows: Tensor, clip_ids_cols: Tensor, m: int) -> Tensor:
    """Column indices of the ``m`` highest-scoring columns of each row that belong to another clip.

    Same-clip columns (including the row's own positive) are never returned. For audio → text
    negatives pass ``sim.T`` with the clip ids swapped. Ties are broken as ``torch.topk`` breaks them.

    Args:
        sim: Scores used for ranking (e.g. the bi-encoder's cosine similarities); not differentiated.
        clip_ids_rows: Clip identity of each row.
        clip_ids_cols: Clip identity of each column.
        m: Number of negatives per row, ``>= 1``.

    Returns:
        Column indices, each row sorted by decreasing score.

    Raises:
        ValueError: If some row has fewer than ``m`` columns of a different clip (the batch is too small
            or holds too many captions of one clip); ``m`` is never silently reduced.

    Shape:
        - sim: ``[R, C]``
        - clip_ids_rows: ``[R]``
        - clip_ids_cols: ``[C]``
        - output: ``[R, m]`` (int64)
    """
    if sim.dim() != 2:
        raise ValueError(f"sim must be a [rows, cols] matrix, got shape {tuple(sim.shape)}")
    if clip_ids_rows.shape != (sim.shape[0],) or clip_ids_cols.shape != (sim.shape[1],):
        raise ValueError(
            f"clip ids must have shapes [{sim.shape[0]}] and [{sim.shape[1]}] to match sim "
            f"{tuple(sim.shape)}, got {tuple(clip_ids_rows.shape)} and {tuple(clip_ids_cols.shape)}"
        )
    if m < 1:
        raise ValueError(f"m (hard negatives per query) must be >= 1, got {m}")
    valid = clip_ids_rows[:, None] != clip_ids_cols[None, :]  # [R, C]
    if sim.shape[0] > 0:
        n_valid = valid.sum(dim=1)  # [R]
        fewest = int(n_valid.min())
        if fewest < m:
            row = int(n_valid.argmin())
            raise ValueError(
                f"cannot pick {m} hard negatives: row {row} has only {fewest} column(s) of a different "
                f"clip among {sim.shape[1]}; lower the number of hard negatives or enlarge the batch"
            )
    masked = sim.detach().masked_fill(~valid, float("-inf"))  # [R, C]
    return masked.topk(m, dim=1).indices  # [R, m]
