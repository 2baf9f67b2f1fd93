"""A killed ``lacoat fit`` resumed with ``--ckpt_path last`` ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lacoat.cli import main
from tests.conftest import REPO
from tests.integration.test_train import write_config

STEPS = ["--trainer.max_steps", "16", "--trainer.val_check_interval", "8", "--resume.every_n_steps", "2"]
# last.ckpt only at step 8, written just before the validation of step 8, which the resumed run skips
BEFORE_VALIDATION = ("--resume.every_n_steps", "8")
# 40 steps: the resumed run crosses into the second epoch (33 batches of 6 of 200 captions), where a
# shuffle drawn from a generator shared with the loader met another order without loader workers
ACROSS_AN_EPOCH = ("--trainer.max_steps", "40")
# stopped by epochs (66 steps), as every config is: the schedule's length must not make Lightning build
# the training loader before the resumed run's loader position is restored (it would never be loaded)
BY_EPOCHS = ("--trainer.max_steps", "-1", "--trainer.max_epochs", "2")


def fit_command(config: Path, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lacoat",
        "fit",
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(root),
        *STEPS,
        *extra,
    ]


def saved_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def kill_midway(
    config: Path, root: Path, sig: signal.Signals, after_step: int, *extra: str
) -> tuple[int, int]:
    """Start a fit, send ``sig`` once a last.ckpt of at least ``after_step`` exists.

    Returns:
        The step of the last.ckpt left behind and the process's exit status.
    """
    proc = subprocess.Popen(
        fit_command(config, root, *extra),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(root.glob("checkpoints/*/last.ckpt"))
        try:
            if found and saved_step(found[0]) >= after_step:
                break
        except Exception:  # being replaced right now: look again
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return saved_step(next(root.glob("checkpoints/*/last.ckpt"))), proc.returncode


def final_state(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(next(root.glob("checkpoints/*/last.ckpt")), map_location="cpu", weights_only=False)


def assert_same_end(a: Path, b: Path, steps: int = 16) -> None:
    left, right = final_state(a), final_state(b)
    assert left["global_step"] == right["global_step"] == steps
    for name, tensor in left["state_dict"].items():
        torch.testing.assert_close(right["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    ma, mb = (
        json.loads(next(r.glob("checkpoints/*/test_metrics_rerank.json")).read_text())["metrics"]
        for r in (a, b)
    )
    assert ma.keys() == mb.keys()
    for name in ma:
        assert mb[name] == pytest.approx(ma[name], abs=1e-6), name


def evaluate_last(config: Path, root: Path) -> None:
    last = next(root.glob("checkpoints/*/last.ckpt"))
    main(["test", "--config", str(config), "--trainer.default_root_dir", str(root), "--ckpt_path", str(last)])


HARD_BATCHES = ("--data.hard_share", "0.5", "--data.hard_neighbours", "3")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "extra"),
    [
        (signal.SIGKILL, ()),
        (signal.SIGTERM, ()),
        (signal.SIGKILL, HARD_BATCHES),
        (signal.SIGKILL, BEFORE_VALIDATION),
        (signal.SIGKILL, ACROSS_AN_EPOCH),
        (signal.SIGKILL, (*ACROSS_AN_EPOCH, "--data.num_workers", "2")),
        (signal.SIGKILL, BY_EPOCHS),
    ],
    ids=[
        "sigkill",
        "sigterm",
        "sigkill-hard-negative-batches",
        "sigkill-checkpoint-before-validation",
        "sigkill-across-an-epoch",
        "sigkill-across-an-epoch-2-workers",
        "sigkill-stopped-by-epochs",
    ],
)
def test_killed_fit_resumes_to_the_same_end(tmp_path, synthcaps, sig, extra):
    config = write_config(tmp_path, synthcaps)
    subprocess.run(fit_command(config, tmp_path / "whole", *extra), cwd=REPO, check=True, capture_output=True)

    cut = tmp_path / "cut"
    after_step = 8 if extra == BEFORE_VALIDATION else 5
    steps = 66 if extra == BY_EPOCHS else 40 if ACROSS_AN_EPOCH[1] in extra else 16
    step, status = kill_midway(config, cut, sig, after_step, *extra)
    assert after_step <= step < 33
    if sig == signal.SIGTERM:  # handled: Lightning stops after the current step, last.ckpt is saved for it
        assert status == 0, status
    main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.default_root_dir",
            str(cut),
            *STEPS,
            *extra,
            "--ckpt_path",
            "last",
        ]
    )
    assert len(list(cut.glob("checkpoints/*"))) == 1, "the resumed run must continue in the same folder"
    assert not list(cut.glob("checkpoints/*/last-v*.ckpt")), "one last.ckpt, not versioned copies"

    for root in (tmp_path / "whole", cut):
        evaluate_last(config, root)
    assert_same_end(tmp_path / "whole", cut, steps)


def test_resume_without_a_checkpoint_is_an_error(tmp_path, synthcaps, capsys):
    config = write_config(tmp_path, synthcaps)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    assert "no last.ckpt under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--ckpt_path", str(tmp_path / "missing.ckpt")])
    assert "checkpoint to resume from not found" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "checkpoints").exists(), "nothing may start training"


def test_ctrl_c_saves_the_step_and_resumes(tmp_path, synthcaps):
    config = write_config(tmp_path, synthcaps)
    root = tmp_path / "cut"
    # last.ckpt only on a signal; the validation at step 8 writes best-….ckpt (and, save_last, last.ckpt)
    extra = ("--resume.every_n_steps", "0", "--trainer.max_steps", "40")
    proc = subprocess.Popen(
        fit_command(config, root, *extra),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and not list(root.glob("checkpoints/*/best-*.ckpt"))
    ):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before Ctrl-C: " + proc.stdout.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    tail = out[-3000:]
    assert proc.returncode != 0 and "Traceback" not in out, tail
    assert out.count("graceful shutdown") <= 1
    assert re.search(r"Ctrl-C: saved \S+last\.ckpt at step \d+; resume with --ckpt_path last", out), tail
    step = saved_step(next(root.glob("checkpoints/*/last.ckpt")))
    assert 8 < step < 40, "last.ckpt must hold the step Ctrl-C ended, not the validation's save at step 8"

    main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.default_root_dir",
            str(root),
            *STEPS,
            *extra,
            "--ckpt_path",
            "last",
        ]
    )
    assert len(list(root.glob("checkpoints/*"))) == 1
    assert saved_step(next(root.glob("checkpoints/*/last.ckpt"))) == 40
    # the CSV logs of both parts in one metrics.csv (Lightning's CSVLogger deletes the file on resume):
    # each training step once, in order, from the first (the stopped step's row is not logged)
    logs = root / "logs" / "version_0"
    with (logs / "metrics.csv").open() as f:
        train_steps = [int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert train_steps == sorted(set(train_steps)) and set(range(step - 1)) <= set(train_steps)
    assert train_steps[-1] >= 38 and not list(logs.glob("metrics-part*.csv"))
