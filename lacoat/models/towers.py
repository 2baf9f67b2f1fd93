"""Unimodal towers: the bi-encoder baseline with the cascade's depth and width.

A plain bi-encoder pools the projected unimodal tokens, so with frozen encoders nothing trainable
sees a sequence before pooling, and a cascade's gain over it mixes two things: cross-modal attention
and sheer depth. ``Towers`` gives each modality its own stack of the cascade's SA units (MCAN's
self-attention + FFN, ``lacoat.models.attention.SelfAttention``) and no attention across modalities:
the honest bi-encoder of the same depth. The matcher runs the towers in ``project_text`` /
``project_audio``, once per item, so everything after them (bi-encoder pools, and a fusion cascade
if one is set: ALBEF's layout) reads the towers' outputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from lacoat.errors import ModelError
from lacoat.models.attention import SelfAttention


class Towers(nn.Module):
    """One self-attention stack per modality, no cross-modal path.

    Each side runs ``layers`` SA units of its own (``x = LN(x + Drop(MHA(x, x)))``, then
    ``x = LN(x + Drop(FFN(x)))``), as the leader of an ``IteratingCascade`` does; a text's output
    depends on that text only, a clip's on that clip only. ``2·layers`` SA units hold about 6/7 of
    the parameters of an ``IteratingCascade`` of the same ``dim`` and ``layers`` (``layers`` SA +
    ``layers`` SGA units).

    Args:
        dim: model width D (the matcher's token width: the projections map to it).
        heads: attention heads (D divisible by them).
        layers: SA units per modality, L (at least 1).
        dropout: dropout in every unit.

    Raises:
        ModelError: If ``layers`` is below 1.
    """

    def __init__(self, dim: int = 512, heads: int = 8, layers: int = 6, dropout: float = 0.1) -> None:
        if layers < 1:
            raise ModelError(
                f"model.matcher towers layers must be at least 1 (SA units per modality), got {layers}; "
                "drop towers for the plain bi-encoder"
            )
        super().__init__()
        self.dim = dim
        self.text_layers = nn.ModuleList(SelfAttention(dim, heads, dropout) for _ in range(layers))
        self.audio_layers = nn.ModuleList(SelfAttention(dim, heads, dropout) for _ in range(layers))

    @staticmethod
    def _run(layers: nn.ModuleList, tokens: Tensor, mask: Tensor) -> Tensor:
        for sa in layers:
            tokens = sa(tokens, None, mask)
        return tokens

    def text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The text tower. Shape: tokens ``[B, Lt, D]``, mask ``[B, Lt]`` bool; returns ``[B, Lt, D]``."""
        return self._run(self.text_layers, tokens, mask)

    def audio(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The audio tower. Shape: tokens ``[B, La, D]``, mask ``[B, La]`` bool; returns ``[B, La, D]``."""
        return self._run(self.audio_layers, tokens, mask)

    def forward(
        self, text: Tensor, text_mask: Tensor, audio: Tensor, audio_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Both towers; the batches need not be aligned (nothing passes between them).

        Shape:
            text: ``[Bt, Lt, D]``, text_mask: ``[Bt, Lt]``, audio: ``[Ba, La, D]``, audio_mask: ``[Ba, La]``.
            Returns ``(text_out [Bt, Lt, D], audio_out [Ba, La, D])``.
        """
        return self.text(text, text_mask), self.audio(audio, audio_mask)
