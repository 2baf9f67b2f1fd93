"""``LacoatModule``: wires a matcher, its training objective and its evaluator into Lightning.

The parts arrive by injection, so a YAML config picks them by ``class_path``: the matcher (encoders,
cascade, pools), the training objective (which pairs and negatives a batch trains on, with its NT-Xent
loss), the optimiser and its schedule. What a batch trains on lives in
``lacoat.train.objectives``; evaluation (collect → gather → score → metrics) in ``lacoat.evaluation.evaluator``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lacoat.checkpoints import leave_out_rebuilt_encoders, restore_rebuilt_encoders
from lacoat.contracts import ModelFacts
from lacoat.defaults import RERANK_K
from lacoat.distributed import RankShare, gather_tokens
from lacoat.errors import LacoatError
from lacoat.evaluation.evaluator import EvalScores, Evaluator, rankings
from lacoat.models.matcher import AudioTextMatcher
from lacoat.train.objectives import PairObjective, non_finite_loss
from lacoat.train.optim import WarmupCosine, make_scheduler, param_groups


class LacoatModule(L.LightningModule):
    """Language-based audio retrieval with a co-attention matcher.

    Args:
        matcher: encoders, projections, cascade (or none: bi-encoder) and pools.
        objective: what a batch trains on: pairs, negatives and the NT-Xent loss
            (``lacoat.train.objectives.PairObjective``).
        lr: learning rate of everything but the encoders.
        encoder_lr: learning rate of trainable encoder weights.
        text_encoder_lr: learning rate of a trainable text encoder, where it must differ from the
            audio encoder's (a pretrained text model fine-tuned beside an audio encoder trained from
            scratch); None: ``encoder_lr``.
        weight_decay: weight decay of weight matrices (never of biases, norms or the temperature).
        optimizer: the optimiser class, given the parameter groups (their ``lr`` and ``weight_decay``).
        lr_scheduler: the schedule, stepped every step; ``WarmupCosine`` gets the run's total steps.
        eval_mode: ``exhaustive`` scores every (query, clip) pair with the cascade; ``rerank`` lets the
            bi-encoder shortlist ``rerank_k`` clips per query (and queries per clip) and re-scores
            only those (two-stage retrieval, as ``lacoat search`` does).
        rerank_k: shortlist size K of ``rerank``.
        fusion_alpha: a pair's score is ``s_co + fusion_alpha * s_bi``; 0 ranks by co-attention alone.
        eval_text_block: queries prepared at once when scoring the evaluation matrix exhaustively.
        predict_top_k: clips per query written by ``predict``.
    """

    def __init__(
        self,
        matcher: AudioTextMatcher,
        objective: PairObjective,
        lr: float = 3e-4,
        encoder_lr: float = 1e-5,
        text_encoder_lr: float | None = None,
        weight_decay: float = 0.01,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable = WarmupCosine,
        eval_mode: Literal["exhaustive", "rerank"] = "rerank",
        rerank_k: int = RERANK_K,
        fusion_alpha: float = 0.0,
        eval_text_block: int = 256,
        predict_top_k: int = 10,
    ) -> None:
        super().__init__()
        # Under LightningCLI the parts are saved as their config (class_path + init_args, with the
        # instantiator that rebuilds them); built in Python they are modules, saved with the weights.
        self.save_hyperparameters(ignore=["matcher", "objective", "optimizer", "lr_scheduler"])
        if "_instantiator" in self.hparams:
            self.save_hyperparameters()
        if text_encoder_lr is not None and matcher.text_encoder.frozen:
            raise LacoatError(
                f"model.text_encoder_lr is {text_encoder_lr}, but the text encoder is frozen, so nothing "
                "trains at that rate; set its init_args frozen: false, or drop text_encoder_lr"
            )
        self.matcher, self.loss, self.objective = matcher, objective.loss, objective  # loss: its temperature
        self.evaluator = Evaluator(
            matcher, eval_text_block, first_stage_trained=objective.loss.aux_weight > 0
        )
        self.lr, self.encoder_lr, self.weight_decay = lr, encoder_lr, weight_decay
        self.text_encoder_lr = encoder_lr if text_encoder_lr is None else text_encoder_lr
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.eval_mode, self.rerank_k, self.fusion_alpha = eval_mode, rerank_k, fusion_alpha
        self.predict_top_k = predict_top_k
        self.test_results: dict[str, float] = {}
        self.test_twins: pd.DataFrame | None = None  # the twin comparisons of the test (``twin_table``)
        self.test_scores: tuple[Tensor, Tensor, Tensor] | None = None  # (t2a [q, n], query_index, clip_index)
        self.rankings: pd.DataFrame | None = None

    def setup(self, stage: str) -> None:
        """Hand the DataModule what it needs of the encoders (``lacoat.contracts``, the one seam)."""
        if self.trainer.strategy.root_device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls where fp32 remains
        data = self.trainer.datamodule
        if not hasattr(data, "connect_model"):
            return
        data.connect_model(
            ModelFacts.of(self.matcher.audio_encoder, self.matcher.text_encoder, stage == "fit")
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        leave_out_rebuilt_encoders(checkpoint, self._encoders())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rebuilt_encoders(checkpoint, self._encoders())

    def _encoders(self) -> dict[str, Any]:
        return {f"matcher.{name}": getattr(self.matcher, name) for name in ("audio_encoder", "text_encoder")}

    def _gather(self, sync_grads: bool = False):
        """All-gather of token features across ranks, or None in one process."""
        if self.trainer.world_size <= 1:
            return None
        return lambda tokens, index: gather_tokens(self, tokens, index, sync_grads=sync_grads)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        skipped = float(batch.get("n_skipped", 0))  # items the loader dropped (data.on_bad_audio: skip)
        self.log("train/skipped", skipped, on_epoch=True, on_step=False, reduce_fx="sum", sync_dist=True)
        gather = self._gather(sync_grads=True) if self.objective.gather_negatives else None
        has_items = "clip_index" in batch  # else every item of the batch was skipped: no step
        if gather is not None:  # the gathers need every rank: all skip the step if one has nothing
            has_items = self.trainer.strategy.reduce_boolean_decision(has_items, all=True)
        if not has_items:  # other ranks wait for this one's gradients: send zeros
            return (
                sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
                if self.trainer.world_size > 1
                else None
            )
        out = self.objective(self.matcher, batch, gather, self.global_rank)
        finite = bool(torch.isfinite(out["loss"]).all())  # Lightning would go on; under DDP all ranks decide
        if not (
            finite if self.trainer.world_size <= 1 else self.trainer.strategy.reduce_boolean_decision(finite)
        ):
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            raise non_finite_loss(out["loss"], batch, where, elsewhere=finite)
        batch_size = len(batch["clip_index"])
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        return out["loss"]

    # ---- evaluation -----------------------------------------------------------------------------
    def _scores(self) -> EvalScores:
        world = self.trainer.world_size
        share = RankShare(self.global_rank, world, self.all_gather, self.device) if world > 1 else None
        with self.trainer.precision_plugin.forward_context():  # epoch-end hooks run outside it: bf16 on GPUs
            return self.evaluator.score(
                self.eval_mode, self.rerank_k, self.fusion_alpha, self._gather(), share
            )

    def _metrics(self, stage: str, scores: EvalScores) -> dict[str, float]:
        return self.evaluator.metrics(
            stage, scores, self.trainer.datamodule.eval_set(stage), self.fusion_alpha
        )

    def _start(self) -> None:
        self.evaluator.start()

    def _collect(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluator.collect(batch)

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _start
    validation_step = test_step = predict_step = _collect

    def on_validation_epoch_end(self) -> None:
        if not self.evaluator.has_both_sides:
            return
        for name, value in self._metrics("val", self._scores()).items():
            shown = name in ("val/t2a_mAP@10", "val_bi/t2a_mAP@10")  # sync_dist: identical on every rank
            self.log(name, value, prog_bar=shown, add_dataloader_idx=False, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        scores = self._scores()
        self.test_scores = (scores.t2a.cpu(), scores.query_index, scores.clip_index)  # for RetrievalExamples
        self.test_results = self._metrics("test", scores)
        self.test_twins = self.evaluator.twins
        self.log_dict(self.test_results, add_dataloader_idx=False, sync_dist=True)

    def on_predict_epoch_end(self) -> None:
        self.rankings = rankings(self._scores(), self.trainer.datamodule.eval_set("test"), self.predict_top_k)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        encoders = [
            (self.matcher.audio_encoder, self.encoder_lr),
            (self.matcher.text_encoder, self.text_encoder_lr),
        ]
        optimizer = self.optimizer(param_groups(self, encoders, self.lr, self.weight_decay))
        # the run's length, asked late: for an epoch-based run the estimate builds the training loader,
        # which must happen after a resumed run's loader position is restored (WarmupCosine's docstring)
        scheduler = make_scheduler(
            self.lr_scheduler, optimizer, lambda: int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
