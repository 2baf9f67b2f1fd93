"""Evaluation split across ranks: exhaustive scoring of a Clotho-shaped slice by 2 gloo processes of
one thread each against 1 process of one thread, measured in one run (``eval_ddp`` of results.json).

The head is ``configs/clotho_iter.yaml``'s (MCAN-small iterating cascade, d = 512, 8 heads, 6 layers);
the token features are random, Clotho-shaped (24 text tokens, 96 audio tokens), so no encoder runs:
what is timed is ``Evaluator.score``, the part the ranks share.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

D, HEADS, LAYERS, TEXT_TOKENS, AUDIO_TOKENS = 512, 8, 6, 24, 96


class _Features(nn.Module):
    """Stands in for an encoder whose outputs are fed as cached features."""

    dim = D


def _setup(queries: int, clips: int):
    from lacoat.evaluation.evaluator import Evaluator
    from lacoat.models.cascade import IteratingCascade
    from lacoat.models.matcher import AudioTextMatcher

    torch.manual_seed(0)
    matcher = AudioTextMatcher(
        _Features(), _Features(), IteratingCascade(D, HEADS, layers=LAYERS), d_model=D, embed_dim=D
    ).eval()
    evaluator = Evaluator(matcher)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        evaluator.collect(
            {
                "text_tokens": torch.randn(queries, TEXT_TOKENS, D, generator=g),
                "text_mask": torch.ones(queries, TEXT_TOKENS, dtype=torch.bool),
                "query_index": torch.arange(queries),
            }
        )
        evaluator.collect(
            {
                "audio_tokens": torch.randn(clips, AUDIO_TOKENS, D, generator=g),
                "audio_mask": torch.ones(clips, AUDIO_TOKENS, dtype=torch.bool),
                "clip_index": torch.arange(clips),
            }
        )
    return evaluator


def _timed_score(queries: int, clips: int, share=None) -> tuple[float, torch.Tensor]:
    evaluator = _setup(queries, clips)
    start = time.perf_counter()
    with torch.no_grad():
        scores = evaluator.score("exhaustive", 0, 0.0, share=share)
    return time.perf_counter() - start, scores.t2a


def _rank(rank: int, world: int, init: str, queries: int, clips: int, out: dict) -> None:
    from lacoat.distributed import RankShare

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.stack(parts)

    dist.barrier()
    seconds, t2a = _timed_score(queries, clips, RankShare(rank, world, all_gather, torch.device("cpu")))
    if rank == 0:
        out["seconds"], out["t2a"] = seconds, t2a
    dist.destroy_process_group()


def eval_ddp(queries: int = 16, clips: int = 48) -> dict:
    """Seconds of exhaustive scoring in 1 process and in 2 gloo processes (one thread each), their
    ratio, and whether the two score matrices agree."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_s, one = _timed_score(queries, clips)
    finally:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as work, mp.Manager() as manager:
        out = manager.dict()
        init = f"file://{os.path.join(work, 'rendezvous')}"
        mp.spawn(_rank, args=(2, init, queries, clips, out), nprocs=2, join=True)
        two_s, two = out["seconds"], out["t2a"]
    return {
        "queries": queries,
        "clips": clips,
        "pairs": queries * clips,
        "head": f"iterating d={D} heads={HEADS} layers={LAYERS}, {TEXT_TOKENS}/{AUDIO_TOKENS} tokens",
        "one_process_s": round(one_s, 2),
        "two_processes_s": round(two_s, 2),
        "speedup_2proc": round(one_s / two_s, 2),
        "same_scores": bool(torch.allclose(one.float(), two.float(), atol=1e-5)),
    }


if __name__ == "__main__":
    print(eval_ddp())
