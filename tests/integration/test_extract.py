"""``lacoat extract`` and the feature cache: use, resume after a kill, invalidation, damage."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lacoat.cli.config import instantiate_sections
from lacoat.data.datamodule import RetrievalDataModule
from lacoat.errors import DataError
from lacoat.train.module import LacoatModule
from tests.conftest import REPO
from tests.helpers import save_tiny_text_model

TOKEN_KEYS = ("audio_tokens", "audio_mask", "text_tokens", "text_mask")


def write_config(
    tmp_path: Path, synthcaps: Path, cache: Path, text_model: Path, max_length: int = 24
) -> Path:
    """A tiny model with both encoders frozen (a LogMel encoder whose random weights follow the seed)."""
    config = {
        "seed_everything": 0,
        "model": {
            "matcher": {
                "class_path": "lacoat.models.matcher.AudioTextMatcher",
                "init_args": {
                    "audio_encoder": {
                        "class_path": "lacoat.models.encoders.LogMelAudioEncoder",
                        "init_args": {
                            "sample_rate": 16000,
                            "window_seconds": 4.0,
                            "dim": 32,
                            "layers": 1,
                            "heads": 2,
                            "pool_frames": 16,
                            "frozen": True,
                        },
                    },
                    "text_encoder": {
                        "class_path": "lacoat.models.encoders.HFTextEncoder",
                        "init_args": {
                            "model_name": str(text_model),
                            "max_length": max_length,
                            "frozen": True,
                        },
                    },
                    "d_model": 32,
                    "embed_dim": 16,
                },
            },
            "objective": {
                "class_path": "lacoat.train.objectives.PairObjective",
                "init_args": {"loss": {"class_path": "lacoat.train.losses.NTXentLoss"}},
            },
        },
        "data": {
            "source": {"class_path": "lacoat.data.Clotho", "init_args": {"root": str(synthcaps)}},
            "batch_size": 4,
            "num_workers": 0,
            "feature_cache": str(cache),
        },
    }
    path = tmp_path / f"cached_{max_length}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build(config: Path) -> tuple[LacoatModule, RetrievalDataModule]:
    """The config's model and data (seeded by the config, as `lacoat extract` builds them)."""
    built = instantiate_sections(str(config), {"model": LacoatModule, "data": RetrievalDataModule})
    return built["model"], built["data"]


def run_extract(config: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "lacoat", "extract", "--config", str(config), "--shard_size", "2", *extra]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        proc.output = out
    return proc


def cache_contents(cache: Path) -> dict[str, dict]:
    """Every shard of a cache folder, loaded, by relative path."""
    return {
        str(p.relative_to(cache)): torch.load(p, weights_only=True) for p in sorted(cache.rglob("shard-*.pt"))
    }


def assert_same_cache(a: Path, b: Path) -> None:
    left, right = cache_contents(a), cache_contents(b)
    assert left.keys() == right.keys() and left
    for name in left:
        for key in ("names", "skipped", "reasons"):
            assert left[name][key] == right[name][key], (name, key)
        for key in ("stats", "lengths", "tokens", "mask"):
            assert torch.equal(left[name][key], right[name][key]), (name, key)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return save_tiny_text_model(tmp_path_factory.mktemp("text") / "tiny-roberta")


def first_batch(data: RetrievalDataModule, stage: str = "fit") -> dict:
    data.setup(stage)
    loader = data.train_dataloader() if stage == "fit" else data.test_dataloader()[1]
    return next(iter(loader))


def test_cached_batches_match_online_encoding(tmp_path, synthcaps, text_model):
    config = write_config(tmp_path, synthcaps, tmp_path / "cache", text_model)
    model, data = build(config)
    from lacoat.train.extract import extract

    extract(data, model.matcher.audio_encoder, model.matcher.text_encoder, ["train", "test"], shard_size=8)
    online = first_batch(data)
    assert not any(k in online for k in TOKEN_KEYS)  # nothing attached yet
    data.use_cached_features(model.matcher.audio_encoder, model.matcher.text_encoder)
    cached = first_batch(data)
    assert all(k in cached for k in TOKEN_KEYS)
    assert cached["captions"] == online["captions"]  # same order, same items
    with torch.no_grad():
        a_tok, a_mask = model.matcher.audio_encoder(online["audio"], online["audio_valid"])
        t_tok, t_mask = model.matcher.text_encoder(online["captions"])
    assert torch.equal(cached["audio_mask"], a_mask)
    torch.testing.assert_close(cached["audio_tokens"], a_tok, atol=2e-3, rtol=2e-3)  # fp16 storage
    length = cached["text_mask"].shape[1]
    assert torch.equal(cached["text_mask"], t_mask[:, :length]) and not t_mask[:, length:].any()
    torch.testing.assert_close(
        cached["text_tokens"], t_tok[:, :length] * t_mask[:, :length, None], atol=2e-3, rtol=2e-3
    )
    # evaluation queries come with their tokens too
    queries = first_batch(data, "test")
    assert "text_tokens" in queries and "query_index" in queries


def test_killed_extract_resumes_to_the_same_cache(tmp_path, synthcaps, text_model):
    (tmp_path / "ref").mkdir()
    run_extract(write_config(tmp_path / "ref", synthcaps, tmp_path / "ref_cache", text_model))

    config = write_config(tmp_path, synthcaps, tmp_path / "cache", text_model)
    proc = run_extract(config, wait=False)
    shards = tmp_path / "cache"
    deadline = time.monotonic() + 120
    while len(list(shards.rglob("shard-*.pt"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "extract finished before it could be killed; use more items"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the killed cache is incomplete and says so
    model, data = build(config)
    data.use_cached_features(model.matcher.audio_encoder, model.matcher.text_encoder)
    with pytest.raises(DataError, match="incomplete"):
        first_batch(data)

    resumed = run_extract(config)
    assert "already cached" in resumed.output
    reused = [
        int(line.split(" encoded, ")[1].split(" already")[0])
        for line in resumed.output.splitlines()
        if " already cached" in line
    ]
    assert sum(reused) >= 4, resumed.output  # the shards finished before the kill were not redone
    assert_same_cache(shards, tmp_path / "ref_cache")


def test_changed_encoder_setting_does_not_use_the_cache(tmp_path, synthcaps, text_model, caplog):
    cache = tmp_path / "cache"
    model, data = build(write_config(tmp_path, synthcaps, cache, text_model, max_length=24))
    from lacoat.train.extract import extract

    extract(data, None, model.matcher.text_encoder, ["train"], shard_size=64)
    model, data = build(write_config(tmp_path, synthcaps, cache, text_model, max_length=12))
    with caplog.at_level(logging.WARNING):
        data.use_cached_features(None, model.matcher.text_encoder)
    assert "no cached text features" in caplog.text and "max_length=24" in caplog.text
    batch = first_batch(data)
    assert "text_tokens" not in batch  # encoded online, not read from the other setting's cache


def test_changed_audio_file_makes_the_cache_stale(tmp_path, synthcaps, text_model):
    import shutil

    data_root = tmp_path / "data"
    shutil.copytree(synthcaps, data_root)
    config = write_config(tmp_path, data_root, tmp_path / "cache", text_model)
    model, data = build(config)
    from lacoat.train.extract import extract

    extract(data, model.matcher.audio_encoder, None, ["test"], shard_size=4)
    clip = sorted((data_root / "evaluation").iterdir())[0]
    clip.write_bytes(clip.read_bytes() + b"\0" * 64)  # bigger file: another recording
    model, data = build(config)
    data.use_cached_features(model.matcher.audio_encoder, None)
    with pytest.raises(DataError, match="changed after their features were cached"):
        first_batch(data, "test")


def test_truncated_cache_file_is_a_clear_error(tmp_path, synthcaps, text_model):
    config = write_config(tmp_path, synthcaps, tmp_path / "cache", text_model)
    model, data = build(config)
    from lacoat.train.extract import extract

    extract(data, None, model.matcher.text_encoder, ["test"], shard_size=8)
    shard = sorted((tmp_path / "cache").rglob("shard-00001.pt"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    model, data = build(config)
    data.use_cached_features(None, model.matcher.text_encoder)
    with pytest.raises(DataError, match=r"shard-00001\.pt' is damaged.*lacoat extract"):
        first_batch(data, "test")
    # extract notices the damage and re-encodes that shard only
    report = extract(data, None, model.matcher.text_encoder, ["test"], shard_size=8)[0]
    assert report.encoded == min(8, report.items - 8) and report.reused == report.items - report.encoded
    first_batch(data, "test")


def test_fit_and_test_read_the_cache(tmp_path, synthcaps, text_model, caplog):
    from lacoat.cli import main
    from lacoat.train.extract import extract

    config = write_config(tmp_path, synthcaps, tmp_path / "cache", text_model)
    model, data = build(config)
    extract(data, model.matcher.audio_encoder, model.matcher.text_encoder, ["train", "val", "test"])
    args = [
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        "3",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]
    with caplog.at_level(logging.INFO, logger="lacoat"):
        main(["fit", *args])
        main(["test", *args, "--ckpt_path", "none"])
    assert caplog.text.count("using cached audio features") >= 2
    assert caplog.text.count("using cached text features") >= 2
    assert list((tmp_path / "run").rglob("test_metrics_rerank.json"))


def test_unreadable_clip_is_listed_not_cached(tmp_path, synthcaps, text_model):
    import shutil

    data_root = tmp_path / "data"
    shutil.copytree(synthcaps, data_root)
    config = write_config(tmp_path, data_root, tmp_path / "cache", text_model)
    model, data = build(config)
    data.check_audio = False  # let the broken file reach extraction (a decode error, not a header one)
    from lacoat.train.extract import extract

    bad = sorted((data_root / "evaluation").iterdir())[1]
    bad.write_bytes(b"RIFF" + b"\0" * 40)
    with pytest.raises(DataError, match=f"{bad.name}.*data.on_bad_audio: skip"):  # default: error
        extract(data, model.matcher.audio_encoder, None, ["test"], shard_size=4)
    data.on_bad_audio = "skip"
    report = extract(data, model.matcher.audio_encoder, None, ["test"], shard_size=4)[0]
    assert list(report.skipped) == [bad.name] and report.encoded == report.items - 1
