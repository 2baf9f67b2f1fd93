"""The GPU bench section (``benchmarks/gpu_bench.py``) run on the CPU at a tiny size, so that its code
paths have run before it meets a GPU."""

import torch

from benchmarks import gpu_bench


def test_gpu_bench_runs_every_part_on_the_cpu():
    out = gpu_bench.run(torch.device("cpu"), gpu_bench.TINY)
    assert out["device"] == "cpu" and out["size"]["dim"] == 32
    scoring = out["pair_scoring"]
    assert scoring["pairs_per_s"] > 0 and scoring["matmul_bf16_tflops"] > 0 and scoring["matmul_ratio"] > 0
    steps = out["train_step"]
    assert set(steps) == {
        f"{name}_b{b}_{mode}" for name in ("iter", "stack") for b in (2,) for mode in ("recompute", "plain")
    }
    assert all(s["peak_gib"] is None and s["seconds"] > 0 for s in steps.values())  # no peak on the CPU
    evaluation = out["clotho_eval"]
    assert evaluation["texts"] == 20 and evaluation["exhaustive_seconds"] >= 0
    assert evaluation["rerank_k3_seconds"] >= 0
