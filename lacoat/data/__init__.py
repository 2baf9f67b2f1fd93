"""Data layer: audio I/O, caption tables, data sources, the DataModule and the SynthCaps demo set.

Names are imported on first use, so ``lacoat synth`` does not pay for importing Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "AudioCaps": "lacoat.data.audiocaps",
    "CaptionCsv": "lacoat.data.source",
    "CaptionSource": "lacoat.data.source",
    "Clotho": "lacoat.data.clotho",
    "EvalSet": "lacoat.data.datasets",
    "RetrievalDataModule": "lacoat.data.datamodule",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lacoat.data' has no attribute {name!r}")
