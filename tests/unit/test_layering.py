"""The package's layering holds: the import-linter contracts of pyproject.toml are kept.

The contracts say that root modules import no sub-package, that models and data import no training,
evaluation, command-line or retrieval code, that models import no negatives, that negatives import
neither models nor data, that nothing imports the command line, and that no sibling modules import
each other in a cycle.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500


def test_import_contracts_are_kept():
    # in a process of its own: import-linter configures logging, which would silence lacoat's loggers
    # (dictConfig disables existing loggers) for the tests that run after it
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "6 kept" in done.stdout, done.stdout


ROOT_MODULES = {
    "__init__.py", "__main__.py", "errors.py", "io.py", "lazy.py", "defaults.py", "contracts.py",
    "distributed.py", "checkpoints.py",
}  # fmt: skip


def test_the_package_root_holds_only_what_every_layer_imports():
    assert {p.name for p in (ROOT / "lacoat").glob("*.py")} == ROOT_MODULES


@pytest.mark.parametrize("path", sorted((ROOT / "lacoat").rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, path
