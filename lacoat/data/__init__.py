"""Data layer: audio I/O, caption tables, data sources, the DataModule and the SynthCaps demo set.

Names are imported on first use, so ``lacoat synth`` does not pay for importing Lightning.
"""

from lacoat.lazy import lazy_exports

_EXPORTS = {
    "AudioCaps": "lacoat.data.audiocaps",
    "CaptionCsv": "lacoat.data.source",
    "CaptionSource": "lacoat.data.source",
    "Clotho": "lacoat.data.clotho",
    "EvalSet": "lacoat.data.datasets",
    "RetrievalDataModule": "lacoat.data.datamodule",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
