"""Co-attention cascades: single, stacking, iterating (Sun et al., 2024; MCAN's layouts).

A cascade maps a (text, audio) pair of token sequences to two co-attended sequences. Because the
output for a text depends on the audio it is paired with (a cross-encoder), retrieval scores every
pair. Work that depends on one side only is split off: ``prepare_text`` / ``prepare_audio`` run once
per item and return a ``Side`` (tokens, mask and the keys/values that side offers as a guide);
``pairs`` runs the per-pair rest on sides already aligned pair by pair (``Side.take``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from lacoat.models.attention import GuidedAttention, KeyValue, SelfAttention


@dataclass
class Side:
    """Per-item state of one modality.

    Attributes:
        tokens: ``[B, L, D]`` token states after the item-only part of the cascade.
        mask: ``[B, L]`` bool, True = valid token.
        kv: keys/values (each ``[B, H, L, Dh]``) this side offers to guided-attention layers.
    """

    tokens: Tensor
    mask: Tensor
    kv: list[KeyValue] = field(default_factory=list)

    def take(self, index: Tensor) -> Side:
        """Rows ``index [P]`` of every tensor (a pair's side, repeated as often as it is paired)."""
        return Side(
            self.tokens.index_select(0, index),
            self.mask.index_select(0, index),
            [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv],
        )


class Cascade(nn.Module, ABC):
    """A co-attention cascade. ``forward`` scores aligned pairs; pair scoring uses the split API.

    Attributes:
        dim: model width D of the token sequences it takes and returns.
        static_side: a side whose ``pairs`` output is its prepared tokens, unchanged by the partner
            (``text`` or ``audio``), so its pooled embedding is computed once per item; None if both change.
    """

    dim: int
    static_side: Literal["text", "audio"] | None = None

    @abstractmethod
    def prepare_text(self, tokens: Tensor, mask: Tensor) -> Side:
        """Item-only work on texts ``[B, Lt, D]``."""

    @abstractmethod
    def prepare_audio(self, tokens: Tensor, mask: Tensor) -> Side:
        """Item-only work on clips ``[B, La, D]``."""

    @abstractmethod
    def pairs(self, text: Side, audio: Side) -> tuple[Tensor, Tensor]:
        """Per-pair work on aligned sides (row p of each is pair p); returns ``(text [P, Lt, D], audio [P, La, D])``."""

    def forward(
        self, text: Tensor, text_mask: Tensor, audio: Tensor, audio_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Co-attend aligned pairs.

        Shape:
            text: ``[P, Lt, D]``, text_mask: ``[P, Lt]``, audio: ``[P, La, D]``, audio_mask: ``[P, La]``.
            Returns ``(text_out [P, Lt, D], audio_out [P, La, D])``.
        """
        return self.pairs(self.prepare_text(text, text_mask), self.prepare_audio(audio, audio_mask))


class CoAttentionLayer(nn.Module):
    """One co-attention module (the paper's Fig. 2): for each modality MCAN's SGA unit, i.e.
    self-attention, then guided attention to the other modality's self-attended sequence, then FFN.

    Each modality self-attends once per layer: 4 attention blocks and 2 FFNs per layer,
    about the parameters of an iterating layer pair (3 attention blocks and 2 FFNs).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.text, self.audio = GuidedAttention(dim, heads, dropout), GuidedAttention(dim, heads, dropout)

    def self_step(self, text: Side, audio: Side) -> tuple[Side, Side]:
        """Self-attention on both sides, plus the keys/values each offers the other side's guided attention."""
        t = self.text.attend_self(text.tokens, text.mask)
        a = self.audio.attend_self(audio.tokens, audio.mask)
        t_side = Side(t, text.mask, [self.audio.cross.project_kv(t)])  # text guides audio
        a_side = Side(a, audio.mask, [self.text.cross.project_kv(a)])  # audio guides text
        return t_side, a_side

    def guided_step(self, text: Side, audio: Side) -> tuple[Tensor, Tensor]:
        """Guided attention + FFN of each side (sides from ``self_step``, aligned pair by pair)."""
        t = self.text.attend_guide(text.tokens, None, audio.mask, kv=audio.kv[0])
        a = self.audio.attend_guide(audio.tokens, None, text.mask, kv=text.kv[0])
        return t, a


class StackingCascade(Cascade):
    """L co-attention layers in depth; layer l+1 works on layer l's co-attended outputs.

    Args:
        dim: model width D.
        heads: attention heads.
        layers: number of co-attention layers L.
        dropout: dropout in every unit.
    """

    def __init__(self, dim: int = 512, heads: int = 8, layers: int = 6, dropout: float = 0.1) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(CoAttentionLayer(dim, heads, dropout) for _ in range(layers))

    # Layer 1's self-attention sees one item only, so it belongs to the per-item part.
    def prepare_text(self, tokens: Tensor, mask: Tensor) -> Side:
        layer = self.layers[0]
        t = layer.text.attend_self(tokens, mask)
        return Side(t, mask, [layer.audio.cross.project_kv(t)])

    def prepare_audio(self, tokens: Tensor, mask: Tensor) -> Side:
        layer = self.layers[0]
        a = layer.audio.attend_self(tokens, mask)
        return Side(a, mask, [layer.text.cross.project_kv(a)])

    def pairs(self, text: Side, audio: Side) -> tuple[Tensor, Tensor]:
        t, a = self.layers[0].guided_step(text, audio)
        for layer in self.layers[1:]:
            t_side, a_side = layer.self_step(Side(t, text.mask), Side(a, audio.mask))
            t, a = layer.guided_step(t_side, a_side)
        return t, a


class SingleCascade(StackingCascade):
    """The paper's single co-attention module: one stacking layer.

    Args:
        dim: model width D.
        heads: attention heads.
        dropout: dropout in every unit.
    """

    def __init__(self, dim: int = 512, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__(dim, heads, layers=1, dropout=dropout)


class IteratingCascade(Cascade):
    """MCAN's encoder-decoder: the leading modality runs L SA layers alone; the other runs L GA
    layers, each guided by the leader's *final* sequence. The paper's best configuration.

    Args:
        dim: model width D.
        heads: attention heads.
        layers: number of SA layers (leader) and GA layers (follower), L.
        dropout: dropout in every unit.
        lead: which modality leads (``text`` by default).
    """

    def __init__(
        self,
        dim: int = 512,
        heads: int = 8,
        layers: int = 6,
        dropout: float = 0.1,
        lead: Literal["text", "audio"] = "text",
    ) -> None:
        super().__init__()
        self.dim, self.lead = dim, lead
        self.static_side = lead  # the leader's output depends on itself only
        self.encoder = nn.ModuleList(SelfAttention(dim, heads, dropout) for _ in range(layers))
        self.decoder = nn.ModuleList(GuidedAttention(dim, heads, dropout) for _ in range(layers))

    def _prepare_leader(self, tokens: Tensor, mask: Tensor) -> Side:
        for sa in self.encoder:
            tokens = sa(tokens, None, mask)
        return Side(tokens, mask, [ga.cross.project_kv(tokens) for ga in self.decoder])

    def _follow(self, follower: Side, leader: Side) -> Tensor:
        x = follower.tokens
        for ga, kv in zip(self.decoder, leader.kv, strict=True):
            x = ga(x, None, follower.mask, leader.mask, kv=kv)
        return x

    def prepare_text(self, tokens: Tensor, mask: Tensor) -> Side:
        return self._prepare_leader(tokens, mask) if self.lead == "text" else Side(tokens, mask)

    def prepare_audio(self, tokens: Tensor, mask: Tensor) -> Side:
        return self._prepare_leader(tokens, mask) if self.lead == "audio" else Side(tokens, mask)

    def pairs(self, text: Side, audio: Side) -> tuple[Tensor, Tensor]:
        if self.lead == "text":
            return text.tokens, self._follow(audio, text)
        return self._follow(text, audio), audio.tokens
