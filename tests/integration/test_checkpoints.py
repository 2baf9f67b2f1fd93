"""Lean checkpoints: frozen encoders built from a file are left out and rebuilt from it at load."""

from pathlib import Path

import pytest
import torch

from lacoat.checkpoints import REBUILT
from lacoat.cli import main
from tests.helpers import minilm_dir, save_tiny_text_model
from tests.integration.test_train import write_config


def lean_config(tmp_path: Path, synthcaps: Path) -> tuple[Path, Path]:
    """The tiny training config with its frozen text encoder read from a folder of our own."""
    text_model = save_tiny_text_model(tmp_path / "text_model")
    config = write_config(tmp_path, synthcaps)
    config.write_text(config.read_text().replace(str(minilm_dir()), str(text_model)))
    return config, text_model


def test_checkpoints_leave_out_frozen_encoders_and_load_from_their_source(tmp_path, synthcaps, capsys):
    config, text_model = lean_config(tmp_path, synthcaps)
    main(["fit", "--config", str(config)])
    (best,) = (tmp_path / "runs" / "checkpoints").glob("*/best-*.ckpt")
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert not [k for k in saved["state_dict"] if k.startswith("matcher.text_encoder.")]
    assert [k for k in saved["state_dict"] if k.startswith("matcher.audio_encoder.")], "trained: kept"
    assert set(saved[REBUILT]) == {"matcher.text_encoder"}

    main(["test", "--config", str(config), "--ckpt_path", str(best)])
    assert "test/t2a_mAP@10" in capsys.readouterr().out

    save_tiny_text_model(text_model, seed=1)  # other weights at the same place
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(config), "--ckpt_path", str(best)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "source now holds other weights" in err[-1] and str(text_model) in err[-1]
