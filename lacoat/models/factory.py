"""The one place that rebuilds a trained model: ``load_matcher`` turns a checkpoint written by
``lacoat fit`` into its ``AudioTextMatcher`` (without Lightning), for search, serve, explain and the
benchmarks. A task that needs one side only (indexing: audio; search: text) builds that side alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lacoat.errors import LacoatError

if TYPE_CHECKING:
    from torch import nn

    from lacoat.models.matcher import AudioTextMatcher

from lacoat.checkpoints import model_settings, read_checkpoint

log = logging.getLogger(__name__)


def _absent(dim: int) -> nn.Module:
    """Stands in for the encoder a task does not run (search needs no audio encoder, indexing no
    text encoder): it only tells the matcher its width, and keeps a heavy import from happening."""
    from torch import nn

    module = nn.Module()
    module.dim = dim
    return module


def _class(class_path: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _instantiate(config: object) -> object:
    """Build a ``{"class_path": ..., "init_args": {...}}`` configuration (nested), as LightningCLI did."""
    if isinstance(config, dict) and "class_path" in config:
        return _class(config["class_path"])(
            **{k: _instantiate(v) for k, v in config.get("init_args", {}).items()}
        )
    return config


def load_matcher(
    checkpoint: str | Path, side: Literal["audio", "text", "both", "none"]
) -> tuple[AudioTextMatcher, dict]:
    """The matcher of a checkpoint, in eval mode on the CPU.

    Args:
        checkpoint: a .ckpt written by ``lacoat fit``.
        side: ``audio`` builds the audio encoder only (indexing), ``text`` the text encoder only
            (search): the other is a placeholder of the same width and its weights are not loaded;
            ``both`` builds both (attention maps), ``none`` neither (search with a saved text encoder).

    Returns:
        The matcher and ``model_settings`` of the checkpoint.
    """
    from lacoat.checkpoints import REBUILT, restore_rebuilt_encoders

    ckpt = read_checkpoint(checkpoint)
    settings = model_settings(ckpt)
    skip = {
        "audio": ("text_encoder",),
        "text": ("audio_encoder",),
        "both": (),
        "none": ("audio_encoder", "text_encoder"),
    }[side]
    config = settings["matcher"]
    if "text_encoder" not in skip:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar says nothing to a user
    try:
        init = {k: _instantiate(v) for k, v in config["init_args"].items() if k not in skip}
        for name in skip:
            init[name] = _absent(
                ckpt["state_dict"][f"matcher.{name.removesuffix('_encoder')}_proj.0.weight"].shape[1]
            )
        matcher = _class(config["class_path"])(**init)
        # frozen encoders a checkpoint leaves out are rebuilt from their source, which must be unchanged
        built = {
            f"matcher.{n}": getattr(matcher, n) for n in ("audio_encoder", "text_encoder") if n not in skip
        }
        view = {
            "state_dict": dict(ckpt["state_dict"]),
            REBUILT: {k: v for k, v in ckpt.get(REBUILT, {}).items() if k in built},
        }
        restore_rebuilt_encoders(view, built)
        state = {
            k.removeprefix("matcher."): v
            for k, v in view["state_dict"].items()
            if k.startswith("matcher.") and not any(k.startswith(f"matcher.{n}.") for n in skip)
        }
        missing, unexpected = matcher.load_state_dict(state, strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError, ImportError, AttributeError) as err:
        raise LacoatError(
            f"cannot rebuild the model of '{checkpoint}' from its settings ({err}); was it written by this "
            "lacoat version's `lacoat fit`?"
        ) from err
    if missing or unexpected:
        raise LacoatError(
            f"the weights of '{checkpoint}' do not fit its model settings (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); pass a checkpoint written by `lacoat fit`."
        )
    return matcher.eval(), settings
