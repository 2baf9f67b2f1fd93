"""Training objectives: which (caption, clip) pairs of a batch a matcher scores, fed to ``NTXentLoss``.

``PairObjective`` owns the three ways of training the cascade, and the bi-encoder's auxiliary term:

* ``full``: every caption against every clip of the batch (B² cascade passes), NT-Xent both ways;
* ``hard_negatives``: each query's positive and its M hardest in-batch negatives ranked by the
  bi-encoder, both directions (B·(1+2M) passes; ALBEF / BLIP style candidate loss);
* global batch (``gather_negatives`` under DDP): this rank's captions and clips against the token
  features of every rank, gathered with their gradients (open_clip's ``gather_with_grad``).

With ``order_negatives`` every caption that states an order of events also meets its own clip with
its events swapped (``lacoat.order_negatives``) as one more caption → audio negative.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor

from lacoat.distributed import Gather
from lacoat.errors import NumericalError
from lacoat.losses import NTXentLoss, hardest_negatives
from lacoat.models.matcher import AudioTextMatcher, Tokens
from lacoat.order_negatives import states_order

log = logging.getLogger(__name__)


class PairObjective:
    """The loss of one training batch.

    Args:
        loss: NT-Xent (temperature, ``aux_weight`` of the bi-encoder term).
        pairs: ``full`` or ``hard_negatives`` (see the module docstring).
        hard_negatives: M, negatives per query with ``hard_negatives``.
        order_negatives: add each order-stating caption's own clip with its events swapped as a negative.
    """

    def __init__(
        self,
        loss: NTXentLoss,
        pairs: Literal["full", "hard_negatives"] = "full",
        hard_negatives: int = 7,
        order_negatives: bool = False,
    ) -> None:
        self.loss, self.pairs, self.hard_negatives = loss, pairs, hard_negatives
        self.order_negatives = order_negatives

    def __call__(
        self,
        matcher: AudioTextMatcher,
        batch: dict[str, Any],
        gather: Gather | None = None,
        rank: int = 0,
    ) -> dict[str, Tensor]:
        """``loss``, ``loss_main``, ``loss_aux``, ``temperature`` and, with order negatives, ``order_win``
        (how often a caption's own clip outscores its swapped version).

        Args:
            matcher: the model.
            batch: a training batch (``clip_index``, tokens or audio and captions).
            gather: all-gather of token features with gradients: scores against the global batch.
            rank: this process's rank (its rows' offset in the gathered batch).
        """
        text, audio = matcher.text_of(batch), matcher.audio_of(batch)
        clip = batch["clip_index"]
        bi = matcher.bi_scores(text, audio)  # [B, B]
        if gather is not None and self.pairs == "full":
            return self._global_batch(matcher, text, audio, clip, gather, rank)
        co_swap, bi_swap = self._order_negative_scores(matcher, batch, text)
        if matcher.cascade is None:
            return self.loss(bi, clip, clip, extra=bi_swap) | _order_win(bi.diagonal(), bi_swap)
        if self.pairs == "full":
            sim = matcher.score_matrix(text, audio)  # [B, B]
            return self.loss(sim, clip, clip, bi, co_swap, bi_swap) | _order_win(sim.diagonal(), co_swap)
        return self._hard_negatives(matcher, text, audio, clip, bi, co_swap, bi_swap)

    def _order_negative_scores(
        self, matcher: AudioTextMatcher, batch: dict[str, Any], text: Tokens
    ) -> tuple[Tensor | None, Tensor | None]:
        """Scores of each caption with its own clip's events swapped, co-attention and bi-encoder, each
        ``[B]`` with ``-inf`` for captions that state no order; ``(None, None)`` when off."""
        if not self.order_negatives:
            return None, None
        ordered = states_order(batch["captions"]).to(text.tokens.device)  # [B]
        if not ordered.any():
            return None, None
        swapped, done = matcher.swapped_audio_of(batch)
        ordered = ordered & done  # a clip without a pause has no order negative
        off = torch.tensor(float("-inf"), device=ordered.device)
        bi = (matcher.embed_text(text) * matcher.embed_audio(swapped)).sum(-1)  # [B]
        co = matcher.pair_scores(text, swapped) if matcher.cascade is not None else bi
        return torch.where(ordered, co.float(), off), torch.where(ordered, bi.float(), off)

    def _global_batch(
        self,
        matcher: AudioTextMatcher,
        text: Tokens,
        audio: Tokens,
        clip: Tensor,
        gather: Gather,
        rank: int,
    ) -> dict[str, Tensor]:
        """NT-Xent of this rank's captions and clips against every rank's."""
        all_text, all_text_clip, sizes = gather(text, clip)
        all_audio, all_audio_clip, _ = gather(audio, clip)
        offset = int(sizes[:rank].sum())

        def loss_of(t2a: Tensor, a2t: Tensor) -> Tensor:  # [b, N] each
            return self.loss.sharded_contrastive(t2a, a2t, clip, clip, all_text_clip, all_audio_clip, offset)

        loss_aux = loss_of(matcher.bi_scores(text, all_audio), matcher.bi_scores(all_text, audio).T)
        if matcher.cascade is None:
            return _result(self.loss, loss_aux, torch.zeros_like(loss_aux), 0.0)  # as self.loss(bi, …)
        loss_main = loss_of(matcher.score_matrix(text, all_audio), matcher.score_matrix(all_text, audio).T)
        return _result(self.loss, loss_main, loss_aux, self.loss.aux_weight)

    def _hard_negatives(
        self,
        matcher: AudioTextMatcher,
        text: Tokens,
        audio: Tokens,
        clip: Tensor,
        bi: Tensor,
        co_swap: Tensor | None,
        bi_swap: Tensor | None,
    ) -> dict[str, Tensor]:
        """Candidate loss over each query's positive and its M hardest in-batch negatives (both
        directions), plus each caption's order negative when given; bi-encoder NT-Xent as the aux term."""
        m = self.hard_negatives
        neg_audio = hardest_negatives(bi.detach(), clip, clip, m)  # [B, M] clips for each caption
        neg_text = hardest_negatives(bi.detach().T, clip, clip, m)  # [B, M] captions for each clip
        b = len(clip)
        rows = torch.arange(b, device=clip.device)
        text_index = torch.cat([rows, rows.repeat_interleave(m), neg_text.reshape(-1)])
        audio_index = torch.cat([rows, neg_audio.reshape(-1), rows.repeat_interleave(m)])
        scores = matcher.score_index_pairs(text, audio, text_index, audio_index)  # [B (1 + 2M)]
        pos, t2a, a2t = scores[:b], scores[b : b + b * m].view(b, m), scores[b + b * m :].view(b, m)
        if co_swap is not None:
            t2a = torch.cat([t2a, co_swap[:, None].to(t2a.dtype)], dim=1)  # [B, M + 1]
        loss_main = (self.loss.candidate_loss(pos, t2a) + self.loss.candidate_loss(pos, a2t)) / 2
        loss_aux = self.loss.contrastive(bi, clip, clip, bi_swap)
        return _result(self.loss, loss_main, loss_aux, self.loss.aux_weight) | _order_win(pos, co_swap)


def _result(loss: NTXentLoss, main: Tensor, aux: Tensor, aux_weight: float) -> dict[str, Tensor]:
    return {
        "loss": main + aux_weight * aux,
        "loss_main": main,
        "loss_aux": aux,
        "temperature": loss.temperature,
    }


def _order_win(own: Tensor, swap: Tensor | None) -> dict[str, Tensor]:
    """``order_win``: share of order-stating captions whose own clip outscores its swapped version."""
    if swap is None:
        return {}
    ordered = torch.isfinite(swap)
    return {"order_win": (own[ordered].detach() > swap[ordered].detach()).float().mean()}


def non_finite_loss(loss: Tensor, batch: dict[str, Any], where: str, elsewhere: bool) -> NumericalError:
    """The error that stops training at a NaN or infinite loss, naming the batch's files and the fix
    (``elsewhere``: this rank's loss is finite, another rank's is not)."""
    files = list(dict.fromkeys(batch.get("audio_paths", [])))
    if elsewhere:
        batch_text = "another process's batch (its log names the files)"
    else:
        log.error("non-finite loss; the batch's audio files: %s", files)
        more = f" and {len(files) - 16} more" if len(files) > 16 else ""
        batch_text = f"a batch of {len(files)} clip(s): " + ", ".join(f"'{f}'" for f in files[:16]) + more
    return NumericalError(
        f"training loss is {loss.detach().float().item()} at {where} in {batch_text}. Lower model.lr, set "
        "trainer.gradient_clip_val (e.g. 1.0), or check those files; then resume from the last good "
        "checkpoint with --ckpt_path last."
    )
