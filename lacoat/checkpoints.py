"""Checkpoints written by ``lacoat fit``: finding them, reading them, and keeping them lean.

* Finding: ``latest_best_checkpoint`` (what ``lacoat test`` evaluates when no ``--ckpt_path`` is
  given) and ``latest_run_with_last`` (what ``--ckpt_path last`` resumes).
* Reading: ``read_checkpoint`` (memory-mapped tensors, no Lightning), ``model_settings`` and
  ``checkpoint_fingerprint``, the content fingerprint an index records.
* Lean: frozen encoders whose weights come from a file or the hub are not saved. ``LacoatModule``
  builds its encoders from their sources (CLAP checkpoint, Hugging Face folder or id, packaged
  weights) whenever it is made, so storing their weights in every checkpoint only copies those files.
  ``leave_out_rebuilt_encoders`` drops them from a checkpoint being saved and records each source's
  content fingerprint; ``restore_rebuilt_encoders`` puts the freshly built weights back before the
  state dict is loaded, and refuses a source whose content changed since.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lacoat.errors import LacoatError, ModelError

REBUILT = "lacoat_rebuilt_encoders"  # checkpoint key: {state-dict prefix: source fingerprint}


def leave_out_rebuilt_encoders(checkpoint: dict[str, Any], encoders: dict[str, nn.Module]) -> None:
    """Remove from ``checkpoint["state_dict"]`` the weights of each frozen encoder (by state-dict prefix)
    that has a source fingerprint, and record the fingerprints."""
    rebuilt = {}
    for prefix, encoder in encoders.items():
        fingerprint = encoder.source_fingerprint() if encoder.frozen else None
        if fingerprint is None:
            continue
        rebuilt[prefix] = fingerprint
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(prefix + ".")]:
            del state[key]
    checkpoint[REBUILT] = rebuilt


def restore_rebuilt_encoders(checkpoint: dict[str, Any], encoders: dict[str, nn.Module]) -> None:
    """Fill ``checkpoint["state_dict"]`` with the weights of the encoders the checkpoint left out, after
    checking that each was built from the same content.

    Raises:
        ModelError: an encoder's source now holds other weights than at training time.
    """
    for prefix, fingerprint in checkpoint.get(REBUILT, {}).items():
        encoder = encoders[prefix]
        now = encoder.source_fingerprint()
        if now != fingerprint:
            raise ModelError(
                f"the checkpoint does not store the frozen {prefix.rpartition('.')[2]} (it is rebuilt from its "
                f"source), but the source now holds other weights ({encoder.identity()}: fingerprint {now}, "
                f"trained with {fingerprint}); put the original weights back there or point the config at them"
            )
        checkpoint["state_dict"].update({f"{prefix}.{k}": v for k, v in encoder.state_dict().items()})


def checkpoint_fingerprint(path: str | Path) -> str:
    """Content fingerprint of a checkpoint: size plus its first and last MiB.

    A checkpoint is a zip archive whose central directory, at its end, holds a CRC-32 of every
    stored tensor, so any change of weights changes the last MiB; hashing those is enough and keeps
    ``lacoat search`` fast for large checkpoints.
    """
    from lacoat.io import file_fingerprint

    return file_fingerprint(checkpoint_file(path))


def checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise LacoatError(f"checkpoint {what}: '{path}'. Pass a .ckpt file written by `lacoat fit`.")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The contents of a checkpoint written by ``lacoat fit`` (memory-mapped tensors, no Lightning).

    Raises:
        LacoatError: missing, not a PyTorch file, or without the model settings ``lacoat fit`` stores.
    """
    import torch

    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip or format errors of a file that is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LacoatError(
            f"'{path}' is not a checkpoint written by `lacoat fit` ({first[:200]}); pass its .ckpt file."
        ) from err
    if not isinstance(ckpt, dict) or "matcher" not in ckpt.get("hyper_parameters", {}):
        raise LacoatError(
            f"'{path}' holds no lacoat model settings (hyper_parameters.matcher); pass a .ckpt file "
            "written by `lacoat fit`."
        )
    return ckpt


def model_settings(ckpt: dict) -> dict:
    """The settings an index records: the matcher's configuration and the score fusion weight."""
    hparams = ckpt["hyper_parameters"]
    return {"matcher": hparams["matcher"], "fusion_alpha": float(hparams.get("fusion_alpha", 0.0))}


# ---- finding -----------------------------------------------------------------------------------
def latest_best_checkpoint(root: str | Path) -> Path | None:
    """The best checkpoint of the most recent run under ``root/checkpoints/`` (None if there is none)."""
    runs = sorted(
        (root_path for root_path in Path(root, "checkpoints").glob("*") if root_path.is_dir()),
        key=os.path.getmtime,
    )
    for run in reversed(runs):
        best = sorted(run.glob("best-*.ckpt"), key=os.path.getmtime)
        if best:
            return best[-1]
    return None


def latest_run_with_last(root: str | Path) -> Path:
    """The checkpoint folder of the most recent run under ``root/checkpoints/`` that has ``last.ckpt``.

    Raises:
        LacoatError: there is none (a resume was asked for, so starting afresh would be wrong).
    """
    candidates = sorted(Path(root, "checkpoints").glob("*/last.ckpt"), key=os.path.getmtime)
    if not candidates:
        raise LacoatError(
            f"--ckpt_path last: no last.ckpt under '{Path(root, 'checkpoints')}/', so there is no run to resume. "
            "Check trainer.default_root_dir, pass --ckpt_path FILE, or leave --ckpt_path out to start a new run."
        )
    return candidates[-1].parent
