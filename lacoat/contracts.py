"""The one seam between ``lacoat.data`` and ``lacoat.models``.

Neither package imports the other. What the data side must know of the model's encoders (how audio
is cut, which frozen encoders' outputs it may serve from a feature cache, how to embed captions for
mining hard negatives) travels in one ``ModelFacts``, which ``LacoatModule.setup`` hands to the
DataModule's ``connect_model``. The encoders satisfy the protocols below structurally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class CachedEncoder(Protocol):
    """A frozen encoder whose outputs may be cached: ``identity()`` keys the cached features."""

    def identity(self) -> str: ...


class CachedAudioEncoder(CachedEncoder, Protocol):
    """A frozen audio encoder: ``tokens_per_window`` tokens per window; ``window_local`` when each
    window is encoded on its own (so cached clip tokens may be cut into windows)."""

    tokens_per_window: int
    window_local: bool


@dataclass(frozen=True)
class ModelFacts:
    """What the DataModule needs of the model.

    Attributes:
        sample_rate: audio rate the audio encoder reads (Hz).
        window_seconds: window length the audio encoder reads (s).
        audio_encoder_name: its class name, for messages.
        frozen_audio: the audio encoder when frozen (its outputs may come from a cache), else None.
        frozen_text: the text encoder when frozen, else None.
        caption_embedder: captions → ``[n, E]`` embeddings on the CPU, for mining hard negatives.
    """

    sample_rate: int
    window_seconds: float
    audio_encoder_name: str
    frozen_audio: CachedAudioEncoder | None
    frozen_text: CachedEncoder | None
    caption_embedder: Callable[[list[str]], Tensor] | None = None

    @classmethod
    def of(cls, audio_encoder: Any, text_encoder: Any, embed_captions: bool) -> ModelFacts:
        """The facts of a model's audio and text encoders; with ``embed_captions`` the text encoder's
        ``mean_states`` embed captions."""
        return cls(
            sample_rate=audio_encoder.sample_rate,
            window_seconds=audio_encoder.window_seconds,
            audio_encoder_name=type(audio_encoder).__name__,
            frozen_audio=audio_encoder if audio_encoder.frozen else None,
            frozen_text=text_encoder if text_encoder.frozen else None,
            caption_embedder=text_encoder.mean_states if embed_captions else None,
        )


@dataclass
class Tokens:
    """Projected token states of a batch of texts or clips: ``tokens [B, L, D]``, ``mask [B, L]``."""

    tokens: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: Tensor | slice) -> Tokens:
        return Tokens(self.tokens[index], self.mask[index])

    def padded(self, length: int, rows: int | None = None) -> Tokens:
        """The same rows padded with masked positions to ``length`` tokens (and with empty rows to
        ``rows``): ``[rows, length, D]``."""
        more_rows = 0 if rows is None else rows - len(self)
        more_tokens = length - self.tokens.shape[1]
        return Tokens(
            F.pad(self.tokens, (0, 0, 0, more_tokens, 0, more_rows)),
            F.pad(self.mask, (0, more_tokens, 0, more_rows)),
        )

    @staticmethod
    def cat(parts: list[Tokens]) -> Tokens:
        """Concatenate batches, padding to the longest sequence (padding is masked out)."""
        length = max(p.tokens.shape[1] for p in parts)
        padded = [p.padded(length) for p in parts]
        return Tokens(torch.cat([p.tokens for p in padded]), torch.cat([p.mask for p in padded]))

    def to(self, device: torch.device | str) -> Tokens:
        return Tokens(self.tokens.to(device), self.mask.to(device))
