"""Retrieval metrics (DCASE definitions) from a dense score matrix, in both directions.

Definitions:

- Ranking: per query by score, descending. Ties are broken *pessimistically*: among equal scores the
  non-relevant items come first, so a constant score matrix scores as badly as possible.
- ``R@k`` is the hit rate: 1 if any relevant item is among the top ``k``, averaged over queries (what
  audio-text papers report; not torchmetrics' ``RetrievalRecall``).
- ``mAP@k``: ``AP@k(q) = 1/n_q * sum_{i <= k, item i relevant} precision@i`` with ``n_q`` the number of
  *all* relevant items of ``q`` (DCASE 2025 multi-positive definition). With one relevant item this is
  ``1/rank`` if ``rank <= k`` else 0 (DCASE mAP@10).

``retrieval_metrics`` is the pure, vectorised core; ``directional_metrics`` gives the logged names for
text→audio and audio→text. Under DDP the module gathers features, not metric rows, and computes these
once on the full matrix (``lacoat.distributed``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

RECALL_KS: tuple[int, ...] = (1, 5, 10)
MAP_K: int = 10
MULTI_MAP_K: int = 16

# Elements of the [q, N] chunk processed at once: a few int64/float tensors of this size (~32 MiB each).
_CHUNK_ELEMENTS: int = 1 << 22


def _sorted_relevance(scores: Tensor, relevance: Tensor) -> Tensor:
    """Relevance of each query's items in ranked order, ties broken pessimistically.

    Args:
        scores: Scores of each item for each query.
        relevance: True where the item is relevant to the query.

    Returns:
        ``relevance`` reordered per row by descending score; among equal scores non-relevant items first.

    Shape:
        - scores: ``[q, N]``
        - relevance: ``[q, N]``
        - output: ``[q, N]`` bool
    """
    # Non-relevant first, then a stable sort by score keeps that order inside groups of equal scores.
    by_relevance = torch.argsort(relevance.to(torch.uint8), dim=1, stable=True)  # [q, N]
    by_score = torch.argsort(scores.gather(1, by_relevance), dim=1, descending=True, stable=True)  # [q, N]
    order = by_relevance.gather(1, by_score)  # [q, N]
    return relevance.gather(1, order)  # [q, N]


def retrieval_metrics(
    scores: Tensor,
    relevance: Tensor,
    ks: Sequence[int] = RECALL_KS,
    map_k: int = MAP_K,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> dict[str, Tensor]:
    """Hit rate ``R@k`` for each ``k`` in ``ks`` and ``mAP@map_k``, averaged over queries.

    Queries are processed in chunks of rows so that memory stays at a few tensors of
    ``chunk_elements`` elements, whatever ``Q``.

    Args:
        scores: Score of each item for each query (query-major), higher is better. NaN is an error;
            ``-inf`` is allowed (it ranks last).
        relevance: True where the item is relevant to the query. Every query needs at least one.
        ks: Cut-offs of the hit rate ``R@k``; ``k >= N`` gives 1.
        map_k: Cut-off of the mean average precision.
        chunk_elements: About how many score elements to rank at once.

    Returns:
        ``{"R@k": ..., f"mAP@{map_k}": ...}``, scalar float32 tensors on the device of ``scores``.

    Raises:
        ValueError: On mismatched or non-2-D shapes, a non-bool ``relevance``, NaN scores, a cut-off
            below 1, or queries without any relevant item.

    Shape:
        - scores: ``[Q, N]``
        - relevance: ``[Q, N]``
    """
    if scores.dim() != 2 or scores.shape != relevance.shape:
        raise ValueError(
            f"scores and relevance must be 2-D of the same shape [Q, N], got {tuple(scores.shape)} "
            f"and {tuple(relevance.shape)}"
        )
    if relevance.dtype != torch.bool:
        raise ValueError(f"relevance must be a bool tensor, got {relevance.dtype}")
    if any(k < 1 for k in ks) or map_k < 1:
        raise ValueError(f"cut-offs must be >= 1, got ks={tuple(ks)}, map_k={map_k}")
    if torch.isnan(scores).any():
        raise ValueError(f"scores hold {int(torch.isnan(scores).sum())} NaN values")
    n_relevant = relevance.sum(dim=1)  # [Q]
    n_without = int((n_relevant == 0).sum())
    if n_without:
        raise ValueError(
            f"{n_without} of {relevance.shape[0]} queries have no relevant item; every query needs at least one"
        )

    n_queries, n_items = scores.shape
    top = min(max([*ks, map_k]), n_items)  # only the first `top` ranks are ever read
    rank = torch.arange(1, top + 1, device=scores.device, dtype=torch.float64)  # [top]
    hits = {k: torch.zeros((), dtype=torch.float64, device=scores.device) for k in ks}
    ap_sum = torch.zeros((), dtype=torch.float64, device=scores.device)
    rows = max(1, chunk_elements // max(n_items, 1))
    for start in range(0, n_queries, rows):
        ranked = _sorted_relevance(scores[start : start + rows], relevance[start : start + rows])  # [q, N]
        ranked = ranked[:, :top]  # [q, top]
        for k in ks:
            hits[k] += ranked[:, :k].any(dim=1).sum()
        found = ranked[:, :map_k].to(torch.float64)  # [q, min(map_k, N)]
        precision = found.cumsum(dim=1) / rank[: found.shape[1]]  # [q, min(map_k, N)]
        ap = (precision * found).sum(dim=1) / n_relevant[start : start + rows]  # [q]
        ap_sum += ap.sum()

    out = {f"R@{k}": (hits[k] / n_queries).float() for k in ks}
    out[f"mAP@{map_k}"] = (ap_sum / n_queries).float()
    return out


def metric_names(prefix: str, multi: bool = False) -> list[str]:
    """The logged metric names that ``directional_metrics`` returns.

    Args:
        prefix: The stage, e.g. ``"val"``.
        multi: Whether the multi-positive ``t2a_mAP@16_multi`` is included.

    Returns:
        Names such as ``"val/t2a_mAP@10"``, t2a first, then a2t, then the multi-positive one.
    """
    names = [
        f"{prefix}/{direction}_{name}"
        for direction in ("t2a", "a2t")
        for name in (f"mAP@{MAP_K}", *(f"R@{k}" for k in RECALL_KS))
    ]
    if multi:
        names.append(f"{prefix}/t2a_mAP@{MULTI_MAP_K}_multi")
    return names


def directional_metrics(
    sim: Tensor,
    relevance: Tensor,
    prefix: str,
    multi: tuple[Tensor, Tensor] | None = None,
    a2t_sim: Tensor | None = None,
) -> dict[str, float]:
    """Text→audio and audio→text ``mAP@10``, ``R@1/5/10`` (and multi-positive ``mAP@16``) by logged name.

    Audio→text is computed on ``sim.T`` (or ``a2t_sim.T``) and ``relevance.T``: a clip's relevant
    items are its captions.

    Args:
        sim: Text-major score matrix, captions × clips.
        relevance: True where the caption describes the clip. Every caption and every clip needs one.
        prefix: Stage prefix of the names, e.g. ``"val"`` gives ``"val/t2a_mAP@10"``.
        multi: Optional ``(multi_sim, multi_relevance)`` of multi-positive text queries (DCASE 2025)
            against the same clips; gives ``f"{prefix}/t2a_mAP@16_multi"``.
        a2t_sim: Scores to rank audio→text with, same layout as ``sim``, when they differ from the
            text→audio ones (two-stage retrieval shortlists each direction on its own).

    Returns:
        ``{name: value}`` with the names of ``metric_names(prefix, multi is not None)``.

    Shape:
        - sim: ``[n_text, n_audio]``
        - relevance: ``[n_text, n_audio]``
        - multi: ``([n_multi, n_audio], [n_multi, n_audio])``
    """
    out: dict[str, float] = {}
    a2t_sim = sim if a2t_sim is None else a2t_sim
    for direction, s, r in (("t2a", sim, relevance), ("a2t", a2t_sim.T, relevance.T)):
        values = retrieval_metrics(s, r, RECALL_KS, MAP_K)
        out[f"{prefix}/{direction}_mAP@{MAP_K}"] = values[f"mAP@{MAP_K}"].item()
        for k in RECALL_KS:
            out[f"{prefix}/{direction}_R@{k}"] = values[f"R@{k}"].item()
    if multi is not None:
        multi_sim, multi_relevance = multi
        if multi_sim.dim() != 2 or multi_sim.shape[1] != sim.shape[1]:
            raise ValueError(
                f"multi-positive scores must be [n_multi, {sim.shape[1]}] (same clips as sim), "
                f"got {tuple(multi_sim.shape)}"
            )
        values = retrieval_metrics(multi_sim, multi_relevance, (), MULTI_MAP_K)
        out[f"{prefix}/t2a_mAP@{MULTI_MAP_K}_multi"] = values[f"mAP@{MULTI_MAP_K}"].item()
    return out


def twin_win_rates(own: Tensor, twin: Tensor, changes: Sequence[str], prefix: str) -> dict[str, float]:
    """How often a caption's own clip outscores its twin, per kind of change and over all.

    A tie counts as a loss (the pessimistic rule of the rankings above).

    Args:
        own: score of each compared caption with its own clip.
        twin: score of the same caption with the twin clip.
        changes: what each twin changes (``order``, ``count``, ``pitch``).
        prefix: stage prefix, e.g. ``"test"`` gives ``"test/twin_order"``.

    Returns:
        ``{f"{prefix}/twin_{change}": rate}`` for each change present, and ``f"{prefix}/twin_all"``;
        empty when there is nothing to compare.

    Shape:
        - own, twin: ``[C]``; changes: ``C`` strings
    """
    if own.shape != twin.shape or own.dim() != 1 or len(changes) != own.shape[0]:
        raise ValueError(
            f"own and twin must be [C] with C changes, got {tuple(own.shape)}, {tuple(twin.shape)}, {len(changes)}"
        )
    wins = (own.float() > twin.float()).cpu()
    kinds = list(changes)
    out = {}
    for change in dict.fromkeys(kinds):
        mask = torch.tensor([k == change for k in kinds])
        out[f"{prefix}/twin_{change}"] = wins[mask].float().mean().item()
    if kinds:
        out[f"{prefix}/twin_all"] = wins.float().mean().item()
    return out
