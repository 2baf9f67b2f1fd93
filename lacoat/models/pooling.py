"""Pooling of a token sequence into one vector, respecting the validity mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionPool(nn.Module):
    """MCAN's attention flattening (AttFlat): an MLP scores each valid token, the softmax of the
    scores weights a sum of the tokens (one sum per glimpse), a linear layer maps it to ``out_dim``.

    Args:
        dim: token width D.
        out_dim: output width E.
        hidden: MLP width.
        glimpses: number of attention maps G (outputs concatenated before the linear layer).
        dropout: dropout inside the MLP.
    """

    def __init__(
        self, dim: int, out_dim: int, hidden: int = 512, glimpses: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, glimpses)
        )
        self.merge = nn.Linear(dim * glimpses, out_dim)

    def weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """Attention weights ``[B, L, G]`` over valid tokens (zero on padding)."""
        logits = self.mlp(x).masked_fill(~mask[..., None], float("-inf"))  # [B, L, G]
        return logits.softmax(dim=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Shape: x ``[B, L, D]``, mask ``[B, L]`` bool. Returns ``[B, E]``."""
        pooled = torch.einsum("blg,bld->bgd", self.weights(x, mask), x)  # [B, G, D]
        return self.merge(pooled.flatten(1))


class MaskedMeanPool(nn.Module):
    """Mean of the valid tokens, then a linear map to ``out_dim``.

    Args:
        dim: token width D.
        out_dim: output width E.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Shape: x ``[B, L, D]``, mask ``[B, L]`` bool. Returns ``[B, E]``."""
        m = mask[..., None].to(x.dtype)  # [B, L, 1]
        mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.proj(mean)
