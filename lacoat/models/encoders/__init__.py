"""Audio and text encoders that turn a batch into token sequences with boolean masks.

Names are imported on first use, so importing this package stays light (no ``transformers``,
``laion_clap`` or ``librosa`` until an encoder is built).
"""

from lacoat.lazy import lazy_exports

_EXPORTS = {
    "AisfxAudioEncoder": "lacoat.models.encoders.aisfx",
    "AudioEncoder": "lacoat.models.encoders.base",
    "TextEncoder": "lacoat.models.encoders.base",
    "ClapAudioEncoder": "lacoat.models.encoders.clap",
    "HFTextEncoder": "lacoat.models.encoders.hf_text",
    "LogMelAudioEncoder": "lacoat.models.encoders.logmel",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
