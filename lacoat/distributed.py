"""Gathering token batches across ranks (DDP): evaluation on the whole split, negatives from every GPU.

Ranks hold batches of different sizes and token lengths; ``all_gather`` needs equal shapes, so each
rank pads to the largest batch and length, gathers, and the padding is cut off again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lacoat.contracts import Tokens

# (tokens [b, L, D], labels [b]) → every rank's (tokens [N, L', D], labels [N], rows per rank [W])
Gather = Callable[[Tokens, Tensor], tuple[Tokens, Tensor, Tensor]]


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
    padded = tokens.padded(l_max, b_max)  # [b_max, l_max, D]
    labels = F.pad(index, (0, b_max - b), value=-1)  # [b_max]
    all_tokens = module.all_gather(padded.tokens, sync_grads=sync_grads)  # [W, b_max, l_max, D]
    all_mask = module.all_gather(padded.mask)  # [W, b_max, l_max]
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


@dataclass(frozen=True)
class RankShare:
    """Work split across the ranks of a process group: each scores its share of the rows, all receive
    every row (evaluation under DDP: more GPUs, faster scoring).

    Attributes:
        rank: this process's rank.
        world: number of processes.
        all_gather: gathers a tensor of equal shape from every rank, ``[W, ...]``.
        device: where the gathered tensors live (the rank's device).
    """

    rank: int
    world: int
    all_gather: Callable[[Tensor], Tensor]
    device: torch.device

    def rows(self, n: int, score: Callable[[slice], Tensor], tail: tuple[int, ...] = ()) -> Tensor:
        """``score(rows)`` of every row ``0..n-1``, each rank scoring one contiguous share.

        Args:
            n: number of rows.
            score: scores of a slice of rows, ``[m, *tail]`` (never called with an empty slice).
            tail: trailing shape of a row's scores.

        Returns:
            ``[n, *tail]``, identical on every rank.
        """
        per = -(-n // self.world)  # ceil
        mine = slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))
        local = score(mine) if mine.stop > mine.start else None
        out = torch.zeros(per, *tail, dtype=torch.float32, device=self.device)
        if local is not None:
            out[: mine.stop - mine.start] = local.float()
        return self.all_gather(out).reshape(self.world * per, *tail)[:n]
