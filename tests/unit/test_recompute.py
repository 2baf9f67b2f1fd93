"""Recomputed pair chunks (``AudioTextMatcher(recompute=share)``): the same scores and gradients as the
plain path, dropout included, whatever the share; the chunks recomputed are the even spread
``recomputed_chunks`` selects; far fewer bytes kept for backward."""

import math
from unittest import mock

import pytest
import torch
from torch import nn

import lacoat.models.matcher as matcher_module
from lacoat.errors import ModelError
from lacoat.models.cascade import IteratingCascade, StackingCascade
from lacoat.models.matcher import AudioTextMatcher, recomputed_chunks

D, H = 16, 4

CASCADES = {
    "stacking": lambda: StackingCascade(D, H, layers=2, dropout=0.2),
    "iterating_text": lambda: IteratingCascade(D, H, layers=2, dropout=0.2, lead="text"),
    "iterating_audio": lambda: IteratingCascade(D, H, layers=2, dropout=0.2, lead="audio"),
}


class StubEncoder(nn.Module):
    """Stands in for a real encoder; the tests feed encoder outputs directly."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons


def make_matcher(name: str, recompute: float) -> AudioTextMatcher:
    """The same weights and chunks (so the same dropout draws) for both settings; training mode, so
    dropout is active."""
    torch.manual_seed(0)
    cascade = CASCADES[name]()
    return AudioTextMatcher(
        StubEncoder(D),
        StubEncoder(D),
        cascade,
        embed_dim=8,
        pair_chunk=3,
        recompute=recompute,
        recompute_chunk=3,
    ).train()


def encoder_outputs(n_text: int, n_audio: int) -> tuple[torch.Tensor, ...]:
    """Encoder outputs (leaves that require grad) with some padding: text ``[n, 6, D]``, audio ``[n, 9, D]``."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(n_text, 6, D, generator=g, requires_grad=True)
    a = torch.randn(n_audio, 9, D, generator=g, requires_grad=True)
    tm = torch.arange(6)[None] < torch.randint(1, 7, (n_text, 1), generator=g)
    am = torch.arange(9)[None] < torch.randint(1, 10, (n_audio, 1), generator=g)
    return t, tm, a, am


def step(matcher: AudioTextMatcher, n_text: int = 5, n_audio: int = 4) -> tuple[torch.Tensor, dict]:
    """One training-like step: B×B score matrix, a loss, backward. Returns the scores and every gradient."""
    t, tm, a, am = encoder_outputs(n_text, n_audio)
    torch.manual_seed(7)  # the dropout masks
    scores = matcher.score_matrix(
        matcher.project_text(t, tm), matcher.project_audio(a, am)
    )  # [n_text, n_audio]
    loss = -scores.log_softmax(1).diagonal().sum() + (scores**2).sum()
    loss.backward()
    grads = {name: p.grad for name, p in matcher.named_parameters() if p.grad is not None}
    return scores.detach(), grads | {"text_tokens": t.grad, "audio_tokens": a.grad}


@pytest.mark.parametrize("share", [0.5, 1.0])  # 0.5: 3 of the 7 chunks recomputed, 4 kept
@pytest.mark.parametrize("name", list(CASCADES))
def test_recomputed_chunks_give_the_plain_scores_and_gradients_with_dropout(name, share):
    plain_scores, plain_grads = step(make_matcher(name, recompute=0.0))
    scores, grads = step(make_matcher(name, recompute=share))
    assert torch.allclose(scores, plain_scores, atol=1e-12)
    assert grads.keys() == plain_grads.keys()
    for key, grad in grads.items():
        assert torch.allclose(grad, plain_grads[key], atol=1e-12), key
    # dropout is really active: another RNG stream gives other scores
    torch.manual_seed(8)
    other = make_matcher(name, recompute=share)
    t, tm, a, am = encoder_outputs(5, 4)
    assert not torch.allclose(
        other.score_matrix(other.project_text(t, tm), other.project_audio(a, am)), scores
    )


def saved_bytes(matcher: AudioTextMatcher, n: int) -> int:
    """Bytes of the distinct storages autograd saves for backward in the pair scoring of ``n`` × ``n``
    pairs (parameters and the encoder outputs excluded)."""
    t, tm, a, am = encoder_outputs(n, n)
    text, audio = matcher.project_text(t, tm), matcher.project_audio(a, am)
    exclude = {p.untyped_storage().data_ptr() for p in matcher.parameters()}
    exclude |= {x.untyped_storage().data_ptr() for x in (text.tokens, audio.tokens, t, a)}
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return x.detach()  # x itself would make a reference cycle through its grad_fn

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        matcher.score_matrix(text, audio)
    return sum(storages.values())


@pytest.mark.parametrize("name", ["stacking", "iterating_text"])
def test_recompute_keeps_no_per_pair_activations(name):
    plain, recompute = make_matcher(name, recompute=0.0), make_matcher(name, recompute=1.0)
    # plain: activations of every pair; they grow with the 64 → 144 pairs
    assert saved_bytes(plain, 12) > 2 * saved_bytes(plain, 8)
    # recomputed: what is kept is per item (sides, pools) plus B² scores: tiny next to one pair's activations
    per_pair = (saved_bytes(plain, 12) - saved_bytes(plain, 8)) / (144 - 64)
    assert saved_bytes(recompute, 12) < 12 * per_pair
    assert saved_bytes(recompute, 12) < saved_bytes(plain, 12) / 20


def test_recomputed_chunks_are_an_even_spread_of_the_share():
    assert recomputed_chunks(16, 0.25) == [i in (3, 7, 11, 15) for i in range(16)]
    assert recomputed_chunks(7, 0.5) == [i in (1, 3, 5) for i in range(7)]
    assert recomputed_chunks(5, 0.0) == [False] * 5 and recomputed_chunks(5, 1.0) == [True] * 5
    assert recomputed_chunks(0, 0.5) == []
    for n in (1, 3, 16, 17, 64):
        for k in range(17):
            chosen = [i for i, again in enumerate(recomputed_chunks(n, k / 16)) if again]
            assert len(chosen) == math.floor(n * k / 16)
            # evenly spread: one every 16/k chunks, rounded (gaps differ by at most one), none late
            gaps = [b - a for a, b in zip(chosen, chosen[1:], strict=False)] or [n]
            assert max(gaps) - min(gaps) <= 1 and (not chosen or chosen[0] <= max(gaps)), (n, k, chosen)


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_the_matcher_recomputes_the_selected_chunks(share):
    """The chunks handed to ``torch.utils.checkpoint`` are those ``recomputed_chunks`` selects: 20 pairs
    in 7 chunks of 3 (text-major, so chunk i starts at pair 3i); without gradients none is."""
    matcher = make_matcher("stacking", recompute=share)
    t, tm, a, am = encoder_outputs(5, 4)
    text, audio = matcher.project_text(t, tm), matcher.project_audio(a, am)
    starts = []
    real = matcher_module.checkpoint

    def checkpoint(fn, text_side, audio_side, t_fixed, a_fixed, ti, ai, **kwargs):
        starts.append(int(ti[0]) * 4 + int(ai[0]))  # the chunk's first pair
        return real(fn, text_side, audio_side, t_fixed, a_fixed, ti, ai, **kwargs)

    with mock.patch.object(matcher_module, "checkpoint", checkpoint):
        matcher.score_matrix(text, audio)
        assert starts == [3 * i for i, again in enumerate(recomputed_chunks(7, share)) if again]
        starts.clear()
        with torch.no_grad():
            matcher.score_matrix(text, audio)
        assert starts == []


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_a_share_outside_0_1_is_refused(share):
    with pytest.raises(ModelError, match=r"recompute must lie in \[0, 1\]"):
        make_matcher("stacking", recompute=share)


def test_half_the_chunks_recomputed_keep_about_half_the_per_pair_activations():
    plain, half, full = (make_matcher("stacking", recompute=s) for s in (0.0, 0.5, 1.0))
    kept = {name: saved_bytes(m, 12) for name, m in (("plain", plain), ("half", half), ("full", full))}
    # 144 pairs in 48 chunks of 3: 24 keep their activations, 24 keep only their inputs
    assert 0.45 < (kept["half"] - kept["full"]) / (kept["plain"] - kept["full"]) < 0.55


def test_configs_and_checkpoints_from_before_the_share_still_load(tmp_path, capsys):
    # `recompute: true` (every chunk) was the only setting before the share existed
    from lacoat.cli import main

    config = tmp_path / "old.yaml"
    config.write_text(
        "model:\n  matcher:\n    class_path: lacoat.models.matcher.AudioTextMatcher\n    init_args:\n"
        "      audio_encoder: {class_path: lacoat.models.encoders.LogMelAudioEncoder}\n"
        "      text_encoder: {class_path: lacoat.models.encoders.HFTextEncoder, init_args: {model_name: x}}\n"
        "      recompute: true\n"
        "  objective:\n    class_path: lacoat.train.objectives.PairObjective\n"
        "    init_args: {loss: {class_path: lacoat.train.losses.NTXentLoss}}\n"
    )
    with pytest.raises(SystemExit) as done:  # parsed and type-checked, nothing built
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code == 0 and "recompute: true" in capsys.readouterr().out
    assert make_matcher("stacking", recompute=True).recompute == 1.0
