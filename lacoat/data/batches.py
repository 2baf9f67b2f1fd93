"""Training batches that hold hard negatives: a random part plus neighbours of it.

A random batch almost never pairs a clip with one that differs only in the order or count of its
events, so nothing in the loss rewards telling them apart (CompA, ICLR 2024). ``NeighbourBatchSampler``
fills a share of each batch with clips that are *neighbours* of the batch's random items, mined by
caption similarity (``caption_neighbours``) under a frozen text encoder: for SynthCaps these are the
twins (same events, other order or count), for Clotho and AudioCaps clips described alike.

Everything follows from ``seed`` and the epoch, so a run resumed mid-epoch (``--ckpt_path last``) gets
the very same batches: the loader fast-forwards through a re-run of the epoch's sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, RandomSampler, Sampler


class EpochShuffle(RandomSampler):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``; Lightning sets the epoch.

    A pure function of seed and epoch, so a run resumed at any point, with or without loader workers,
    meets the same order in every later epoch (a ``RandomSampler`` drawing from a generator shared with
    the loader does not, without workers). A ``RandomSampler`` by type so that under DDP Lightning sees
    a shuffled loader and gives each rank a share of a new permutation every epoch
    (``DistributedSampler(shuffle=True)`` seeded by ``seed_everything``), not a fixed slice.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__(range(n))
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())


class NeighbourBatchSampler(BatchSampler):
    """Batches of ``batch_size`` items: ``batch_size - n_hard`` from ``sampler`` and ``n_hard`` neighbours.

    Each hard item is a random caption of a random one of the ``k`` nearest clips (``neighbours``) of
    one of the batch's sampled items, taken in turn; a clip already in the batch is not added again
    while another neighbour is free, so hard items are negatives (captions of one clip in a batch are
    positives of each other, as the loss knows). An epoch has ``len(sampler) // batch_size`` batches,
    as a plain loader dropping the last batch has, so schedules and budgets do not change.

    A ``torch.utils.data.BatchSampler``, so under DDP Lightning replaces ``sampler`` with its
    distributed sampler (each rank then draws its own random part).

    Args:
        sampler: the random part's items (an ``EpochShuffle``; a distributed sampler under DDP).
        batch_size: items per batch B.
        drop_last: accepted for ``BatchSampler`` compatibility; the last partial batch is always dropped.
        clip_of: ``[n_items]`` clip index of each item.
        neighbours: ``[n_clips, k]`` nearest clips of each clip, nearest first (None: random batches).
        hard_share: share of each batch made of neighbours, in [0, 1).
        seed: seed of the neighbour choices (combined with the epoch).
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sized,
        batch_size: int,
        drop_last: bool = True,
        clip_of: np.ndarray | None = None,
        neighbours: np.ndarray | None = None,
        hard_share: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= hard_share < 1.0:
            raise ValueError(f"hard_share must lie in [0, 1), got {hard_share}")
        super().__init__(sampler, batch_size, drop_last)
        self.clip_of = np.asarray(clip_of)
        self.neighbours = neighbours
        self.hard_share, self.seed = hard_share, seed
        self.n_hard = round(hard_share * batch_size) if neighbours is not None else 0
        self.items_of = _items_of_clips(self.clip_of)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        epoch = int(getattr(self.sampler, "epoch", 0))
        rank = int(getattr(self.sampler, "rank", 0))
        rng = np.random.default_rng([self.seed, epoch, rank, 1])
        order = iter(self.sampler)
        n_random = self.batch_size - self.n_hard
        for _ in range(len(self)):
            batch = [next(order) for _ in range(n_random)]
            clips = {int(self.clip_of[i]) for i in batch}
            for j in range(self.n_hard):
                clip = self._neighbour(int(self.clip_of[batch[j % n_random]]), clips, rng)
                clips.add(clip)
                members = self.items_of[clip]
                batch.append(int(members[rng.integers(len(members))]))
            yield batch

    def _neighbour(self, clip: int, taken: set[int], rng: np.random.Generator) -> int:
        """A random one of ``clip``'s neighbours not in the batch yet (any of them if all are)."""
        row = self.neighbours[clip]
        free = [c for c in row.tolist() if c not in taken and c != clip]
        return int(free[rng.integers(len(free))]) if free else int(row[rng.integers(len(row))])


def _items_of_clips(clip_of: np.ndarray) -> list[np.ndarray]:
    """``items_of[c]``: the items of clip ``c``."""
    order = np.argsort(clip_of, kind="stable")
    bounds = np.searchsorted(clip_of[order], np.arange(int(clip_of.max()) + 2 if len(clip_of) else 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(len(bounds) - 1)]


@torch.no_grad()
def caption_neighbours(embeddings: Tensor, clip_of: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    """The ``k`` clips whose captions are most alike each clip's (cosine of mean caption embeddings).

    Args:
        embeddings: one embedding per caption (e.g. mean-pooled frozen text-encoder states).
        clip_of: clip index of each caption.
        k: neighbours per clip (at most the number of other clips).
        block: clips compared at once (memory: ``block × n_clips`` scores).

    Returns:
        ``[n_clips, k]`` clip indices, nearest first, never the clip itself.

    Shape:
        - embeddings: ``[n_captions, E]``; clip_of: ``[n_captions]``
    """
    n_clips = int(clip_of.max()) + 1
    k = min(k, n_clips - 1)
    if k < 1:
        raise ValueError("hard-negative batches need at least two clips")
    index = torch.as_tensor(clip_of, dtype=torch.long)
    sums = torch.zeros(n_clips, embeddings.shape[1]).index_add_(0, index, embeddings.float())
    clips = torch.nn.functional.normalize(sums, dim=-1)  # [n_clips, E]
    out = []
    for start in range(0, n_clips, block):
        sim = clips[start : start + block] @ clips.T  # [b, n_clips]
        rows = torch.arange(start, min(start + block, n_clips))
        sim[rows - start, rows] = float("-inf")
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out).numpy()
