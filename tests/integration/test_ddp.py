"""DDP on two CPU processes (gloo): the same test metrics as one process, from the same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lacoat.data.synth import synthesize
from tests.conftest import REPO
from tests.integration.test_train import write_config


def lacoat(*args: str) -> str:
    """Run ``python -m lacoat ARGS`` (DDP relaunches the command line for rank 1, so it must be a process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lacoat", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


def read_metrics(folder: Path, mode: str) -> dict[str, float]:
    return json.loads((folder / f"test_metrics_{mode}.json").read_text())["metrics"]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    data = tmp_path / "synthcaps"
    synthesize(
        str(data), seed=5, n_development=24, n_validation=5, n_evaluation=7
    )  # 7 clips, 35 queries: odd
    config = write_config(tmp_path, data)
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    lacoat(
        "fit", "--config", str(config), *ddp, "--model.objective.gather_negatives", "true"
    )  # global-batch NT-Xent
    best = list((tmp_path / "runs" / "checkpoints").glob("*/best-*.ckpt"))
    assert len(best) == 1, "both ranks must write to one checkpoint folder"
    folder = best[0].parent

    for mode in ("rerank", "exhaustive"):
        common = ["--config", str(config), "--ckpt_path", str(best[0]), "--model.eval_mode", mode]
        lacoat("test", *common, *ddp)
        two = read_metrics(folder, mode)
        lacoat("test", *common, "--trainer.devices", "1")
        one = read_metrics(folder, mode)
        assert one.keys() == two.keys() and len(one) > 10
        for name in one:
            assert two[name] == pytest.approx(one[name], abs=1e-6), (mode, name)
