"""``LacoatCLI``: Lightning's fit / validate / test / predict with lacoat's conventions.

Kept apart from ``lacoat.cli`` so that ``lacoat --help`` does not import Lightning.

Conventions added to LightningCLI:
* checkpoints monitor ``val/t2a_mAP@10`` (max) and go to ``<default_root_dir>/checkpoints/<run>/``
  (``best-….ckpt`` and ``last.ckpt``), where ``<run>`` is the logger's version;
* ``test`` / ``validate`` / ``predict`` without ``--ckpt_path`` take the best checkpoint of the latest
  run under the config's ``default_root_dir`` and say which; ``--ckpt_path none`` uses the weights as
  built (e.g. pretrained encoders, untrained head);
* ``test`` writes every metric to ``test_metrics_<eval_mode>.json`` beside the checkpoint and prints
  a table;
  ``predict`` writes ``predictions.csv`` (query, rank, file_name, score) there;
* precision defaults to ``bf16-mixed`` on GPU and ``32-true`` on CPU;
* a ``WandbLogger`` runs offline unless W&B credentials are present (no prompt, no network needed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lacoat.data.datamodule import RetrievalDataModule
from lacoat.errors import LacoatError
from lacoat.module import LacoatModule

MONITOR = "val/t2a_mAP@10"


def wandb_credentials_present() -> bool:
    """Whether W&B could log online without prompting (API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def latest_best_checkpoint(root: str | Path) -> Path | None:
    """The best checkpoint of the most recent run under ``root/checkpoints/`` (None if there is none)."""
    runs = sorted(
        (root_path for root_path in Path(root, "checkpoints").glob("*") if root_path.is_dir()),
        key=os.path.getmtime,
    )
    for run in reversed(runs):
        best = sorted(run.glob("best-*.ckpt"), key=os.path.getmtime)
        if best:
            return best[-1]
    return None


def format_table(metrics: dict[str, float]) -> str:
    """Metrics as an aligned two-column table."""
    width = max(map(len, metrics))
    return "\n".join(f"  {name:<{width}}  {value:.4f}" for name, value in metrics.items())


class LacoatCLI(LightningCLI):
    """LightningCLI for ``LacoatModule`` and ``RetrievalDataModule`` (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.get("precision") is None:
            config.trainer.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
        loggers = config.trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        uses_wandb = any(getattr(lg, "class_path", "").endswith("WandbLogger") for lg in loggers if lg)
        if uses_wandb and not wandb_credentials_present():
            os.environ.setdefault("WANDB_MODE", "offline")

    # ---- fit ----------------------------------------------------------------------------------
    def before_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            logger = self.trainer.logger
            version = getattr(logger, "version", None) if logger is not None else None
            run = (
                f"version_{version}"
                if isinstance(version, int)
                else (version or time.strftime("%Y%m%d-%H%M%S"))
            )
            callback.dirpath = str(Path(self.trainer.default_root_dir) / "checkpoints" / str(run))

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            print(
                f"best checkpoint ({MONITOR} = {float(callback.best_model_score):.4f}): {callback.best_model_path}"
            )

    # ---- evaluation ---------------------------------------------------------------------------
    def _resolve_checkpoint(self) -> None:
        config = self.config_init[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt in ("none", "None"):
            config["ckpt_path"] = None
            print("no checkpoint: evaluating the model as built")
            return
        if ckpt is None:
            found = latest_best_checkpoint(self.trainer.default_root_dir)
            if found is None:
                raise LacoatError(
                    f"no checkpoint found under '{self.trainer.default_root_dir}/checkpoints/'. Train first "
                    "(`lacoat fit --config …`), pass --ckpt_path FILE, or --ckpt_path none to use the model as built."
                )
            config["ckpt_path"] = str(found)
            print(f"using the best checkpoint of the latest run: {found}")
        if config["ckpt_path"] and Path(config["ckpt_path"]).is_file() and self.trainer.checkpoint_callback:
            self.trainer.checkpoint_callback.dirpath = str(Path(config["ckpt_path"]).parent)
        elif ckpt not in ("best", "last") and not Path(ckpt).is_file():
            raise LacoatError(
                f"checkpoint not found: '{ckpt}'. Pass the path of a .ckpt file written by `lacoat fit`."
            )

    def _output_dir(self) -> Path:
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        out = Path(ckpt).parent if ckpt and Path(ckpt).is_file() else Path(self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out

    before_validate = before_test = before_predict = _resolve_checkpoint

    def after_test(self) -> None:
        results = self.model.test_results
        if not results or not self.trainer.is_global_zero:
            return
        mode = self.model.eval_mode
        path = self._output_dir() / f"test_metrics_{mode}.json"
        payload = {
            "checkpoint": self.config_init["test"].get("ckpt_path"),
            "eval_mode": mode,
            "rerank_k": self.model.rerank_k if mode == "rerank" else None,
            "metrics": results,
        }
        path.write_text(json.dumps(payload, indent=2))
        print(f"\ntest metrics ({path}):\n{format_table(results)}")

    def after_predict(self) -> None:
        if self.model.rankings is None or not self.trainer.is_global_zero:
            return
        path = self._output_dir() / "predictions.csv"
        self.model.rankings.to_csv(path, index=False)
        print(f"rankings of {self.model.rankings['query'].nunique()} queries written to {path}")


def run(argv: list[str]) -> None:
    """Run ``lacoat fit|validate|test|predict ARGS``."""
    LacoatCLI(
        LacoatModule,
        RetrievalDataModule,
        args=argv,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"default_env": False},
    )
