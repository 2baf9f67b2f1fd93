"""Gathering token batches across ranks (DDP): evaluation on the whole split, negatives from every GPU.

Ranks hold batches of different sizes and token lengths; ``all_gather`` needs equal shapes, so each
rank pads to the largest batch and length, gathers, and the padding is cut off again.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lacoat.models.matcher import Tokens


def gather_tokens(
    module: L.LightningModule, tokens: Tokens, index: Tensor, sync_grads: bool = False
) -> tuple[Tokens, Tensor, Tensor]:
    """All ranks' rows of ``tokens`` (rank order) with their ``index``.

    Args:
        module: the LightningModule (its strategy does the collective calls).
        tokens: this rank's ``Tokens`` ``[b, L, D]``.
        index: ``[b]`` int64 row labels (clip or query index, or clip identity).
        sync_grads: let gradients flow back to the rank each row came from (training negatives).

    Returns:
        ``(tokens [Σb, L_max, D], index [Σb], sizes [world])``; padding rows are removed, padded
        token positions are masked out.
    """
    if module.trainer.world_size <= 1:
        return tokens, index, torch.tensor([len(tokens)])
    b, length = tokens.tokens.shape[:2]
    shape = module.all_gather(torch.tensor([b, length], device=index.device))  # [W, 2]
    b_max, l_max = (int(v) for v in shape.max(0).values)
    pad_rows, pad_len = b_max - b, l_max - length
    padded = F.pad(tokens.tokens, (0, 0, 0, pad_len, 0, pad_rows))  # [b_max, l_max, D]
    mask = F.pad(tokens.mask, (0, pad_len, 0, pad_rows))  # [b_max, l_max]
    labels = F.pad(index, (0, pad_rows), value=-1)  # [b_max]
    all_tokens = module.all_gather(padded, sync_grads=sync_grads)  # [W, b_max, l_max, D]
    all_mask = module.all_gather(mask)  # [W, b_max, l_max]
    all_index = module.all_gather(labels)  # [W, b_max]
    sizes = shape[:, 0].cpu()
    rows = [slice(0, int(n)) for n in sizes]
    return (
        Tokens(
            torch.cat([all_tokens[r, s] for r, s in enumerate(rows)]),
            torch.cat([all_mask[r, s] for r, s in enumerate(rows)]),
        ),
        torch.cat([all_index[r, s] for r, s in enumerate(rows)]),
        sizes,
    )


def unique_rows(tokens: Tokens, index: Tensor) -> tuple[Tokens, Tensor]:
    """Rows sorted by ``index`` with repeated indices dropped (``DistributedSampler`` pads each rank
    to the same length by repeating items; they must be scored once)."""
    order = torch.argsort(index, stable=True)
    index = index[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    keep = order[first]
    return tokens[keep.to(tokens.tokens.device)], index[first]
