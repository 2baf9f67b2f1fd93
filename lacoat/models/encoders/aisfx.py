"""aiSFX's pretrained sound-effects CNN as a frozen frame-level audio encoder.

aiSFX (Ma & Lerch, ISMIR 2022; code MIT, weights CC BY 4.0) ships ``aisfx/models/checkpoint.pth``: the
embedding network ``EmbeddingNet('max', 3, 1, 64)`` (the 9-layer CNN of the DCASE cross-task baseline,
4 conv blocks of 64/128/256/512 channels) trained on professional sound-effect libraries, plus the
classifier heads of its cross-dataset training, which are not used here. Its input is a log-mel
spectrogram at 44.1 kHz: 2048-sample Hann frames every 1024 samples (centred, zero-padded at the edges),
96 HTK mel bands from 0 to 22050 Hz with each filter summing to one, power ``P`` compressed to
``log10(1 + 10^4 * P)`` and divided by 9.457798957824707, the fixed maximum of
``aisfx.preprocessing.spectrogram_normalize(spec_norm="original")``.

The package reduces the CNN's last map ``[512, frames / 8, 12]`` by a mean over frequency and a max over
time to one 512-d embedding. This encoder keeps the frames: a token per 8 hops (8192 samples, 185.8 ms;
5.38 tokens/s), its span starting at frame ``8 t``. The network is rebuilt here in torch with the
package's layer names, so the checkpoint's state dict loads without importing ``aisfx`` (whose wheel
pins numpy 1.23 and librosa 0.9.2); the package only provides the weights file.

The audio keeps its level: the ISMIR features come from Essentia's ``EasyLoader`` at its default
``replayGain=-6`` dB, which applies a gain of ``db2amp(-6 + 6) = 1``. (The package's librosa convenience
path divides each file by its peak instead.)
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lacoat.errors import ModelError
from lacoat.io import file_fingerprint
from lacoat.models.encoders.base import AudioEncoder, window_token_mask

SAMPLE_RATE = 44100
N_FFT = 2048  # aisfx.inference.SPEC_BLOCK_LENGTH (window = FFT size)
HOP = 1024  # aisfx.inference.SPEC_HOP_LENGTH
N_MELS = 96  # aisfx.inference.MEL_BINS
F_MIN, F_MAX = 0.0, 22050.0  # aisfx.inference.F_MIN, F_MAX
SPEC_MAX = 9.457798957824707  # aisfx.preprocessing.spectrogram_normalize, spec_norm="original" (min 0)
FRAMES_PER_TOKEN = 8  # three 2x2 max pools over time
DIM = 512
INSTALL_HINT = "install it with `pip install --no-deps aisfx==0.1.2` (or `make install`)"
_PREFIX = "embedding_net."  # the embedding network's keys in the packaged CrossNet state dict


def packaged_checkpoint() -> Path:
    """``aisfx/models/checkpoint.pth`` of the installed package, found without importing it.

    Raises:
        ModelError: aisfx is not installed, or its wheel lacks the weights file.
    """
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "AisfxAudioEncoder with checkpoint=null reads the weights packaged with aisfx, which is not "
            f"installed; {INSTALL_HINT}, or pass the path of an aiSFX checkpoint.pth as checkpoint"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "checkpoint.pth"
    if not path.is_file():
        raise ModelError(f"the aisfx package has no weights file at '{path}'; reinstall it: {INSTALL_HINT}")
    return path


def load_embedding_state_dict(path: Path) -> dict[str, Tensor]:
    """The ``embedding_net.*`` weights of an aiSFX checkpoint, prefix removed.

    Accepts the packaged layout (a tuple ``(CrossNet state dict, {dataset: (index, classes)})``), a bare
    CrossNet state dict, or a bare ``EmbeddingNet`` state dict; the classifier heads are ignored.

    Raises:
        ModelError: the file cannot be read or holds no embedding-network weights.
    """
    try:
        # The packaged file pickles numpy scalars next to the weights, which weights_only=True refuses;
        # it is a trusted file (the one shipped in the aisfx wheel, or one the user names), so it is
        # unpickled in full.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelError(
            f"cannot read aiSFX checkpoint '{path}' ({err}); the file is corrupt or not a PyTorch "
            f"checkpoint: {INSTALL_HINT} again"
        ) from err
    if isinstance(checkpoint, tuple | list) and checkpoint:
        checkpoint = checkpoint[0]
    if not isinstance(checkpoint, Mapping):
        raise ModelError(f"aiSFX checkpoint '{path}' holds no state dict; is it aisfx's checkpoint.pth?")
    state = {str(k): v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if any(k.startswith(_PREFIX) for k in state):
        state = {k.removeprefix(_PREFIX): v for k, v in state.items() if k.startswith(_PREFIX)}
    if not any(k.startswith("conv_block") for k in state):
        sample = ", ".join(list(map(str, checkpoint))[:5])
        raise ModelError(
            f"aiSFX checkpoint '{path}' holds no 'embedding_net.conv_block*' weights (keys begin: "
            f"{sample}); pass aisfx's models/checkpoint.pth"
        )
    return state


class ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias), each with batch norm and ReLU, then a max pool (aisfx layout)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, pool: int) -> Tensor:
        """Shape: ``[N, C_in, T, F]`` → ``[N, C_out, T // pool, F // pool]``."""
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.max_pool2d(x, kernel_size=pool) if pool > 1 else x


class EmbeddingNet(nn.Module):
    """aisfx's ``EmbeddingNet('max', 3, 1, 64)`` up to its time pooling: log-mel → 512-d frames.

    The package's forward ends with ``max`` over the frames this returns.
    """

    def __init__(self, base_channels: int = 64) -> None:
        super().__init__()
        c = base_channels
        self.conv_block1 = ConvBlock(1, c)
        self.conv_block2 = ConvBlock(c, 2 * c)
        self.conv_block3 = ConvBlock(2 * c, 4 * c)
        self.conv_block4 = ConvBlock(4 * c, 8 * c)

    def forward(self, log_mel: Tensor) -> Tensor:
        """Frame map averaged over frequency.

        Shape:
            - log_mel: ``[N, frames, 96]``
            - output: ``[N, frames // 8, 512]``
        """
        x = log_mel[:, None]  # [N, 1, frames, 96]
        x = self.conv_block1(x, pool=2)  # [N, 64, frames/2, 48]
        x = self.conv_block2(x, pool=2)  # [N, 128, frames/4, 24]
        x = self.conv_block3(x, pool=2)  # [N, 256, frames/8, 12]
        x = self.conv_block4(x, pool=1)  # [N, 512, frames/8, 12]
        return x.mean(dim=3).transpose(1, 2)  # [N, frames/8, 512]


class AisfxAudioEncoder(AudioEncoder):
    """Frame-level features of aiSFX's pretrained CNN: a 512-d token per 8 hops (185.8 ms).

    A window of ``S`` samples at 44.1 kHz gives ``S // 1024 + 1`` log-mel frames and
    ``tokens_per_window = (S // 1024 + 1) // 8`` tokens (53 for 10 s). Token ``t`` pools frames
    ``8t … 8t+7``, centred on samples ``8192 t … 8192 t + 7168``; through the convolutions it sees frames
    ``8t-30 … 8t+37`` (68 frames: samples ``8192 t - 31744 … 8192 t + 38912``, 1.6 s). Mask: token ``t``
    is valid when sample ``8192 t`` lies in the window's real samples (``ceil(valid / 8192)`` tokens).
    A window runs through the network over its real samples only, cut after its last valid token
    (what follows is zero padding whose tokens are masked): encoding costs what the audio lasts, and a
    window's tokens are the same in any batch. Padding windows give all-False, all-zero tokens. Each window is
    encoded on its own (``window_local``), in float32 (autocast off).

    Args:
        checkpoint: an aiSFX ``checkpoint.pth``, or None for the one packaged with aisfx
            (``pip install --no-deps aisfx==0.1.2``).
        window_seconds: window length; ``44100 * window_seconds`` must be a whole number of samples.
        sample_rate: must be 44100, the rate the network was trained at (the data is resampled to it).
        frozen: no trainable parameters, eval mode kept, forward under ``no_grad``; a frozen encoder is
            left out of checkpoints and rebuilt from its weights file.

    Raises:
        ModelError: another sample rate, a window shorter than one token or not a whole number of
            samples, aisfx not installed (with ``checkpoint=None``), or an unreadable or unfitting
            checkpoint.
    """

    window_local = True

    def __init__(
        self,
        checkpoint: str | None = None,
        window_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        if sample_rate != SAMPLE_RATE:
            raise ModelError(
                f"AisfxAudioEncoder reads {SAMPLE_RATE}-Hz audio (its network was trained at that rate), "
                f"got sample_rate={sample_rate}; set sample_rate: {SAMPLE_RATE} for the encoder and the data"
            )
        window = SAMPLE_RATE * window_seconds
        if window <= 0 or abs(window - round(window)) > 1e-6:
            raise ModelError(
                f"AisfxAudioEncoder: {SAMPLE_RATE} * window_seconds must be a whole number of samples, "
                f"got window_seconds={window_seconds}"
            )
        n_frames = round(window) // HOP + 1
        if n_frames < FRAMES_PER_TOKEN:
            raise ModelError(
                f"AisfxAudioEncoder: a {window_seconds}-s window is shorter than one token "
                f"({FRAMES_PER_TOKEN} frames of {HOP} samples); use window_seconds >= "
                f"{(FRAMES_PER_TOKEN - 1) * HOP / SAMPLE_RATE:.3f}"
            )
        self.checkpoint = checkpoint
        self.sample_rate = SAMPLE_RATE
        self.window_seconds = window_seconds
        self.frozen = frozen
        self.dim = DIM
        self.tokens_per_window = n_frames // FRAMES_PER_TOKEN
        self.samples_per_token = HOP * FRAMES_PER_TOKEN
        path = Path(checkpoint).expanduser() if checkpoint else packaged_checkpoint()
        if not path.is_file():
            raise ModelError(
                f"aiSFX checkpoint not found: '{checkpoint}'. Pass the path of aisfx's "
                f"models/checkpoint.pth, or checkpoint=null for the packaged one ({INSTALL_HINT})"
            )
        self.net = EmbeddingNet()
        self._load(path)
        self._weights = f"{path.name}#{file_fingerprint(path)}"

        import librosa.filters  # imported here: librosa is slow to import

        # the filterbank of aisfx's librosa front end (norm=1.0: each filter sums to one, like
        # Essentia's MelBands(normalize="unit_sum", warpingFormula="htkMel") of the ISMIR features)
        fbank = librosa.filters.mel(
            sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX, htk=True, norm=1.0
        )
        self.register_buffer("mel_fbank", torch.from_numpy(fbank).float(), persistent=False)  # [96, 1025]
        self.register_buffer("stft_window", torch.hann_window(N_FFT), persistent=False)  # periodic
        self._freeze_if_asked()

    def _load(self, path: Path) -> None:
        """Load the checkpoint's embedding-network weights; any key or shape mismatch is a ``ModelError``."""
        weights = load_embedding_state_dict(path)
        own = self.net.state_dict()
        missing = [k for k in own if k not in weights]
        unexpected = [k for k in weights if k not in own]
        wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            parts = [
                f"{len(keys)} {label}: {', '.join(keys[:5])}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if keys
            ]
            raise ModelError(
                f"aiSFX checkpoint '{path}' does not fit EmbeddingNet('max', 3, 1, 64): {'; '.join(parts)}. "
                "Pass aisfx's models/checkpoint.pth."
            )
        self.net.load_state_dict(weights)

    def source_fingerprint(self) -> str | None:
        """The weights file's content fingerprint."""
        return self._weights.rpartition("#")[2]

    def identity(self) -> str:
        """Class, settings and weights (checkpoint file name and content fingerprint)."""
        return f"AisfxAudioEncoder(window_seconds={self.window_seconds}, weights={self._weights})"

    def log_mel(self, wave: Tensor) -> Tensor:
        """aiSFX's input features: ``log10(1 + 10^4 * mel power) / 9.4578`` per frame.

        Shape:
            - wave: ``[N, S]``
            - output: ``[N, S // 1024 + 1, 96]`` float32
        """
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(),
                N_FFT,
                hop_length=HOP,
                win_length=N_FFT,
                window=self.stft_window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )  # [N, 1025, frames]
            mel = torch.matmul(self.mel_fbank, spec.abs().square())  # [N, 96, frames]
            log_mel = torch.log1p(mel * 1e4) / (math.log(10.0) * SPEC_MAX)  # [N, 96, frames]
            return log_mel.transpose(1, 2)  # [N, frames, 96]

    def encode_windows(self, wave: Tensor) -> Tensor:
        """Tokens of full windows (no mask).

        Shape:
            - wave: ``[N, S]``
            - output: ``[N, tokens_per_window, 512]``
        """
        return self.net(self.log_mel(wave))

    def forward(self, audio: Tensor, audio_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Encode windowed 44.1-kHz audio into aiSFX frame tokens, as ``AudioEncoder.forward`` says:
        ``[B, W, S]`` windows and ``[B, W]`` real samples → tokens ``[B, W * T, 512]`` (zero where
        invalid) and their mask ``[B, W * T]``, ``T = tokens_per_window``."""
        self.check_batch(audio, audio_valid)
        b, w, s = audio.shape
        t = self.tokens_per_window
        wave = audio.reshape(b * w, s).float()  # [BW, S]
        # each window runs over its real samples only, cut after its last valid token: the cost follows
        # the audio, not the padding, and a window's tokens do not depend on the batch it came in
        n_valid = (audio_valid.reshape(b * w) + self.samples_per_token - 1) // self.samples_per_token
        n_valid = n_valid.clamp(max=t)  # [BW] valid tokens per window
        with self._grad_context(), torch.autocast(wave.device.type, enabled=False):
            tokens = wave.new_zeros(b * w, t, self.dim)  # [BW, T, 512]
            for n in sorted(set(n_valid.tolist()) - {0}):
                rows = (n_valid == n).nonzero().flatten()
                cut = s if n == t else n * self.samples_per_token  # a full window keeps all it has
                tokens[rows, :n] = self.encode_windows(wave[rows, :cut])[:, :n].to(tokens.dtype)
        audio_mask = window_token_mask(audio_valid, t, self.samples_per_token)  # [B, W*T]
        audio_tokens = tokens.reshape(b, w * t, self.dim) * audio_mask[..., None]  # [B, W*T, 512]
        return audio_tokens, audio_mask
