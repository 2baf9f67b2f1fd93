"""Reading sections of a lacoat YAML config outside Lightning (for tools such as inspect and extract)."""

from __future__ import annotations

from typing import Any

from lacoat.errors import DataError


def instantiate_sections(path: str, sections: dict[str, type]) -> dict[str, Any]:
    """Build the objects of ``sections`` (config key → class) from the YAML config at ``path``.

    A ``seed_everything`` value in the config seeds the random generators first, as ``lacoat fit``
    does, so randomly initialised weights come out the same.

    Raises:
        DataError: the file cannot be read, lacks a section, or a section is invalid (jsonargparse's
            message names the bad key or value).
    """
    import yaml
    from jsonargparse import ArgumentParser

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except OSError as err:
        raise DataError(f"cannot read config '{path}': {err.strerror}") from err
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        from lightning.fabric.utilities.seed import seed_everything

        seed_everything(seed, verbose=False)
    parser = ArgumentParser(exit_on_error=False)
    for key, cls in sections.items():
        if key not in config:
            raise DataError(f"config '{path}' has no `{key}:` section")
        parser.add_class_arguments(cls, key)
    try:
        init = parser.instantiate_classes(parser.parse_object({key: config[key] for key in sections}))
    except Exception as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"invalid config '{path}': {err}") from err
    return {key: init[key] for key in sections}
