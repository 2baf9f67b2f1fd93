"""What every encoder provides: token sequences, boolean masks, freezing and a stable identity.

Audio encoders read the DataModule's windows, ``audio [B, W, S]`` and ``audio_valid [B, W]`` (real
samples per window, 0 = padding window), and return the tokens of all windows concatenated in time order
with a mask at the encoder's own token rate. Text encoders read a list of strings.

``identity()`` is a stable string (class, settings, weights source) that keys cached features: two
encoders with the same identity give the same features for the same input.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from lacoat.errors import ModelError


class _Encoder(nn.Module, ABC):
    """Shared freezing logic: a frozen encoder has no trainable parameters and stays in eval mode."""

    frozen: bool

    def _freeze_if_asked(self) -> None:
        """Call at the end of ``__init__``: freezes parameters and switches to eval mode when frozen."""
        if self.frozen:
            for param in self.parameters():
                param.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> _Encoder:
        """Set train/eval mode; a frozen encoder ignores ``train(True)`` and stays in eval mode."""
        return super().train(mode and not self.frozen)

    def _grad_context(self) -> contextlib.AbstractContextManager:
        """``torch.no_grad()`` for a frozen encoder, a no-op otherwise."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def source_fingerprint(self) -> str | None:
        """Content fingerprint of the file or hub revision the weights are loaded from, or None when
        they come from nowhere else (random initialisation, training). A frozen encoder with one is
        left out of checkpoints and rebuilt from its source when they are loaded."""
        return None

    @abstractmethod
    def identity(self) -> str:
        """A stable string of class, settings and weights source (a cache key for features)."""


class AudioEncoder(_Encoder):
    """Base of audio encoders.

    Attributes:
        sample_rate: audio rate the encoder expects (Hz).
        window_seconds: window length the encoder expects; ``S = sample_rate * window_seconds``.
        dim: D, token size.
        tokens_per_window: tokens each window gives.
        frozen: no trainable parameters, eval mode kept, forward under ``no_grad``.
        window_local: each window is encoded on its own (a window's tokens do not depend on the
            clip's other windows), so cached tokens can be cut into windows like audio.
    """

    window_local: bool = False
    sample_rate: int
    window_seconds: float
    dim: int
    tokens_per_window: int

    @property
    def window_samples(self) -> int:
        """S, samples per window."""
        return round(self.sample_rate * self.window_seconds)

    @abstractmethod
    def forward(self, audio: Tensor, audio_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Encode windowed audio.

        Args:
            audio: windows of samples, zero-padded.
            audio_valid: real samples per window (0 = padding window).

        Returns:
            ``audio_tokens`` and ``audio_mask`` (True = valid token).

        Shape:
            - audio: ``[B, W, S]`` float
            - audio_valid: ``[B, W]`` int64
            - audio_tokens: ``[B, W * tokens_per_window, D]``
            - audio_mask: ``[B, W * tokens_per_window]`` bool
        """

    def check_batch(self, audio: Tensor, audio_valid: Tensor) -> None:
        """Raise ``ModelError`` when the batch does not have this encoder's window layout."""
        name = type(self).__name__
        if audio.dim() != 3 or audio_valid.shape != audio.shape[:2]:
            raise ModelError(
                f"{name} expects audio [B, W, S] and audio_valid [B, W], got {tuple(audio.shape)} "
                f"and {tuple(audio_valid.shape)}"
            )
        if audio.shape[-1] != self.window_samples:
            raise ModelError(
                f"{name} expects windows of {self.window_samples} samples ({self.window_seconds} s at "
                f"{self.sample_rate} Hz), got {audio.shape[-1]}. Set the data's sample_rate and "
                "window_seconds to the encoder's."
            )


class TextEncoder(_Encoder):
    """Base of text encoders.

    Attributes:
        dim: D, token size.
        frozen: no trainable parameters, eval mode kept, forward under ``no_grad``.
    """

    dim: int

    @abstractmethod
    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Encode a batch of texts.

        Returns:
            ``text_tokens`` and ``text_mask`` (True = valid token).

        Shape:
            - texts: list of B strings
            - text_tokens: ``[B, L, D]``
            - text_mask: ``[B, L]`` bool
        """

    @torch.no_grad()
    def mean_states(self, texts: list[str], batch: int = 256) -> Tensor:
        """Mean of each text's valid token states, ``[n, D]`` float32 on the CPU (evaluated in eval mode;
        used to mine hard negatives by caption similarity)."""
        was_training, out = self.training, []
        self.eval()
        for start in range(0, len(texts), batch):
            tokens, mask = self(texts[start : start + batch])  # [b, L, D], [b, L]
            m = mask[..., None].float()
            out.append(((tokens.float() * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu())
        self.train(was_training)
        return torch.cat(out)


def window_token_mask(audio_valid: Tensor, tokens_per_window: int, samples_per_token: int) -> Tensor:
    """Token mask of concatenated windows: a token is valid when its span starts in real audio.

    Token ``t`` of a window covers samples ``[t * samples_per_token, (t + 1) * samples_per_token)``;
    a window with ``v`` real samples has ``ceil(v / samples_per_token)`` valid tokens (at most
    ``tokens_per_window``), a padding window (``v = 0``) none.

    Shape:
        - audio_valid: ``[B, W]`` int64
        - output: ``[B, W * tokens_per_window]`` bool
    """
    n_valid = torch.div(audio_valid + samples_per_token - 1, samples_per_token, rounding_mode="floor")
    n_valid = n_valid.clamp(0, tokens_per_window)  # [B, W]
    steps = torch.arange(tokens_per_window, device=audio_valid.device)  # [T]
    return (steps < n_valid[..., None]).flatten(1)  # [B, W * T]


def state_digest(module: nn.Module) -> str:
    """16 hex characters of SHA-256 over a module's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
