"""Resuming killed runs: frequent ``last.ckpt``, SIGTERM handling, random states, the W&B run id.

``lacoat fit … --ckpt_path last`` continues the latest run under ``default_root_dir``: the same
checkpoint folder, the same logger version (CSV/TensorBoard) or W&B run (its id is kept beside the
checkpoints), and — with the DataModule's stateful loaders and the random states saved here — the same
batches and dropout masks as a run that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"


def rng_states() -> dict[str, Any]:
    """The random states training consumes (Python, NumPy, torch CPU and CUDA), as tensors and plain
    Python values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoint(L.Callback):
    """Keeps ``last.ckpt`` fresh enough to lose little when a run is killed.

    Writes ``last.ckpt`` into the checkpoint folder every ``every_n_steps`` training steps and at once
    when the process receives SIGTERM (the current step is finished and saved, then the run stops with
    status 0; under DDP a signal to any rank stops every rank after the same step) or Ctrl-C (SIGINT:
    the current step is finished and saved, then the run stops with status 1; a second Ctrl-C stops
    at once, unsaved — a checkpoint taken inside a step would not resume exactly); stores the random
    states in every checkpoint and restores them on resume; leaves them as they were after every
    validation, so that training draws the same random numbers whether or not a validation ran (a
    checkpoint written just before one resumes exactly); records the W&B run id beside the
    checkpoints so that a resumed run appends to the same W&B run.

    Args:
        every_n_steps: training steps between two ``last.ckpt`` writes (0: only on SIGTERM).
    """

    def __init__(self, every_n_steps: int = 200) -> None:
        self.every_n_steps = every_n_steps
        self._before_validation: dict[str, Any] | None = None
        self._interrupted = self._terminated = False
        self._pid: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    @staticmethod
    def _folder(trainer: L.Trainer) -> Path | None:
        callback = trainer.checkpoint_callback
        return Path(callback.dirpath) if callback is not None and callback.dirpath else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self._folder(trainer)
        if folder is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                folder.mkdir(parents=True, exist_ok=True)
                (folder / WANDB_ID_FILE).write_text(logger.experiment.id)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Handle SIGINT and SIGTERM from here on (after Lightning registered its own handlers)."""
        if self._folder(trainer) is None or threading.current_thread() is not threading.main_thread():
            return
        self._interrupted = self._terminated = False
        self._pid = os.getpid()
        for signum, handler in ((signal.SIGINT, self._on_sigint), (signal.SIGTERM, self._on_sigterm)):
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: finish the training step, then save and stop; a second one stops at once."""
        if os.getpid() != self._pid:  # a DataLoader worker, forked with this handler: the trainer decides
            return
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True
        os.write(
            2,
            b"\nCtrl-C: saving last.ckpt after this training step, then stopping (Ctrl-C again: stop now)\n",
        )

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM (a scheduler's pre-emption, to one rank or all): finish the step, then save and stop.
        Replaces Lightning's handler, which runs a collective inside the handler of the signalled rank
        only and so leaves the ranks waiting in mismatched collectives."""
        self._terminated = True

    def _restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_signals()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signals()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        folder = self._folder(trainer)
        if folder is None:
            return
        step = trainer.global_step
        # A signal reaches one rank or all: every rank learns of any (saving is collective, and a rank
        # that stopped alone would leave the others waiting in the next step's collectives).
        flags = torch.tensor(
            [float(self._terminated or trainer.received_sigterm), float(self._interrupted)],
            device=pl_module.device,
        )
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="max")
        sigterm, interrupted = bool(flags[0]), bool(flags[1])
        if sigterm or interrupted or (self.every_n_steps and step % self.every_n_steps == 0):
            trainer.save_checkpoint(
                folder / "last.ckpt", weights_only=False
            )  # all state, said (no INFO line)
            if (sigterm or interrupted) and trainer.is_global_zero:
                signal_name = "Ctrl-C" if interrupted else "SIGTERM"
                log.warning(
                    "%s: saved %s at step %d; resume with --ckpt_path last",
                    signal_name,
                    folder / "last.ckpt",
                    step,
                )
            if interrupted:
                raise KeyboardInterrupt  # Lightning stops and exits with status 1
            if sigterm:
                raise SIGTERMException  # every rank stops here, after the same step (exit status 0)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before_validation = rng_states()  # its loaders draw worker seeds from the global generator

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._before_validation is not None:
            set_rng_states(self._before_validation)
            self._before_validation = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])
