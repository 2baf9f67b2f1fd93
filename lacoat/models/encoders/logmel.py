"""A light audio encoder trained from scratch: log-mel → conv front-end → small Transformer.

Meant for CPU demos and tests (SynthCaps), where the pretrained CLAP encoder is too slow or not
available. Each window is turned into log-mel frames and pooled by a strided convolution on its own, so
padding windows never reach the valid tokens; the Transformer then runs over the tokens of all windows
with a key padding mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lacoat.errors import ModelError
from lacoat.models.encoders.base import AudioEncoder, state_digest, window_token_mask
from lacoat.models.positions import sinusoidal_positions


class LogMelAudioEncoder(AudioEncoder):
    """Log-mel spectrogram, a conv front-end that pools ``pool_frames`` frames per token, a Transformer.

    Frames are computed per window with ``torch.stft`` (hop ``hop_ms``, Hann window of two hops, centred
    frames, zero padding at the window edges) and a mel filterbank from ``librosa.filters.mel``. Frame
    ``f`` is centred on sample ``f * hop``; a token covers ``pool_frames`` frames, so a window gives
    ``(S // hop) // pool_frames`` tokens (100 for 8 s at 20 ms and 4 frames: 12.5 tokens/s). A token
    is valid when its first sample lies in real audio (``ceil(valid / (hop * pool_frames))`` valid
    tokens per window). Features of invalid frames and invalid output tokens are set to zero.

    Args:
        sample_rate: audio rate (Hz).
        window_seconds: window length; ``sample_rate * window_seconds`` must be a whole number.
        n_mels: mel bands.
        hop_ms: frame hop in milliseconds.
        dim: D, token size.
        layers: Transformer layers (pre-norm).
        heads: attention heads; must divide ``dim``.
        pool_frames: frames per token (stride of the pooling convolution).
        dropout: dropout in the Transformer.
        frozen: no trainable parameters, eval mode kept.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        window_seconds: float = 8.0,
        n_mels: int = 64,
        hop_ms: float = 20.0,
        dim: int = 256,
        layers: int = 2,
        heads: int = 4,
        pool_frames: int = 4,
        dropout: float = 0.1,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        window = sample_rate * window_seconds
        if sample_rate <= 0 or window <= 0 or abs(window - round(window)) > 1e-6:
            raise ModelError(
                f"LogMelAudioEncoder: sample_rate * window_seconds must be a positive whole number of "
                f"samples, got {sample_rate} * {window_seconds}"
            )
        hop = round(sample_rate * hop_ms / 1000)
        if hop <= 0:
            raise ModelError(f"LogMelAudioEncoder: hop_ms={hop_ms} is shorter than one sample")
        if dim % heads != 0 or dim % 2 != 0:
            raise ModelError(f"LogMelAudioEncoder: dim={dim} must be even and divisible by heads={heads}")
        tokens = (round(window) // hop) // pool_frames if pool_frames > 0 else 0
        if tokens < 1:
            raise ModelError(
                f"LogMelAudioEncoder: a {window_seconds}-s window is shorter than one token "
                f"(hop_ms={hop_ms}, pool_frames={pool_frames})"
            )
        self.sample_rate = sample_rate
        self.window_seconds = window_seconds
        self.n_mels = n_mels
        self.hop_ms = hop_ms
        self.dim = dim
        self.layers = layers
        self.heads = heads
        self.pool_frames = pool_frames
        self.frozen = frozen
        self.hop = hop
        self.win_length = 2 * hop
        self.n_fft = 1 << (self.win_length - 1).bit_length()
        self.tokens_per_window = tokens
        self.samples_per_token = hop * pool_frames

        import librosa.filters  # imported here: librosa is slow to import

        fbank = librosa.filters.mel(sr=sample_rate, n_fft=self.n_fft, n_mels=n_mels, fmin=0.0)
        self.register_buffer("mel_fbank", torch.from_numpy(fbank).float(), persistent=False)  # [M, F]
        self.register_buffer("stft_window", torch.hann_window(self.win_length), persistent=False)

        self.conv = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.pool = nn.Conv1d(dim, dim, kernel_size=pool_frames, stride=pool_frames)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self._freeze_if_asked()

    def identity(self) -> str:
        """Class, settings and a digest of the current weights (they come from training, not a file)."""
        return (
            f"LogMelAudioEncoder(sample_rate={self.sample_rate}, window_seconds={self.window_seconds}, "
            f"n_mels={self.n_mels}, hop_ms={self.hop_ms}, dim={self.dim}, layers={self.layers}, "
            f"heads={self.heads}, pool_frames={self.pool_frames}, weights={state_digest(self)})"
        )

    def log_mel(self, wave: Tensor) -> Tensor:
        """Log-mel frames of windows, scaled to roughly [-1, 1].

        Shape:
            - wave: ``[N, S]``
            - output: ``[N, n_mels, tokens_per_window * pool_frames]`` float32
        """
        n_frames = self.tokens_per_window * self.pool_frames
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(),
                self.n_fft,
                hop_length=self.hop,
                win_length=self.win_length,
                window=self.stft_window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )  # [N, F, S // hop + 1]
            power = spec[..., :n_frames].abs().square()  # [N, F, n_frames]
            mel = torch.matmul(self.mel_fbank, power)  # [N, M, n_frames]
            return (torch.log10(mel.clamp_min(1e-8)) + 4.0) / 4.0

    def forward(self, audio: Tensor, audio_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Encode windowed audio into tokens.

        Args:
            audio: windows of samples, zero-padded.
            audio_valid: real samples per window (0 = padding window).

        Returns:
            ``audio_tokens`` (zero where invalid) and ``audio_mask`` (True = valid token).

        Shape:
            - audio: ``[B, W, S]`` float
            - audio_valid: ``[B, W]`` int64
            - audio_tokens: ``[B, W * T, D]`` with ``T = tokens_per_window``
            - audio_mask: ``[B, W * T]`` bool
        """
        self.check_batch(audio, audio_valid)
        b, w, s = audio.shape
        t = self.tokens_per_window
        with self._grad_context():
            feats = self.log_mel(audio.reshape(b * w, s))  # [BW, M, P*T]
            frame_mask = window_token_mask(audio_valid.reshape(b * w, 1), t * self.pool_frames, self.hop)
            feats = feats * frame_mask[:, None, :]  # [BW, M, P*T], invalid frames zeroed
            x = F.gelu(self.conv(feats.to(self.conv.weight.dtype)))  # [BW, D, P*T]
            x = F.gelu(self.pool(x))  # [BW, D, T]
            x = x.transpose(1, 2).reshape(b, w * t, self.dim)  # [B, W*T, D]
            audio_mask = window_token_mask(audio_valid, t, self.samples_per_token)  # [B, W*T]
            x = x + sinusoidal_positions(w * t, self.dim, x.device).to(x.dtype)
            # a row without any valid token (never made by the DataModule) attends to its first token
            key_padding = ~audio_mask
            key_padding[:, 0] &= audio_mask.any(dim=1)
            x = self.transformer(x, src_key_padding_mask=key_padding)  # [B, W*T, D]
            audio_tokens = self.norm(x) * audio_mask[..., None]  # [B, W*T, D]
        return audio_tokens, audio_mask
