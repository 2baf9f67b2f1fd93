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
        f"{name}_b2_{entry}" for name in ("iter", "stack") for entry in ("recompute", "plain", "time_ratio")
    }
    runs = [s for key, s in steps.items() if not key.endswith("time_ratio")]
    assert all(s["peak_gib"] is None and s["seconds"] > 0 for s in runs)  # no peak on the CPU
    assert steps["iter_b2_time_ratio"] == round(
        steps["iter_b2_recompute"]["seconds"] / steps["iter_b2_plain"]["seconds"], 3
    )
    evaluation = out["clotho_eval"]
    assert evaluation["texts"] == 20 and evaluation["exhaustive_seconds"] >= 0
    assert evaluation["rerank_k3_seconds"] >= 0
