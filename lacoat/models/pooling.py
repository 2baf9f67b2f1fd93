"""Pooling of a token sequence into one vector, respecting the validity mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionPool(nn.Module):
    """MCAN's attention flattening (AttFlat): an MLP scores each valid token, the softmax of the
    scores weights a sum of the tokens (one sum per glimpse), a linear layer maps it to ``out_dim``.

    Softmax weights sum to one, so AttFlat gives the same vector for two barks as for three once it
    attends to the barks alone: soft attention cannot count (Zhang et al., ICLR 2018). With ``mass``
    each glimpse also reads its scores as sigmoid gates and adds the gated *mean* of the valid tokens,
    ``Σ σ(s_t) x_t / L``, which grows with how many tokens the glimpse selects; the merge sees both.

    Args:
        dim: token width D.
        out_dim: output width E.
        hidden: MLP width.
        glimpses: number of attention maps G (outputs concatenated before the linear layer).
        dropout: dropout inside the MLP.
        mass: add each glimpse's sigmoid-gated mean of the tokens (how much of what it attends to).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        hidden: int = 512,
        glimpses: int = 1,
        dropout: float = 0.1,
        mass: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, glimpses)
        )
        self.mass = mass
        self.merge = nn.Linear(dim * glimpses * (2 if mass else 1), out_dim)

    def logits(self, x: Tensor, mask: Tensor) -> Tensor:
        """Scores ``[B, L, G]`` of the tokens (-inf on padding)."""
        return self.mlp(x).masked_fill(~mask[..., None], float("-inf"))

    def weights(self, x: Tensor, mask: Tensor) -> Tensor:
        """Attention weights ``[B, L, G]`` over valid tokens (zero on padding)."""
        return self.logits(x, mask).softmax(dim=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Shape: x ``[B, L, D]``, mask ``[B, L]`` bool. Returns ``[B, E]``."""
        logits = self.logits(x, mask)  # [B, L, G]
        pooled = torch.einsum("blg,bld->bgd", logits.softmax(dim=1), x)  # [B, G, D]
        if self.mass:
            valid = mask.sum(1).clamp_min(1).to(x.dtype)[:, None, None]  # [B, 1, 1]
            gated = torch.einsum("blg,bld->bgd", logits.sigmoid(), x) / valid  # [B, G, D]; σ(-inf) = 0
            pooled = torch.cat([pooled, gated], dim=1)  # [B, 2G, D]
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
