"""fit → test → predict through ``lacoat.cli.main`` on a small SynthCaps with a tiny model."""

import json

import pandas as pd
import pytest

from lacoat.cli import main
from lacoat.evaluation.metrics import metric_names
from tests.helpers import read_wandb_run

TINY = """
seed_everything: 0
trainer:
  default_root_dir: {root}
  accelerator: cpu
  max_steps: 6
  val_check_interval: 3
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: logs}}
model:
  matcher:
    class_path: lacoat.models.matcher.AudioTextMatcher
    init_args:
      audio_encoder:
        class_path: lacoat.models.encoders.LogMelAudioEncoder
        init_args: {{sample_rate: 16000, window_seconds: 4.0, dim: 32, layers: 1, heads: 2, pool_frames: 16}}
      text_encoder:
        class_path: lacoat.models.encoders.HFTextEncoder
        init_args: {{model_name: {text_model}, max_length: 24, frozen: true}}
      cascade: {cascade}
      d_model: 32
      embed_dim: 16
  objective:
    class_path: lacoat.train.objectives.PairObjective
    init_args:
      loss:
        class_path: lacoat.train.losses.NTXentLoss
        init_args: {{temperature: 0.1, aux_weight: 1.0}}
      pairs: {train_pairs}
      hard_negatives: 2
  rerank_k: 4
  lr_scheduler:
    class_path: lacoat.train.optim.WarmupCosine
    init_args: {{warmup_steps: 2}}
data:
  source:
    class_path: lacoat.data.Clotho
    init_args: {{root: {data}}}
  batch_size: 6
  num_workers: 0
"""
ITERATING = "{class_path: lacoat.models.cascade.IteratingCascade, init_args: {dim: 32, heads: 2, layers: 1}}"
TOWERS = "{class_path: lacoat.models.towers.Towers, init_args: {dim: 32, heads: 2, layers: 1}}"


def write_config(tmp_path, synthcaps, cascade=ITERATING, train_pairs="full"):
    from tests.helpers import minilm_dir

    config = tmp_path / "tiny.yaml"
    config.write_text(
        TINY.format(
            root=tmp_path / "runs",
            data=synthcaps,
            text_model=minilm_dir(),
            cascade=cascade,
            train_pairs=train_pairs,
        )
    )
    return config


def test_fit_then_test_finds_best_checkpoint_and_writes_metrics(tmp_path, synthcaps, capsys):
    config = write_config(tmp_path, synthcaps)
    main(["fit", "--config", str(config)])
    best = list((tmp_path / "runs" / "checkpoints").glob("*/best-*.ckpt"))
    assert len(best) == 1 and (best[0].parent / "last.ckpt").is_file()

    main(["test", "--config", str(config)])
    out = capsys.readouterr().out
    assert f"using the best checkpoint of the latest run: {best[0]}" in out
    report = json.loads((best[0].parent / "test_metrics_rerank.json").read_text())
    assert (
        report["checkpoint"] == str(best[0]) and report["eval_mode"] == "rerank" and report["rerank_k"] == 4
    )
    twins = {f"{s}/twin_{c}" for s in ("test", "test_bi") for c in ("order", "count", "pitch", "all")}
    retrieval = set(metric_names("test")) | set(metric_names("test_bi"))
    assert retrieval < set(report["metrics"]) <= retrieval | twins  # SynthCaps: the twin diagnostic too
    assert {"test/twin_all", "test_bi/twin_all"} <= set(report["metrics"])
    twins = pd.read_csv(best[0].parent / "test_twins_rerank.csv", keep_default_na=False)  # each comparison
    assert (twins["own_score"] > twins["twin_score"]).mean() == pytest.approx(
        report["metrics"]["test/twin_all"]
    )
    assert (twins["own_score_bi"] > twins["twin_score_bi"]).mean() == pytest.approx(
        report["metrics"]["test_bi/twin_all"]
    )
    assert all(0.0 <= v <= 1.0 for v in report["metrics"].values())
    assert "test/t2a_mAP@10" in out

    # settings of this command win over the checkpoint's hyperparameters (Lightning applies those)
    main(["test", "--config", str(config), "--ckpt_path", str(best[0]), "--model.eval_mode", "exhaustive"])
    report = json.loads((best[0].parent / "test_metrics_exhaustive.json").read_text())
    assert report["eval_mode"] == "exhaustive" and report["rerank_k"] is None

    main(["predict", "--config", str(config)])
    rankings = pd.read_csv(best[0].parent / "predictions.csv", keep_default_na=False)
    assert list(rankings.columns) == ["query", "rank", "file_name", "score"]
    assert rankings["query"].nunique() == len(rankings) // 10 == 50  # 10 test clips, 5 captions each
    first = rankings[rankings["query"] == rankings["query"][0]]
    assert first["rank"].tolist() == list(range(1, 11)) and first["score"].is_monotonic_decreasing


@pytest.mark.parametrize(
    ("cascade", "train_pairs", "extra"),
    [
        ("null", "full", ["--model.objective.order_negatives", "text"]),
        # the towers baseline: a self-attention stack per side, no cascade
        ("null", "hard_negatives", ["--model.matcher.init_args.towers", TOWERS]),
        # towers, then fusion: the cascade re-scores over the towers' outputs
        (ITERATING, "hard_negatives", ["--model.matcher.init_args.towers", TOWERS]),
        (
            "{class_path: lacoat.models.cascade.SingleCascade, init_args: {dim: 32, heads: 2}}",
            "hard_negatives",
            ["--model.objective.order_negatives", "both", "--model.objective.count_negatives", "both"],
        ),
        (
            "{class_path: lacoat.models.cascade.StackingCascade, init_args: {dim: 32, heads: 2, layers: 2}}",
            "full",
            # by epochs: Lightning makes the train loader early, to count the steps of the schedule
            [
                "--data.hard_share",
                "0.5",
                "--data.hard_neighbours",
                "3",
                "--model.objective.order_negatives",
                "audio",
            ]
            + ["--model.objective.count_negatives", "audio"]
            + ["--trainer.max_steps", "-1"]
            + ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"],
        ),
    ],
)
def test_fit_other_heads_and_pair_modes(tmp_path, synthcaps, cascade, train_pairs, extra, caplog):
    config = write_config(tmp_path, synthcaps, cascade, train_pairs)
    with caplog.at_level("INFO"):
        main(["fit", "--config", str(config), "--trainer.max_steps", "3", *extra])
    (last,) = (tmp_path / "runs" / "checkpoints").glob("*/last.ckpt")
    import torch

    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3  # three optimiser steps ran with this head and pair mode
    trained = [k for k in state["state_dict"] if k.startswith("matcher.cascade.")]
    assert bool(trained) == (cascade != "null")
    towers = [k for k in state["state_dict"] if k.startswith("matcher.towers.")]
    assert bool(towers) == (TOWERS in extra)
    # every trainable parameter (cascade, pools, projections, LogMel encoder, temperature) got gradients
    moments = [s["exp_avg"] for s in state["optimizer_states"][0]["state"].values()]
    n_trainable = sum(len(g["params"]) for g in state["optimizer_states"][0]["param_groups"])
    assert len(moments) == n_trainable and all(m.abs().sum() > 0 for m in moments)
    if "--data.hard_share" in extra:
        assert "hard negatives: 3 nearest clips of each of 40 training clips" in caplog.text


def test_the_data_reads_audio_as_its_encoder_does(tmp_path, synthcaps, capsys):
    """data.sample_rate and data.window_seconds are linked to the audio encoder's: stated once."""
    from lacoat.cli.lightning import LacoatCLI
    from lacoat.data.datamodule import RetrievalDataModule
    from lacoat.train.module import LacoatModule

    config = write_config(tmp_path, synthcaps)
    encoder = "--model.matcher.init_args.audio_encoder.init_args"
    cli = LacoatCLI(
        LacoatModule,
        RetrievalDataModule,
        args=["--config", str(config), f"{encoder}.sample_rate", "8000", f"{encoder}.window_seconds", "2.0"],
        run=False,
        auto_configure_optimizers=False,
    )
    assert (cli.datamodule.train_loader.sample_rate, cli.datamodule.train_loader.window_seconds) == (
        8000,
        2.0,
    )
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config), "--data.sample_rate", "8000"])
    assert stop.value.code == 2 and "data.sample_rate" in capsys.readouterr().err


def test_test_without_a_run_is_a_clear_error(tmp_path, synthcaps, capsys):
    config = write_config(tmp_path, synthcaps)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "no checkpoint found under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["test", "--config", str(config), "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert "checkpoint not found" in capsys.readouterr().err


def test_wandb_runs_offline_without_credentials(tmp_path, synthcaps, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with W&B credentials
    config = write_config(tmp_path, synthcaps)
    text = config.read_text().replace(
        "class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {save_dir: "
        + str(tmp_path / "runs")
        + ", name: logs}",
        "class_path: lightning.pytorch.loggers.WandbLogger\n    init_args: {save_dir: "
        + str(tmp_path / "runs")
        + ", project: lacoat-test}",
    )
    assert "WandbLogger" in text
    config.write_text(text)
    main(["fit", "--config", str(config), "--trainer.max_steps", "3"])
    import wandb

    wandb.finish()  # `lacoat fit` finishes the run at exit; in-process, finish it here
    wandb.teardown()  # offline, finish() can return before the run file is complete
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    recorded = read_wandb_run(runs[0])
    assert {"matcher", "objective"} <= recorded["config"]
    assert {"train/loss", "val/t2a_mAP@10", "val_bi/t2a_mAP@10"} <= recorded["history"]
