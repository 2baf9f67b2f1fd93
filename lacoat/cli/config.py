"""Lacoat configs for the tools that build parts of a run without training (``inspect``, ``extract``, …).

They parse as ``lacoat fit`` does (LightningCLI, on jsonargparse): ``--config`` may be given several
times (later files win), any key can be set on the command line (``--data.source.init_args.root DIR``,
or its short form ``--data.source.root DIR``), and ``seed_everything`` seeds the random generators before
anything is built, so randomly initialised weights come out as ``lacoat fit`` builds them. The sections a
tool builds are checked against their classes, as LightningCLI checks them (``add_lightning_class_args``);
the other sections of a run config are accepted and left alone.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import TYPE_CHECKING, Any

from lacoat.errors import DataError, LacoatError

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

# the top-level keys of a `lacoat fit` config (tests/integration/test_cli.py keeps this list complete)
RUN_KEYS = (
    "seed_everything",
    "trainer",
    "model",
    "data",
    "checkpoint",
    "resume",
    "ckpt_path",
    "weights_only",
)


# what the data reads as the audio encoder reads it: stated once, at the encoder, and linked to the data
AUDIO_FORMAT = ("sample_rate", "window_seconds")
ENCODER_KEY = "matcher.init_args.audio_encoder"  # under `model`


def _get(config: Any, key: str) -> Any:
    """``config[key]`` of a Namespace or dict (dotted keys), or None where a part is missing."""
    for part in key.split("."):
        if config is None:
            return None
        config = config.get(part) if hasattr(config, "get") else getattr(config, part, None)
    return config


def audio_setting(name: str, encoder: Any) -> Any:
    """``name`` (``sample_rate`` or ``window_seconds``) of an audio encoder config (class_path and
    init_args): the init argument where the class takes one, else the class's own value (CLAP reads
    48 kHz in 10-s windows whatever it is given)."""
    init = _get(encoder, "init_args")
    value = _get(init, name) if init is not None else None
    if value is None and _get(encoder, "class_path"):
        module, _, cls = str(_get(encoder, "class_path")).rpartition(".")
        value = getattr(getattr(importlib.import_module(module), cls), name, None)
    if value is None:
        raise DataError(
            f"model.{ENCODER_KEY}: cannot tell its {name}; give the audio encoder a class_path "
            f"(e.g. lacoat.models.encoders.LogMelAudioEncoder) with init_args.{name}"
        )
    return value


def _setting_of_model(name: str, model: Any) -> Any:
    """A free-form model section's audio ``name``; without a model section (a data-only config),
    the DataModule's default."""
    if model is None:
        import inspect

        from lacoat.data.datamodule import RetrievalDataModule

        return inspect.signature(RetrievalDataModule).parameters[name].default
    return audio_setting(name, _get(model, ENCODER_KEY))


def link_audio_format(parser: ArgumentParser, model_is_parsed: bool) -> None:
    """Link ``data.sample_rate`` and ``data.window_seconds`` to the audio encoder's, so a config
    states them once; ``model_is_parsed``: the model section is checked against its class (``fit``,
    ``extract``), else it is free-form (``inspect``)."""
    for name in AUDIO_FORMAT:
        if model_is_parsed:
            parser.link_arguments(f"model.{ENCODER_KEY}", f"data.{name}", partial(audio_setting, name))
        else:
            parser.link_arguments("model", f"data.{name}", partial(_setting_of_model, name))


def sections_parser(prog: str, description: str, sections: dict[str, type]) -> ArgumentParser:
    """A parser for run configs of which a tool builds ``sections`` (config key → LightningModule or
    LightningDataModule class); add the tool's own options to it, then call ``parse_and_build``."""
    from typing import Any as AnyValue

    from jsonargparse import ActionConfigFile
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(
        prog=prog, description=description, exit_on_error=False, default_env=False
    )
    parser.add_argument(
        "-c",
        "--config",
        action=ActionConfigFile,
        help="a lacoat config (YAML); several are merged, later files win",
    )
    parser.add_argument(
        "--seed_everything",
        type=bool | int | None,
        default=None,
        help="seed before building (from the config)",
    )
    for key, cls in sections.items():
        parser.add_lightning_class_args(cls, key)
    for key in RUN_KEYS:
        if key not in sections and key != "seed_everything":
            parser.add_argument(f"--{key}", type=AnyValue, default=None, help=f"({prog} does not use it)")
    if "data" in sections:
        link_audio_format(parser, model_is_parsed="model" in sections)
    return parser


def parse_and_build(
    parser: ArgumentParser, argv: list[str], sections: list[str]
) -> tuple[Namespace, dict[str, Any]]:
    """Parse ``argv`` with a ``sections_parser``, seed as ``seed_everything`` says, build ``sections``.

    Returns:
        The parsed options (the tool's own among them) and the built objects by section key.

    Raises:
        DataError: an option, a config file or a value in it is invalid (jsonargparse's message names the
            bad key or value), or a section cannot be built.
    """
    from jsonargparse import ArgumentError

    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as err:
        raise DataError(f"invalid config or option: {' '.join(str(err).split())}") from err
    seed = cfg.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        from lightning.fabric.utilities.seed import seed_everything

        seed_everything(seed, verbose=False)
    try:
        init = parser.instantiate_classes(cfg)
    except LacoatError:
        raise
    except Exception as err:
        raise DataError(f"invalid config: {' '.join(str(err).split())}") from err
    return cfg, {key: init[key] for key in sections}


def instantiate_sections(path: str, sections: dict[str, type]) -> dict[str, Any]:
    """Build the objects of ``sections`` (config key → class) from the YAML config at ``path``, as
    ``lacoat extract --config PATH`` builds them.

    Raises:
        DataError: the file cannot be read, lacks a section, or a section is invalid.
    """
    parser = sections_parser("lacoat", "", sections)
    return parse_and_build(parser, ["--config", path], list(sections))[1]
