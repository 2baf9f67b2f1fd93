import errno
import os
import stat
import subprocess
import sys

import pytest
import torch

from lacoat.io import atomic_torch_save, atomic_write
from tests.conftest import REPO


def disk_full_save(obj, f, *args, **kwargs):
    """``torch.save`` that writes half of its bytes, then fails as a full disk does."""
    import io

    WRITTEN_TO.append(getattr(f, "name", "<in memory>"))
    buffer = io.BytesIO()
    REAL_SAVE(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    raise OSError(errno.ENOSPC, "No space left on device")


REAL_SAVE = torch.save
WRITTEN_TO: list = []


def test_atomic_write_replaces_whole_file_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "index.json"
    with atomic_write(path, "w") as f:
        f.write("new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert os.listdir(path.parent) == ["index.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "store.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_write(path, "w") as f:
        f.write("half of the new conte")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["store.csv"]


def test_disk_full_torch_save_keeps_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.arange(1000.0)}, path)
    monkeypatch.setattr(torch, "save", disk_full_save)
    with pytest.raises(OSError) as err:
        atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
    assert err.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no partial file left beside it
    loaded = torch.load(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(1000.0))


def test_plain_torch_save_would_have_left_a_broken_file(tmp_path, monkeypatch):
    """The failure the helpers prevent: the same interrupted save, written in place."""
    path = tmp_path / "last.ckpt"
    torch.save({"step": 1}, path)
    monkeypatch.setattr(torch, "save", disk_full_save)
    with pytest.raises(OSError), open(path, "wb") as f:
        torch.save({"step": 2, "w": torch.zeros(1000)}, f)
    with pytest.raises(Exception):  # noqa: B017 - any load error: the file is neither old nor new
        torch.load(path)


def test_checkpoint_io_writes_atomically_under_a_trainer(tmp_path, monkeypatch):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from lacoat.io import AtomicCheckpointIO

    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.fit(BoringModel())
    path = tmp_path / "manual.ckpt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", disk_full_save)
    WRITTEN_TO.clear()
    with pytest.raises(OSError):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before
    # streamed into a temporary file beside the checkpoint (same file system: the rename is atomic)
    assert [os.path.dirname(name) for name in WRITTEN_TO] == [str(tmp_path)]
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "manual.ckpt"]
    assert torch.load(path, weights_only=False)["global_step"] == 2


def test_checkpoint_io_by_class_path_without_importing_lightning_early():
    from jsonargparse import ArgumentParser
    from lightning.fabric.plugins import CheckpointIO

    parser = ArgumentParser()
    parser.add_argument("--io", type=CheckpointIO)
    config = parser.parse_args(["--io", "lacoat.io.AtomicCheckpointIO"])
    assert type(parser.instantiate_classes(config).io).__qualname__ == "AtomicCheckpointIO"
    code = "import sys, lacoat.io; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
