"""Position codes for token sequences (audio time steps)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


def sinusoidal_positions(n_positions: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sine/cosine position codes (Vaswani et al. 2017).

    Shape:
        - output: ``[n_positions, dim]`` float32
    """
    position = torch.arange(n_positions, device=device, dtype=torch.float32)[:, None]  # [T, 1]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # [ceil(D/2)]
    codes = torch.zeros(n_positions, dim, device=device)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return codes


class TokenPositions(nn.Module):
    """Adds a code of each token's index (its window and frame: index = window * T + frame) to a sequence.

    Sequences are padded at the end, so a valid token's code never depends on the padding.

    Args:
        dim: token width D.
        kind: ``sinusoidal`` (fixed, any length), ``learned`` (one trained vector per index, at most
            ``max_positions``) or ``none``.
        max_positions: longest sequence a ``learned`` table covers.
    """

    def __init__(
        self,
        dim: int,
        kind: Literal["sinusoidal", "learned", "none"] = "sinusoidal",
        max_positions: int = 4096,
    ) -> None:
        super().__init__()
        self.kind, self.max_positions = kind, max_positions
        self.table = nn.Embedding(max_positions, dim) if kind == "learned" else None
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: x ``[B, L, D]``; returns ``[B, L, D]``."""
        length = x.shape[1]
        if self.kind == "none":
            return x
        if self.kind == "sinusoidal":
            return x + sinusoidal_positions(length, x.shape[2], x.device).to(x.dtype)
        if length > self.max_positions:
            raise ValueError(
                f"a sequence of {length} audio tokens is longer than the {self.max_positions} learned positions; "
                "raise audio_max_positions, use audio_positions: sinusoidal, or cut clips (data.max_*_windows)"
            )
        return x + self.table.weight[:length].to(x.dtype)
