"""Lacoat configs for the tools that build parts of a run without training (``inspect``, ``extract``, …).

They parse as ``lacoat fit`` does (LightningCLI, on jsonargparse): ``--config`` may be given several
times (later files win), any key can be set on the command line (``--data.source.init_args.root DIR``,
or its short form ``--data.source.root DIR``), and ``seed_everything`` seeds the random generators before
anything is built, so randomly initialised weights come out as ``lacoat fit`` builds them. The sections a
tool builds are checked against their classes, as LightningCLI checks them (``add_lightning_class_args``);
the other sections of a run config are accepted and left alone.
"""

from __future__ import annotations

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
