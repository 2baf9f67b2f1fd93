import math

import pytest
import torch
import torch.nn.functional as F

from lacoat.train.losses import NTXentLoss, hardest_negatives, same_clip_mask


def _cos_sim(b: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(b, 16, generator=g, dtype=dtype), dim=-1)
    audio = F.normalize(torch.randn(b, 16, generator=g, dtype=dtype), dim=-1)
    return text @ audio.T  # [B, B]


def _naive_ntxent(sim: torch.Tensor, text_clip: list[int], audio_clip: list[int], scale: float) -> float:
    """Written-out symmetric multi-positive NT-Xent with explicit loops."""
    b = sim.shape[0]
    rows = 0.0
    for i in range(b):
        kept = [j for j in range(b) if j == i or text_clip[i] != audio_clip[j]]
        lse = math.log(sum(math.exp(scale * float(sim[i, j])) for j in kept))
        rows += -(scale * float(sim[i, i]) - lse)
    cols = 0.0
    for j in range(b):
        kept = [i for i in range(b) if i == j or text_clip[i] != audio_clip[j]]
        lse = math.log(sum(math.exp(scale * float(sim[i, j])) for i in kept))
        cols += -(scale * float(sim[j, j]) - lse)
    return (rows / b + cols / b) / 2


@pytest.mark.parametrize(
    "clips",
    [
        [0, 1, 2, 3, 4, 5],  # all distinct
        [0, 0, 1, 2, 2, 2],  # several captions of one clip
        [7, 3, 7, 3, 9, 7],  # duplicates not adjacent
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_reference(clips, seed):
    loss_fn = NTXentLoss(temperature=0.07).double()
    sim = _cos_sim(len(clips), seed)
    ids = torch.tensor(clips)
    out = loss_fn(sim, ids, ids)
    scale = loss_fn.logit_scale.item()
    assert out["loss_main"].dtype == torch.float64
    assert out["loss_main"].item() == pytest.approx(_naive_ntxent(sim, clips, clips, scale), rel=1e-12)
    assert out["loss"].item() == out["loss_main"].item()
    assert out["loss_aux"].item() == 0.0


def test_distinct_clips_equal_plain_cross_entropy():
    loss_fn = NTXentLoss(temperature=0.1, learnable_temperature=False).double()
    sim = _cos_sim(8, 3)
    ids = torch.arange(8)
    s = loss_fn.logit_scale
    target = torch.arange(8)
    expected = (F.cross_entropy(sim * s, target) + F.cross_entropy(sim.T * s, target)) / 2
    torch.testing.assert_close(loss_fn(sim, ids, ids)["loss"], expected, rtol=1e-12, atol=0)


def test_masked_entry_does_not_change_loss():
    loss_fn = NTXentLoss().double()
    clips = torch.tensor([0, 0, 1, 2])
    sim = _cos_sim(4, 5)
    base = loss_fn(sim, clips, clips)["loss"]
    for value in (-1.0, 0.999, 50.0):
        changed = sim.clone()
        changed[0, 1] = value  # caption 0 vs audio 1: same clip, off-diagonal
        changed[1, 0] = -value
        torch.testing.assert_close(loss_fn(changed, clips, clips)["loss"], base, rtol=1e-14, atol=0)
    # an unmasked entry does change it
    changed = sim.clone()
    changed[0, 2] = 0.9
    assert loss_fn(changed, clips, clips)["loss"].item() != pytest.approx(base.item())


def test_masked_entry_gets_no_gradient():
    loss_fn = NTXentLoss().double()
    clips = torch.tensor([0, 0, 1])
    sim = _cos_sim(3, 6).requires_grad_(True)
    loss_fn(sim, clips, clips)["loss"].backward()
    assert sim.grad[0, 1] == 0 and sim.grad[1, 0] == 0
    assert torch.isfinite(sim.grad).all()
    assert (sim.grad.diagonal() < 0).all()


def test_same_clip_mask():
    mask = same_clip_mask(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_fixed_temperature_has_no_parameters():
    loss_fn = NTXentLoss(temperature=0.05, learnable_temperature=False)
    assert list(loss_fn.parameters()) == []
    assert "log_logit_scale" in loss_fn.state_dict()
    assert loss_fn.temperature.item() == pytest.approx(0.05)
    sim = _cos_sim(4, 0, torch.float32).requires_grad_(True)
    loss_fn(sim, torch.arange(4), torch.arange(4))["loss"].backward()
    assert sim.grad is not None


def test_learnable_temperature_gets_gradient():
    loss_fn = NTXentLoss(temperature=0.05)
    assert [name for name, _ in loss_fn.named_parameters()] == ["log_logit_scale"]
    assert loss_fn.log_logit_scale.item() == pytest.approx(math.log(20.0))
    out = loss_fn(_cos_sim(6, 2, torch.float32), torch.arange(6), torch.arange(6))
    assert not out["temperature"].requires_grad
    out["loss"].backward()
    grad = loss_fn.log_logit_scale.grad
    assert grad is not None and grad.item() != 0.0


def test_logit_scale_clamp():
    loss_fn = NTXentLoss(temperature=0.05, max_logit_scale=50.0)
    with torch.no_grad():
        loss_fn.log_logit_scale.fill_(math.log(1000.0))  # as if an optimiser pushed it past the bound
    assert loss_fn.logit_scale.item() == pytest.approx(50.0)
    assert loss_fn.temperature.item() == pytest.approx(1 / 50.0)
    sim = _cos_sim(4, 1, torch.float32)
    clamped = loss_fn(sim, torch.arange(4), torch.arange(4))["loss"]
    reference = NTXentLoss(temperature=1 / 50.0, max_logit_scale=50.0)(sim, torch.arange(4), torch.arange(4))
    torch.testing.assert_close(clamped, reference["loss"])


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": 0.0}, {"temperature": 0.001, "max_logit_scale": 100.0}, {"aux_weight": -1.0}],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        NTXentLoss(**kwargs)


def test_aux_weight_adds_weighted_aux_loss():
    clips = torch.tensor([0, 1, 1, 2, 3])
    sim, aux_sim = _cos_sim(5, 7), _cos_sim(5, 8)
    loss_fn = NTXentLoss(aux_weight=0.3).double()
    out = loss_fn(sim, clips, clips, aux_sim=aux_sim)
    alone = loss_fn(aux_sim, clips, clips)["loss_main"]
    torch.testing.assert_close(out["loss_aux"], alone, rtol=1e-14, atol=0)
    torch.testing.assert_close(out["loss"], out["loss_main"] + 0.3 * alone, rtol=1e-14, atol=0)
    torch.testing.assert_close(out["loss_main"], loss_fn(sim, clips, clips)["loss"], rtol=1e-14, atol=0)


def test_shape_errors():
    loss_fn = NTXentLoss()
    with pytest.raises(ValueError, match="square"):
        loss_fn(torch.zeros(3, 4), torch.arange(3), torch.arange(4))
    with pytest.raises(ValueError, match="text_clip and audio_clip"):
        loss_fn(torch.zeros(3, 3), torch.arange(2), torch.arange(3))
    with pytest.raises(ValueError, match=r"pos \[B\] and neg \[B, M\]"):
        loss_fn.candidate_loss(torch.zeros(3), torch.zeros(2, 4))


def test_bf16_sim_is_scored_in_float32():
    loss_fn = NTXentLoss()
    sim = _cos_sim(4, 0, torch.float32)
    out = loss_fn(sim.bfloat16(), torch.arange(4), torch.arange(4))
    assert out["loss"].dtype == torch.float32


def test_candidate_loss_written_out():
    loss_fn = NTXentLoss(temperature=0.1).double()
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(5, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 - 1
    s = loss_fn.logit_scale.item()
    expected = 0.0
    for b in range(5):
        scores = [float(pos[b])] + [float(x) for x in neg[b]]
        lse = math.log(sum(math.exp(s * x) for x in scores))
        expected += -(s * scores[0] - lse) / 5
    assert loss_fn.candidate_loss(pos, neg).item() == pytest.approx(expected, rel=1e-12)


def test_candidate_loss_with_all_negatives_equals_full_loss_rows():
    """With every other-clip column as a negative, candidate_loss is the row half of the full loss."""
    loss_fn = NTXentLoss().double()
    clips = torch.tensor([0, 0, 1, 1, 2, 2])
    sim = _cos_sim(6, 9)
    s = loss_fn.logit_scale
    logits = (sim * s).masked_fill(same_clip_mask(clips, clips), float("-inf"))
    full_rows = F.cross_entropy(logits, torch.arange(6))
    idx = hardest_negatives(sim, clips, clips, m=4)  # every row has exactly 4 other-clip columns
    got = loss_fn.candidate_loss(sim.diagonal(), sim.gather(1, idx))
    torch.testing.assert_close(got, full_rows, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardest_negatives_matches_sort_reference(seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols, m = 7, 9, 4
    sim = torch.rand(rows, cols, generator=g, dtype=torch.float64)
    row_clip = torch.randint(0, 4, (rows,), generator=g)
    col_clip = torch.randint(0, 4, (cols,), generator=g)
    col_clip[:5] = torch.tensor([10, 11, 12, 13, 14])  # at least 5 columns differ from every row
    idx = hardest_negatives(sim, row_clip, col_clip, m)
    assert idx.shape == (rows, m) and idx.dtype == torch.int64
    for r in range(rows):
        allowed = [c for c in range(cols) if col_clip[c] != row_clip[r]]
        expected = sorted(allowed, key=lambda c: -float(sim[r, c]))[:m]
        assert idx[r].tolist() == expected
        assert all(col_clip[c] != row_clip[r] for c in idx[r].tolist())


def test_hardest_negatives_skips_high_scoring_same_clip_columns():
    clips = torch.tensor([0, 0, 1, 2])
    sim = torch.eye(4) * 0.9 + 0.1
    sim[0, 1] = sim[1, 0] = 0.99  # same clip: highest score, still never a negative
    sim[0, 3] = 0.5
    idx = hardest_negatives(sim, clips, clips, m=2)
    assert idx[0].tolist() == [3, 2]
    assert set(idx[1].tolist()) == {2, 3}
    # audio → text direction: transpose and swap ids
    assert hardest_negatives(sim.T, clips, clips, m=2)[3].tolist() == [0, 1]


def test_hardest_negatives_too_few_raises():
    clips = torch.tensor([0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"cannot pick 2 hard negatives: row 0 has only 1 column"):
        hardest_negatives(torch.rand(4, 4), clips, clips, m=2)
    with pytest.raises(ValueError, match="m .* must be >= 1"):
        hardest_negatives(torch.rand(4, 4), clips, clips, m=0)
    with pytest.raises(ValueError, match="clip ids must have shapes"):
        hardest_negatives(torch.rand(4, 4), clips, clips[:3], m=1)


def test_sharded_contrastive_averages_to_the_global_batch_loss():
    """Two ranks of 3, each scoring its rows against all 6 (DDP with gathered negatives), average to
    the loss of the 6-item batch, same-clip masking included."""
    torch.manual_seed(0)
    loss = NTXentLoss(temperature=0.1)
    sim = torch.randn(6, 6)
    clips = torch.tensor([0, 0, 1, 2, 2, 3])
    shards = [
        loss.sharded_contrastive(
            sim[r : r + 3], sim[:, r : r + 3].T, clips[r : r + 3], clips[r : r + 3], clips, clips, r
        )
        for r in (0, 3)
    ]
    torch.testing.assert_close((shards[0] + shards[1]) / 2, loss.contrastive(sim, clips, clips))
