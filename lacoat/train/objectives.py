"""Training objectives: which (caption, clip) pairs of a batch a matcher scores, fed to ``NTXentLoss``.

``PairObjective`` owns the three ways of training the cascade, and the bi-encoder's auxiliary term:

* ``full``: every caption against every clip of the batch (B² cascade passes), NT-Xent both ways;
* ``hard_negatives``: each query's positive and its M hardest in-batch negatives ranked by the
  bi-encoder, both directions (B·(1+2M) passes; ALBEF / BLIP style candidate loss);
* global batch (``gather_negatives`` under DDP): this rank's captions and clips against the token
  features of every rank, gathered with their gradients (open_clip's ``gather_with_grad``).

Compositional negatives, each ``none``, ``audio``, ``text`` or ``both``: with ``order_negatives``
(``lacoat.negatives.order``) every caption that states an order of events also meets its own clip
with the events swapped (``audio``: one more caption → audio negative), and every clip meets its
caption with the order reversed in words (``text``: one more audio → caption negative). With
``count_negatives`` every caption that states a count meets its own clip with one occurrence of its
briefest sound repeated or left out (``audio``, ``lacoat.negatives.audio_edits.recount``), and every clip its
caption with one stated count changed by one (``text``, ``lacoat.negatives.text``); with
``count_rewrites`` N > 1, each of up to N such captions (every count it states, up and down) is a
negative of the clip; with ``count_edits`` 2, the caption meets its clip with one occurrence more
and with one fewer.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor

from lacoat.contracts import Tokens
from lacoat.distributed import Gather
from lacoat.errors import LacoatError, NumericalError
from lacoat.models.matcher import AudioTextMatcher
from lacoat.negatives.audio_edits import ORDER_EDIT, Edit, count_edit, edit_windows, frame_samples
from lacoat.negatives.order import states_order
from lacoat.negatives.text import REWRITES, pick, states_count
from lacoat.train.losses import ExtraNegatives, NTXentLoss, hardest_negatives

Negatives = Literal["none", "audio", "text", "both"]

log = logging.getLogger(__name__)


class PairObjective:
    """The loss of one training batch.

    Args:
        loss: NT-Xent (temperature, ``aux_weight`` of the bi-encoder term).
        pairs: ``full`` or ``hard_negatives`` (see the module docstring).
        hard_negatives: M, negatives per query with ``hard_negatives``.
        order_negatives: ``audio``: each order-stating caption's own clip with its events swapped is
            one more negative of the caption; ``text``: each clip's caption with the order reversed is
            one more negative of the clip; ``both``; ``none``.
        count_negatives: ``audio``: each count-stating caption's own clip with one occurrence more
            or fewer is one more negative of the caption; ``text``: each clip's caption with one
            stated count changed by one is one more negative of the clip; ``both``; ``none``
            (``True`` / ``False`` mean ``text`` / ``none``).
        count_rewrites: on the text side, how many of a caption's count changes its clip meets as
            negatives (``lacoat.negatives.text.count_changes``; 1: the one a checksum picks).
        count_edits: on the audio side, 1: each counting caption meets its clip with one occurrence
            more or fewer (a checksum picks); 2: with both, two negatives.
        gather_negatives: under DDP, score this rank's captions and clips against the batches of
            all ranks (``full`` pairs and the bi-encoder; ``hard_negatives`` stays per rank).
    """

    def __init__(
        self,
        loss: NTXentLoss,
        pairs: Literal["full", "hard_negatives"] = "full",
        hard_negatives: int = 7,
        order_negatives: Negatives = "none",
        count_negatives: Negatives | bool = "none",
        count_rewrites: int = 1,
        count_edits: Literal[1, 2] = 1,
        gather_negatives: bool = False,
    ) -> None:
        if count_rewrites < 1:
            raise LacoatError(f"model.objective count_rewrites is {count_rewrites}; it must be 1 or more")
        if count_edits not in (1, 2):
            raise LacoatError(
                f"model.objective count_edits is {count_edits}; it must be 1 (more or fewer) or 2 (both)"
            )
        count = negatives_of(count_negatives)
        for name, n, side, unmade in (
            ("count_edits", count_edits, "audio", "no clip is recounted"),
            ("count_rewrites", count_rewrites, "text", "no caption is rewritten"),
        ):
            if n > 1 and count not in (side, "both"):
                raise LacoatError(
                    f"model.objective {name} is {n}, but count_negatives is '{count}', so {unmade}; set "
                    f"count_negatives to {side} or both, or drop {name}"
                )
        self.loss, self.pairs, self.hard_negatives = loss, pairs, hard_negatives
        sides = {"order": order_negatives, "count": count}
        # clip edits each caption meets as negatives, one column each of the caption → audio side
        self.audio_edits = _columns(sides, "audio", {"order": 1, "count": count_edits})
        # caption rewrites each clip meets as negatives, one column each of the audio → caption side
        self.text_rewrites = _columns(sides, "text", {"order": 1, "count": count_rewrites})
        self._warned = False  # about audio edits cached tokens cannot take
        if gather_negatives and (self.audio_edits or self.text_rewrites):
            raise LacoatError(
                "model.objective: order_negatives and count_negatives do not combine with "
                "gather_negatives yet; turn one off"
            )
        self.gather_negatives = gather_negatives

    def __call__(
        self,
        matcher: AudioTextMatcher,
        batch: dict[str, Any],
        gather: Gather | None = None,
        rank: int = 0,
    ) -> dict[str, Tensor]:
        """``loss``, ``loss_main``, ``loss_aux``, ``temperature`` and, with order or count negatives,
        ``order_win`` and ``count_win`` (how often a caption's own clip outscores its swapped /
        recounted version), ``order_win_text`` and ``count_win_text`` (how often a clip's caption
        outscores its reversed / recounted version).

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
        co_extra, bi_extra = self._extra_negative_scores(matcher, batch, text, audio)
        if matcher.cascade is None:
            return self.loss(bi, clip, clip, extra=bi_extra) | self._wins(bi.diagonal(), bi_extra)
        if self.pairs == "full":
            sim = matcher.score_matrix(text, audio)  # [B, B]
            out = self.loss(sim, clip, clip, bi, co_extra, bi_extra)
            return out | self._wins(sim.diagonal(), co_extra)
        return self._hard_negatives(matcher, text, audio, clip, bi, co_extra, bi_extra)

    def _extra_negative_scores(
        self, matcher: AudioTextMatcher, batch: dict[str, Any], text: Tokens, audio: Tokens
    ) -> tuple[ExtraNegatives, ExtraNegatives]:
        """Order and count negatives scored by co-attention and by the bi-encoder: ``t2a`` ``[B, J]``
        each caption with its own clip through each of the ``J`` ``audio_edits``; ``a2t`` ``[B, K]``
        each clip with its caption through each of the ``K`` ``text_rewrites``; ``-inf`` where a row
        has none; None for a side that is off."""
        co, bi = ExtraNegatives(), ExtraNegatives()
        device, b = text.tokens.device, len(text)
        captions = batch["captions"]
        if self.audio_edits:  # column j: each caption's own clip through edit j
            rows, columns, edits = [], [], []
            stating = {kind: AUDIO_EDITS[kind][0](captions) for kind in dict.fromkeys(self.audio_edits)}
            for j, kind in enumerate(self.audio_edits):
                nth = self.audio_edits[:j].count(kind)  # this column takes each caption's nth edit
                for i in stating[kind].nonzero().flatten().tolist():
                    rows.append(i)
                    columns.append(j)
                    edits.append(AUDIO_EDITS[kind][1](captions[i])[nth])
            shape = (b, len(self.audio_edits))
            co_t2a = bi_t2a = torch.full(shape, float("-inf"), device=device)
            if rows:  # one encoder pass and one cascade pass for every edit
                sides = ("audio", "audio_valid", "audio_tokens", "audio_mask")
                index = torch.tensor(rows)
                edited, done = edited_audio(matcher, {k: batch[k][index] for k in sides if k in batch}, edits)
                done = done.cpu()  # a clip the edit cannot be made on has no negative
                self._warn_if_unedited(batch, [self.audio_edits[j] for j in columns], edits)
                if done.any():
                    at = (index[done].to(device), torch.tensor(columns)[done].to(device))
                    co_t2a, bi_t2a = _extra_scores(matcher, text[at[0]], edited[done.to(device)], at, shape)
            co, bi = co._replace(t2a=co_t2a), bi._replace(t2a=bi_t2a)
        if self.text_rewrites:  # column k: each clip's caption through rewrite k
            turned_captions, rows, columns = [], [], []
            every = {
                kind: [REWRITES[kind](c) for c in captions] for kind in dict.fromkeys(self.text_rewrites)
            }
            for k, kind in enumerate(self.text_rewrites):
                nth = self.text_rewrites[:k].count(kind)  # this column takes each caption's nth rewrite
                for i, turned in enumerate(every[kind]):  # only captions with an nth rewrite are scored
                    if nth < len(turned) and turned[nth] != captions[i]:
                        turned_captions.append(turned[nth])
                        rows.append(i)
                        columns.append(k)
            at = (torch.tensor(rows, device=device), torch.tensor(columns, device=device))
            shape = (b, len(self.text_rewrites))
            if turned_captions:  # one encoder pass and one cascade pass for every rewrite
                co_a2t, bi_a2t = _extra_scores(
                    matcher, matcher.encode_text(turned_captions), audio[at[0]], at, shape
                )
            else:
                co_a2t = bi_a2t = torch.full(shape, float("-inf"), device=device)
            co, bi = co._replace(a2t=co_a2t), bi._replace(a2t=bi_a2t)
        return co, bi

    def _warn_if_unedited(self, batch: dict[str, Any], kinds: list[str], edits: list[Edit]) -> None:
        """Say once when cached encoder outputs leave an audio-side negative unmade."""
        if "audio_tokens" not in batch or self._warned:
            return
        missing = sorted({kind for kind, edit in zip(kinds, edits, strict=True) if edit.tokens is None})
        if missing:
            self._warned = True
            log.warning(
                "model.%s_negatives on the audio side needs waveforms, but the clips come as cached "
                "encoder outputs (data.feature_cache): no audio %s negatives are made; use 'text', or "
                "train without the feature cache",
                missing[0],
                missing[0],
            )

    def _wins(self, own: Tensor, extra: ExtraNegatives) -> dict[str, Tensor]:
        """``{kind}_win``: share of captions whose own clip outscores its ``kind`` edit;
        ``{kind}_win_text``: share of clips whose caption outscores its ``kind`` rewrite (rows that
        have one)."""
        columns: dict[str, list[Tensor]] = {}  # name -> the columns it pools
        if extra.t2a is not None:
            for j, kind in enumerate(self.audio_edits):
                columns.setdefault(f"{kind}_win", []).append(extra.t2a[:, j])
        if extra.a2t is not None:
            for k, kind in enumerate(self.text_rewrites):
                columns.setdefault(f"{kind}_win_text", []).append(extra.a2t[:, k])
        out = {}
        for name, others in columns.items():
            other = torch.stack(others, dim=1).detach()  # [B, columns]
            has = torch.isfinite(other)
            if has.any():
                out[name] = (own.detach()[:, None].expand_as(other)[has] > other[has]).float().mean()
        return out

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
        co_extra: ExtraNegatives,
        bi_extra: ExtraNegatives,
    ) -> dict[str, Tensor]:
        """Candidate loss over each query's positive and its M hardest in-batch negatives (both
        directions), plus each row's order and count negatives when given; bi-encoder NT-Xent as the
        aux term."""
        m = self.hard_negatives
        neg_audio = hardest_negatives(bi.detach(), clip, clip, m)  # [B, M] clips for each caption
        neg_text = hardest_negatives(bi.detach().T, clip, clip, m)  # [B, M] captions for each clip
        b = len(clip)
        rows = torch.arange(b, device=clip.device)
        text_index = torch.cat([rows, rows.repeat_interleave(m), neg_text.reshape(-1)])
        audio_index = torch.cat([rows, neg_audio.reshape(-1), rows.repeat_interleave(m)])
        scores = matcher.score_index_pairs(text, audio, text_index, audio_index)  # [B (1 + 2M)]
        pos, t2a, a2t = scores[:b], scores[b : b + b * m].view(b, m), scores[b + b * m :].view(b, m)
        if co_extra.t2a is not None:
            t2a = torch.cat([t2a, co_extra.t2a.to(t2a.dtype)], dim=1)  # [B, M + J]
        if co_extra.a2t is not None:
            a2t = torch.cat([a2t, co_extra.a2t.to(a2t.dtype)], dim=1)  # [B, M + K]
        loss_main = (self.loss.candidate_loss(pos, t2a) + self.loss.candidate_loss(pos, a2t)) / 2
        loss_aux = self.loss.contrastive(bi, clip, clip, bi_extra)
        return _result(self.loss, loss_main, loss_aux, self.loss.aux_weight) | self._wins(pos, co_extra)


def negatives_of(value: Negatives | bool) -> Negatives:
    """A config's ``count_negatives``: ``True`` / ``False`` (before the audio side existed) are
    ``text`` / ``none``."""
    if isinstance(value, bool):
        return "text" if value else "none"
    return value


def _columns(sides: dict[str, Negatives], side: str, per_kind: dict[str, int]) -> list[str]:
    """The kind of each negative column of ``side`` (``audio`` or ``text``): ``per_kind[kind]`` columns
    of every kind that is on for that side."""
    return [kind for kind, on in sides.items() if on in (side, "both") for _ in range(per_kind[kind])]


def _count_edits(caption: str) -> list[Edit]:
    # one occurrence more or fewer, the same for the same caption (a run and its resume agree); then
    # the other
    more = pick(caption, [True, False])
    return [count_edit(more=more), count_edit(more=not more)]


# kind -> (which captions state it, the edits of a caption's clip, the one a single negative takes first)
AUDIO_EDITS = {"order": (states_order, lambda caption: [ORDER_EDIT]), "count": (states_count, _count_edits)}


def _result(loss: NTXentLoss, main: Tensor, aux: Tensor, aux_weight: float) -> dict[str, Tensor]:
    return {
        "loss": main + aux_weight * aux,
        "loss_main": main,
        "loss_aux": aux,
        "temperature": loss.temperature,
    }


def _extra_scores(
    matcher: AudioTextMatcher, text: Tokens, audio: Tokens, at: tuple[Tensor, ...], shape: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """Co-attention and bi-encoder scores of the aligned pairs (text p, clip p), placed at index
    ``at[·][p]`` of float32 tensors of ``shape`` that hold ``-inf`` (no extra negative) elsewhere."""
    bi = (matcher.embed_text(text) * matcher.embed_audio(audio)).sum(-1)  # [p]
    co = matcher.pair_scores(text, audio) if matcher.cascade is not None else bi
    out = []
    for scores in (co, bi):
        full = torch.full(shape, float("-inf"), dtype=torch.float32, device=scores.device)
        out.append(full.index_put(at, scores.float()))
    return out[0], out[1]


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


def edited_audio(matcher: AudioTextMatcher, batch: dict, edits: list[Edit]) -> tuple[Tokens, Tensor]:
    """``Tokens`` of a batch's clips, each through its edit (``lacoat.negatives.audio_edits``), and
    ``[B]`` bool: which clips were edited. Cached encoder outputs (no waveform) go through the edits'
    token edits, where they have one."""
    if "audio_tokens" in batch:
        tokens, mask = batch["audio_tokens"], batch["audio_mask"]
        done = torch.tensor([e.tokens is not None for e in edits], device=tokens.device)
        edited = [
            e.tokens(t[None], m[None])[0] if e.tokens else t
            for e, t, m in zip(edits, tokens, mask, strict=True)
        ]
        return matcher.project_audio(torch.stack(edited) if edited else tokens, mask), done
    frame = frame_samples(matcher.audio_encoder.sample_rate)
    audio, done = edit_windows(batch["audio"], batch["audio_valid"], [e.wave for e in edits], frame)
    return matcher.encode_audio(audio, batch["audio_valid"]), done.to(audio.device)
