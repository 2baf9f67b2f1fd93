"""The notebooks in ``notebooks/``: committed without outputs, and each one runs top to bottom.

Execution uses the notebooks' fast mode (``LACOAT_NOTEBOOK_FAST=1``: 40/10/10 SynthCaps clips, a few
training steps), offline, in a throw-away work folder, with the kernel started in the repository root.
Without a Clotho folder the real-data notebook builds its SynthCaps stand-in; the test points it at
folders that do not exist, so a data set on the developer's machine is never used.

The two execution tests are ``slow``: together about 3 min on a 2-core CPU shared with other jobs.
Run them with ``pytest -m slow tests/integration/test_notebooks.py`` (``make test-all`` includes them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def test_both_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"01_quickstart.ipynb", "02_real_data.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_stripped(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i in code if nb["cells"][i]["outputs"] or nb["cells"][i]["execution_count"] is not None]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before committing "
        "(Jupyter: Edit > Clear Outputs of All Cells, then save)"
    )


def run_notebook(path: Path, work: Path, monkeypatch: pytest.MonkeyPatch):
    """Execute ``path`` in fast mode with a fresh kernel; returns the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for name, value in {
        "LACOAT_NOTEBOOK_FAST": "1",
        "LACOAT_NOTEBOOK_WORKDIR": str(work),
        "LACOAT_CLOTHO_ROOT": str(work / "no_clotho"),
        "LACOAT_AUDIOCAPS_ROOT": str(work / "no_audiocaps"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "MPLBACKEND": "Agg",
    }.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell and its traceback, when a cell fails
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out["output_type"] == "error"]
    assert not errors, errors
    return nb


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
    nb = run_notebook(REPO / "notebooks" / "01_quickstart.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "quickstart"
    assert (work / "library.idx" / "index.sqlite").is_file()  # an index is a folder
    assert len(list((work / "runs" / "checkpoints").glob("*/test_metrics_rerank.json"))) == 1
    image = next(out for out in nb.cells[-2].outputs if "image/png" in out.get("data", {}))
    assert image["data"]["image/png"]  # the attention map is displayed
    assert (work / "attention_map.png").stat().st_size > 1000


@pytest.mark.slow
def test_real_data_runs_on_its_stand_in(tmp_path, monkeypatch):
    nb = run_notebook(REPO / "notebooks" / "02_real_data.ipynb", tmp_path, monkeypatch)
    work = tmp_path / "real_data"
    assert (work / "standin_clotho" / "clotho_captions_evaluation.csv").is_file()
    assert list((work / "features").rglob("manifest.json"))
    (iterating,) = (work / "runs" / "iterating" / "checkpoints").glob("*/best-*.ckpt")
    assert {p.name for p in iterating.parent.glob("test_metrics_*.json")} == {
        "test_metrics_rerank.json",
        "test_metrics_exhaustive.json",
    }
    table = nb.cells[-2].outputs[-1]["data"]["text/plain"]  # the comparison table
    assert "iterating, exhaustive" in table and "bi-encoder" in table
