"""The ``lacoat`` command: Lightning's fit/validate/test/predict and the model-free tools.

``lacoat --help`` must answer fast, so nothing heavy is imported here: each subcommand names the
module that implements it, imported only when that subcommand runs.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from collections.abc import Callable

from lacoat import __version__
from lacoat.errors import LacoatError

# name -> (module:function taking the remaining argv, one-line help)
TRAINER = "lacoat.cli.lightning:cli_main"  # takes the subcommand too (None: sys.argv)
TOOLS: dict[str, tuple[str, str]] = {
    "fit": (TRAINER, "train a model: lacoat fit --config configs/demo.yaml"),
    "validate": (TRAINER, "validation metrics of a checkpoint (default: best of the latest run)"),
    "test": (
        TRAINER,
        "test metrics of a checkpoint, written to test_metrics_<mode>.json (default: best of the latest run)",
    ),
    "predict": (TRAINER, "rank the test clips for every test query, written to predictions.csv"),
    "synth": ("lacoat.cli.tools:synth_main", "write the SynthCaps demo data set (Clotho layout)"),
    "index": (
        "lacoat.cli.tools:index_main",
        "index a folder of audio for search (incremental: only new or changed files)",
    ),
    "search": (
        "lacoat.cli.tools:search_main",
        'search an index: lacoat search --index INDEX "a dog barks in the rain"',
    ),
    "serve": (
        "lacoat.cli.tools:serve_main",
        "search an index from a web page on this machine: lacoat serve --index INDEX [--port 8000]",
    ),
    "extract": (
        "lacoat.cli.tools:extract_main",
        "cache the outputs of a config's frozen encoders (resumable); training then skips them",
    ),
    "inspect": (
        "lacoat.cli.tools:inspect_main",
        "load the data set a config points at and report clips, captions, skips",
    ),
    "explain": (
        "lacoat.cli.tools:explain_main",
        'draw a word x time co-attention map: lacoat explain --ckpt CKPT --audio FILE "query" --out map.png',
    ),
    "download": (
        "lacoat.cli.tools:download_main",
        "download Clotho or AudioCaps with aac-datasets: lacoat download clotho --root DIR",
    ),
    "augment": (
        "lacoat.cli.tools:augment_main",
        "paraphrase training captions with an LLM (or offline rules)",
    ),
}

USAGE = """usage: lacoat <command> [options]      (lacoat <command> --help for its options)

lacoat {version}: language-based audio retrieval with co-attention networks.

commands:
{commands}
"""


def _resolve(target: str) -> Callable[[list[str]], object]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in TOOLS.items()]
    return USAGE.format(version=__version__, commands="\n".join(lines))


def user_message(err: BaseException) -> str:
    """The message of a user error; for errors re-raised from DataLoader workers, the original one."""
    text = str(err)
    if "Original Traceback" in text:  # torch wraps worker exceptions with the worker's traceback
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(type(err).__module__) else last
    return text


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    """False for Lightning's litlogger tip (logged at every run)."""
    return not record.getMessage().startswith("💡 Tip: For seamless cloud logging")


def quiet_console() -> None:
    """One handler for every log line, and none of the third-party notices that say nothing to a user.

    lacoat logs through the root logger; Lightning's ``lightning`` logger has a handler of its own, so it
    must not propagate as well (every INFO line came twice). Silenced, each by its exact message:
    deprecations inside torchdata and Lightning that a user cannot act on, Lightning's warning about
    modules in eval mode (frozen encoders are in eval mode on purpose) and its litlogger advertisement.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False  # before Lightning is imported: it keeps this
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advertisement)
    for message, category, module in (
        ("'set_vital' is deprecated", UserWarning, r"torchdata\."),
        (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\."),
        (
            r"Found \d+ module\(s\) in eval mode at the start of training",
            UserWarning,
            r"lightning\.pytorch\.",
        ),
    ):
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``lacoat`` and ``python -m lacoat``.

    Args:
        args: command line without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        print(f"lacoat {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in TOOLS:
        print(f"lacoat: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    quiet_console()
    try:
        target = TOOLS[command][0]
        _resolve(target)((None if args is None else argv) if target == TRAINER else rest)
    except LacoatError as err:
        print(f"lacoat {command}: error: {user_message(err)}", file=sys.stderr)
        sys.exit(2)
