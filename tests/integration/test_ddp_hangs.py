"""Multi-process situations that used to hang, reproduced on two gloo processes with a time-out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIP_ALL_ON_ONE_RANK = """
import lightning as L
import torch
from torch import nn

from lacoat.losses import NTXentLoss
from lacoat.models.cascade import IteratingCascade
from lacoat.models.matcher import AudioTextMatcher
from lacoat.module import LacoatModule

D = 8


class Stub(nn.Module):  # the batches carry cached encoder outputs: no encoder runs
    dim, frozen = D, True


class Cached(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"text_tokens": torch.randn(4, D, generator=g), "audio_tokens": torch.randn(6, D, generator=g), "i": i}


def collate(items):
    return {
        "text_tokens": torch.stack([x["text_tokens"] for x in items]),
        "text_mask": torch.ones(len(items), 4, dtype=torch.bool),
        "audio_tokens": torch.stack([x["audio_tokens"] for x in items]),
        "audio_mask": torch.ones(len(items), 6, dtype=torch.bool),
        "clip_index": torch.tensor([x["i"] for x in items]),
        "captions": ["a caption"] * len(items),
    }


class Data(L.LightningDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(Cached(), batch_size=4, collate_fn=collate)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.global_rank == 1 and self.trainer.global_step == 1:  # on_bad_audio: skip took all
            return {"n_skipped": len(batch["clip_index"])}
        return batch


torch.manual_seed(0)
matcher = AudioTextMatcher(Stub(), Stub(), IteratingCascade(D, 2, layers=1), d_model=D, embed_dim=4)
model = LacoatModule(matcher, NTXentLoss(temperature=0.1, aux_weight=0.5), gather_negatives=True)
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False,
)
trainer.fit(model, datamodule=Data())
print("steps", trainer.global_step)
"""


def run_with_timeout(script: str, folder: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``script`` (Lightning relaunches it for rank 1); a hang kills the whole process group."""
    path = folder / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_a_rank_whose_batch_was_all_skipped_does_not_hang_the_global_batch(tmp_path):
    done = run_with_timeout(SKIP_ALL_ON_ONE_RANK, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps 3" in done.stdout
