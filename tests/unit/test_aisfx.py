"""AisfxAudioEncoder: aiSFX's front end and network reproduced, masks, freezing, lean checkpoints, errors.

The reference comparisons use the installed aisfx package (``pip install --no-deps aisfx==0.1.2``) and
skip without it; the others run on a random checkpoint saved in the packaged layout. All audio is
generated (sines and noise at 44.1 kHz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lacoat.checkpoints import REBUILT, leave_out_rebuilt_encoders, restore_rebuilt_encoders
from lacoat.errors import LacoatError, ModelError
from lacoat.io import file_fingerprint

SR = 44100


def sines_and_noise(seconds: float, seed: int = 0, peak: float | None = None) -> np.ndarray:
    """Two tones, a chirp and noise with a quiet stretch, float32 ``[n]``; scaled to ``peak`` if given."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * 220 * (1 + seed) * t) + 0.2 * np.sin(2 * np.pi * 3000 * t * (1 + t / 8))
    y = y + 0.05 * rng.standard_normal(t.size)
    y[t.size // 3 : t.size // 2] *= 1e-3
    y = y.astype(np.float32)
    return y / np.abs(y).max() * np.float32(peak) if peak is not None else y


def save_random_aisfx_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random ``EmbeddingNet`` saved like ``aisfx/models/checkpoint.pth``: a tuple of the CrossNet state
    dict (``embedding_net.*`` and a classifier head) and ``{dataset: (numpy index, classes)}``."""
    from lacoat.models.encoders.aisfx import EmbeddingNet

    torch.manual_seed(seed)
    net = EmbeddingNet()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that loading them matters
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    state = {f"embedding_net.{k}": v for k, v in net.state_dict().items()}
    state["fc.0.0.weight"] = torch.zeros(256, 512)
    torch.save((state, {"prosfx": (np.int64(0), 78)}), path)
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_aisfx_checkpoint(tmp_path_factory.mktemp("aisfx") / "checkpoint.pth")


@pytest.fixture(scope="module")
def aisfx():
    """The installed aisfx package (reference tests skip without it)."""
    return pytest.importorskip("aisfx")


@pytest.fixture(scope="module")
def packaged(aisfx):
    """The encoder with aisfx's packaged weights, 10-s windows."""
    from lacoat.models.encoders import AisfxAudioEncoder

    return AisfxAudioEncoder()


def reference_net(aisfx):
    """The package's own ``EmbeddingNet('max', 3, 1, 64)`` with its packaged weights, eval mode."""
    from aisfx.inference import get_path_modelWeights
    from aisfx.models.cnn2d import EmbeddingNet

    weights, _ = torch.load(get_path_modelWeights(), map_location="cpu", weights_only=False)  # trusted
    net = EmbeddingNet("max", 3, 1, 64)
    net.load_state_dict({k.removeprefix("embedding_net."): v for k, v in weights.items() if "embedding" in k})
    return net.eval()


# ---------------------------------------------------------------------------------------------------
# reference comparisons with the aisfx package


def test_log_mel_equals_librosa_with_the_package_parameters(aisfx, packaged) -> None:
    import librosa
    from aisfx import inference
    from aisfx.preprocessing import spectrogram_normalize

    y = sines_and_noise(3.0)
    mel = librosa.feature.melspectrogram(  # as aisfx/spectrogram/spectrogram_librosa.py calls it
        y=y,
        sr=inference.SAMPLE_RATE,
        n_mels=inference.MEL_BINS,
        norm=1.0,
        fmin=inference.F_MIN,
        fmax=inference.F_MAX,
        htk=True,
        power=2.0,
        hop_length=inference.SPEC_HOP_LENGTH,
        win_length=inference.SPEC_BLOCK_LENGTH,
    )  # [96, frames]
    expected = spectrogram_normalize(np.log10(mel * 10000.0 + 1), spec_norm="original").T  # [frames, 96]
    ours = packaged.log_mel(torch.from_numpy(y)[None])[0].numpy()  # [frames, 96]
    assert ours.shape == expected.shape == (3 * SR // 1024 + 1, 96)
    assert expected.max() > 0.5  # loud enough to exercise the scale
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)  # measured: 4e-7


def test_pooled_tokens_equal_the_package_network(aisfx, packaged) -> None:
    audio = torch.from_numpy(np.stack([sines_and_noise(10.0, seed=1), sines_and_noise(10.0, seed=2)]))
    s = packaged.window_samples
    assert (s, packaged.tokens_per_window, packaged.dim) == (441000, 53, 512)
    tokens, mask = packaged(audio[:, None], torch.tensor([[s], [s]]))  # [2, 53, 512]
    assert mask.all()
    with torch.no_grad():
        expected = reference_net(aisfx)(packaged.log_mel(audio))  # [2, 512]: mean over freq, max over time
    torch.testing.assert_close(tokens.max(dim=1).values, expected, rtol=0, atol=1e-4)  # measured: 0
    assert not torch.allclose(expected[0], expected[1])


def test_waveform_path_equals_the_package_preprocessing_and_model(aisfx, packaged, tmp_path) -> None:
    """aisfx's librosa path from a file (peak 1, so its peak normalisation is a no-op) on one 100-frame
    embedding block equals the max of this encoder's tokens over a window of the same 100 frames."""
    import soundfile as sf
    from aisfx import inference
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    from lacoat.models.encoders import AisfxAudioEncoder

    n = (inference.EMB_BLOCK_LENGTH - 1) * inference.SPEC_HOP_LENGTH  # 101376 samples: 100 frames
    y = sines_and_noise(n / SR, seed=3, peak=1.0)
    path = tmp_path / "clip.wav"
    sf.write(str(path), y, SR, subtype="FLOAT")
    spec = compute_spectrogram(
        filename=str(path),
        sr=inference.SAMPLE_RATE,
        block_size=inference.SPEC_BLOCK_LENGTH,
        hop_size=inference.SPEC_HOP_LENGTH,
        n_mels=inference.MEL_BINS,
        f_min=inference.F_MIN,
        f_max=inference.F_MAX,
    )  # [96, 100]: the package hands this on untransposed (frames are its first axis downstream)
    spec = spectrogram_normalize(spec.T, spec_norm="original")  # [100, 96]
    weights, ds_dict = torch.load(inference.get_path_modelWeights(), map_location="cpu", weights_only=False)
    model = inference.load_bestModel(weights, ds_dict, "cpu")
    expected = inference.model_get_embedding(spec, 0.5, True, model, "cpu")  # [1, 512]: one block

    encoder = AisfxAudioEncoder(window_seconds=n / SR)
    assert encoder.window_samples == n and encoder.tokens_per_window == 12
    tokens, mask = encoder(torch.from_numpy(y)[None, None], torch.tensor([[n]]))  # [1, 12, 512]
    assert mask.all()
    torch.testing.assert_close(tokens.max(dim=1).values, expected, rtol=0, atol=1e-4)  # measured: 2e-6


def test_packaged_weights_are_fingerprinted(packaged) -> None:
    from lacoat.models.encoders.aisfx import packaged_checkpoint

    fingerprint = file_fingerprint(packaged_checkpoint())
    assert packaged.source_fingerprint() == fingerprint
    assert (
        packaged.identity() == f"AisfxAudioEncoder(window_seconds=10.0, weights=checkpoint.pth#{fingerprint})"
    )


# ---------------------------------------------------------------------------------------------------
# masks, freezing, lean checkpoints (random weights in the packaged layout)


@pytest.fixture(scope="module")
def encoder(random_checkpoint: Path):
    from lacoat.models.encoders import AisfxAudioEncoder

    return AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=2.0)


def test_tokens_and_mask_of_partial_and_padding_windows(encoder) -> None:
    s = encoder.window_samples
    assert (s, encoder.tokens_per_window, encoder.samples_per_token) == (88200, 10, 8192)  # 87 frames
    audio = torch.zeros(2, 2, s)
    audio[0, 0] = torch.from_numpy(sines_and_noise(2.0, seed=4))
    audio[0, 1, :20000] = torch.from_numpy(sines_and_noise(20000 / SR, seed=5))
    audio[1, 0, :5000] = torch.from_numpy(sines_and_noise(5000 / SR, seed=6))
    tokens, mask = encoder(audio, torch.tensor([[s, 20000], [5000, 0]]))
    assert tokens.shape == (2, 20, 512) and mask.shape == (2, 20) and mask.dtype == torch.bool
    assert mask[0].tolist() == [True] * 10 + [True] * 3 + [False] * 7  # ceil(20000 / 8192) = 3
    assert mask[1].tolist() == [True] + [False] * 19  # ceil(5000 / 8192) = 1; padding window: none
    assert torch.all(tokens[~mask] == 0) and torch.isfinite(tokens).all()
    assert tokens[mask].abs().sum(-1).min() > 0

    alone, alone_mask = encoder(audio[1:, :1], torch.tensor([[5000]]))  # windows are encoded on their own
    assert encoder.window_local and torch.equal(alone_mask[0], mask[1, :10])
    torch.testing.assert_close(alone[0], tokens[1, :10], rtol=0, atol=1e-5)


def test_a_window_is_encoded_over_its_real_samples_only(random_checkpoint: Path) -> None:
    """A window runs through the network up to its last valid token: 20,000 samples give the same
    tokens in a 4-s window as in a window of exactly those 3 tokens (24,576 samples), whatever
    padding follows them (and so whatever batch they come in)."""
    from lacoat.models.encoders import AisfxAudioEncoder

    clip = torch.from_numpy(sines_and_noise(20000 / SR, seed=7))
    outs = []
    for seconds in (4.0, 3 * 8192 / SR):
        enc = AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=seconds)
        audio = torch.zeros(1, 1, enc.window_samples)
        audio[0, 0, :20000] = clip
        tokens, mask = enc(audio, torch.tensor([[20000]]))
        outs.append(tokens[mask])  # [3, 512]
    assert outs[0].shape == outs[1].shape == (3, 512)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)


def test_frozen_and_left_out_of_checkpoints(encoder, random_checkpoint: Path, tmp_path: Path) -> None:
    from lacoat.models.encoders import AisfxAudioEncoder

    assert encoder.frozen and not encoder.train().training and not encoder.net.conv_block1.bn1.training
    assert not any(p.requires_grad for p in encoder.parameters())
    audio = torch.randn(1, 1, encoder.window_samples, requires_grad=True)
    assert not encoder(audio, torch.tensor([[encoder.window_samples]]))[0].requires_grad
    assert encoder.source_fingerprint() == file_fingerprint(random_checkpoint)
    assert f"weights=checkpoint.pth#{file_fingerprint(random_checkpoint)}" in encoder.identity()

    prefix = "matcher.audio_encoder"
    own = {f"{prefix}.{k}": v for k, v in encoder.state_dict().items()}
    assert own and all(".net." in k for k in own)  # the fixed filterbank and window are not state
    checkpoint = {"state_dict": {**own, "matcher.head.weight": torch.ones(2)}}
    leave_out_rebuilt_encoders(checkpoint, {prefix: encoder})
    assert list(checkpoint["state_dict"]) == ["matcher.head.weight"]
    assert checkpoint[REBUILT] == {prefix: file_fingerprint(random_checkpoint)}

    rebuilt = AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=2.0)
    restore_rebuilt_encoders(checkpoint, {prefix: rebuilt})
    assert set(checkpoint["state_dict"]) == {*own, "matcher.head.weight"}
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in own.items())

    other = save_random_aisfx_checkpoint(tmp_path / "checkpoint.pth", seed=1)  # other weights
    with pytest.raises(ModelError, match="source now holds other weights"):
        restore_rebuilt_encoders(checkpoint, {prefix: AisfxAudioEncoder(checkpoint=str(other))})

    trainable = AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=2.0, frozen=False)
    assert trainable.train().training and all(p.requires_grad for p in trainable.parameters())
    kept = {"state_dict": {f"{prefix}.{k}": v for k, v in trainable.state_dict().items()}}
    leave_out_rebuilt_encoders(kept, {prefix: trainable})  # trained weights stay in the checkpoint
    assert kept[REBUILT] == {} and len(kept["state_dict"]) == len(own)


def test_selectable_from_a_config(random_checkpoint: Path) -> None:
    """LightningCLI's parser (jsonargparse) reads the encoder's type-hinted init args."""
    from argparse import ArgumentError

    from jsonargparse import ArgumentParser

    from lacoat.models.encoders import AisfxAudioEncoder, AudioEncoder

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--audio_encoder", type=AudioEncoder)
    given = {"checkpoint": str(random_checkpoint), "window_seconds": 1.0}
    config = parser.parse_object(
        {"audio_encoder": {"class_path": "lacoat.models.encoders.AisfxAudioEncoder", "init_args": given}}
    ).audio_encoder
    assert config.class_path == "lacoat.models.encoders.AisfxAudioEncoder"
    assert vars(config.init_args) == {**given, "sample_rate": 44100, "frozen": True}
    built = AisfxAudioEncoder(**vars(config.init_args))
    assert (built.window_samples, built.tokens_per_window) == (SR, 5)
    wrong = {"class_path": config.class_path, "init_args": {"window_seconds": "long"}}
    with pytest.raises(ArgumentError, match=r"window_seconds(.|\n)*Expected a <class 'float'>"):
        parser.parse_object({"audio_encoder": wrong})


# ---------------------------------------------------------------------------------------------------
# errors


def test_wrong_sample_rate_is_one_clear_line() -> None:
    from lacoat.models.encoders import AisfxAudioEncoder

    with pytest.raises(LacoatError, match="got sample_rate=48000; set sample_rate: 44100") as err:
        AisfxAudioEncoder(sample_rate=48000)
    assert "\n" not in str(err.value)


def test_missing_package_bad_windows_and_bad_files(monkeypatch, tmp_path: Path, random_checkpoint) -> None:
    import importlib.util

    from lacoat.models.encoders import AisfxAudioEncoder

    with pytest.raises(ModelError, match="whole number of samples"):
        AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=1.00001)
    with pytest.raises(ModelError, match="shorter than one token"):
        AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=0.1)
    with pytest.raises(ModelError, match="aiSFX checkpoint not found"):
        AisfxAudioEncoder(checkpoint=str(tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read aiSFX checkpoint"):
        AisfxAudioEncoder(checkpoint=str(corrupt))
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}}, other)
    with pytest.raises(ModelError, match="holds no 'embedding_net.conv_block"):
        AisfxAudioEncoder(checkpoint=str(other))

    state, ds_dict = torch.load(random_checkpoint, map_location="cpu", weights_only=False)
    del state["embedding_net.conv_block4.bn2.weight"]
    torch.save((state, ds_dict), other)
    with pytest.raises(ModelError, match="does not fit.*1 missing: conv_block4.bn2.weight"):
        AisfxAudioEncoder(checkpoint=str(other))

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aisfx" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps aisfx==0\.1\.2"):
        AisfxAudioEncoder()
    AisfxAudioEncoder(checkpoint=str(random_checkpoint), window_seconds=1.0)  # a named file needs no aisfx
