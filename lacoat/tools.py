"""Model-free command-line tools (``lacoat synth``, ...), each built from a typed function."""

from __future__ import annotations

import time

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
