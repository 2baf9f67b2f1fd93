"""Lean checkpoints: frozen encoders whose weights come from a file or the hub are not saved.

``LacoatModule`` builds its encoders from their sources (CLAP checkpoint, Hugging Face folder or id)
whenever it is made, so storing their weights in every ``best-*.ckpt`` and ``last.ckpt`` only copies
those files. ``leave_out_rebuilt_encoders`` drops them from a checkpoint being saved and records each
source's content fingerprint; ``restore_rebuilt_encoders`` puts the freshly built weights back before
the state dict is loaded, and refuses a source whose content changed since.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lacoat.errors import ModelError

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
