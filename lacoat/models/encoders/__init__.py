"""Audio and text encoders that turn a batch into token sequences with boolean masks.

Names are imported on first use, so importing this package stays light (no ``transformers``,
``laion_clap`` or ``librosa`` until an encoder is built).
"""

from importlib import import_module

_EXPORTS = {
    "AudioEncoder": "lacoat.models.encoders.base",
    "TextEncoder": "lacoat.models.encoders.base",
    "ClapAudioEncoder": "lacoat.models.encoders.clap",
    "HFTextEncoder": "lacoat.models.encoders.hf_text",
    "LogMelAudioEncoder": "lacoat.models.encoders.logmel",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lacoat.models.encoders' has no attribute {name!r}")
