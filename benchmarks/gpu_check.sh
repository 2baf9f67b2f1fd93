#!/usr/bin/env bash
# GPU check in one command (about 5 minutes on one GPU, 8 at most): the `gpu`-marked tests (tiny fit + test
# on CUDA in bf16 with half the pair chunks recomputed, score_matrix on CUDA against the CPU, the memory bound of
# recomputation), then the GPU bench section (benchmarks/gpu_bench.py) -> the `gpu` key of
# benchmarks/results.json. Without a CUDA device it says so and exits 0.
# Usage: benchmarks/gpu_check.sh            (PY=/path/to/python to use another interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device present (torch.cuda.is_available() is False): nothing to check."
  exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
start=$SECONDS
timeout 270 "$PY" -m pytest -q -s -m gpu tests/gpu
tests=$?
timeout 210 "$PY" benchmarks/gpu_bench.py --out benchmarks/results.json
bench=$?
echo "gpu_check: tests exit $tests, bench exit $bench, $((SECONDS - start)) s"
exit $(( tests != 0 || bench != 0 ))
