"""Co-attention maps: which words of a query a clip attends to, and when (``lacoat explain``).

The map is the attention of one guided-attention (GA) layer's ``cross`` unit for one (query, clip)
pair, averaged over heads. The hot path never forms attention weights (SDPA fuses them), so they are
recomputed from the unit's own inputs: ``record_attention`` registers a forward pre-hook on the unit
that calls ``MultiHeadAttention.weights`` on the arguments of each call, while the model scores the
pair as it always does.

Which way the map reads depends on the cascade:

* iterating, text leads (the default): audio tokens attend to the final text states, so each time
  step's column is a distribution over the query's tokens (a word split into pieces gets their sum);
* iterating with audio leading, stacking and single (``layers[l].text``): each token attends to the audio,
  so each word's row is a distribution over time (a word split into pieces gets their mean).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from lacoat.errors import ModelError
from lacoat.models.attention import MultiHeadAttention

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lacoat.models.cascade import Cascade
    from lacoat.models.matcher import AudioTextMatcher


@dataclass
class AttentionMap:
    """The word × time attention of one (query, clip) pair.

    Attributes:
        weights: ``[R, T]`` the drawn matrix: one row per word (or special token), one column per audio
            token up to the last valid one (NaN where a token is padding).
        token_weights: ``[Lt, T]`` the same before words were merged: one row per text token.
        rows: the R row labels (words; special tokens as the tokenizer writes them).
        token_groups: for each row, the text tokens merged into it.
        normalised_over: ``words`` when each column sums to 1 (audio attends to text), ``time`` when
            each row of ``token_weights`` does (text attends to audio).
        token_seconds: duration of one audio token; token t covers ``[t, t + 1) * token_seconds``.
        waveform: ``[S]`` mono samples of the clip (all windows, padding removed).
        sample_rate: rate of ``waveform``.
        query: the query text.
        layer: the GA unit drawn (module path in the cascade, e.g. ``decoder.1.cross``).
        score: the pair's co-attention score (cosine of the pooled, co-attended embeddings).
    """

    weights: np.ndarray
    token_weights: np.ndarray
    rows: list[str]
    token_groups: list[list[int]]
    normalised_over: Literal["words", "time"]
    token_seconds: float
    waveform: np.ndarray
    sample_rate: int
    query: str
    layer: str
    score: float


def guided_attention_unit(cascade: Cascade, layer: int = -1) -> tuple[str, MultiHeadAttention, bool]:
    """The ``cross`` unit of GA layer ``layer`` whose map relates words and audio time.

    Iterating cascades: ``decoder[layer].cross``; stacking and single: ``layers[layer].text.cross``
    (text guided by audio).

    Returns:
        ``(name, unit, text_is_query)``: the unit's path in the cascade, the unit, and whether text
        tokens are its queries (else audio tokens are, and text gives the keys).

    Raises:
        ModelError: ``layer`` is out of range.
    """
    from lacoat.models.cascade import IteratingCascade, StackingCascade

    if isinstance(cascade, IteratingCascade):
        units, path, text_is_query = (
            [ga.cross for ga in cascade.decoder],
            "decoder.{}.cross",
            cascade.lead == "audio",
        )
    elif isinstance(cascade, StackingCascade):
        units, path, text_is_query = (
            [lyr.text.cross for lyr in cascade.layers],
            "layers.{}.text.cross",
            True,
        )
    else:
        raise ModelError(f"cannot find the guided-attention layers of a {type(cascade).__name__}")
    if not -len(units) <= layer < len(units):
        raise ModelError(
            f"layer {layer} does not exist: this {type(cascade).__name__} has {len(units)} guided-attention "
            f"layers; pass --layer between {-len(units)} and {len(units) - 1} (-1 = the last)"
        )
    index = layer % len(units)
    return path.format(index), units[index], text_is_query


@contextlib.contextmanager
def record_attention(unit: MultiHeadAttention) -> Iterator[list[Tensor]]:
    """Record the attention weights ``[B, H, Lx, Ly]`` of every call of ``unit`` inside the block.

    A forward pre-hook recomputes them with ``unit.weights`` from the call's own arguments; the
    forward pass itself is unchanged.

    Yields:
        The list the weights of each call are appended to (detached).
    """
    recorded: list[Tensor] = []
    signature = inspect.signature(unit.forward)

    def hook(module: MultiHeadAttention, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(*args, **kwargs)
        with torch.no_grad():
            recorded.append(module.weights(**bound.arguments).detach())

    handle = unit.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield recorded
    finally:
        handle.remove()


def word_groups(tokenizer, text: str, max_length: int) -> tuple[list[str], list[list[int]]]:
    """Rows of a word × time map: the words of ``text`` and the tokens each one is made of.

    A fast tokenizer's ``word_ids`` merge word pieces into words (labelled with the word as written);
    special tokens keep their own row (``[CLS]``, ``</s>``, …). A slow tokenizer gives one row per token.

    Returns:
        ``(labels, groups)``: one label and one list of token positions per row, in text order.
    """
    encoded = tokenizer(text, truncation=True, max_length=max_length)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    if not getattr(encoded, "is_fast", False):
        return list(tokens), [[i] for i in range(len(tokens))]
    labels, groups, row_of_word = [], [], {}
    for position, word in enumerate(encoded.word_ids()):
        if word is None:
            labels.append(tokens[position])
            groups.append([position])
        elif word in row_of_word:
            groups[row_of_word[word]].append(position)
        else:
            start, end = encoded.word_to_chars(word)
            row_of_word[word] = len(groups)
            labels.append(text[start:end])
            groups.append([position])
    return labels, groups


def merge_rows(matrix: np.ndarray, groups: list[list[int]], how: Literal["sum", "mean"]) -> np.ndarray:
    """Rows ``[R, T]`` of ``matrix [Lt, T]``, each the sum or mean of the token rows of its group."""
    reduce = np.sum if how == "sum" else np.mean
    return np.stack([reduce(matrix[group], axis=0) for group in groups])


def attention_map(
    matcher: AudioTextMatcher, audio_path: str | Path, query: str, layer: int = -1
) -> AttentionMap:
    """Score the pair (``query``, clip at ``audio_path``) and record the attention of GA layer ``layer``.

    The clip is read whole (every window, as evaluation reads it) at the audio encoder's rate.

    Raises:
        ModelError: the model has no co-attention cascade, or ``layer`` does not exist.
        AudioReadError: the audio file is missing or unreadable.
    """
    from lacoat.data.datasets import AudioLoader

    if matcher.cascade is None:
        raise ModelError(
            "this model is a bi-encoder (no co-attention cascade): there is no co-attention to draw. "
            "Use a checkpoint trained with a cascade (iterating, stacking or single)."
        )
    name, unit, text_is_query = guided_attention_unit(matcher.cascade, layer)
    encoder = matcher.audio_encoder
    windows = AudioLoader(encoder.sample_rate, encoder.window_seconds).load(str(audio_path))
    device = next(matcher.parameters()).device
    audio = torch.from_numpy(windows.waveform)[None].to(device)  # [1, W, S]
    audio_valid = torch.from_numpy(windows.valid_samples)[None].to(device)  # [1, W]
    with torch.no_grad(), record_attention(unit) as recorded:
        text = matcher.encode_text([query])
        clip = matcher.encode_audio(audio, audio_valid)
        score = float(matcher.pair_scores(text, clip)[0])
    heads = recorded[-1][0].float().mean(0)  # [Lx, Ly], heads averaged
    text_major = (heads if text_is_query else heads.T).cpu().numpy()  # [Lt, La]
    audio_mask = clip.mask[0].cpu().numpy()  # [La]
    last = int(np.flatnonzero(audio_mask)[-1]) + 1
    text_major = np.where(audio_mask[None, :last], text_major[:, :last], np.nan)  # [Lt, T]

    text_encoder = matcher.text_encoder
    labels, groups = word_groups(text_encoder.tokenizer, query, text_encoder.max_length)
    if sum(map(len, groups)) != text_major.shape[0]:  # a text encoder that tokenises differently
        labels, groups = (
            [str(i) for i in range(text_major.shape[0])],
            [[i] for i in range(text_major.shape[0])],
        )
    waveform = np.concatenate([w[:v] for w, v in zip(windows.waveform, windows.valid_samples, strict=True)])
    return AttentionMap(
        weights=merge_rows(text_major, groups, "mean" if text_is_query else "sum"),
        token_weights=text_major,
        rows=labels,
        token_groups=groups,
        normalised_over="time" if text_is_query else "words",
        token_seconds=encoder.window_seconds / encoder.tokens_per_window,
        waveform=waveform,
        sample_rate=encoder.sample_rate,
        query=query,
        layer=name,
        score=score,
    )


def log_mel(waveform: np.ndarray, sample_rate: int, n_mels: int = 64) -> tuple[np.ndarray, float]:
    """Log-mel spectrogram ``[n_mels, F]`` in dB (80 dB range) with 25-ms frames; returns it and the hop (s)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    n_fft = 1 << int(np.ceil(np.log2(0.025 * sample_rate)))
    hop = max(1, round(0.010 * sample_rate))
    mel = spectrogram(
        waveform.astype(np.float32),
        window_function(n_fft, "hann"),
        frame_length=n_fft,
        hop_length=hop,
        power=2.0,
        mel_filters=mel_filter_bank(
            n_fft // 2 + 1, n_mels, 0.0, sample_rate / 2, sample_rate, "slaney", "slaney"
        ),
        log_mel="dB",
        db_range=80.0,
    )
    return mel, hop / sample_rate


def attention_figure(amap: AttentionMap) -> Figure:
    """The figure of ``amap``: the clip's log-mel spectrogram above the word × time map, sharing the time axis.

    Built without pyplot (no global state, any backend); ``Figure.savefig`` writes it.
    """
    from matplotlib.figure import Figure

    n_rows, n_tokens = amap.weights.shape
    seconds = n_tokens * amap.token_seconds
    fig = Figure(figsize=(9.0, 2.2 + 0.28 * n_rows), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.4, max(1.5, 0.28 * n_rows)])
    mel, hop_seconds = log_mel(amap.waveform, amap.sample_rate)
    top.imshow(
        mel,
        origin="lower",
        aspect="auto",
        cmap="gray_r",
        extent=(0.0, mel.shape[1] * hop_seconds, 0, mel.shape[0]),
        interpolation="nearest",
    )
    top.set_ylabel("mel band")
    top.set_title(
        f'"{amap.query}"\n{amap.layer} (mean of heads), co-attention score {amap.score:.3f}', fontsize=10
    )
    edges = np.arange(n_tokens + 1) * amap.token_seconds
    mesh = bottom.pcolormesh(
        edges, np.arange(n_rows + 1), np.ma.masked_invalid(amap.weights), cmap="magma", vmin=0.0
    )
    bottom.set_yticks(np.arange(n_rows) + 0.5, amap.rows)
    bottom.invert_yaxis()  # first word on top
    bottom.set_xlabel("time (s)")
    bottom.set_xlim(0.0, seconds)
    what = (
        "attention of each time step over the words (columns sum to 1)"
        if amap.normalised_over == "words"
        else "attention of each word over time (rows sum to 1)"
    )
    fig.colorbar(mesh, ax=[top, bottom], label=what, shrink=0.9, aspect=30)
    return fig


def draw_attention_map(amap: AttentionMap, out: str | Path, dpi: int = 110) -> np.ndarray:
    """Write the figure of ``amap`` to ``out`` (PNG, or any format matplotlib knows by the suffix).

    Returns:
        ``[R, T]`` the matrix the heat map was drawn from (as matplotlib holds it; NaN = padding).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = attention_figure(amap)
    fig.savefig(out, dpi=dpi)
    mesh = fig.axes[1].collections[0]  # the heat map's QuadMesh
    return np.ma.getdata(mesh.get_array()).reshape(amap.weights.shape)
