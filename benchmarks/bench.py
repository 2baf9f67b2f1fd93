"""Pair-scoring benchmarks: ``python benchmarks/bench.py [--out benchmarks/results.json]``.

Measures, on random features of the real shapes (no data or weights needed):
* ``pair_scoring.{demo,mcan_small}``: cascade pairs per second in ``score_matrix`` and the achieved
  FLOP/s divided by the FLOP/s of a plain fp32 matmul of the model's width in the same run;
* ``clotho_size``: text→audio over 5,225 queries × 1,045 clips with the demo-size model, exhaustive
  (estimated from a measured block of queries) and two-stage with K = 16, 32, 64, 128.
Timings are printed and saved; tests never assert on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from torch import nn

from lacoat.models.cascade import IteratingCascade
from lacoat.models.matcher import AudioTextMatcher, Tokens

SIZES = {  # width, heads, layers, text tokens, audio tokens (demo: LogMel 8-s window; mcan_small: 3 CLAP windows)
    "demo": (128, 4, 2, 20, 50),
    "mcan_small": (512, 8, 6, 20, 96),
}


class _Stub(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def matcher_of(size: str) -> AudioTextMatcher:
    d, h, layers, _, _ = SIZES[size]
    cascade = IteratingCascade(d, h, layers, dropout=0.1, lead="text")
    return AudioTextMatcher(_Stub(d), _Stub(d), cascade, embed_dim=d, pair_chunk=512).eval()


def tokens(n: int, length: int, d: int) -> Tokens:
    return Tokens(torch.randn(n, length, d), torch.ones(n, length, dtype=torch.bool))


def flops_per_pair(size: str) -> float:
    """Multiply-adds × 2 of the per-pair work of the text-led iterating cascade (audio follows)."""
    d, _, layers, lt, la = SIZES[size]
    per_layer = 28 * la * d * d + 4 * la * la * d + 4 * la * lt * d  # SA, cross-attention, FFN (4d)
    pools = 2 * (la + lt) * d * 512 + 4 * d * d  # AttFlat MLPs and merges of both sides
    return layers * per_layer + pools


def matmul_flops(d: int, repeats: int = 20) -> float:
    a, b = torch.randn(4096, d), torch.randn(d, 4 * d)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * 4096 * d * 4 * d / (time.perf_counter() - start)


@torch.no_grad()
def pair_scoring(size: str, n_text: int = 16, n_audio: int = 64) -> dict:
    d, _, _, lt, la = SIZES[size]
    matcher = matcher_of(size)
    text, audio = tokens(n_text, lt, d), tokens(n_audio, la, d)
    matcher.score_matrix(text[:2], audio[:8])  # warm-up
    start = time.perf_counter()
    matcher.score_matrix(text, audio)
    seconds = time.perf_counter() - start
    pairs_per_s = n_text * n_audio / seconds
    achieved = pairs_per_s * flops_per_pair(size)
    reference = matmul_flops(d)
    return {
        "pairs_per_s": round(pairs_per_s, 1),
        "flops_per_pair": flops_per_pair(size),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_gflops": round(reference / 1e9, 2),
        "matmul_ratio": round(achieved / reference, 3),
    }


@torch.no_grad()
def clotho_size(n_text: int = 5225, n_audio: int = 1045, measured_queries: int = 16) -> dict:
    d, _, _, lt, la = SIZES["demo"]
    matcher = matcher_of("demo")
    text, audio = tokens(n_text, lt, d), tokens(n_audio, la, d)
    start = time.perf_counter()
    matcher.score_matrix(text[:measured_queries], audio)
    per_query = (time.perf_counter() - start) / measured_queries
    out = {
        "exhaustive": {
            "pair_passes": n_text * n_audio,
            "seconds": round(per_query * n_text, 1),
            "estimated_from_queries": measured_queries,
        }
    }
    for k in (16, 32, 64, 128):
        bi = matcher.bi_scores(text, audio)
        shortlist = torch.zeros_like(bi, dtype=torch.bool)
        shortlist.scatter_(1, bi.topk(k, dim=1).indices, True)
        shortlist.scatter_(0, bi.topk(k, dim=0).indices, True)
        start = time.perf_counter()
        matcher.rerank_matrix(text, audio, k)
        out[f"rerank_k{k}"] = {
            "pair_passes": int(shortlist.sum()),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument(
        "--skip_clotho", action="store_true", help="skip the Clotho-size run (minutes on a CPU)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "pair_scoring": {size: pair_scoring(size) for size in SIZES},
    }
    if not args.skip_clotho:
        results["clotho_size"] = clotho_size()
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"machine: {results['machine']}")
    for size, r in results["pair_scoring"].items():
        print(
            f"pair_scoring.{size:<10} {r['pairs_per_s']:>10.1f} pairs/s   {r['achieved_gflops']:>7.2f} GFLOP/s   "
            f"matmul {r['matmul_gflops']:>7.2f} GFLOP/s   ratio {r['matmul_ratio']:.3f}"
        )
    for name, r in results.get("clotho_size", {}).items():
        print(f"clotho_size.{name:<12} {r['pair_passes']:>9} pair passes   {r['seconds']:>8.1f} s")
    print(f"peak RSS {results['peak_rss_mb']} MB  -> {args.out}")


if __name__ == "__main__":
    main()
