"""A run's files: all under ``trainer.default_root_dir``, said at the end; a console without repeats."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from lacoat.cli import main
from tests.conftest import REPO
from tests.integration.test_train import write_config


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_default_root_dir_holds_the_whole_run_and_the_console_is_quiet(
    tmp_path, synthcaps, capsys, monkeypatch
):
    config = write_config(tmp_path, synthcaps)  # its CSV logger's save_dir is tmp_path/runs
    cwd, run = tmp_path / "cwd", tmp_path / "elsewhere"
    cwd.mkdir()
    before = files_under(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lacoat",
            "fit",
            "--config",
            str(config),
            "--trainer.default_root_dir",
            str(run),
            "--resume.every_n_steps",  # last.ckpt thrice: nothing said about it thrice
            "2",
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    written = files_under(tmp_path) - before
    assert written and all(run in path.parents for path in written), sorted(map(str, written))
    assert not (tmp_path / "runs").exists() and not list(cwd.iterdir())
    checkpoints, logs = run / "checkpoints" / "version_0", run / "logs" / "version_0"
    assert (checkpoints / "last.ckpt").is_file() and (logs / "metrics.csv").is_file()

    console = out.stdout + out.stderr
    best = next(checkpoints.glob("best-*.ckpt"))
    block = re.search(
        r"run folder +(\S+)\nbest checkpoint +(\S+) .*\nlast checkpoint +(\S+)\nlogs \(CSV\) +(\S+)\n",
        console,
    )
    assert block, console[-2000:]
    assert block.groups() == (str(run), str(best), str(checkpoints / "last.ckpt"), str(logs))

    # the same message through two handlers differs only in its "INFO[ logger.name]: " prefix
    messages = [
        re.sub(r"^(DEBUG|INFO|WARNING|ERROR)( [\w.]+)?: ", "", line.strip())
        for line in console.splitlines()
        if re.search(r"[A-Za-z]", line)
    ]
    assert [line for line, n in Counter(messages).items() if n > 1] == []
    assert not re.search(r"\w*Warning\b|warn|^WARNING", console, re.MULTILINE), console[-3000:]
    assert "litlogger" not in console

    monkeypatch.chdir(cwd)
    main(["test", "--config", str(config), "--trainer.default_root_dir", str(run)])
    assert all(run in path.parents for path in files_under(tmp_path) - before) and not list(cwd.iterdir())
    metrics, twins = checkpoints / "test_metrics_rerank.json", checkpoints / "test_twins_rerank.csv"
    assert metrics.is_file() and twins.is_file()  # SynthCaps: the twin comparisons beside the metrics
    expected = (
        f"\ncheckpoint        {best}\nmetrics           {metrics}\ntwin comparisons  {twins}\n"
        f"logs (CSV)        {run / 'logs' / 'version_1'}\n"
    )
    assert capsys.readouterr().out.endswith(expected)
