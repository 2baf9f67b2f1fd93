"""Co-attention units, cascades, pooling and the matcher's pair scoring against naive references."""

import pytest
import torch
from torch import nn

from lacoat.contracts import Tokens
from lacoat.errors import ModelError
from lacoat.models.attention import GuidedAttention, SelfAttention
from lacoat.models.cascade import IteratingCascade, SingleCascade, StackingCascade
from lacoat.models.matcher import AudioTextMatcher
from lacoat.models.pooling import AttentionPool, MaskedMeanPool

D, H = 16, 4


pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons


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


POOLS = {
    "attention": lambda: AttentionPool(D, 8),
    "attention_mass": lambda: AttentionPool(D, 8, glimpses=2, mass=True),
    "mean": lambda: MaskedMeanPool(D, 8),
}


@pytest.mark.parametrize("name", POOLS)
def test_pools_ignore_padding(name):
    torch.manual_seed(0)
    pool = POOLS[name]().eval()
    x, m = seqs(3, 5, [5, 1, 3], 3)
    xp, mp = padded(x, m, 4)
    assert torch.allclose(pool(x, m), pool(xp, mp), atol=1e-10)
    if isinstance(pool, AttentionPool):
        w = pool.weights(xp, mp)
        assert torch.allclose(w.sum(1), torch.ones(3, pool.mlp[-1].out_features)) and (w[~mp] == 0).all()


def test_attention_mass_counts_what_attention_cannot():
    """Two "barks" among four tokens against three: AttFlat's softmax gives the bark vector both
    times; the mass glimpse gives σ(10)·n/4 of it. Scores are set by hand: 20·x₀ − 10."""
    bark = torch.zeros(D)
    bark[0], bark[1] = 1.0, 3.0  # scored +10
    quiet = torch.zeros(D)
    quiet[2] = 1.0  # scored -10
    for mass in (False, True):
        pool = AttentionPool(D, 2 * D if mass else D, hidden=4, mass=mass).eval()
        with torch.no_grad():
            pool.mlp[0].weight.zero_(), pool.mlp[0].bias.zero_(), pool.mlp[0].weight[0, 0].fill_(1.0)
            pool.mlp[-1].weight.zero_(), pool.mlp[-1].weight[0, 0].fill_(20.0), pool.mlp[-1].bias.fill_(-10.0)
            pool.merge.weight.copy_(torch.eye(pool.merge.in_features)), pool.merge.bias.zero_()
        out = {
            n: pool(torch.stack([bark] * n + [quiet] * (4 - n))[None], torch.ones(1, 4, dtype=torch.bool))[0]
            for n in (2, 3)
        }
        for n in (2, 3):
            assert torch.allclose(out[n][:D], bark, atol=1e-6)  # the softmax reading: count-blind
        if mass:
            on, off = torch.sigmoid(torch.tensor([10.0, -10.0], dtype=bark.dtype))
            for n in (2, 3):
                assert torch.allclose(out[n][D:], (n * on * bark + (4 - n) * off * quiet) / 4, atol=1e-10)
            assert (out[3] - out[2]).abs().max() > 0.2


@pytest.mark.parametrize(
    "pool_mass, audio, text", [("none", False, False), ("audio", True, False), ("both", True, True)]
)
def test_matcher_pool_mass(pool_mass, audio, text):
    matcher = AudioTextMatcher(StubEncoder(D), StubEncoder(D), d_model=D, embed_dim=8, pool_mass=pool_mass)
    assert (matcher.audio_pool.mass, matcher.text_pool.mass) == (audio, text)
    assert matcher.audio_pool.merge.in_features == (2 if audio else 1) * D


@pytest.mark.parametrize("glimpses", [1, 3])
def test_matcher_audio_glimpses(glimpses):
    """Each glimpse is one attention map of the audio pool, and with pool_mass one mass reading more;
    the text pool keeps one map."""
    matcher = AudioTextMatcher(
        StubEncoder(D), StubEncoder(D), d_model=D, embed_dim=8, pool_mass="audio", audio_glimpses=glimpses
    )
    assert matcher.audio_pool.mlp[-1].out_features == glimpses
    assert matcher.audio_pool.merge.in_features == 2 * glimpses * D
    assert matcher.text_pool.mlp[-1].out_features == 1
    x, m = seqs(2, 5, [5, 3], 0)
    assert matcher.embed_audio(Tokens(x, m)).shape == (2, 8)


@pytest.mark.parametrize("glimpses, pool", [(0, "attention"), (2, "mean")])
def test_audio_glimpses_rejected(glimpses, pool):
    with pytest.raises(ModelError, match="audio_glimpses must be"):
        AudioTextMatcher(StubEncoder(D), StubEncoder(D), d_model=D, pool=pool, audio_glimpses=glimpses)


def test_pool_mass_needs_attention_pools():
    with pytest.raises(ModelError, match="pool_mass: audio needs attention pools"):
        AudioTextMatcher(StubEncoder(D), StubEncoder(D), d_model=D, pool="mean", pool_mass="audio")


def ref_attention(mha, x, y, y_mask):
    """Multi-head attention written out: softmax(Q Kᵀ / √Dh) V over valid keys, from the unit's weights."""
    d = x.shape[-1]
    h, dh = mha.heads, d // mha.heads
    w_q, b_q = mha.q_proj.weight, mha.q_proj.bias
    w_kv, b_kv = mha.kv_proj.weight, mha.kv_proj.bias
    q = x @ w_q.T + b_q
    k, v = y @ w_kv[:d].T + b_kv[:d], y @ w_kv[d:].T + b_kv[d:]
    heads = []
    for i in range(h):
        cols = slice(i * dh, (i + 1) * dh)
        logits = q[..., cols] @ k[..., cols].transpose(1, 2) / dh**0.5  # [B, Lx, Ly]
        logits = logits.masked_fill(~y_mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(logits, -1) @ v[..., cols])
    return torch.cat(heads, -1) @ mha.out_proj.weight.T + mha.out_proj.bias


def ref_norm(norm, x):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def ref_ffn(ffn, x):
    first, last = ffn.net[0], ffn.net[3]
    return torch.relu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias


def ref_sa(unit, x, xm):
    """MCAN SA, post-norm: x = LN(x + MHA(x, x)); x = LN(x + FFN(x))."""
    x = ref_norm(unit.norm1, x + ref_attention(unit.attn, x, x, xm))
    return ref_norm(unit.norm2, x + ref_ffn(unit.ffn, x))


def ref_sga_self(unit, x, xm):
    """The self-attention sublayer of MCAN's SGA."""
    return ref_norm(unit.norm1, x + ref_attention(unit.self_attn, x, x, xm))


def ref_sga_guide(unit, x, y, ym):
    """SGA after self-attention: x = LN(x + MHA(q=x, k=y, v=y)); x = LN(x + FFN(x))."""
    x = ref_norm(unit.norm2, x + ref_attention(unit.cross, x, y, ym))
    return ref_norm(unit.norm3, x + ref_ffn(unit.ffn, x))


def naive_cascade(cascade, t, tm, a, am):
    """The cascades written from MCAN's definitions with explicit matmuls (no unit forward, no split).

    Stacking: per layer, each modality self-attends, then attends to the *other modality's self-attended*
    sequence, then its FFN (one SGA unit per modality; self-attention once per layer). Iterating: the
    leader runs L SA units; the follower L SGA units, each guided by the leader's final sequence.
    """
    if isinstance(cascade, StackingCascade):
        for layer in cascade.layers:
            t_sa, a_sa = ref_sga_self(layer.text, t, tm), ref_sga_self(layer.audio, a, am)
            t, a = ref_sga_guide(layer.text, t_sa, a_sa, am), ref_sga_guide(layer.audio, a_sa, t_sa, tm)
        return t, a
    lead, lead_m, follow, follow_m = (t, tm, a, am) if cascade.lead == "text" else (a, am, t, tm)
    for sa in cascade.encoder:
        lead = ref_sa(sa, lead, lead_m)
    for ga in cascade.decoder:
        follow = ref_sga_guide(ga, ref_sga_self(ga, follow, follow_m), lead, lead_m)
    return (lead, follow) if cascade.lead == "text" else (follow, lead)


def test_stacking_self_attends_once_per_layer():
    """MCAN's co-attention layer: 4 attention blocks and 2 FFNs, as many as an iterating layer pair's
    3 attention blocks + 2 FFNs give or take one attention block (not an extra SA unit per modality)."""
    stack, iterate = StackingCascade(D, H, layers=2), IteratingCascade(D, H, layers=2)
    mha = sum(p.numel() for p in stack.layers[0].text.cross.parameters())
    n_stack, n_iter = (sum(p.numel() for p in c.parameters()) for c in (stack, iterate))
    norm = 2 * D  # one LayerNorm
    assert n_stack - n_iter == 2 * (mha + norm)  # one attention block (and its norm) per layer more


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
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_rerank_with_full_shortlist_equals_exhaustive(name, alpha):
    matcher = make_matcher(name)
    text, audio = features()
    with torch.no_grad():
        t2a, a2t = matcher.rerank_scores(text, audio, k=max(len(audio), len(text)), alpha=alpha)
        exhaustive = matcher.score_matrix(text, audio)
        if matcher.cascade is not None:
            exhaustive = exhaustive + alpha * matcher.bi_scores(text, audio)
    assert torch.allclose(t2a, exhaustive.float(), atol=1e-6) and torch.allclose(
        a2t, exhaustive.float(), atol=1e-6
    )


def test_rerank_rescores_each_direction_from_its_own_shortlist():
    matcher = make_matcher("iterating_text")
    text, audio = features()
    with torch.no_grad():
        bi, full = matcher.bi_scores(text, audio).float(), matcher.score_matrix(text, audio).float()
        t2a, a2t = matcher.rerank_scores(text, audio, k=2)
    rows = torch.zeros_like(bi, dtype=torch.bool).scatter_(1, bi.topk(2, dim=1).indices, True)
    cols = torch.zeros_like(bi, dtype=torch.bool).scatter_(0, bi.topk(2, dim=0).indices, True)
    assert torch.allclose(t2a[rows], full[rows], atol=1e-6) and torch.allclose(
        a2t[cols], full[cols], atol=1e-6
    )
    for scores, short, dim in ((t2a, rows, 1), (a2t, cols, 0)):
        s, b, m = (x if dim == 1 else x.T for x in (scores, bi, short))
        for r in range(s.shape[0]):
            inside, outside = s[r][m[r]], s[r][~m[r]]
            assert outside.max() < inside.min()  # every shortlisted item ranks first ...
            assert outside.max() > inside.min() - 0.01  # ... and the rest follow just below, not at -3
            order = b[r][~m[r]].argsort(descending=True)
            assert (outside[order].diff() <= 0).all()  # ... in bi-encoder order
            assert torch.allclose(outside - outside.max(), b[r][~m[r]] - b[r][~m[r]].max(), atol=1e-6)


@pytest.mark.parametrize("name", ["stacking", "iterating_text"])
def test_a_query_ranking_does_not_depend_on_the_other_queries(name):
    matcher = make_matcher(name)
    text, audio = features()
    with torch.no_grad():
        t2a_all, _ = matcher.rerank_scores(text, audio, k=2)
        for keep in ([1], [0, 3], [4, 2, 1]):
            t2a_part, _ = matcher.rerank_scores(text[torch.tensor(keep)], audio, k=2)
            assert torch.allclose(t2a_part, t2a_all[keep], atol=1e-6)
        _, a2t_all = matcher.rerank_scores(text, audio, k=2)
        _, a2t_part = matcher.rerank_scores(text, audio[torch.tensor([0, 2])], k=2)
        assert torch.allclose(a2t_part, a2t_all[:, [0, 2]], atol=1e-6)


def test_audio_positions_ignore_padding_and_mark_order():
    torch.manual_seed(0)
    matcher = AudioTextMatcher(StubEncoder(D), StubEncoder(D), None, d_model=D, embed_dim=8).eval()
    a, am = seqs(2, 5, [5, 3], 8)
    ap, amp = padded(a, am, 4)
    with torch.no_grad():
        ref, pad = matcher.project_audio(a, am), matcher.project_audio(ap, amp)
        assert torch.allclose(pad.tokens[0, :5], ref.tokens[0], atol=1e-10)
        assert torch.allclose(pad.tokens[1, :3], ref.tokens[1, :3], atol=1e-10)
        same = a[:1, :1].expand(1, 5, D)  # one frame repeated: only the position tells them apart
        tokens = matcher.project_audio(same, torch.ones(1, 5, dtype=torch.bool)).tokens
        assert not torch.allclose(tokens[0, 0], tokens[0, 1])
        off = AudioTextMatcher(StubEncoder(D), StubEncoder(D), None, d_model=D, audio_positions="none").eval()
        tokens = off.project_audio(same, torch.ones(1, 5, dtype=torch.bool)).tokens
        assert torch.allclose(tokens[0, 0], tokens[0, 1])
