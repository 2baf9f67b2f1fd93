"""File utilities: atomic writes, content fingerprints, change stamps.

Atomic writes: a reader sees the old file or the complete new one, never a partial one.

Checkpoints, feature caches, search indexes and caption stores are written through ``atomic_write``:
the bytes go to a temporary file in the target's folder (same file system, so the final rename is
atomic), are flushed and ``fsync``-ed, and only then replace the target; the folder is synced too, so
the rename survives a crash. A write that fails (disk full, a killed job, any exception) removes its
temporary file and leaves the previous file as it was.

``AtomicCheckpointIO`` brings this to Lightning's checkpoints. Lightning's own ``TorchCheckpointIO``
(2.6) writes local files through an fsspec transaction whose temporary file lies in the system temp
folder: on a cluster that is often another file system than the checkpoint folder, where the final
"move" becomes a copy that a pre-empted job can leave half-written, and nothing is ``fsync``-ed.
It is built on first use (``lacoat.io.AtomicCheckpointIO``), so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it is flushed, synced and renamed onto ``path``.

    On any error (disk full, interruption) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)  # reopened by name, so that the handle's .name says where the bytes go
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems cannot sync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through ``atomic_write``."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def is_local_path(path: str | Path) -> bool:
    """Whether ``path`` is a local file path (no ``scheme://`` other than ``file://``)."""
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _atomic_checkpoint_io() -> type:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning ``CheckpointIO`` that writes local checkpoints with ``atomic_write`` (see the module
        docstring); remote URLs (``s3://`` …) go through Lightning's own writer.

        Use it as a trainer plugin: ``trainer: {plugins: [{class_path: lacoat.io.AtomicCheckpointIO}]}``
        in a config, or ``Trainer(plugins=[AtomicCheckpointIO()])``.
        """

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            if storage_options is not None or not is_local_path(path):
                super().save_checkpoint(checkpoint, path, storage_options)
                return
            local = Path(str(path).removeprefix("file://"))
            atomic_torch_save(checkpoint, local)

    AtomicCheckpointIO.__module__ = __name__
    AtomicCheckpointIO.__qualname__ = "AtomicCheckpointIO"
    return AtomicCheckpointIO


def __getattr__(name: str) -> Any:
    """``AtomicCheckpointIO`` is defined on first use, so that ``lacoat.io`` does not import Lightning."""
    if name == "AtomicCheckpointIO":
        cls = _atomic_checkpoint_io()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """A cheap content fingerprint of a (large) file: size plus its first and last ``chunk`` bytes.

    Returns:
        16 hex characters; the same file gives the same string wherever it lies.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(chunk))
        if size > chunk:
            handle.seek(max(chunk, size - chunk))
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def file_stat(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file: what makes a cached clip stale when it changes."""
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns
