"""LAION-CLAP's HTSAT audio branch as a frame-level audio encoder (the paper's audio encoder).

The branch is built directly from ``laion_clap``'s module files. ``import laion_clap`` (and importing
any of its submodules the usual way, which runs the package ``__init__``) loads ``transformers``
tokenizers from the hub at import time, and ``laion_clap.CLAP_Module()`` downloads roberta-base in its
constructor; neither works offline. So the ``clap_module`` folder is registered under a private package
name whose ``__init__`` is never run, and only ``htsat.py`` (with its helpers) is imported from it.

Output per 10-s window (480,000 samples at 48 kHz): HTSAT's ``fine_grained_embedding`` is
``[1024, D]`` but holds 32 distinct frames, each repeated 32 times in a row; the encoder keeps every
32nd frame, i.e. 32 tokens per window (3.2 tokens/s), D = 768 for HTSAT-tiny, 1024 for HTSAT-base,
2048 for HTSAT-large.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import pickle
import sys
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lacoat.errors import ModelError
from lacoat.io import file_fingerprint
from lacoat.models.encoders.base import AudioEncoder, window_token_mask

log = logging.getLogger(__name__)

CLAP_DOWNLOAD_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
# published checkpoints (file name → audio model, fusion), as laion_clap's README lists them
CLAP_CHECKPOINTS: dict[str, tuple[str, bool]] = {
    "630k-best.pt": ("HTSAT-tiny", False),
    "630k-audioset-best.pt": ("HTSAT-tiny", False),
    "630k-fusion-best.pt": ("HTSAT-tiny", True),
    "630k-audioset-fusion-best.pt": ("HTSAT-tiny", True),
    "music_audioset_epoch_15_esc_90.14.pt": ("HTSAT-base", False),
    "music_speech_epoch_15_esc_89.25.pt": ("HTSAT-base", False),
    "music_speech_audioset_epoch_15_esc_89.98.pt": ("HTSAT-base", False),
}
CLAP_AUDIO_MODELS = ("HTSAT-tiny", "HTSAT-base", "HTSAT-large")
FUSION_TYPE = "aff_2d"  # what laion_clap.CLAP_Module uses with enable_fusion=True
TOKENS_PER_WINDOW = 32
_FRAME_REPEAT = 32  # HTSAT repeats each of its 32 latent frames 32 times (1024 frames per window)
_PRIVATE_PACKAGE = "_lacoat_laion_clap_module"
# parameters computed by the branch's constructor (fixed STFT and mel weights): may be absent in a file
_FIXED_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")


def clap_module_dir() -> Path:
    """The ``laion_clap/clap_module`` folder, found without importing ``laion_clap``."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the 'laion_clap' package is not installed; install lacoat's dependencies (laion-clap)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "clap_module"


def import_htsat() -> types.ModuleType:
    """Import ``laion_clap/clap_module/htsat.py`` without running ``laion_clap``'s package ``__init__``."""
    if _PRIVATE_PACKAGE not in sys.modules:
        package = types.ModuleType(_PRIVATE_PACKAGE)
        package.__path__ = [str(clap_module_dir())]
        package.__package__ = _PRIVATE_PACKAGE
        sys.modules[_PRIVATE_PACKAGE] = package
    return importlib.import_module(f"{_PRIVATE_PACKAGE}.htsat")


def clap_audio_config(amodel: str) -> types.SimpleNamespace:
    """``audio_cfg`` of laion_clap's model config JSON (48 kHz, 480,000-sample clips, 64 mels, ...)."""
    if amodel not in CLAP_AUDIO_MODELS:
        raise ModelError(
            f"ClapAudioEncoder: amodel must be one of {', '.join(CLAP_AUDIO_MODELS)}, got '{amodel}'"
        )
    config = json.loads((clap_module_dir() / "model_configs" / f"{amodel}.json").read_text())
    return types.SimpleNamespace(**config["audio_cfg"])


def build_htsat_branch(amodel: str = "HTSAT-tiny", enable_fusion: bool = False) -> nn.Module:
    """laion_clap's HTSAT audio branch (``CLAP.audio_branch``) with random weights."""
    htsat = import_htsat()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.meshgrid.*")
        return htsat.create_htsat_model(
            clap_audio_config(amodel), enable_fusion, FUSION_TYPE if enable_fusion else "None"
        )


def cache_dir() -> Path:
    """Where downloaded checkpoints go: ``$LACOAT_CACHE_DIR/clap`` (default ``~/.cache/lacoat/clap``)."""
    root = os.environ.get("LACOAT_CACHE_DIR") or Path.home() / ".cache" / "lacoat"
    return Path(root) / "clap"


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A local checkpoint file for a path, a published checkpoint name or an http(s) URL.

    Names in ``CLAP_CHECKPOINTS`` and URLs are downloaded once into ``cache_dir()``.

    Raises:
        ModelError: the file does not exist, or the download fails (e.g. no network).
    """
    checkpoint = str(checkpoint)
    is_url = checkpoint.startswith(("http://", "https://"))
    path = Path(checkpoint).expanduser()
    if not is_url and path.is_file():
        return path
    name = checkpoint.rsplit("/", 1)[-1] if is_url else checkpoint
    if not is_url and name not in CLAP_CHECKPOINTS:
        raise ModelError(
            f"CLAP checkpoint not found: '{checkpoint}'. Pass the path of a LAION-CLAP checkpoint file "
            f"(e.g. 630k-audioset-best.pt from {CLAP_DOWNLOAD_URL}), one of the published names "
            f"({', '.join(CLAP_CHECKPOINTS)}) to download it, or checkpoint=null for random weights."
        )
    target = cache_dir() / name
    if target.is_file():
        return target
    url = checkpoint if is_url else CLAP_DOWNLOAD_URL + name
    log.info("downloading CLAP checkpoint %s to %s", url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:  # URLError, HTTPError, OSError, timeouts
        raise ModelError(
            f"cannot download CLAP checkpoint {url} ({err}). Without network, download the file "
            f"elsewhere, copy it to this machine and pass its path as checkpoint (or place it at '{target}')."
        ) from err
    return target


def load_audio_state_dict(path: Path) -> dict[str, Tensor]:
    """The ``audio_branch.*`` weights of a LAION-CLAP checkpoint, prefix removed.

    Accepts the published layout (``{"state_dict": {"module.audio_branch.…": …, "module.text_branch.…":
    …}}``) and a bare state dict, with or without the DDP ``module.`` prefix; other keys are ignored.

    Raises:
        ModelError: the file cannot be read or holds no audio-branch weights.
    """
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # older training checkpoints pickle extra objects; laion_clap itself loads them this way
            log.warning("checkpoint %s is not a plain weights file; loading it with pickle", path)
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelError(
            f"cannot read CLAP checkpoint '{path}' ({err}). The file is corrupt, truncated or not a "
            "PyTorch checkpoint; download it again."
        ) from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ModelError(f"CLAP checkpoint '{path}' holds no state dict; is it a LAION-CLAP checkpoint?")
    audio: dict[str, Tensor] = {}
    for key, value in state.items():
        key = str(key).removeprefix("module.")
        if key.startswith("audio_branch.") and isinstance(value, Tensor):
            audio[key.removeprefix("audio_branch.")] = value
    if not audio:
        sample = ", ".join(list(map(str, state))[:5])
        raise ModelError(
            f"CLAP checkpoint '{path}' holds no 'audio_branch.*' weights (keys begin: {sample}); "
            "pass a LAION-CLAP checkpoint such as 630k-audioset-best.pt."
        )
    return audio


def repeat_pad(wave: Tensor, valid: Tensor) -> Tensor:
    """Fill each window past its real samples the way LAION-CLAP's ``repeatpad`` does.

    A window with ``v`` real samples is tiled ``S // v`` times, the rest stays zero; full windows and
    padding windows (``v = 0``) are unchanged.

    Shape:
        - wave: ``[N, S]``
        - valid: ``[N]`` int64
        - output: ``[N, S]``
    """
    s = wave.shape[-1]
    v = valid.clamp(1, s)[:, None]  # [N, 1]
    steps = torch.arange(s, device=wave.device)[None]  # [1, S]
    filled = torch.gather(wave, 1, (steps % v).expand_as(wave))  # [N, S]
    keep = steps < (s // v) * v  # [N, S]
    return torch.where(keep & (valid[:, None] > 0), filled, torch.zeros_like(wave))


class ClapAudioEncoder(AudioEncoder):
    """Frame-level features of LAION-CLAP's HTSAT audio branch: 32 tokens per 10-s window.

    Windows must be 10 s at 48 kHz (480,000 samples). A partial window is filled by repeating its
    real samples (``pad="repeat"``, what LAION-CLAP does for short clips) or left zero-padded
    (``pad="zero"``). Mask: a window with ``v`` real samples has ``ceil(32 * v / 480000)`` valid tokens
    (proportional, rounded up: token ``t`` covers 0.3125 s starting at ``t * 0.3125`` s); padding
    windows are not run through the branch and give all-False, all-zero tokens.

    The branch runs in float32 (autocast off). With ``enable_fusion`` the branch is the fusion
    variant and reads a mel spectrogram computed like laion_clap's ``get_mel`` (torchaudio settings,
    re-implemented with ``torch.stft`` and a librosa HTK filterbank); a 10-s window is never "longer",
    so fusion checkpoints run their global path.

    Args:
        checkpoint: a LAION-CLAP checkpoint file, a published checkpoint name (see ``CLAP_CHECKPOINTS``,
            downloaded once into ``$LACOAT_CACHE_DIR/clap``), an http(s) URL, or None for random
            weights (tests).
        amodel: HTSAT size: ``HTSAT-tiny`` (D=768, the 630k checkpoints), ``HTSAT-base`` (D=1024, the
            music checkpoints) or ``HTSAT-large``.
        frozen: no trainable parameters, eval mode kept, forward under ``no_grad``.
        enable_fusion: build the feature-fusion variant (for ``*-fusion-*`` checkpoints).
        pad: how partial windows are filled, ``repeat`` or ``zero``.

    Raises:
        ModelError: unknown ``amodel``, missing or unreadable checkpoint, failed download, or a
            checkpoint whose audio weights do not fit the branch (wrong size or fusion setting).
    """

    sample_rate = 48000  # every published CLAP audio config (its instance reads its own config)
    window_seconds = 10.0

    window_local = True  # HTSAT sees one window at a time

    def __init__(
        self,
        checkpoint: str | None = None,
        amodel: str = "HTSAT-tiny",
        frozen: bool = True,
        enable_fusion: bool = False,
        pad: Literal["repeat", "zero"] = "repeat",
    ) -> None:
        super().__init__()
        if pad not in ("repeat", "zero"):
            raise ModelError(f"ClapAudioEncoder: pad must be 'repeat' or 'zero', got '{pad}'")
        name = Path(checkpoint).name if checkpoint else None
        if name in CLAP_CHECKPOINTS and CLAP_CHECKPOINTS[name] != (amodel, enable_fusion):
            want_model, want_fusion = CLAP_CHECKPOINTS[name]
            raise ModelError(
                f"CLAP checkpoint '{name}' needs amodel='{want_model}' and enable_fusion={want_fusion}, "
                f"got amodel='{amodel}' and enable_fusion={enable_fusion}"
            )
        config = clap_audio_config(amodel)
        self.checkpoint = checkpoint
        self.amodel = amodel
        self.frozen = frozen
        self.enable_fusion = enable_fusion
        self.pad = pad
        self.sample_rate = int(config.sample_rate)
        self.window_seconds = config.clip_samples / config.sample_rate
        self.tokens_per_window = TOKENS_PER_WINDOW
        self.samples_per_token = config.clip_samples // TOKENS_PER_WINDOW
        self._audio_config = config
        self._weights = "random-init"
        path = resolve_checkpoint(checkpoint) if checkpoint else None  # before the (slower) build
        self.branch = build_htsat_branch(amodel, enable_fusion)
        self.dim = int(self.branch.num_features)
        if path is not None:
            self._load(path)
            self._weights = f"{path.name}#{file_fingerprint(path)}"
        if enable_fusion:
            import librosa.filters

            fbank = librosa.filters.mel(
                sr=config.sample_rate,
                n_fft=config.window_size,
                n_mels=config.mel_bins,
                fmin=config.fmin,
                fmax=config.fmax,
                htk=True,
                norm=None,
            )
            self.register_buffer("fusion_fbank", torch.from_numpy(fbank).float(), persistent=False)  # [M, F]
            self.register_buffer("fusion_window", torch.hann_window(config.window_size), persistent=False)
        self._freeze_if_asked()

    def _load(self, path: Path) -> None:
        """Load the checkpoint's audio-branch weights; any key or shape mismatch is a ``ModelError``."""
        weights = load_audio_state_dict(path)
        own = self.branch.state_dict()
        missing = [k for k in own if k not in weights and not k.startswith(_FIXED_PREFIXES)]
        unexpected = [k for k in weights if k not in own]
        wrong = [
            f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in weights and weights[k].shape != own[k].shape
        ]
        if missing or unexpected or wrong:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
                if keys:
                    more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                    parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
            raise ModelError(
                f"CLAP checkpoint '{path}' does not fit the {self.amodel} audio branch "
                f"(enable_fusion={self.enable_fusion}): {'; '.join(parts)}. Check amodel (630k-* "
                "checkpoints are HTSAT-tiny, music_* are HTSAT-base) and enable_fusion (*-fusion-* "
                "checkpoints need enable_fusion=True)."
            )
        self.branch.load_state_dict(weights, strict=False)

    def source_fingerprint(self) -> str | None:
        """The CLAP checkpoint's content fingerprint (None: random initialisation)."""
        return None if self._weights == "random-init" else self._weights.rpartition("#")[2]

    def identity(self) -> str:
        """Class, settings and weights (checkpoint file name and content fingerprint)."""
        return (
            f"ClapAudioEncoder(amodel={self.amodel}, enable_fusion={self.enable_fusion}, pad={self.pad}, "
            f"weights={self._weights})"
        )

    def fusion_mel(self, wave: Tensor) -> Tensor:
        """Log-mel like laion_clap's ``get_mel``: power mel (HTK, no norm) in dB, frames first.

        Shape:
            - wave: ``[N, S]``
            - output: ``[N, S // hop + 1, n_mels]``
        """
        cfg = self._audio_config
        spec = torch.stft(
            wave,
            cfg.window_size,
            hop_length=cfg.hop_size,
            win_length=cfg.window_size,
            window=self.fusion_window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # [N, F, frames]
        mel = torch.matmul(self.fusion_fbank, spec.abs().square())  # [N, M, frames]
        return (10.0 * torch.log10(mel.clamp_min(1e-10))).transpose(1, 2)  # [N, frames, M]

    def encode_windows(self, wave: Tensor) -> Tensor:
        """Run the branch on full 10-s windows and keep its 32 distinct frames.

        Shape:
            - wave: ``[N, S]``
            - output: ``[N, 32, D]``
        """
        longer = torch.zeros(wave.shape[0], dtype=torch.bool, device=wave.device)
        if self.enable_fusion:
            mel = self.fusion_mel(wave)  # [N, frames, M]
            inputs = {"mel_fusion": mel[:, None].expand(-1, 4, -1, -1).contiguous(), "longer": longer}
        else:
            inputs = {"waveform": wave, "longer": longer}
        fine = self.branch(inputs, device=wave.device)["fine_grained_embedding"]  # [N, 1024, D]
        return fine[:, ::_FRAME_REPEAT]  # [N, 32, D]

    def forward(self, audio: Tensor, audio_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Encode windowed 48-kHz audio into HTSAT frame tokens.

        Args:
            audio: 10-s windows of samples, zero-padded.
            audio_valid: real samples per window (0 = padding window).

        Returns:
            ``audio_tokens`` (zero where invalid) and ``audio_mask`` (True = valid token).

        Shape:
            - audio: ``[B, W, 480000]`` float
            - audio_valid: ``[B, W]`` int64
            - audio_tokens: ``[B, W * 32, D]`` (D = 768 for HTSAT-tiny)
            - audio_mask: ``[B, W * 32]`` bool
        """
        self.check_batch(audio, audio_valid)
        b, w, s = audio.shape
        t = self.tokens_per_window
        wave = audio.reshape(b * w, s).float()  # [BW, S]
        valid = audio_valid.reshape(b * w)  # [BW]
        if self.pad == "repeat":
            wave = repeat_pad(wave, valid)
        real = valid > 0  # [BW]
        with self._grad_context(), torch.autocast(wave.device.type, enabled=False):
            tokens = wave.new_zeros(b * w, t, self.dim)  # [BW, 32, D]
            if bool(real.any()):
                tokens[real] = self.encode_windows(wave[real])
        audio_mask = window_token_mask(audio_valid, t, self.samples_per_token)  # [B, W*32]
        audio_tokens = tokens.reshape(b, w * t, self.dim) * audio_mask[..., None]  # [B, W*32, D]
        return audio_tokens, audio_mask
