"""Attention units of the co-attention network, after MCAN (Yu et al., 2019).

Every unit has one convention, ``forward(x, y, x_mask, y_mask)``: ``x`` is updated, ``y`` guides it
(ignored by self-attention). Masks are boolean, True = valid token; they are converted once, at the
``scaled_dot_product_attention`` call. Units are post-norm: ``x = LN(x + Drop(sublayer(x)))``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

KeyValue = tuple[Tensor, Tensor]  # ([B, H, L, Dh], [B, H, L, Dh])


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention``.

    Keys and values can be projected once (``project_kv``) and reused for many queries: in pair
    scoring the guiding side of a pair depends on one item only.

    Args:
        dim: model width D.
        heads: number of heads H (D divisible by H).
        dropout: attention-weight dropout (training only).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, H, L, Dh]

    def project_kv(self, y: Tensor) -> KeyValue:
        """Keys and values of ``y [B, Ly, D]``, each ``[B, H, Ly, Dh]``."""
        k, v = self.kv_proj(y).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, y: Tensor | None, y_mask: Tensor, kv: KeyValue | None = None) -> Tensor:
        """Attend from ``x`` to ``y`` (or to precomputed ``kv``).

        Shape:
            x: ``[B, Lx, D]``; y: ``[B, Ly, D]`` or None when ``kv`` is given;
            y_mask: ``[B, Ly]`` bool; returns ``[B, Lx, D]``.
        """
        k, v = kv if kv is not None else self.project_kv(y)
        q = self._split(self.q_proj(x))  # [B, H, Lx, Dh]
        attn_mask = y_mask[:, None, None, :]  # [B, 1, 1, Ly], True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, Lx, Dh]
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def weights(self, x: Tensor, y: Tensor | None, y_mask: Tensor, kv: KeyValue | None = None) -> Tensor:
        """The attention weights ``forward`` applies, ``softmax(QKᵀ/√Dh)`` over valid keys (no dropout).

        For inspection (``lacoat explain``); ``forward`` never forms them (SDPA fuses the product).

        Shape:
            x: ``[B, Lx, D]``; y: ``[B, Ly, D]`` or None when ``kv`` is given; y_mask: ``[B, Ly]`` bool;
            returns ``[B, H, Lx, Ly]``.
        """
        k, _ = kv if kv is not None else self.project_kv(y)
        q = self._split(self.q_proj(x))  # [B, H, Lx, Dh]
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [B, H, Lx, Ly]
        return logits.masked_fill(~y_mask[:, None, None, :], float("-inf")).softmax(-1)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(D, 4D) → ReLU → Dropout → Linear(4D, D)."""

    def __init__(self, dim: int, dropout: float = 0.1, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    """MCAN SA unit: ``x = LN(x + Drop(MHA(x, x)))``, then ``x = LN(x + Drop(FFN(x)))``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor | None, x_mask: Tensor, y_mask: Tensor | None = None) -> Tensor:
        """Shape: x ``[B, L, D]``, x_mask ``[B, L]``; ``y`` and ``y_mask`` are ignored. Returns ``[B, L, D]``."""
        x = self.norm1(x + self.drop(self.attn(x, x, x_mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class GuidedAttention(nn.Module):
    """MCAN SGA unit: self-attention, then ``x = LN(x + Drop(MHA(q=x, k=y, v=y)))``, then FFN.

    ``kv`` may hold the guide's keys and values from ``self.cross.project_kv(y)``, computed once
    per guiding item and reused for every pair it takes part in.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads, dropout)
        self.cross = MultiHeadAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def attend_self(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """The self-attention sublayer alone: ``x = LN(x + Drop(MHA(x, x)))``.

        Shape: x ``[B, Lx, D]``, x_mask ``[B, Lx]``; returns ``[B, Lx, D]``.
        """
        return self.norm1(x + self.drop(self.self_attn(x, x, x_mask)))

    def attend_guide(self, x: Tensor, y: Tensor | None, y_mask: Tensor, kv: KeyValue | None = None) -> Tensor:
        """The rest after ``attend_self``: guided attention to ``y`` (or its ``kv``), then the FFN.

        Shape: x ``[B, Lx, D]``, y ``[B, Ly, D]`` (or None with ``kv``), y_mask ``[B, Ly]``; returns ``[B, Lx, D]``.
        """
        x = self.norm2(x + self.drop(self.cross(x, y, y_mask, kv)))
        return self.norm3(x + self.drop(self.ffn(x)))

    def forward(
        self, x: Tensor, y: Tensor | None, x_mask: Tensor, y_mask: Tensor, kv: KeyValue | None = None
    ) -> Tensor:
        """Shape: x ``[B, Lx, D]``, y ``[B, Ly, D]`` (or None with ``kv``), masks ``[B, Lx]``, ``[B, Ly]``.

        Returns ``[B, Lx, D]``.
        """
        return self.attend_guide(self.attend_self(x, x_mask), y, y_mask, kv)
