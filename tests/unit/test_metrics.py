"""Retrieval metrics: hand-computed values, pessimistic ties, torchmetrics cross-check, metric gathering."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from lacoat.evaluation.metrics import directional_metrics, metric_names, retrieval_metrics


def ranked_rows(n_items: int, relevant_ranks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores where item ``i`` has rank ``i + 1`` and relevance at the given 1-based ranks.

    Shape:
        - output: ``([Q, N], [Q, N])``
    """
    scores = torch.arange(n_items, 0, -1, dtype=torch.float32).repeat(len(relevant_ranks), 1)  # [Q, N]
    relevance = torch.zeros(len(relevant_ranks), n_items, dtype=torch.bool)  # [Q, N]
    for q, ranks in enumerate(relevant_ranks):
        relevance[q, torch.tensor(ranks) - 1] = True
    return scores, relevance


def shuffle_items(
    scores: torch.Tensor, relevance: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ranking with items in a random column order (the metrics must not depend on it)."""
    perm = torch.randperm(scores.shape[1], generator=torch.Generator().manual_seed(seed))
    return scores[:, perm], relevance[:, perm]


def test_single_positive_hand_values() -> None:
    scores, relevance = ranked_rows(12, [[1], [3], [12]])
    scores, relevance = shuffle_items(scores, relevance, seed=0)
    out = retrieval_metrics(scores, relevance)
    assert set(out) == {"R@1", "R@5", "R@10", "mAP@10"}
    assert out["R@1"].item() == pytest.approx(1 / 3)
    assert out["R@5"].item() == pytest.approx(2 / 3)
    assert out["R@10"].item() == pytest.approx(2 / 3)
    assert out["mAP@10"].item() == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in out.values())


def test_multi_positive_divides_by_all_relevant() -> None:
    # q0: 4 relevant at ranks 2, 5, 11, 15 -> only 2 within k=10: AP = (1/2 + 2/5) / 4
    # q1: 2 relevant at ranks 1, 3: AP = (1/1 + 2/3) / 2
    scores, relevance = ranked_rows(20, [[2, 5, 11, 15], [1, 3]])
    scores, relevance = shuffle_items(scores, relevance, seed=1)
    out = retrieval_metrics(scores, relevance, ks=(1, 5), map_k=10)
    assert set(out) == {"R@1", "R@5", "mAP@10"}
    ap0 = (1 / 2 + 2 / 5) / 4
    ap1 = (1 + 2 / 3) / 2
    assert out["mAP@10"].item() == pytest.approx((ap0 + ap1) / 2)
    assert out["R@1"].item() == pytest.approx(0.5)
    assert out["R@5"].item() == pytest.approx(1.0)
    # mAP@16 reaches the 11th and 15th: (1/2 + 2/5 + 3/11 + 4/15) / 4
    out16 = retrieval_metrics(scores, relevance, ks=(), map_k=16)
    assert out16["mAP@16"].item() == pytest.approx(((1 / 2 + 2 / 5 + 3 / 11 + 4 / 15) / 4 + ap1) / 2)


def test_ties_are_pessimistic() -> None:
    relevance = torch.eye(3, 4, dtype=torch.bool)  # [3, 4] one relevant item each
    out = retrieval_metrics(torch.zeros(3, 4), relevance)
    assert out["R@1"].item() == 0.0  # relevant item ranks after the 3 tied non-relevant ones
    assert out["R@5"].item() == 1.0  # k >= N
    assert out["mAP@10"].item() == pytest.approx(1 / 4)
    # Tie inside a ranking: [5, 5, 5, 1] with relevance [T, F, T, F] ranks as F, T, T, F.
    scores = torch.tensor([[5.0, 5.0, 5.0, 1.0]])
    relevance = torch.tensor([[True, False, True, False]])
    out = retrieval_metrics(scores, relevance)
    assert out["R@1"].item() == 0.0
    assert out["mAP@10"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_chunking_does_not_change_values() -> None:
    gen = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 5, (37, 23), generator=gen).float()  # many ties
    relevance = torch.rand(37, 23, generator=gen) < 0.2
    relevance[torch.arange(37), torch.randint(0, 23, (37,), generator=gen)] = True
    full = retrieval_metrics(scores, relevance, ks=(1, 5, 10, 50), map_k=16)
    small = retrieval_metrics(scores, relevance, ks=(1, 5, 10, 50), map_k=16, chunk_elements=50)
    assert {k: v.item() for k, v in full.items()} == {k: v.item() for k, v in small.items()}
    assert full["R@50"].item() == 1.0


def test_errors() -> None:
    relevance = torch.eye(3, 4, dtype=torch.bool)
    relevance[1] = False
    with pytest.raises(ValueError, match="1 of 3 queries have no relevant item"):
        retrieval_metrics(torch.zeros(3, 4), relevance)
    with pytest.raises(ValueError, match="same shape"):
        retrieval_metrics(torch.zeros(3, 5), torch.eye(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        retrieval_metrics(torch.zeros(3, 4), torch.eye(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((3, 4), float("nan")), torch.eye(3, 4, dtype=torch.bool))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_positive_matches_torchmetrics(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n_queries, n_items = 40, 30
    scores = torch.randn(n_queries, n_items, generator=gen, dtype=torch.float64)  # continuous: no ties
    relevance = torch.zeros(n_queries, n_items, dtype=torch.bool)
    relevance[torch.arange(n_queries), torch.randint(0, n_items, (n_queries,), generator=gen)] = True
    ours = retrieval_metrics(scores, relevance)

    # torchmetrics >= 1.7.4 treats relevant items with score <= 0 as not retrieved: use positive scores.
    preds = scores.exp().flatten()
    target = relevance.flatten()
    indexes = torch.arange(n_queries).repeat_interleave(n_items)
    expected = {"mAP@10": RetrievalMAP(top_k=10)(preds, target, indexes=indexes)}
    for k in (1, 5, 10):
        expected[f"R@{k}"] = RetrievalHitRate(top_k=k)(preds, target, indexes=indexes)
    for name, value in expected.items():
        assert ours[name].item() == pytest.approx(value.item(), abs=1e-6), name


def test_multi_positive_hit_rate_matches_torchmetrics() -> None:
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(25, 40, generator=gen)
    relevance = torch.rand(25, 40, generator=gen) < 0.1
    relevance[:, 0] = True
    ours = retrieval_metrics(scores, relevance)
    indexes = torch.arange(25).repeat_interleave(40)
    for k in (1, 5, 10):
        ref = RetrievalHitRate(top_k=k)(scores.exp().flatten(), relevance.flatten(), indexes=indexes)
        assert ours[f"R@{k}"].item() == pytest.approx(ref.item(), abs=1e-6)


def clotho_like(seed: int, n_audio: int = 8, per_clip: int = 5, n_multi: int = 6) -> dict[str, torch.Tensor]:
    """Random caption/clip scores: captions of clip ``j`` are rows ``j*per_clip .. (j+1)*per_clip-1``."""
    gen = torch.Generator().manual_seed(seed)
    relevance = torch.eye(n_audio, dtype=torch.bool).repeat_interleave(per_clip, dim=0)  # [n_text, n_audio]
    multi_relevance = torch.rand(n_multi, n_audio, generator=gen) < 0.3  # [n_multi, n_audio]
    multi_relevance[torch.arange(n_multi), torch.randint(0, n_audio, (n_multi,), generator=gen)] = True
    n_queries = relevance.shape[0] + n_multi
    return {
        "relevance": relevance,
        "multi_relevance": multi_relevance,
        "sim": torch.randn(n_queries, n_audio, generator=gen),  # [Q, n_audio] all query rows
        "multi_rows": torch.randperm(n_queries, generator=gen)[:n_multi],  # [n_multi]
    }


def test_directional_names() -> None:
    data = clotho_like(0)
    n_text = data["relevance"].shape[0]
    sim = data["sim"][:n_text]  # [n_text, n_audio]
    multi_sim = data["sim"][n_text:]  # [n_multi, n_audio]
    out = directional_metrics(sim, data["relevance"], "val", multi=(multi_sim, data["multi_relevance"]))
    expected_names = {
        "val/t2a_mAP@10",
        "val/t2a_R@1",
        "val/t2a_R@5",
        "val/t2a_R@10",
        "val/a2t_mAP@10",
        "val/a2t_R@1",
        "val/a2t_R@5",
        "val/a2t_R@10",
        "val/t2a_mAP@16_multi",
    }
    assert set(out) == expected_names == set(metric_names("val", multi=True))
    assert set(directional_metrics(sim, data["relevance"], "test")) == set(metric_names("test"))
    assert all(isinstance(v, float) for v in out.values())


def test_directions_by_hand() -> None:
    """Text → audio ranks each caption's clips; audio → text each clip's captions (the transpose)."""
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.05]])  # captions c0, c1 of clip a0; c2 of a1
    relevance = torch.tensor([[True, False], [True, False], [False, True]])
    out = directional_metrics(sim, relevance, "test")
    # t2a: c0 finds a0 at rank 1, c1 finds a0 at rank 2, c2 finds a1 at rank 2
    assert out["test/t2a_mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert out["test/t2a_R@1"] == pytest.approx(1 / 3)
    assert out["test/t2a_R@5"] == pytest.approx(1.0)
    # a2t: a0 ranks c0, c2, c1 (its captions at ranks 1 and 3); a1 ranks c1, c0, c2 (its caption third)
    assert out["test/a2t_mAP@10"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert out["test/a2t_R@1"] == pytest.approx(1 / 2)
    assert out["test/a2t_R@5"] == pytest.approx(1.0)
