"""Checks on a CUDA device (``gpu`` marker; ``benchmarks/gpu_check.sh`` runs them): a tiny fit + test in
bf16, pair scoring on the GPU against the CPU, and the memory bound of recomputed pair chunks."""

import json
import math

import pytest
import torch

from benchmarks.gpu_bench import FULL, train_step
from lacoat.cli import main
from lacoat.contracts import Tokens
from lacoat.models.cascade import IteratingCascade, StackingCascade
from lacoat.models.matcher import AudioTextMatcher
from tests.integration.test_train import write_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
ON_GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed"]


def test_tiny_fit_then_test_on_cuda_in_bf16_with_recomputed_chunks(tmp_path, synthcaps):
    config = write_config(tmp_path, synthcaps)
    recompute = [  # half the chunks recomputed, half keeping their activations
        "--model.matcher.init_args.recompute",
        "0.5",
        "--model.matcher.init_args.recompute_chunk",
        "8",
    ]
    main(["fit", "--config", str(config), *ON_GPU, *recompute])
    best = list((tmp_path / "runs" / "checkpoints").glob("*/best-*.ckpt"))
    assert len(best) == 1
    main(["test", "--config", str(config), *ON_GPU])
    metrics = json.loads((best[0].parent / "test_metrics_rerank.json").read_text())["metrics"]
    assert "test/t2a_mAP@10" in metrics
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())


class _Width(torch.nn.Module):
    """Stands in for an encoder: only its width is read."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def random_tokens(n: int, length: int, dim: int, seed: int) -> Tokens:
    """``n`` random sequences ``[n, length, dim]`` with 1 … length valid tokens."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.randint(1, length + 1, (n, 1), generator=g)
    return Tokens(torch.randn(n, length, dim, generator=g), torch.arange(length)[None] < valid)


@pytest.mark.parametrize("cascade_cls", [IteratingCascade, StackingCascade])
def test_score_matrix_on_cuda_equals_cpu_within_bf16_tolerance(cascade_cls):
    torch.manual_seed(0)
    dim = 256
    matcher = AudioTextMatcher(_Width(dim), _Width(dim), cascade_cls(dim, 8, 2), embed_dim=dim).eval()
    text, audio = random_tokens(8, 24, dim, 1), random_tokens(16, 96, dim, 2)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 on CUDA without TF32, whatever ran before
    try:
        with torch.no_grad():
            expected = matcher.score_matrix(text, audio)  # fp32, CPU
            matcher.cuda()
            fp32 = matcher.score_matrix(text.to("cuda"), audio.to("cuda")).cpu()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = matcher.score_matrix(text.to("cuda"), audio.to("cuda")).float().cpu()
    finally:
        torch.set_float32_matmul_precision(precision)
    assert torch.allclose(fp32, expected, atol=1e-3)
    assert (bf16 - expected).abs().max() < 0.05 and (bf16 - expected).abs().mean() < 0.01


def test_recomputed_chunks_bound_training_memory_on_cuda():
    """MCAN-small iterating head, bf16: with every chunk recomputed the peak of a step barely grows from
    batch 16 to 32 (4× the pairs) and stays far below the plain step's at batch 24."""
    device = torch.device("cuda")
    r16 = train_step("iter", 16, 1.0, FULL, device)["peak_gib"]
    r32 = train_step("iter", 32, 1.0, FULL, device)["peak_gib"]
    p24 = train_step("iter", 24, 0.0, FULL, device)["peak_gib"]
    print(f"peak GiB: recompute b16 {r16}, b32 {r32}; plain b24 {p24}")
    assert r32 - r16 < 0.5
    assert r32 < 0.5 * p24
