"""Batches with hard negatives: composition, determinism, exact mid-epoch resume, neighbour mining."""

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lacoat.data.batches import EpochShuffle, NeighbourBatchSampler, caption_neighbours

N_CLIPS, PER_CLIP, B = 40, 3, 8
CLIP_OF = np.repeat(np.arange(N_CLIPS), PER_CLIP)  # 120 captions, 3 per clip
NEIGHBOURS = np.stack([(np.arange(N_CLIPS) + d) % N_CLIPS for d in (1, 2, 3)], axis=1)  # clip c: c+1..c+3


def sampler(seed=0, epoch=0, share=0.5):
    base = EpochShuffle(len(CLIP_OF), seed)
    base.set_epoch(epoch)
    return NeighbourBatchSampler(base, B, True, CLIP_OF, NEIGHBOURS, share, seed)


def test_batches_hold_neighbours_of_their_random_part():
    batches = list(sampler())
    assert len(batches) == len(CLIP_OF) // B and all(len(b) == B for b in batches)
    for batch in batches:
        random_part, hard = batch[: B // 2], batch[B // 2 :]
        taken = {int(CLIP_OF[i]) for i in random_part}
        for j, item in enumerate(hard):
            anchor, clip = int(CLIP_OF[random_part[j % len(random_part)]]), int(CLIP_OF[item])
            assert clip in NEIGHBOURS[anchor]  # a neighbour of its anchor's clip, never the anchor's own
            # a clip already in the batch only when every neighbour is: hard items are negatives
            assert clip not in taken or set(NEIGHBOURS[anchor]) <= taken
            taken.add(clip)
    random_items = [i for b in batches for i in b[: B // 2]]
    assert len(set(random_items)) == len(random_items)  # the random part never repeats in an epoch


def test_deterministic_from_seed_and_epoch():
    assert list(sampler()) == list(sampler())
    assert list(sampler(epoch=1)) != list(sampler(epoch=0))
    assert list(sampler(seed=1)) != list(sampler(seed=0))
    plain = list(NeighbourBatchSampler(EpochShuffle(len(CLIP_OF)), B, True, CLIP_OF, None, 0.5))
    assert sorted(i for b in plain for i in b) == sorted(set(i for b in plain for i in b))  # no neighbours


class Items(Dataset):
    def __len__(self):
        return len(CLIP_OF)

    def __getitem__(self, i):
        return i


def loader(batches, workers):
    return StatefulDataLoader(Items(), batch_sampler=batches, num_workers=workers, collate_fn=list)


def test_resumes_mid_epoch_exactly():
    for workers in (0, 2):
        full = [b for b in loader(sampler(epoch=3), workers)]
        first = loader(sampler(epoch=3), workers)
        it = iter(first)
        seen = [next(it) for _ in range(5)]
        state = first.state_dict()
        resumed = loader(sampler(epoch=3), workers)
        resumed.load_state_dict(state)
        assert seen + list(resumed) == full


def test_each_rank_draws_its_own_random_part():
    parts = []
    for rank in (0, 1):
        dist = DistributedSampler(range(len(CLIP_OF)), num_replicas=2, rank=rank, shuffle=True, seed=0)
        batches = list(NeighbourBatchSampler(dist, B, True, CLIP_OF, NEIGHBOURS, 0.5, 0))
        assert len(batches) == len(CLIP_OF) // 2 // B
        parts.append({i for b in batches for i in b[: B // 2]})
    assert parts[0].isdisjoint(parts[1])


def test_caption_neighbours_are_the_most_alike_clips():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g)
    centres[5] = centres[2] + 0.05 * torch.randn(16, generator=g)  # clip 5 is described like clip 2
    clip_of = np.repeat(np.arange(6), 4)
    captions = centres[clip_of] + 0.01 * torch.randn(24, 16, generator=g)
    near = caption_neighbours(captions, clip_of, k=2)
    assert near.shape == (6, 2)
    assert near[2, 0] == 5 and near[5, 0] == 2
    assert all(c not in row for c, row in enumerate(near))
