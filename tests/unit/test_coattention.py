"""Co-attention units, cascades, pooling and the matcher's pair scoring against naive references."""

import pytest
import torch
from torch import nn

from lacoat.models.attention import GuidedAttention, SelfAttention
from lacoat.models.cascade import IteratingCascade, SingleCascade, StackingCascade
from lacoat.models.matcher import AudioTextMatcher, Tokens
from lacoat.models.pooling import AttentionPool, MaskedMeanPool

D, H = 16, 4


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in double precision, restored afterwards for the other tests."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class StubEncoder(nn.Module):
    """Stands in for a real encoder; the tests feed ``Tokens`` directly."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def seqs(b, length, valid, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, D, generator=g)
    mask = torch.arange(length)[None, :] < torch.as_tensor(valid)[:, None]
    return x, mask


def padded(x, mask, extra, seed=99):
    """The same sequences with ``extra`` masked positions of random junk appended."""
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(x.shape[0], extra, D, generator=g) * 10
    return torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1)


CASCADES = {
    "single": lambda: SingleCascade(D, H, dropout=0.1),
    "stacking": lambda: StackingCascade(D, H, layers=3, dropout=0.1),
    "iterating_text": lambda: IteratingCascade(D, H, layers=3, dropout=0.1, lead="text"),
    "iterating_audio": lambda: IteratingCascade(D, H, layers=3, dropout=0.1, lead="audio"),
}


def make(name):
    torch.manual_seed(0)
    return CASCADES[name]().eval()


@pytest.mark.parametrize("unit_cls", [SelfAttention, GuidedAttention])
def test_units_ignore_padding(unit_cls):
    torch.manual_seed(0)
    unit = unit_cls(D, H, 0.1).eval()
    x, xm = seqs(3, 5, [5, 2, 4], 1)
    y, ym = seqs(3, 6, [1, 6, 3], 2)
    ref = unit(x, y, xm, ym)
    xp, xmp = padded(x, xm, 3)
    yp, ymp = padded(y, ym, 4)
    out = unit(xp, yp, xmp, ymp)
    for b in range(3):
        assert torch.allclose(out[b, : int(xm[b].sum())], ref[b, : int(xm[b].sum())], atol=1e-10)


@pytest.mark.parametrize("pool_cls", [AttentionPool, MaskedMeanPool])
def test_pools_ignore_padding(pool_cls):
    torch.manual_seed(0)
    pool = pool_cls(D, 8).eval()
    x, m = seqs(3, 5, [5, 1, 3], 3)
    xp, mp = padded(x, m, 4)
    assert torch.allclose(pool(x, m), pool(xp, mp), atol=1e-10)
    if pool_cls is AttentionPool:
        w = pool.weights(xp, mp)
        assert torch.allclose(w.sum(1), torch.ones(3, 1)) and (w[~mp] == 0).all()


def naive_cascade(cascade, t, tm, a, am):
    """Layer-by-layer reference written from the definitions, without the per-item/per-pair split."""
    if isinstance(cascade, StackingCascade):
        for layer in cascade.layers:
            t_sa, a_sa = layer.sa_text(t, None, tm), layer.sa_audio(a, None, am)
            t, a = layer.ga_text(t_sa, a_sa, tm, am), layer.ga_audio(a_sa, t_sa, am, tm)
        return t, a
    lead, lead_m, follow, follow_m = (t, tm, a, am) if cascade.lead == "text" else (a, am, t, tm)
    for sa in cascade.encoder:
        lead = sa(lead, None, lead_m)
    for ga in cascade.decoder:
        follow = ga(follow, lead, follow_m, lead_m)
    return (lead, follow) if cascade.lead == "text" else (follow, lead)


@pytest.mark.parametrize("name", list(CASCADES))
def test_cascade_split_equals_naive_and_ignores_padding(name):
    cascade = make(name)
    t, tm = seqs(3, 4, [4, 2, 3], 4)
    a, am = seqs(3, 7, [7, 5, 1], 5)
    ref_t, ref_a = naive_cascade(cascade, t, tm, a, am)
    out_t, out_a = cascade(t, tm, a, am)
    assert torch.allclose(out_t, ref_t, atol=1e-10) and torch.allclose(out_a, ref_a, atol=1e-10)
    tp, tmp = padded(t, tm, 2)
    ap, amp = padded(a, am, 3)
    pad_t, pad_a = cascade(tp, tmp, ap, amp)
    for b in range(3):
        nt, na = int(tm[b].sum()), int(am[b].sum())
        assert torch.allclose(pad_t[b, :nt], out_t[b, :nt], atol=1e-10)
        assert torch.allclose(pad_a[b, :na], out_a[b, :na], atol=1e-10)


def make_matcher(name, pair_chunk=5):
    torch.manual_seed(0)
    cascade = CASCADES[name]() if name != "biencoder" else None
    return AudioTextMatcher(
        StubEncoder(D), StubEncoder(D), cascade, d_model=D, embed_dim=8, pair_chunk=pair_chunk
    ).eval()


def features(n_text=5, n_audio=4):
    t, tm = seqs(n_text, 6, [6, 3, 1, 4, 5][:n_text], 6)
    a, am = seqs(n_audio, 9, [9, 4, 7, 2][:n_audio], 7)
    return Tokens(t, tm), Tokens(a, am)


@pytest.mark.parametrize("name", [*CASCADES, "biencoder"])
def test_score_matrix_equals_naive_pair_loop(name):
    matcher = make_matcher(name)
    text, audio = features()
    with torch.no_grad():
        fast = matcher.score_matrix(text, audio, text_block=2)
        naive = torch.stack(
            [
                torch.cat([matcher.pair_scores(text[i : i + 1], audio[j : j + 1]) for j in range(len(audio))])
                for i in range(len(text))
            ]
        )
    assert fast.shape == (5, 4)
    assert torch.allclose(fast, naive, atol=1e-10)
    assert fast.abs().max() <= 1 + 1e-9


@pytest.mark.parametrize("name", ["stacking", "iterating_text"])
def test_pair_score_does_not_depend_on_gallery(name):
    matcher = make_matcher(name)
    text, audio = features()
    with torch.no_grad():
        full = matcher.score_matrix(text, audio)
        other = Tokens.cat([audio[1:3], Tokens(torch.randn(2, 3, D), torch.ones(2, 3, dtype=torch.bool))])
        part = matcher.score_matrix(text[2:4], other)
    assert torch.allclose(part[:, :2], full[2:4, 1:3], atol=1e-10)


@pytest.mark.parametrize("name", ["single", "iterating_audio", "biencoder"])
def test_score_candidates_match_matrix(name):
    matcher = make_matcher(name)
    text, audio = features()
    candidates = torch.tensor([[3, 0], [1, 1], [2, 3], [0, 2], [3, 1]])
    with torch.no_grad():
        assert torch.allclose(
            matcher.score_candidates(text, audio, candidates),
            matcher.score_matrix(text, audio).gather(1, candidates),
            atol=1e-10,
        )


def test_biencoder_scores_are_unimodal_and_cascade_changes_them():
    text, audio = features()
    with torch.no_grad():
        bi = make_matcher("biencoder").score_matrix(text, audio)
        co = make_matcher("iterating_text")
        assert torch.allclose(bi, make_matcher("biencoder").bi_scores(text, audio))
        assert not torch.allclose(co.score_matrix(text, audio), co.bi_scores(text, audio))


def test_tokens_cat_pads_and_masks():
    a = Tokens(torch.ones(2, 3, D), torch.ones(2, 3, dtype=torch.bool))
    b = Tokens(torch.ones(1, 5, D), torch.ones(1, 5, dtype=torch.bool))
    c = Tokens.cat([a, b])
    assert c.tokens.shape == (3, 5, D) and c.mask.sum(1).tolist() == [3, 3, 5]
    assert c.tokens[0, 3:].abs().sum() == 0


def test_gradients_flow_through_pair_scoring():
    matcher = make_matcher("stacking").train()
    text, audio = features(3, 3)
    text.tokens.requires_grad_(True)
    matcher.score_matrix(text, audio).sum().backward()
    assert text.tokens.grad is not None and text.tokens.grad.abs().sum() > 0
    assert all(p.grad is not None for p in matcher.cascade.parameters())


@pytest.mark.parametrize("name", ["stacking", "iterating_text", "biencoder"])
def test_rerank_with_full_shortlist_equals_exhaustive(name):
    matcher = make_matcher(name)
    text, audio = features()
    with torch.no_grad():
        assert torch.equal(
            matcher.rerank_matrix(text, audio, k=len(audio)), matcher.score_matrix(text, audio)
        )


def test_rerank_rescores_exactly_the_shortlist():
    matcher = make_matcher("iterating_text")
    text, audio = features()
    with torch.no_grad():
        bi, full = matcher.bi_scores(text, audio), matcher.score_matrix(text, audio)
        two_stage = matcher.rerank_matrix(text, audio, k=1)
    shortlisted = torch.zeros_like(bi, dtype=torch.bool)
    shortlisted[torch.arange(5), bi.argmax(1)] = True
    shortlisted[bi.argmax(0), torch.arange(4)] = True
    assert torch.allclose(two_stage[shortlisted], full[shortlisted], atol=1e-10)
    assert torch.allclose(two_stage[~shortlisted], bi[~shortlisted] - 3.0)
