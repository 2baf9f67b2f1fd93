"""Multi-process situations that used to hang, reproduced on two gloo processes with a time-out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

COMMON = """
import lightning as L
import torch
from torch import nn

from lacoat.train.losses import NTXentLoss
from lacoat.models.cascade import IteratingCascade
from lacoat.models.matcher import AudioTextMatcher
from lacoat.train.module import LacoatModule
from lacoat.train.objectives import PairObjective

D = 8


class Stub(nn.Module):  # the batches carry cached encoder outputs: no encoder runs
    dim, frozen = D, True

    def source_fingerprint(self):
        return None


class Cached(torch.utils.data.Dataset):
    def __init__(self, length):
        self.length = length

    def __len__(self):
        return self.length

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
    def __init__(self, skip_all_at=None, length=32):
        super().__init__()
        self.skip_all_at, self.length = skip_all_at, length  # (rank, step) whose batch loses every item

    def train_dataloader(self):
        return torch.utils.data.DataLoader(Cached(self.length), batch_size=4, collate_fn=collate)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if (self.trainer.global_rank, self.trainer.global_step) == self.skip_all_at:  # on_bad_audio: skip
            return {"n_skipped": len(batch["clip_index"])}
        return batch


torch.manual_seed(0)
matcher = AudioTextMatcher(Stub(), Stub(), IteratingCascade(D, 2, layers=1), d_model=D, embed_dim=4)
"""

SKIP_ALL_ON_ONE_RANK = (
    COMMON
    + """
model = LacoatModule(matcher, PairObjective(NTXentLoss(temperature=0.1, aux_weight=0.5), gather_negatives=True))
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False,
)
trainer.fit(model, datamodule=Data(skip_all_at=(1, 1)))
print("steps", trainer.global_step)
"""
)

SIGTERM_TO_ONE_RANK = (
    COMMON
    + """
import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lacoat.train.resume import ResumeCheckpoint


class Slow(L.Callback):  # a step every 0.2 s; each rank's pid and step on disk for the test
    def on_train_batch_end(self, trainer, *args):
        Path(f"rank{trainer.global_rank}.step").write_text(f"{os.getpid()} {trainer.global_step}")
        time.sleep(0.2)


model = LacoatModule(matcher, PairObjective(NTXentLoss(temperature=0.1, aux_weight=0.5)))
checkpoints = ModelCheckpoint(dirpath="checkpoints", save_top_k=0)
trainer = L.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_steps=400, logger=False, enable_progress_bar=False,
    enable_model_summary=False, callbacks=[checkpoints, ResumeCheckpoint(every_n_steps=0), Slow()],
)
trainer.fit(model, datamodule=Data(length=4000))
"""
)


def start(script: str, folder: Path) -> subprocess.Popen:
    """Start ``script`` in ``folder`` (Lightning relaunches it for rank 1) in its own process group."""
    path = folder / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    """Wait for ``proc``; a hang kills its whole process group and fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_a_rank_whose_batch_was_all_skipped_does_not_hang_the_global_batch(tmp_path):
    done = finish(start(SKIP_ALL_ON_ONE_RANK, tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps 3" in done.stdout


@pytest.mark.slow
def test_sigterm_to_one_rank_saves_last_ckpt_on_every_rank_and_stops_them_all(tmp_path):
    proc = start(SIGTERM_TO_ONE_RANK, tmp_path)
    rank1 = tmp_path / "rank1.step"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if rank1.is_file() and rank1.read_text().count(" ") == 1 and int(rank1.read_text().split()[1]) >= 3:
            break
        time.sleep(0.05)
    pid, step = (int(v) for v in rank1.read_text().split())
    os.kill(pid, signal.SIGTERM)  # as a scheduler that signals one task would
    done = finish(proc, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert step <= saved["global_step"] < 400
