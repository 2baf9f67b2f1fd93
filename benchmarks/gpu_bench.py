"""GPU bench section of ``benchmarks/gpu_check.sh``: ``python benchmarks/gpu_bench.py [--out FILE]``.

Writes the ``gpu`` key of ``benchmarks/results.json`` (other keys kept), measured on the first CUDA device
in bf16 autocast, on random encoder outputs of the real shapes (no encoder weights needed):

* ``pair_scoring``: co-attention pairs per second of ``score_matrix`` with the ``clotho_iter`` head
  (MCAN-small, 20 text × 96 audio tokens, as ``bench.py``'s ``pair_scoring``), and its FLOP/s divided
  by those of a bf16 matmul ``[4096, D] @ [D, 4D]`` of the same width;
* ``train_step``: peak memory (``torch.cuda.max_memory_allocated``, AdamW state included) and time of
  one training step of the ``clotho_iter`` and ``clotho_stack`` heads at batch 32 and 64 (all B×B
  pairs), with every pair chunk recomputed (``recompute: 1.0``) and without (``recompute: 0.0``, as the
  configs train at batch 32; ``"oom"`` where it does not fit);
* ``clotho_eval``: Clotho-size evaluation (5,225 captions × 1,045 clips) of the pair scoring, exhaustive
  (estimated from a measured block of queries) and two-stage with K = 32 (all of it measured).

Every function takes its device and sizes as arguments, so the unit tests run it on the CPU at a tiny size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_memory import GIB, encoder_outputs, head  # noqa: E402
from lacoat.contracts import Tokens  # noqa: E402
from lacoat.models.matcher import AudioTextMatcher  # noqa: E402


@dataclass(frozen=True)
class Size:
    """What the bench runs: head size, token counts, and how many pairs each part scores."""

    dim: int = 512
    heads: int = 8
    layers: int = 6
    encoder_dim: int = 768
    text_tokens: int = 20
    audio_tokens: int = 96
    train_text_tokens: int = 24
    throughput_texts: int = 32  # × throughput_clips pairs timed in score_matrix
    throughput_clips: int = 512
    batches: tuple[int, ...] = (32, 64)
    recompute_chunk: int = 64
    eval_texts: int = 5225
    eval_clips: int = 1045
    eval_measured_texts: int = 64  # exhaustive: time of this block of queries × eval_texts / it
    rerank_k: int = 32
    pair_chunk: int = 1024


FULL = Size()
TINY = Size(  # for the unit test on the CPU
    dim=32,
    heads=4,
    layers=1,
    encoder_dim=16,
    text_tokens=5,
    audio_tokens=7,
    train_text_tokens=6,
    throughput_texts=3,
    throughput_clips=4,
    batches=(2,),
    recompute_chunk=2,
    eval_texts=20,
    eval_clips=6,
    eval_measured_texts=4,
    rerank_k=3,
    pair_chunk=8,
)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on ``device`` (the trainer's ``bf16-mixed``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def flops_per_pair(size: Size) -> float:
    """2 × multiply-adds of one pair pass of the text-led iterating cascade (``bench.py``'s formula:
    the audio side's L GA layers and its pool; the text side is per-item work)."""
    d, la, lt = size.dim, size.audio_tokens, size.text_tokens
    per_layer = 28 * la * d * d + 4 * la * la * d + 4 * la * lt * d  # SA, cross-attention, FFN (4d)
    return size.layers * per_layer + 2 * la * d * 512 + 2 * d * d


def eval_matcher(size: Size, device: torch.device) -> AudioTextMatcher:
    """The ``clotho_iter`` head's matcher in eval mode, scoring ``pair_chunk`` pairs per pass."""
    trainable = head(
        "iter", False, device, size=(size.dim, size.heads, size.layers), encoder_dim=size.encoder_dim
    )
    matcher = trainable.matcher.eval()
    matcher.pair_chunk = size.pair_chunk
    return matcher


def projected(
    matcher: AudioTextMatcher, n_text: int, n_audio: int, size: Size, device: torch.device
) -> tuple[Tokens, Tokens]:
    """Projected ``Tokens`` of random encoder outputs: ``n_text`` captions ``[n_text, Lt, D]`` and
    ``n_audio`` clips ``[n_audio, La, D]``, on ``device``."""
    text = torch.randn(n_text, size.text_tokens, size.encoder_dim, device=device)
    audio = torch.randn(n_audio, size.audio_tokens, size.encoder_dim, device=device)
    valid = lambda x: torch.ones(x.shape[:2], dtype=torch.bool, device=device)  # noqa: E731
    return matcher.project_text(text, valid(text)), matcher.project_audio(audio, valid(audio))


def matmul_flops(dim: int, device: torch.device, repeats: int = 20) -> float:
    """Best of 5 timings of ``repeats`` bf16 matmuls ``[4096, dim] @ [dim, 4·dim]`` (FLOP/s)."""
    a = torch.randn(4096, dim, device=device, dtype=torch.bfloat16)
    b = torch.randn(dim, 4 * dim, device=device, dtype=torch.bfloat16)

    def run() -> None:
        for _ in range(repeats):
            a @ b

    run()
    best = min(timed(run, device) for _ in range(5))
    return repeats * 2 * 4096 * dim * 4 * dim / best


@torch.no_grad()
def pair_scoring(size: Size, device: torch.device) -> dict:
    """Pairs per second of ``score_matrix`` in bf16 and its ratio to a bf16 matmul's FLOP/s."""
    matcher = eval_matcher(size, device)
    with autocast(device):
        text, audio = projected(matcher, size.throughput_texts, size.throughput_clips, size, device)
        matcher.score_matrix(text[:2], audio)  # warm-up
        seconds = timed(lambda: matcher.score_matrix(text, audio), device)
    pairs_per_s = size.throughput_texts * size.throughput_clips / seconds
    achieved, reference = pairs_per_s * flops_per_pair(size), matmul_flops(size.dim, device)
    return {
        "pairs_per_s": float(f"{pairs_per_s:.4g}"),
        "achieved_tflops": float(f"{achieved / 1e12:.3g}"),
        "matmul_bf16_tflops": float(f"{reference / 1e12:.3g}"),
        "matmul_ratio": float(f"{achieved / reference:.3g}"),
    }


def train_step(name: str, b: int, recompute: float, size: Size, device: torch.device) -> dict:
    """Peak memory (CUDA only) and seconds of one bf16 training step of head ``name`` at batch ``b``,
    recomputing the share ``recompute`` of its pair chunks: forward over all B×B pairs, backward, AdamW.
    The second of two steps is measured (AdamW state exists)."""
    model = head(
        name, recompute, device, size.recompute_chunk, (size.dim, size.heads, size.layers), size.encoder_dim
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    text, audio = encoder_outputs(b, size.train_text_tokens, size.audio_tokens, device, size.encoder_dim)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(text, audio)
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {"peak_gib": None if peak is None else round(peak, 2), "seconds": round(seconds, 3)}


def train_steps(size: Size, device: torch.device) -> dict:
    """``train_step`` of both heads at every batch size, every chunk recomputed and plain, and the ratio
    of their step times; a step that runs out of device memory is reported as ``"oom"``."""
    out: dict = {}
    for name in ("iter", "stack"):
        for b in size.batches:
            for recompute in (1.0, 0.0):
                key = f"{name}_b{b}_{'recompute' if recompute else 'plain'}"
                try:
                    out[key] = train_step(name, b, recompute, size, device)
                except torch.cuda.OutOfMemoryError:
                    out[key] = "oom"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            recomputed, plain = out[f"{name}_b{b}_recompute"], out[f"{name}_b{b}_plain"]
            if isinstance(recomputed, dict) and isinstance(plain, dict):  # step time with ÷ without
                out[f"{name}_b{b}_time_ratio"] = round(recomputed["seconds"] / plain["seconds"], 3)
    return out


@torch.no_grad()
def clotho_eval(size: Size, device: torch.device) -> dict:
    """Seconds of the pair scoring of a Clotho-size evaluation: exhaustive (estimated from
    ``eval_measured_texts`` queries) and two-stage with ``rerank_k`` (measured)."""
    matcher = eval_matcher(size, device)
    with autocast(device):
        text, audio = projected(matcher, size.eval_texts, size.eval_clips, size, device)
        matcher.score_matrix(text[:1], audio[:8])  # warm-up
        block = timed(lambda: matcher.score_matrix(text[: size.eval_measured_texts], audio), device)
        rerank = timed(lambda: matcher.rerank_scores(text, audio, size.rerank_k), device)
    return {
        "texts": size.eval_texts,
        "clips": size.eval_clips,
        "exhaustive_seconds": round(block * size.eval_texts / size.eval_measured_texts, 1),
        "exhaustive_estimated_from_queries": size.eval_measured_texts,
        f"rerank_k{size.rerank_k}_seconds": round(rerank, 1),
    }


def run(device: torch.device, size: Size = FULL) -> dict:
    """Every part of the section on ``device``; the ``gpu`` entry of ``results.json``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"device": name, "torch": torch.__version__, "precision": "bf16 autocast", "size": asdict(size)}
    for part, fn in (
        ("pair_scoring", pair_scoring),
        ("train_step", train_steps),
        ("clotho_eval", clotho_eval),
    ):
        start = time.perf_counter()
        out[part] = fn(size, device)
        print(f"{part}: {json.dumps(out[part])} ({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device present")
    result = run(torch.device("cuda"))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["gpu"] = result
    out.write_text(json.dumps(results, indent=2))
    print(f"gpu -> {out}")


if __name__ == "__main__":
    main()
