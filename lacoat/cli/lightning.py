"""``LacoatCLI``: Lightning's fit / validate / test / predict with lacoat's conventions.

Kept apart from ``lacoat.cli`` so that ``lacoat --help`` does not import Lightning.

Conventions added to LightningCLI:
* one folder per run configuration, ``trainer.default_root_dir``: checkpoints monitor ``val/t2a_mAP@10``
  (max) and go to ``<default_root_dir>/checkpoints/<run>/`` (``best-….ckpt`` and ``last.ckpt``), where
  ``<run>`` is the logger's version; logs (CSV under ``logs/`` unless the config names other loggers) go
  to ``<default_root_dir>``, whatever ``save_dir`` a config gives, so ``--trainer.default_root_dir DIR``
  moves the whole run; ``fit`` and ``test`` end by printing where the checkpoint, metrics and logs are;
* ``test`` / ``validate`` / ``predict`` without ``--ckpt_path`` take the best checkpoint of the latest
  run under the config's ``default_root_dir`` and say which; ``--ckpt_path none`` uses the weights as
  built (e.g. pretrained encoders, untrained head);
* ``test`` writes every metric to ``test_metrics_<eval_mode>.json`` beside the checkpoint and prints
  a table; where the data has SynthCaps twins, each twin comparison with its scores goes to
  ``test_twins_<eval_mode>.csv`` there too;
  ``predict`` writes ``predictions.csv`` (query, rank, file_name, score) there;
* ``fit --ckpt_path last`` resumes the latest run (same checkpoint folder, logger version and W&B run;
  ``ResumeCheckpoint`` under ``resume:`` writes ``last.ckpt`` every ``every_n_steps`` steps, on
  SIGTERM and on Ctrl-C); asking for a checkpoint that does not exist is an error, never a fresh start;
* checkpoints are written atomically (``lacoat.io.AtomicCheckpointIO`` is the default plugin);
* settings of evaluation (``eval_mode``, ``rerank_k``, …) given to ``test`` win over the checkpoint's;
* precision defaults to ``bf16-mixed`` on GPU and ``32-true`` on CPU;
* a ``WandbLogger`` runs offline unless W&B credentials are present (no prompt, no network needed).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from lacoat.checkpoints import latest_best_checkpoint, latest_run_with_last
from lacoat.cli.config import link_audio_format
from lacoat.data.datamodule import RetrievalDataModule
from lacoat.errors import LacoatError
from lacoat.io import atomic_write
from lacoat.train.module import LacoatModule
from lacoat.train.resume import WANDB_ID_FILE, ResumeCheckpoint

MONITOR = "val/t2a_mAP@10"
# CSV in <default_root_dir>/logs (every logger's save_dir becomes default_root_dir; the folder name is set in
# before_instantiate_classes: a default init_arg here would pass to a WandbLogger chosen instead and name its run)
DEFAULT_LOGS = {"save_dir": "."}
EVAL_SETTINGS = (
    "eval_mode",
    "rerank_k",
    "fusion_alpha",
    "eval_text_block",
    "predict_top_k",
)  # per command, not per checkpoint
log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """Whether W&B could log online without prompting (API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def name_wandb_run(init_args, config_stems: list[str]) -> None:
    """Name and group a W&B run after its config files, and keep ``log_model`` only where W&B can upload.

    A run without ``name`` is named ``<stems>-<YYYYmmdd-HHMMSS>``, one without ``group`` is grouped by
    ``<stems>`` (e.g. ``clotho_iter``, or ``demo+single`` for two configs). Checkpoints become W&B
    artifacts only when the user sets ``log_model`` and the run is online: offline, W&B refuses them,
    so ``log_model`` is turned off with a warning.
    """
    stems = "+".join(config_stems) or "lacoat"
    # "lightning_logs" is CSVLogger's default name, which jsonargparse carries over when a config replaces
    # the default CSV logger by a WandbLogger: not a run name anyone chose
    if init_args.get("name") in (None, "lightning_logs"):
        init_args["name"] = f"{stems}-{time.strftime('%Y%m%d-%H%M%S')}"
    if init_args.get("group") is None:
        init_args["group"] = stems
    offline = init_args.get("offline") or "offline" in (init_args.get("mode"), os.environ.get("WANDB_MODE"))
    if init_args.get("log_model") and offline:
        log.warning("W&B runs offline and cannot store checkpoints as artifacts there: log_model turned off")
        init_args["log_model"] = False


def _own_root_dir(config_file) -> str | None:
    """The ``trainer.default_root_dir`` that one config file itself states (None where it states none)."""
    try:
        read = getattr(config_file, "get_content", None)  # a jsonargparse Path (a file or a URL)
        text = read() if read else Path(config_file).read_text()
        trainer = (yaml.safe_load(text) or {}).get("trainer")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    return None if root is None else str(root)


def run_folder(root: str | None, config_files: list) -> str | None:
    """The run folder (``trainer.default_root_dir``) of a stack of config files: the base (first) file's
    own ``default_root_dir`` (``runs/<its stem>`` where it states none), then ``+<stem>`` for each later
    file, e.g. ``runs/demo`` for ``configs/demo.yaml`` alone and ``runs/demo+long+order_negatives`` for
    ``demo.yaml``, ``demo/budget/long.yaml``, ``demo/negatives/order_negatives.yaml``, so that two stacks
    never share a folder and ``lacoat test`` with the stack of ``lacoat fit`` finds its checkpoints.

    ``root`` (the parsed value) is kept where anything after the base set it: a later file or
    ``--trainer.default_root_dir`` on the command line (unless that gives the base's own value, which
    cannot be told apart from the base's); so is a config file alone's (or Lightning's default).
    """
    if len(config_files) < 2:
        return root
    base = _own_root_dir(config_files[0])
    if (None if root is None else str(root)) != base:
        return root
    stems = [Path(str(f)).stem for f in config_files]
    return (base or f"runs/{stems[0]}") + "".join(f"+{stem}" for stem in stems[1:])


def stash_csv_metrics(log_dir: Path) -> None:
    """Keep the CSV metrics of a run that is resumed in its log folder: Lightning's ``CSVLogger`` deletes
    ``metrics.csv`` there, so it moves aside to ``metrics-part<k>.csv`` until ``join_csv_metrics``."""
    current = log_dir / "metrics.csv"
    if current.is_file():
        current.rename(log_dir / f"metrics-part{len(list(log_dir.glob('metrics-part*.csv')))}.csv")


def join_csv_metrics(log_dir: Path) -> None:
    """Join the parts ``stash_csv_metrics`` kept and the resumed run's ``metrics.csv`` into
    ``metrics.csv``, in order; a part's rows from the step its successor starts at on are dropped (the
    steps after the checkpoint, which the resumed run did again)."""
    parts = sorted(log_dir.glob("metrics-part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics-part")))
    if not parts:
        return
    tables = [_read_csv(path) for path in [*parts, log_dir / "metrics.csv"] if path.is_file()]
    rows: list[dict[str, str]] = []
    for table, successor in zip(tables, [*tables[1:], []], strict=True):
        start = min((int(row["step"]) for row in successor), default=None)
        rows += [row for row in table if start is None or int(row["step"]) < start]
    fields = sorted({key for row in rows for key in row})
    with atomic_write(log_dir / "metrics.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for path in parts:
        path.unlink()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


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
                "checkpoint.enable_version_counter": False,  # one last.ckpt, shared with ResumeCheckpoint
            }
        )
        parser.add_lightning_class_args(ResumeCheckpoint, "resume")
        link_audio_format(parser, model_is_parsed=True)
        parser.set_defaults(
            {
                "trainer.plugins": [{"class_path": "lacoat.io.AtomicCheckpointIO"}],
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": DEFAULT_LOGS,
                },
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as LightningCLI does, and remember this command's evaluation settings: LightningCLI then
        rebuilds the model from the hyperparameters of ``--ckpt_path FILE``, over the config, and
        ``before_instantiate_classes`` puts them back (``--model.eval_mode exhaustive`` must win)."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        self._eval_settings = {key: self.config[f"{sub}.model.{key}"] for key in EVAL_SETTINGS} if sub else {}

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key, value in self._eval_settings.items():
            config.model[key] = value
        if self.subcommand == "test":
            config.verbose = False  # after_test prints the metrics, once
        if config.trainer.get("precision") is None:
            config.trainer.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
        files = [f for f in config.get("config") or [] if f is not None]  # None: an inline --config '{…}'
        config.trainer.default_root_dir = run_folder(config.trainer.get("default_root_dir"), files)
        loggers = config.trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        root = config.trainer.get("default_root_dir") or os.getcwd()
        for lg in loggers:  # one run folder: logs go where the checkpoints go
            if lg and hasattr(lg, "init_args") and "save_dir" in lg.init_args:
                lg.init_args.save_dir = str(root)
            if (
                lg
                and getattr(lg, "class_path", "").endswith("CSVLogger")
                and lg.init_args.get("name") == "lightning_logs"
            ):
                lg.init_args["name"] = "logs"
        uses_wandb = any(getattr(lg, "class_path", "").endswith("WandbLogger") for lg in loggers if lg)
        if uses_wandb and not wandb_credentials_present():
            os.environ.setdefault("WANDB_MODE", "offline")
        for lg in loggers:
            if lg and getattr(lg, "class_path", "").endswith("WandbLogger"):
                name_wandb_run(lg.init_args, [Path(str(f)).stem for f in files])
        if self.subcommand == "fit" and config.get("ckpt_path"):
            self._resume(config, [lg for lg in loggers if lg and hasattr(lg, "init_args")])

    def _resume(self, config, loggers: list) -> None:
        """``fit --ckpt_path last|FILE``: continue in the run's checkpoint folder, logger version and W&B run."""
        ckpt = config.ckpt_path
        if ckpt == "last":
            folder = latest_run_with_last(config.trainer.get("default_root_dir") or os.getcwd())
            config.ckpt_path = ckpt = str(folder / "last.ckpt")
            print(f"resuming from {ckpt}")
        elif not Path(ckpt).is_file():
            raise LacoatError(
                f"checkpoint to resume from not found: '{ckpt}'. Pass a .ckpt file written by `lacoat fit`, "
                "or --ckpt_path last for the latest run under trainer.default_root_dir."
            )
        folder = Path(ckpt).parent
        config.checkpoint.dirpath = str(folder)
        for lg in loggers:
            if lg.class_path.endswith("WandbLogger"):
                id_file = folder / WANDB_ID_FILE
                if id_file.is_file():
                    lg.init_args["id"] = id_file.read_text().strip()
                    lg.init_args["resume"] = "allow"
            elif "version" in lg.init_args:
                lg.init_args["version"] = folder.name
                if lg.class_path.endswith("CSVLogger"):
                    stash_csv_metrics(
                        Path(lg.init_args.save_dir, lg.init_args.get("name") or "", folder.name)
                    )
        for expected in ("Experiment logs directory", "Checkpoint directory"):  # "… exists and is not empty"
            warnings.filterwarnings(
                "ignore", message=f"{expected} .* exists and is not empty", module=r"lightning\."
            )

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
        rows = {"run folder": self.trainer.default_root_dir}
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            score = f"{MONITOR} = {float(callback.best_model_score):.4f}"
            rows["best checkpoint"] = f"{callback.best_model_path}  ({score})"
        if isinstance(callback, ModelCheckpoint) and callback.last_model_path:
            rows["last checkpoint"] = callback.last_model_path
        for logger in self.trainer.loggers if self.trainer.is_global_zero else []:
            if isinstance(logger, CSVLogger):
                join_csv_metrics(Path(logger.log_dir))
        self._print_where(rows)

    def _print_where(self, rows: dict[str, str]) -> None:
        """Print where this run's files are: ``rows`` and the logs (one short block, rank zero only)."""
        if not self.trainer.is_global_zero:
            return
        for logger in self.trainer.loggers:
            folder = logger.log_dir or logger.save_dir  # W&B: save_dir/wandb/<run>
            if folder:
                rows[f"logs ({type(logger).__name__.removesuffix('Logger')})"] = folder
        width = max(map(len, rows))
        print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in rows.items()))

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
            "fusion_alpha": self.model.fusion_alpha,
            "metrics": results,
        }
        path.write_text(json.dumps(payload, indent=2))
        print(f"\ntest metrics:\n{format_table(results)}")
        where = {"checkpoint": str(payload["checkpoint"]), "metrics": str(path)}
        if self.model.test_twins is not None:  # SynthCaps: each twin comparison with its scores
            where["twin comparisons"] = str(path.with_name(f"test_twins_{mode}.csv"))
            self.model.test_twins.to_csv(where["twin comparisons"], index=False)
        self._print_where(where)

    def after_predict(self) -> None:
        if self.model.rankings is None or not self.trainer.is_global_zero:
            return
        path = self._output_dir() / "predictions.csv"
        self.model.rankings.to_csv(path, index=False)
        print(f"rankings of {self.model.rankings['query'].nunique()} queries written to {path}")


def cli_main(args: ArgsType = None) -> LacoatCLI:
    """Run ``lacoat fit|validate|test|predict …`` (Lightning's documented ``cli_main``).

    Args:
        args: the subcommand and its options, as LightningCLI takes them; None reads ``sys.argv``.
    """
    return LacoatCLI(
        LacoatModule,
        RetrievalDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"default_env": False},
    )
