"""Unimodal towers: the bi-encoder of the cascade's depth, alone and under a fusion cascade."""

from typing import get_type_hints

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lacoat.contracts import Tokens
from lacoat.errors import ModelError
from lacoat.models.attention import SelfAttention
from lacoat.models.cascade import IteratingCascade, StackingCascade
from lacoat.models.matcher import AudioTextMatcher
from lacoat.models.towers import Towers

D, H, DT, DA = 16, 4, 12, 10  # model width, heads, text and audio encoder widths

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons


class StubEncoder(nn.Module):
    """Stands in for a real encoder; the tests feed encoder outputs to ``project_*`` directly."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def raw(b, length, valid, dim, seed):
    """Encoder outputs ``[b, length, dim]`` and their mask (``valid`` tokens per row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, dim, generator=g)
    return x, torch.arange(length)[None, :] < torch.as_tensor(valid)[:, None]


def padded(x, mask, extra, seed=99):
    """The same rows with ``extra`` masked positions of large random junk appended."""
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(x.shape[0], extra, x.shape[-1], generator=g) * 10
    return torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1)


def make(cascade=None, towers=True):
    torch.manual_seed(0)
    return AudioTextMatcher(
        StubEncoder(DA),
        StubEncoder(DT),
        cascade,
        d_model=2 * D,  # ignored: the towers (or the cascade) set the width
        embed_dim=8,
        pair_chunk=5,
        towers=Towers(D, H, layers=2, dropout=0.1) if towers else None,
    ).eval()


def text_raw():
    return raw(5, 6, [6, 3, 1, 4, 5], DT, 1)  # made in the test's (double) precision


def audio_raw():
    return raw(4, 9, [9, 4, 7, 2], DA, 2)


def sides(m, text=None, audio=None):
    """Projected (and towered) ``Tokens`` of texts and clips, ``text_raw`` / ``audio_raw`` by default."""
    return m.project_text(*(text or text_raw())), m.project_audio(*(audio or audio_raw()))


def test_towers_set_the_width_and_are_self_attention_only():
    m = make()
    assert m.audio_proj[0].out_features == m.text_proj[0].out_features == D
    units = [*m.towers.text_layers, *m.towers.audio_layers]
    assert len(units) == 4 and all(type(u) is SelfAttention for u in units)  # no guided (cross) unit


def test_towers_need_the_cascade_width_and_a_layer():
    with pytest.raises(ModelError, match="towers dim"):
        AudioTextMatcher(StubEncoder(DA), StubEncoder(DT), IteratingCascade(D, H), towers=Towers(2 * D, H))
    with pytest.raises(ModelError, match="layers must be at least 1"):
        Towers(D, H, layers=0)


def test_towers_are_selected_by_class_path():
    """LightningCLI (jsonargparse) builds the matcher's ``towers`` from its type hint and a class_path."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--towers", type=get_type_hints(AudioTextMatcher.__init__)["towers"])
    cfg = parser.parse_object(
        {
            "towers": {
                "class_path": "lacoat.models.towers.Towers",
                "init_args": {"dim": D, "heads": H, "layers": 3, "dropout": 0.0},
            }
        }
    )
    towers = parser.instantiate(cfg).towers
    assert isinstance(towers, Towers) and towers.dim == D and len(towers.audio_layers) == 3


@torch.no_grad()
def test_no_cross_modal_path():
    """A text's tower output does not depend on the clips it meets (nor on its batch), a clip's not on
    the texts; scored against two clip sets, a text's scores come from one and the same embedding."""
    m = make()
    t, tm = text_raw()
    a, am = audio_raw()
    b, bm = raw(3, 7, [2, 7, 5], DA, 3)
    t_with_a, a_out = m.towers(m.text_proj(t), tm, m.audio_proj(a), am)
    t_with_b, _ = m.towers(m.text_proj(t), tm, m.audio_proj(b), bm)
    _, a_with_other_text = m.towers(m.text_proj(t[:2]), tm[:2], m.audio_proj(a), am)
    assert torch.equal(t_with_a, t_with_b) and torch.equal(a_out, a_with_other_text)

    text, audio = sides(m)
    other = m.project_audio(b, bm)
    emb = m.embed_text(text)  # [5, 8]
    for i in range(len(text)):  # alone, not in its batch
        assert torch.allclose(
            m.embed_text(m.project_text(t[i : i + 1], tm[i : i + 1]))[0], emb[i], atol=1e-12
        )
    for j in range(len(audio)):
        assert torch.allclose(
            m.embed_audio(m.project_audio(a[j : j + 1], am[j : j + 1]))[0],
            m.embed_audio(audio)[j],
            atol=1e-12,
        )
    s_a, s_b = m.score_matrix(text, audio), m.score_matrix(text, other)
    assert torch.allclose(s_a, emb @ m.embed_audio(audio).T, atol=1e-12)
    assert torch.allclose(s_b, emb @ m.embed_audio(other).T, atol=1e-12)


@torch.no_grad()
def test_bi_scores_are_cosines_of_separate_tower_embeddings():
    """Without a cascade the model's scores (exhaustive, candidates, rerank) are the bi-encoder's:
    cos(pool_t(tower_t(t)), pool_a(tower_a(a))) of texts and clips embedded one at a time."""
    m = make()
    (t, tm), (a, am) = text_raw(), audio_raw()

    def one(pool, tower, x, mask):  # [1, E]: one item, projected, through its tower, pooled
        return F.normalize(pool(tower(x, mask), mask), dim=-1)

    text_emb = torch.cat(
        [one(m.text_pool, m.towers.text, m.text_proj(t[i : i + 1]), tm[i : i + 1]) for i in range(5)]
    )  # [5, 8]
    audio_emb = torch.cat(
        [
            one(m.audio_pool, m.towers.audio, m.audio_positions(m.audio_proj(a[j : j + 1])), am[j : j + 1])
            for j in range(4)
        ]
    )  # [4, 8]
    cosines = text_emb @ audio_emb.T  # [5, 4]
    text, audio = sides(m)
    assert torch.allclose(m.bi_scores(text, audio), cosines, atol=1e-12)
    assert torch.allclose(m.score_matrix(text, audio), cosines, atol=1e-12)
    t2a, a2t = m.rerank_scores(text, audio, k=2)
    assert torch.allclose(t2a, cosines.float()) and torch.allclose(a2t, cosines.float())
    candidates = torch.tensor([[3, 0], [1, 1], [2, 3], [0, 2], [3, 1]])
    assert torch.allclose(
        m.score_candidates(text, audio, candidates), cosines.gather(1, candidates), atol=1e-12
    )


def rows_through_towers(m):
    """Forward hooks on each tower's first unit, counting the rows (items) that pass."""
    seen = {"text": 0, "audio": 0}
    for side, layers in (("text", m.towers.text_layers), ("audio", m.towers.audio_layers)):
        layers[0].register_forward_hook(
            lambda mod, args, out, side=side: seen.__setitem__(side, seen[side] + len(out))
        )
    return seen


@pytest.mark.parametrize("cascade", [None, "iterating"])
@torch.no_grad()
def test_each_item_goes_through_its_tower_once(cascade):
    """Towers run per item, never per pair: scoring every pair (and re-ranking) adds no tower pass."""
    m = make(IteratingCascade(D, H, layers=2) if cascade else None)
    seen = rows_through_towers(m)
    text, audio = sides(m)
    m.score_matrix(text, audio, text_block=2)
    m.rerank_scores(text, audio, k=2)
    assert seen == {"text": 5, "audio": 4}


@torch.no_grad()
def test_towers_are_applied_and_ignore_padding():
    """The embedding is not that of the projected tokens alone, and masked positions (padding with
    junk) change neither the valid tower outputs nor the embedding."""
    m = make()
    (t, tm), (a, am) = text_raw(), audio_raw()
    text, audio = sides(m)
    plain_t = m.embed_text(Tokens(m.text_proj(t), tm))
    plain_a = m.embed_audio(Tokens(m.audio_positions(m.audio_proj(a)), am))
    assert not torch.allclose(m.embed_text(text), plain_t, atol=1e-3)
    assert not torch.allclose(m.embed_audio(audio), plain_a, atol=1e-3)
    text_p, audio_p = sides(m, padded(t, tm, 3), padded(a, am, 4, seed=98))
    assert torch.allclose(m.embed_text(text_p), m.embed_text(text), atol=1e-10)
    assert torch.allclose(m.embed_audio(audio_p), m.embed_audio(audio), atol=1e-10)
    for out, ref, mask in ((text_p, text, tm), (audio_p, audio, am)):
        n = mask.shape[1]
        assert torch.allclose(out.tokens[:, :n][mask], ref.tokens[mask], atol=1e-10)


def test_gradients_reach_the_towers():
    m = make().train()
    text, audio = sides(m, text_raw(), raw(5, 9, [9, 4, 7, 2, 5], DA, 4))
    sim = m.bi_scores(text, audio) / 0.07  # [5, 5], pair i is text i with clip i
    target = torch.arange(5)
    (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)).backward()
    for name, p in m.towers.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cascade_cls", [IteratingCascade, StackingCascade])
@torch.no_grad()
def test_towers_under_a_fusion_cascade(cascade_cls):
    """ALBEF's layout: the first stage is the towers' bi-encoder; the cascade re-scores over the
    towers' outputs, and its scores are not the bi-encoder's."""
    m = make(cascade_cls(D, H, layers=2))
    (t, tm), (a, am) = text_raw(), audio_raw()
    text, audio = sides(m)
    t_tower, a_tower = m.towers(m.text_proj(t), tm, m.audio_positions(m.audio_proj(a)), am)
    bi = F.normalize(m.text_pool(t_tower, tm), dim=-1) @ F.normalize(m.audio_pool(a_tower, am), dim=-1).T
    assert torch.allclose(m.bi_scores(text, audio), bi, atol=1e-12)  # the first stage reads the towers
    naive = torch.empty(5, 4)
    for i in range(5):
        for j in range(4):
            t_out, a_out = m.cascade(t_tower[i : i + 1], tm[i : i + 1], a_tower[j : j + 1], am[j : j + 1])
            naive[i, j] = (
                F.normalize(m.text_pool(t_out, tm[i : i + 1]), dim=-1)
                * F.normalize(m.audio_pool(a_out, am[j : j + 1]), dim=-1)
            ).sum()
    co = m.score_matrix(text, audio, text_block=2)
    assert torch.allclose(co, naive, atol=1e-10)  # the cascade reads the towers' outputs
    assert not torch.allclose(co, bi, atol=1e-3)
    t2a, a2t = m.rerank_scores(text, audio, k=5, alpha=0.5)  # full shortlists
    assert torch.allclose(t2a, (co + 0.5 * bi).float(), atol=1e-6) and torch.allclose(a2t, t2a)
