"""Shared fixtures. Tests run offline: no model hub, no W&B server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the repository (real metadata files), or ``$LACOAT_SHARED_DATA``."""
    path = Path(os.environ.get("LACOAT_SHARED_DATA", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data (real metadata files) is not present")
    return path


@pytest.fixture(scope="session")
def synthcaps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SynthCaps set (40/10/10 clips) generated once per test session."""
    from lacoat.data.synth import synthesize

    root = tmp_path_factory.mktemp("synthcaps")
    synthesize(str(root), seed=3, n_development=40, n_validation=10, n_evaluation=10)
    return root


@pytest.fixture
def float64():
    """Exact comparisons in double precision, restored afterwards for the other tests (modules opt in
    with ``pytestmark = pytest.mark.usefixtures("float64")``)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
