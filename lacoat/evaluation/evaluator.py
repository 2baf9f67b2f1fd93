"""Evaluation of a matcher on a split: collect → gather → score → metrics, in one place.

``Evaluator`` collects the token features of the split's unique clips and of its queries (two
dataloaders) batch by batch, gathers every rank's features under DDP (dropping the distributed
sampler's padding duplicates, so no metric is a per-rank average), scores every query against every
clip (exhaustive, or the bi-encoder's shortlists re-scored by the cascade) and computes the retrieval
metrics (``lacoat.evaluation.metrics``) of the whole matrix, the first stage's under ``{stage}_bi/``, and SynthCaps twin win rates.
``LacoatModule`` runs it for validation, test and predict.

Collected state is a list of token batches of varying length (``Tokens`` with masks), which
``lacoat.distributed.gather_tokens`` pads for ``all_gather``; a ``torchmetrics.Metric`` with ``cat``
state would also pad, but would need one state per tensor and its own sync outside Lightning's
epoch-end hook, for no gain here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

from lacoat.contracts import Tokens
from lacoat.distributed import Gather, RankShare
from lacoat.evaluation.metrics import directional_metrics, twin_win_rates
from lacoat.models.matcher import AudioTextMatcher

log = logging.getLogger(__name__)


@dataclass
class EvalScores:
    """Scores of an evaluation: ``t2a`` and ``a2t`` rankings and the bi-encoder's ``bi`` (each
    ``[q, n]``, text-major; the two rankings are one matrix in exhaustive mode), the split's query and
    clip indices of the rows and columns, and the scored ``text`` and ``audio`` tokens."""

    t2a: Tensor
    a2t: Tensor
    bi: Tensor
    query_index: Tensor
    clip_index: Tensor
    text: Tokens
    audio: Tokens


class Evaluator:
    """Collects a split's features and scores them with a matcher.

    Args:
        matcher: the model.
        text_block: queries prepared at once when scoring exhaustively.
        first_stage_trained: the bi-encoder was trained (else re-ranking its shortlists is warned of).
    """

    def __init__(
        self, matcher: AudioTextMatcher, text_block: int = 256, first_stage_trained: bool = True
    ) -> None:
        self.matcher, self.text_block = matcher, text_block
        self.first_stage_trained = first_stage_trained
        self._items: dict[str, list[tuple[Tensor, Tokens]]] = {"audio": [], "text": []}
        self.twins: pd.DataFrame | None = None  # the latest twin comparisons scored (``twin_table``)

    def start(self) -> None:
        """Forget what was collected."""
        self._items = {"audio": [], "text": []}

    def collect(self, batch: dict[str, Any]) -> None:
        """Encode a batch of clips (``clip_index``) or of queries (``query_index``) and keep its tokens."""
        if "clip_index" in batch:  # a batch whose clips were all skipped has neither index
            self._items["audio"].append((batch["clip_index"], self.matcher.audio_of(batch)))
        elif "query_index" in batch:
            self._items["text"].append((batch["query_index"], self.matcher.text_of(batch)))

    @property
    def has_both_sides(self) -> bool:
        return bool(self._items["audio"]) and bool(self._items["text"])

    def score(
        self,
        mode: Literal["exhaustive", "rerank"],
        rerank_k: int,
        fusion_alpha: float,
        gather: Gather | None = None,
        share: RankShare | None = None,
    ) -> EvalScores:
        """Score everything collected (every rank's, with ``gather``), then forget it.

        Args:
            mode: ``exhaustive`` scores every pair with the cascade; ``rerank`` re-scores the
                bi-encoder's ``rerank_k`` shortlist of each query (t2a) and of each clip (a2t).
            rerank_k: shortlist size.
            fusion_alpha: a pair's score is ``s_co + fusion_alpha * s_bi``.
            gather: all-gather of token features across ranks (None: one process).
            share: split the cascade's work across ranks: each scores its share of the query rows
                (exhaustive) or of the shortlisted pairs (rerank); every rank receives all scores.
        """
        parts, indices = {}, {}
        for side, items in self._items.items():
            feats = Tokens.cat([f for _, f in items])
            index = torch.cat([i for i, _ in items]).to(feats.tokens.device)
            if gather is not None:
                feats, index, _ = gather(feats, index)
            parts[side], indices[side] = unique_rows(feats, index)
        self.start()
        text, audio, m = parts["text"], parts["audio"], self.matcher
        bi = m.bi_scores(text, audio)  # [q, n]
        if mode == "rerank" and m.cascade is not None and not self.first_stage_trained:
            log.warning(
                "rerank evaluation of a cascade trained with loss.aux_weight 0: its bi-encoder first stage "
                "was never trained, so the shortlists are close to random; use --model.eval_mode exhaustive"
            )
        if mode == "rerank":
            pairs = None
            if share is not None and m.cascade is not None:

                def pairs(ti: Tensor, ai: Tensor) -> Tensor:  # [p] shortlisted pairs, split by rank
                    return share.rows(len(ti), lambda s: m.score_index_pairs(text, audio, ti[s], ai[s]))

            t2a, a2t = m.rerank_scores(text, audio, rerank_k, fusion_alpha, bi=bi, score_pairs=pairs)
        else:
            fused = fusion_alpha * bi if m.cascade is not None else 0.0

            def rows(s: slice) -> Tensor:  # [q_s, n] one share of the query rows
                return m.score_matrix(text[s], audio, text_block=self.text_block)

            co = rows(slice(None)) if share is None else share.rows(len(text), rows, (len(audio),))
            t2a = a2t = co + fused
        return EvalScores(t2a, a2t, bi, indices["text"].cpu(), indices["audio"].cpu(), text, audio)

    def metrics(self, stage: str, scores: EvalScores, eval_set: Any, fusion_alpha: float) -> dict[str, float]:
        """Retrieval metrics of ``scores`` (rows and columns: queries and clips of ``eval_set``), and
        with a cascade the same metrics of the model's own bi-encoder scores under ``{stage}_bi/``
        (the first stage alone: what co-attention adds is the difference). Where the split has twin
        comparisons (SynthCaps), the twin win rates of both (``{stage}/twin_order`` …).

        When only part of the split was scored (``limit_val_batches`` and the like), the caption
        queries whose clip was scored are ranked among the scored clips that have a scored caption,
        and a warning says so.
        """
        query_index, clip_index = scores.query_index, scores.clip_index
        device = scores.t2a.device
        relevance = eval_set.relevance(None)[query_index][:, clip_index].to(device)  # [q, n]
        group = eval_set.queries["group"].to_numpy()[query_index.numpy()]
        captions = torch.as_tensor(group == "caption", device=device) & relevance.any(1)
        clips = relevance[captions].any(0)
        if len(query_index) < len(eval_set.queries) or len(clip_index) < len(eval_set.clips):
            log.warning(
                "%s: partial evaluation on %d of %d queries and %d of %d clips",
                stage,
                int(captions.sum()),
                len(eval_set.queries),
                int(clips.sum()),
                len(eval_set.clips),
            )
        rel_c = relevance[captions][:, clips]
        multi_rows = torch.as_tensor(group == "multi", device=device) & relevance.any(1)
        results: dict[str, float] = {}
        runs = [(stage, scores.t2a, scores.a2t), (f"{stage}_bi", scores.bi, scores.bi)]
        for name, t2a, a2t in runs[: 2 if self.matcher.cascade is not None else 1]:
            multi = (t2a[multi_rows].float(), relevance[multi_rows]) if multi_rows.any() else None
            results |= directional_metrics(
                t2a[captions][:, clips].float(),
                rel_c,
                name,
                multi=multi,
                a2t_sim=a2t[captions][:, clips].float(),
            )
        self.twins = None
        if eval_set.twins is not None:
            results |= self.twin_rates(stage, eval_set, scores, fusion_alpha)
        return results

    def twin_rates(
        self, stage: str, eval_set: Any, scores: EvalScores, fusion_alpha: float
    ) -> dict[str, float]:
        """Twin win rates from the model's pair scores (always computed, whatever the mode) and from
        its bi-encoder scores, over the comparisons whose query and clips were scored. The
        comparisons themselves, with their scores, are kept in ``self.twins`` (``twin_table``)."""
        self.twins = table = twin_table(self.matcher, eval_set, scores, fusion_alpha)
        if table is None:
            return {}
        own, twin = (torch.tensor(table[c].to_numpy()) for c in ("own_score", "twin_score"))
        changes = table["change"].tolist()
        out = twin_win_rates(own, twin, changes, stage)
        if self.matcher.cascade is not None:
            own_bi, twin_bi = (torch.tensor(table[c].to_numpy()) for c in ("own_score_bi", "twin_score_bi"))
            out |= twin_win_rates(own_bi, twin_bi, changes, f"{stage}_bi")
        return out


def twin_table(
    matcher: AudioTextMatcher, eval_set: Any, scores: EvalScores, fusion_alpha: float
) -> pd.DataFrame | None:
    """The twin comparisons of ``eval_set`` whose query and clips were scored, each with its scores:
    ``query``, ``clip`` and ``twin`` (rows of the split's queries and clips), ``change``, the caption
    (``text``), the clips' ``file_name`` and ``twin_file_name``, ``own_score`` and
    ``twin_score`` (the model's pair scores, fused with the bi-encoder's by ``fusion_alpha`` for a
    cascade) and ``own_score_bi`` / ``twin_score_bi`` (the bi-encoder's). None when none was scored."""
    row = {int(q): i for i, q in enumerate(scores.query_index)}
    col = {int(c): i for i, c in enumerate(scores.clip_index)}
    twins = eval_set.twins
    kept = twins[twins["query"].isin(row) & twins["clip"].isin(col) & twins["twin"].isin(col)]
    if kept.empty:
        return None
    q = torch.tensor([row[int(v)] for v in kept["query"]])
    own = torch.tensor([col[int(v)] for v in kept["clip"]])
    other = torch.tensor([col[int(v)] for v in kept["twin"]])
    text_index = torch.cat([q, q]).to(scores.bi.device)
    audio_index = torch.cat([own, other]).to(scores.bi.device)
    bi = scores.bi[text_index, audio_index].float()  # [2C]: own clips, then twins
    pair = matcher.score_index_pairs(scores.text, scores.audio, text_index, audio_index).float()
    if matcher.cascade is not None:
        pair = pair + fusion_alpha * bi
    n = len(q)
    names = eval_set.clips["file_name"].to_numpy()
    return kept.reset_index(drop=True).assign(
        text=eval_set.queries["text"].to_numpy()[kept["query"].to_numpy()],
        file_name=names[kept["clip"].to_numpy()],
        twin_file_name=names[kept["twin"].to_numpy()],
        own_score=pair[:n].cpu().numpy(),
        twin_score=pair[n:].cpu().numpy(),
        own_score_bi=bi[:n].cpu().numpy(),
        twin_score_bi=bi[n:].cpu().numpy(),
    )


def rankings(scores: EvalScores, eval_set: Any, top_k: int) -> pd.DataFrame:
    """The ``top_k`` clips of each query (text → audio): ``query``, ``rank``, ``file_name``, ``score``."""
    sim = scores.t2a
    k = min(top_k, sim.shape[1])
    top, index = sim.topk(k, dim=1)  # [q, k]
    names = eval_set.clips["file_name"].to_numpy()[scores.clip_index.numpy()]
    return pd.DataFrame(
        {
            "query": eval_set.queries["text"].to_numpy()[scores.query_index.numpy()].repeat(k),
            "rank": list(range(1, k + 1)) * sim.shape[0],
            "file_name": names[index.reshape(-1).cpu().numpy()],
            "score": top.reshape(-1).float().cpu().numpy(),
        }
    )


def unique_rows(tokens: Tokens, index: Tensor) -> tuple[Tokens, Tensor]:
    """Rows sorted by ``index`` with repeated indices dropped (``DistributedSampler`` pads each rank
    to the same length by repeating items; they must be scored once)."""
    order = torch.argsort(index, stable=True)
    index = index[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    keep = order[first]
    return tokens[keep.to(tokens.tokens.device)], index[first]
