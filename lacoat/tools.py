"""Model-free command-line tools (``lacoat synth``, ...), each built from a typed function."""

from __future__ import annotations

import time
from typing import Literal

from jsonargparse import ArgumentParser


def _parse(func, prog: str, argv: list[str]) -> dict:
    """Parse ``argv`` against the signature and docstring of ``func``."""
    parser = ArgumentParser(prog=prog, description=(func.__doc__ or "").split("\n")[0], exit_on_error=True)
    parser.add_function_arguments(func, as_group=False)
    return vars(parser.parse_args(argv).clone())


def synth_main(argv: list[str]) -> None:
    """``lacoat synth --out DIR [--seed S] [--n_development N] ...``"""
    from lacoat.data.synth import synthesize

    kwargs = _parse(synthesize, "lacoat synth", argv)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    start = time.perf_counter()
    sizes = synthesize(**kwargs)
    total = sum(sizes.values())
    print(
        f"SynthCaps: {total} clips ({sizes}) written to {kwargs['out']} in {time.perf_counter() - start:.1f} s"
    )


def inspect_main(argv: list[str]) -> None:
    """``lacoat inspect --config FILE``: load the data a config points at and report what was found."""
    import yaml

    from lacoat.data.datamodule import RetrievalDataModule
    from lacoat.errors import DataError

    parser = ArgumentParser(prog="lacoat inspect", description="Check a data set before training on it.")
    parser.add_argument(
        "--config", required=True, help="YAML file with a `data:` section (any lacoat config)"
    )
    parser.add_argument(
        "--stages",
        type=list[Literal["train", "val", "test"]],
        default=["train", "val", "test"],
        help="splits to load",
    )
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except OSError as err:
        raise DataError(f"cannot read config '{args.config}': {err.strerror}") from err
    if "data" not in config:
        raise DataError(f"config '{args.config}' has no `data:` section")
    data_parser = ArgumentParser(exit_on_error=False)
    data_parser.add_class_arguments(RetrievalDataModule, "data")
    try:
        init = data_parser.instantiate_classes(data_parser.parse_object({"data": config["data"]}))
    except Exception as err:  # jsonargparse's message names the bad key or value
        if isinstance(err, DataError):
            raise
        raise DataError(f"invalid `data:` section in '{args.config}': {err}") from err
    dm: RetrievalDataModule = init.data
    print(f"source: {dm.source!r}")
    for stage in args.stages:
        if stage not in dm.source.splits:
            print(f"{stage:5s}  (no split configured)")
            continue
        if stage == "train":
            table = dm.training_table()
            n_aug = int((table["source"] == "augmented").sum())
            line = f"{table['file_name'].nunique()} clips, {len(table) - n_aug} captions, {n_aug} augmented"
        else:
            eval_set = dm.eval_set(stage)
            groups = ", ".join(
                f"{(eval_set.queries['group'] == g).sum()} {g} queries" for g in eval_set.groups()
            )
            line = f"{len(eval_set.clips)} clips, {groups}"
        skipped = dm.skipped.get(stage, [])
        print(f"{stage:5s}  split '{dm.source.splits[stage]}': {line}, {len(skipped)} skipped")
        for path, reason in skipped[:5]:
            print(f"         skipped {path}: {reason}")
