"""Co-attention maps: the drawn matrix is the named layer's attention, recomputed by hand."""

import numpy as np
import pytest
import torch

from lacoat.errors import ModelError
from lacoat.evaluation.attention_maps import (
    attention_figure,
    attention_map,
    draw_attention_map,
    guided_attention_unit,
    merge_rows,
    record_attention,
    word_groups,
)
from lacoat.models.attention import MultiHeadAttention
from lacoat.models.cascade import IteratingCascade, StackingCascade
from lacoat.models.encoders import HFTextEncoder, LogMelAudioEncoder
from lacoat.models.matcher import AudioTextMatcher
from tests.helpers import save_tiny_text_model, write_tone

D, H = 16, 2
QUERY = "A low hum, then two unbelievably sharp clicks."


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return save_tiny_text_model(tmp_path_factory.mktemp("text") / "tiny")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2.5 s at 16 kHz: three 1-s windows, the last one half padding."""
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    write_tone(path, seconds=2.5, freq=300.0)
    return path


def make_matcher(text_model, cascade):
    torch.manual_seed(0)
    audio = LogMelAudioEncoder(sample_rate=16000, window_seconds=1.0, dim=D, layers=1, heads=H, pool_frames=5)
    text = HFTextEncoder(str(text_model), max_length=32, frozen=True)
    return AudioTextMatcher(audio, text, cascade, embed_dim=8).eval()


def reference_attention(matcher, clip_path, query):
    """Text-major ``[Lt, La]`` head-averaged attention of the last GA layer, by explicit matmuls."""
    from lacoat.data.datasets import AudioLoader

    windows = AudioLoader(16000, 1.0).load(str(clip_path))
    with torch.no_grad():
        text = matcher.encode_text([query])
        audio = matcher.encode_audio(
            torch.from_numpy(windows.waveform)[None], torch.from_numpy(windows.valid_samples)[None]
        )
        t, tm, a, am = text.tokens, text.mask, audio.tokens, audio.mask
        cascade = matcher.cascade
        if isinstance(cascade, IteratingCascade):
            lead, lead_mask, follow, follow_mask = (
                (t, tm, a, am) if cascade.lead == "text" else (a, am, t, tm)
            )
            for sa in cascade.encoder:
                lead = sa(lead, None, lead_mask)
            for ga in cascade.decoder[:-1]:
                follow = ga(follow, lead, follow_mask, lead_mask)
            ga, keys, key_mask = cascade.decoder[-1], lead, lead_mask
            x = ga.norm1(follow + ga.self_attn(follow, follow, follow_mask))
        else:  # stacking: layer by layer, then the last layer's text unit
            for layer in cascade.layers[:-1]:
                t, a = layer.text.attend_self(t, tm), layer.audio.attend_self(a, am)
                t, a = layer.text.attend_guide(t, a, am), layer.audio.attend_guide(a, t, tm)
            last = cascade.layers[-1]
            ga = last.text
            keys, key_mask = last.audio.attend_self(a, am), am
            x = ga.norm1(t + ga.self_attn(t, t, tm))
        unit = ga.cross
        q = unit.q_proj(x)  # [1, Lx, D]
        k = unit.kv_proj(keys)[..., :D]  # [1, Ly, D]
        q = q.view(1, -1, H, D // H).transpose(1, 2)
        k = k.view(1, -1, H, D // H).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / (D // H) ** 0.5
        weights = logits.masked_fill(~key_mask[:, None, None, :], float("-inf")).softmax(-1).mean(1)[0]
        text_is_query = not (isinstance(cascade, IteratingCascade) and cascade.lead == "text")
        text_major = weights if text_is_query else weights.T
        score = matcher.pair_scores(text, audio)[0]
    return text_major.numpy(), am[0].numpy(), float(score)


def test_weights_are_the_attention_forward_applies():
    torch.manual_seed(1)
    unit = MultiHeadAttention(D, H, dropout=0.1).eval()
    x, y = torch.randn(2, 5, D), torch.randn(2, 7, D)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    w = unit.weights(x, y, mask)  # [2, H, 5, 7]
    assert w.shape == (2, H, 5, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, H, 5))
    assert (w[1, :, :, 4:] == 0).all()
    _, v = unit.project_kv(y)
    by_hand = unit.out_proj((w @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(by_hand, unit(x, y, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unit.weights(x, None, mask, kv=unit.project_kv(y)), w)


@pytest.mark.parametrize(
    "cascade",
    [
        lambda: IteratingCascade(D, H, layers=2, dropout=0.1, lead="text"),
        lambda: IteratingCascade(D, H, layers=2, dropout=0.1, lead="audio"),
        lambda: StackingCascade(D, H, layers=2, dropout=0.1),
    ],
    ids=["iterating_text_leads", "iterating_audio_leads", "stacking"],
)
def test_drawn_map_is_the_last_layers_attention(text_model, clip, tmp_path, cascade):
    matcher = make_matcher(text_model, cascade())
    amap = attention_map(matcher, clip, QUERY)
    drawn = draw_attention_map(amap, tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 1000

    expected, audio_mask, score = reference_attention(matcher, clip, QUERY)
    n_valid = int(audio_mask.sum())
    assert audio_mask[:n_valid].all() and amap.token_weights.shape == (expected.shape[0], n_valid)
    np.testing.assert_allclose(amap.token_weights, expected[:, :n_valid], rtol=1e-5, atol=1e-6)
    how = "mean" if amap.normalised_over == "time" else "sum"
    np.testing.assert_allclose(
        drawn, merge_rows(expected[:, :n_valid], amap.token_groups, how), rtol=1e-5, atol=1e-6
    )
    assert amap.score == pytest.approx(score, abs=1e-6)
    if amap.normalised_over == "words":  # audio attends to text: every time step's column sums to 1
        np.testing.assert_allclose(drawn.sum(0), 1.0, rtol=1e-5)
    # 2.5 s of audio in 1-s windows: every valid token is drawn, at the encoder's token rate
    assert amap.token_seconds == pytest.approx(1.0 / matcher.audio_encoder.tokens_per_window)
    assert n_valid * amap.token_seconds == pytest.approx(2.5, abs=amap.token_seconds)
    assert len(amap.waveform) == 40000


def test_rows_are_words_with_pieces_merged(text_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(text_model))
    labels, groups = word_groups(tokenizer, QUERY, 32)
    assert labels == [
        "[CLS]",
        "A",
        "low",
        "hum",
        ",",
        "then",
        "two",
        "unbelievably",
        "sharp",
        "clicks",
        ".",
        "[SEP]",
    ]
    assert [i for g in groups for i in g] == list(range(len(tokenizer(QUERY)["input_ids"])))
    assert len(groups[labels.index("unbelievably")]) > 1  # split into word pieces
    matrix = np.arange(sum(map(len, groups)) * 2, dtype=float).reshape(-1, 2)
    pieces = groups[labels.index("unbelievably")]
    np.testing.assert_allclose(merge_rows(matrix, groups, "sum")[7], matrix[pieces].sum(0))
    np.testing.assert_allclose(merge_rows(matrix, groups, "mean")[7], matrix[pieces].mean(0))


def test_figure_labels_words_and_time(text_model, clip):
    amap = attention_map(make_matcher(text_model, IteratingCascade(D, H, layers=2)), clip, QUERY)
    fig = attention_figure(amap)
    spectrogram, heat = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in heat.get_yticklabels()] == amap.rows
    assert amap.rows[1:-1] == ["A", "low", "hum", ",", "then", "two", "unbelievably", "sharp", "clicks", "."]
    assert heat.get_xlabel() == "time (s)" and spectrogram.get_ylabel() == "mel band"
    assert QUERY in spectrogram.get_title() and "decoder.1.cross" in spectrogram.get_title()
    assert heat.get_xlim() == pytest.approx((0.0, amap.weights.shape[1] * amap.token_seconds))
    assert "columns sum to 1" in fig.axes[2].get_ylabel()  # the colour bar says how to read it


def test_layer_choice_and_errors(text_model, clip):
    cascade = IteratingCascade(D, H, layers=3)
    assert guided_attention_unit(cascade, 0)[0] == "decoder.0.cross"
    assert guided_attention_unit(cascade, -1)[0] == "decoder.2.cross"
    assert guided_attention_unit(StackingCascade(D, H, layers=2), -1)[0] == "layers.1.text.cross"
    with pytest.raises(ModelError, match="pass --layer between -3 and 2"):
        guided_attention_unit(cascade, 3)
    with pytest.raises(ModelError, match="bi-encoder .* no co-attention to draw"):
        attention_map(make_matcher(text_model, None), clip, QUERY)


def test_recording_leaves_no_hook_behind():
    unit = MultiHeadAttention(D, H).eval()
    x, mask = torch.randn(1, 3, D), torch.ones(1, 3, dtype=torch.bool)
    with record_attention(unit) as recorded:
        unit(x, x, mask)
        unit(x, None, mask, kv=unit.project_kv(x))
    assert len(recorded) == 2 and not unit._forward_pre_hooks
    unit(x, x, mask)
    assert len(recorded) == 2
