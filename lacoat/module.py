"""``LacoatModule``: training, evaluation and prediction around an ``AudioTextMatcher``.

The module receives its parts (matcher with encoders and cascade, loss) by injection, so a YAML
config picks them by ``class_path``. Evaluation collects token features of the split's unique clips
and of its queries (two dataloaders), then scores every query against every clip at epoch end and
computes the DESIGN.md metrics from that dense matrix. Under DDP every rank gathers the features of
all ranks, drops the distributed sampler's padding duplicates and computes the metrics on the full
matrix, so no metric is a per-rank average (all ranks hold the same values).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor

from lacoat.distributed import gather_tokens, unique_rows
from lacoat.errors import LacoatError, NumericalError
from lacoat.losses import NTXentLoss, hardest_negatives
from lacoat.metrics import directional_metrics, twin_win_rates
from lacoat.models.matcher import AudioTextMatcher, Tokens
from lacoat.order_negatives import states_order

log = logging.getLogger(__name__)


@dataclass
class EvalScores:
    """Scores of an evaluation: ``t2a`` and ``a2t`` rankings and the bi-encoder's ``bi`` (each
    ``[q, n]``, text-major; the two rankings are one matrix in exhaustive mode), the split's query and
    clip indices of the rows and columns, and the scored ``text`` and ``audio`` tokens."""

    t2a: Tensor
    a2t: Tensor
    bi: Tensor
    query_index: Tensor
    clip_index: Tensor
    text: Tokens
    audio: Tokens


class LacoatModule(L.LightningModule):
    """Language-based audio retrieval with a co-attention matcher.

    Args:
        matcher: encoders, projections, cascade (or none: bi-encoder) and pools.
        loss: NT-Xent; its ``aux_weight`` weighs the auxiliary bi-encoder term.
        train_pairs: ``full`` scores all B×B pairs of a batch with the cascade (B² passes);
            ``hard_negatives`` scores each query's positive and its ``hard_negatives`` hardest
            in-batch negatives, ranked by the bi-encoder, in both directions (B·(1+2M) passes).
        hard_negatives: M, negatives per query in ``hard_negatives`` mode.
        order_negatives: give every caption that states an order of events ("then", "after", …) its
            own clip with the two halves swapped as one more negative (``lacoat.order_negatives``), in
            the co-attention and the bi-encoder loss alike.
        gather_negatives: under DDP, score this rank's captions and clips against the batches of
            all ranks (token features gathered with their gradients), so every rank sees the global
            batch's negatives (``full`` pairs and the bi-encoder; ``hard_negatives`` stays per rank).
        lr: learning rate of everything but the encoders.
        encoder_lr: learning rate of trainable encoder weights.
        weight_decay: AdamW weight decay (never on biases, norms or the temperature).
        warmup_steps: linear warm-up steps, then cosine decay to zero at the last step.
        eval_mode: ``exhaustive`` scores every (query, clip) pair with the cascade; ``rerank`` lets the
            bi-encoder shortlist ``rerank_k`` clips per query (and queries per clip) and re-scores
            only those with the cascade (two-stage retrieval: text→audio ranks each query's own
            shortlist, audio→text each clip's own, as ``lacoat search`` does).
        rerank_k: shortlist size K of ``rerank``.
        fusion_alpha: a pair's score is ``s_co + fusion_alpha * s_bi`` (score fusion, as re-rankers
            do); 0 ranks by co-attention alone. Choose it on validation (README, "Score fusion").
        eval_text_block: queries prepared at once when scoring the evaluation matrix exhaustively.
        predict_top_k: clips per query written by ``predict``.
    """

    def __init__(
        self,
        matcher: AudioTextMatcher,
        loss: NTXentLoss,
        train_pairs: Literal["full", "hard_negatives"] = "full",
        hard_negatives: int = 7,
        order_negatives: bool = False,
        gather_negatives: bool = False,
        lr: float = 3e-4,
        encoder_lr: float = 1e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        eval_mode: Literal["exhaustive", "rerank"] = "rerank",
        rerank_k: int = 16,
        fusion_alpha: float = 0.0,
        eval_text_block: int = 256,
        predict_top_k: int = 10,
    ) -> None:
        super().__init__()
        # Under LacoatCLI the injected parts arrive as their config (class_path + init_args), which
        # checkpoints and loggers must keep; built in Python they are modules, saved with the weights.
        built_by_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if built_by_cli else ["matcher", "loss"])
        self.matcher, self.loss = matcher, loss
        self.train_pairs, self.hard_negatives = train_pairs, hard_negatives
        self.order_negatives = order_negatives
        self.gather_negatives = gather_negatives
        self.lr, self.encoder_lr = lr, encoder_lr
        self.weight_decay, self.warmup_steps = weight_decay, warmup_steps
        self.eval_mode, self.rerank_k, self.fusion_alpha = eval_mode, rerank_k, fusion_alpha
        self.eval_text_block, self.predict_top_k = eval_text_block, predict_top_k
        self._eval: dict[str, list] = {}
        self.test_results: dict[str, float] = {}
        self.test_scores: tuple[Tensor, Tensor, Tensor] | None = None  # (t2a [q, n], query_index, clip_index)
        self.rankings: pd.DataFrame | None = None

    def setup(self, stage: str) -> None:
        """Check that the data is cut the way the audio encoder expects (rate and window length), let
        the DataModule serve cached outputs of the frozen encoders (``data.feature_cache``) and mine
        hard negatives with the text encoder (``data.hard_share``)."""
        data = getattr(self.trainer, "datamodule", None)
        encoder = self.matcher.audio_encoder
        loader = getattr(data, "eval_loader", None)
        if loader is not None and (loader.sample_rate, loader.window_samples) != (
            encoder.sample_rate,
            encoder.window_samples,
        ):
            raise LacoatError(
                f"the data is read at {loader.sample_rate} Hz in {loader.window_seconds:g}-s windows but "
                f"{type(encoder).__name__} expects {encoder.sample_rate} Hz and {encoder.window_seconds:g}-s "
                f"windows; set data.sample_rate: {encoder.sample_rate} and data.window_seconds: {encoder.window_seconds:g}"
            )
        if self.order_negatives and self.gather_negatives:
            raise LacoatError(
                "model.order_negatives does not combine with gather_negatives yet; turn one off"
            )
        if stage == "fit" and hasattr(data, "set_caption_embedder"):  # hard-negative batches mine with it
            data.set_caption_embedder(self.caption_embeddings)
        if hasattr(data, "use_cached_features"):
            text_encoder = self.matcher.text_encoder
            data.use_cached_features(
                encoder if encoder.frozen else None, text_encoder if text_encoder.frozen else None
            )

    @torch.no_grad()
    def caption_embeddings(self, captions: list[str], batch: int = 256) -> Tensor:
        """Mean of the text encoder's valid token states per caption, ``[n, Dt]`` float32 on the CPU."""
        encoder, out = self.matcher.text_encoder, []
        was_training = encoder.training
        encoder.eval()
        for start in range(0, len(captions), batch):
            tokens, mask = encoder(captions[start : start + batch])  # [b, L, Dt], [b, L]
            m = mask[..., None].float()
            out.append(((tokens.float() * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu())
        encoder.train(was_training)
        return torch.cat(out)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        skipped = float(batch.get("n_skipped", 0))  # items the loader dropped (data.on_bad_audio: skip)
        self.log("train/skipped", skipped, on_epoch=True, on_step=False, reduce_fx="sum", sync_dist=True)
        if "clip_index" not in batch:  # every item of the batch was skipped: no step
            if self.trainer.world_size > 1:  # the other ranks wait for this one's gradients: send zeros
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return None
        text, audio = self.matcher.text_of(batch), self.matcher.audio_of(batch)
        clip = batch["clip_index"]
        bi = self.matcher.bi_scores(text, audio)  # [B, B]
        if self.gather_negatives and self.trainer.world_size > 1 and self.train_pairs == "full":
            out = self._global_batch_loss(text, audio, clip)
        elif self.matcher.cascade is None:
            swap = self._order_negative_scores(batch, text)[1]
            out = self.loss(bi, clip, clip, extra=swap)
            self._log_order_wins(bi.diagonal(), swap)
        elif self.train_pairs == "full":
            co_swap, bi_swap = self._order_negative_scores(batch, text)
            sim = self.matcher.score_matrix(text, audio)
            out = self.loss(sim, clip, clip, bi, co_swap, bi_swap)
            self._log_order_wins(sim.diagonal(), co_swap)
        else:
            out = self._hard_negative_loss(text, audio, clip, bi, *self._order_negative_scores(batch, text))
        self._check_finite(out["loss"], batch, batch_idx)
        batch_size = len(clip)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch_size)
        self.log("train/loss_main", out["loss_main"], batch_size=batch_size)
        self.log("train/loss_aux", out["loss_aux"], batch_size=batch_size)
        self.log("train/temperature", out["temperature"], batch_size=batch_size)
        return out["loss"]

    def _order_negative_scores(
        self, batch: dict[str, Any], text: Tokens
    ) -> tuple[Tensor | None, Tensor | None]:
        """Scores of each caption with its own clip's halves swapped, co-attention and bi-encoder, each
        ``[B]`` with ``-inf`` for captions that state no order; ``(None, None)`` when off."""
        if not self.order_negatives:
            return None, None
        ordered = states_order(batch["captions"]).to(text.tokens.device)  # [B]
        if not ordered.any():
            return None, None
        swapped, done = self.matcher.swapped_audio_of(batch)
        ordered = ordered & done  # a clip without a pause has no order negative
        off = torch.tensor(float("-inf"), device=ordered.device)
        bi = (self.matcher.embed_text(text) * self.matcher.embed_audio(swapped)).sum(-1)
        co = self.matcher.pair_scores(text, swapped) if self.matcher.cascade is not None else bi
        return torch.where(ordered, co.float(), off), torch.where(ordered, bi.float(), off)

    def _log_order_wins(self, own: Tensor, swap: Tensor | None) -> None:
        """``train/order_win``: how often a caption's own clip outscores the clip with swapped halves."""
        if swap is None:
            return
        ordered = torch.isfinite(swap)
        wins = (own[ordered].detach() > swap[ordered].detach()).float()
        self.log("train/order_win", wins.mean(), batch_size=len(wins))

    def _check_finite(self, loss: Tensor, batch: dict[str, Any], batch_idx: int) -> None:
        """Stop at a NaN or infinite loss (Lightning would go on), naming the batch's files and the fix.

        Every process takes part in the decision, so under DDP all stop together instead of waiting
        for one that raised.
        """
        finite = bool(torch.isfinite(loss).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            everywhere = trainer.strategy.reduce_boolean_decision(finite, all=True)
        else:
            everywhere = finite
        if everywhere:
            return
        files = list(dict.fromkeys(batch.get("audio_paths", [])))
        if finite:
            where = "another process's batch (its log names the files)"
        else:
            log.error("non-finite loss; the batch's audio files: %s", files)
            more = f" and {len(files) - 16} more" if len(files) > 16 else ""
            shown = ", ".join(f"'{f}'" for f in files[:16]) + more
            where = f"a batch of {len(files)} clip(s): {shown}"
        raise NumericalError(
            f"training loss is {loss.detach().float().item()} at step {self.global_step} (epoch "
            f"{self.current_epoch}, batch {batch_idx}) in {where}. Lower model.lr, set "
            "trainer.gradient_clip_val (e.g. 1.0), or check those files; then resume from the last good "
            "checkpoint with --ckpt_path last."
        )

    def _global_batch_loss(self, text: Tokens, audio: Tokens, clip: Tensor) -> dict[str, Tensor]:
        """NT-Xent of this rank's captions and clips against every rank's (``gather_negatives``)."""
        all_text, all_text_clip, sizes = gather_tokens(self, text, clip, sync_grads=True)
        all_audio, all_audio_clip, _ = gather_tokens(self, audio, clip, sync_grads=True)
        offset = int(sizes[: self.global_rank].sum())
        m = self.matcher

        def loss_of(t2a: Tensor, a2t: Tensor) -> Tensor:  # [b, N] each
            return self.loss.sharded_contrastive(t2a, a2t, clip, clip, all_text_clip, all_audio_clip, offset)

        loss_aux = loss_of(m.bi_scores(text, all_audio), m.bi_scores(all_text, audio).T)
        if m.cascade is None:
            loss_main = loss_aux
        else:
            loss_main = loss_of(m.score_matrix(text, all_audio), m.score_matrix(all_text, audio).T)
        weight = self.loss.aux_weight if m.cascade is not None else 0.0
        return {
            "loss": loss_main + weight * loss_aux,
            "loss_main": loss_main,
            "loss_aux": loss_aux,
            "temperature": self.loss.temperature,
        }

    def _hard_negative_loss(
        self,
        text: Tokens,
        audio: Tokens,
        clip: Tensor,
        bi: Tensor,
        co_swap: Tensor | None = None,
        bi_swap: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Candidate loss over each query's positive and its M hardest in-batch negatives (both
        directions), plus each caption's order negative when given; bi-encoder NT-Xent as the aux term."""
        m = self.hard_negatives
        neg_audio = hardest_negatives(bi.detach(), clip, clip, m)  # [B, M] clips for each caption
        neg_text = hardest_negatives(bi.detach().T, clip, clip, m)  # [B, M] captions for each clip
        b = len(clip)
        rows = torch.arange(b, device=clip.device)
        text_index = torch.cat([rows, rows.repeat_interleave(m), neg_text.reshape(-1)])
        audio_index = torch.cat([rows, neg_audio.reshape(-1), rows.repeat_interleave(m)])
        scores = self.matcher.score_index_pairs(text, audio, text_index, audio_index)
        pos, t2a, a2t = scores[:b], scores[b : b + b * m].view(b, m), scores[b + b * m :].view(b, m)
        if co_swap is not None:
            t2a = torch.cat([t2a, co_swap[:, None].to(t2a.dtype)], dim=1)  # [B, M + 1]
            self._log_order_wins(pos, co_swap)
        loss_main = (self.loss.candidate_loss(pos, t2a) + self.loss.candidate_loss(pos, a2t)) / 2
        loss_aux = self.loss.contrastive(bi, clip, clip, bi_swap)
        loss = loss_main + self.loss.aux_weight * loss_aux
        return {
            "loss": loss,
            "loss_main": loss_main,
            "loss_aux": loss_aux,
            "temperature": self.loss.temperature,
        }

    # ---- evaluation -----------------------------------------------------------------------------
    def _collect(self, batch: dict[str, Any]) -> None:
        if "clip_index" in batch:  # a batch whose clips were all skipped has neither index
            self._eval["audio"].append((batch["clip_index"], self.matcher.audio_of(batch)))
        elif "query_index" in batch:
            self._eval["text"].append((batch["query_index"], self.matcher.text_of(batch)))

    def _start_eval(self) -> None:
        self._eval = {"audio": [], "text": []}

    def _score_collected(self) -> EvalScores:
        """Score everything collected: text→audio and audio→text rankings, the bi-encoder's scores, and the
        query and clip indices of their rows and columns."""
        parts, indices = {}, {}
        for side, items in self._eval.items():
            feats = Tokens.cat([f for _, f in items])
            index = torch.cat([i for i, _ in items]).to(feats.tokens.device)
            feats, index, _ = gather_tokens(self, feats, index)  # every rank's items (DDP)
            parts[side], indices[side] = unique_rows(feats, index)
        self._eval = {}
        text, audio = parts["text"], parts["audio"]
        if self.matcher.cascade is not None and self.eval_mode == "rerank" and self.loss.aux_weight == 0:
            log.warning(
                "rerank evaluation of a cascade trained with loss.aux_weight 0: its bi-encoder first stage "
                "was never trained, so the shortlists are close to random; use --model.eval_mode exhaustive"
            )
        bi = self.matcher.bi_scores(text, audio)
        if self.eval_mode == "rerank":
            t2a, a2t = self.matcher.rerank_scores(text, audio, self.rerank_k, self.fusion_alpha, bi=bi)
        else:
            t2a = a2t = self.matcher.score_matrix(text, audio, text_block=self.eval_text_block) + (
                self.fusion_alpha * bi if self.matcher.cascade is not None else 0.0
            )
        return EvalScores(t2a, a2t, bi, indices["text"].cpu(), indices["audio"].cpu(), text, audio)

    def _metrics(self, stage: str, scores: EvalScores) -> dict[str, float]:
        """DESIGN.md metrics of ``scores`` (rows and columns: queries and clips of the split), and
        with a cascade the same metrics of the model's own bi-encoder scores under ``{stage}_bi/``
        (the first stage alone: what co-attention adds is the difference). Where the split has twin
        comparisons (SynthCaps), the twin win rates of both (``{stage}/twin_order`` …).

        When only part of the split was scored (``limit_val_batches`` and the like), the caption
        queries whose clip was scored are ranked among the scored clips that have a scored caption,
        and a warning says so.
        """
        query_index, clip_index = scores.query_index, scores.clip_index
        eval_set = self.trainer.datamodule.eval_set(stage)
        device = scores.t2a.device
        relevance = eval_set.relevance(None)[query_index][:, clip_index].to(device)  # [q, n]
        group = eval_set.queries["group"].to_numpy()[query_index.numpy()]
        captions = torch.as_tensor(group == "caption", device=device) & relevance.any(1)
        clips = relevance[captions].any(0)
        if len(query_index) < len(eval_set.queries) or len(clip_index) < len(eval_set.clips):
            log.warning(
                "%s: partial evaluation on %d of %d queries and %d of %d clips",
                stage,
                int(captions.sum()),
                len(eval_set.queries),
                int(clips.sum()),
                len(eval_set.clips),
            )
        rel_c = relevance[captions][:, clips]
        multi_rows = torch.as_tensor(group == "multi", device=device) & relevance.any(1)
        results = {}
        runs = [(stage, scores.t2a, scores.a2t), (f"{stage}_bi", scores.bi, scores.bi)]
        for name, t2a, a2t in runs[: 2 if self.matcher.cascade is not None else 1]:
            multi = (t2a[multi_rows].float(), relevance[multi_rows]) if multi_rows.any() else None
            results |= directional_metrics(
                t2a[captions][:, clips].float(),
                rel_c,
                name,
                multi=multi,
                a2t_sim=a2t[captions][:, clips].float(),
            )
        if eval_set.twins is not None:
            results |= self._twin_rates(stage, eval_set.twins, scores)
        return results

    def _twin_rates(self, stage: str, twins: pd.DataFrame, scores: EvalScores) -> dict[str, float]:
        """Twin win rates from the model's pair scores (always computed, whatever ``eval_mode``) and
        from its bi-encoder scores, over the comparisons whose query and clips were scored."""
        row = {int(q): i for i, q in enumerate(scores.query_index)}
        col = {int(c): i for i, c in enumerate(scores.clip_index)}
        kept = twins[twins["query"].isin(row) & twins["clip"].isin(col) & twins["twin"].isin(col)]
        if kept.empty:
            return {}
        q = torch.tensor([row[int(v)] for v in kept["query"]])
        own = torch.tensor([col[int(v)] for v in kept["clip"]])
        other = torch.tensor([col[int(v)] for v in kept["twin"]])
        text_index = torch.cat([q, q]).to(scores.bi.device)
        audio_index = torch.cat([own, other]).to(scores.bi.device)
        bi = scores.bi[text_index, audio_index].float()
        pair = self.matcher.score_index_pairs(scores.text, scores.audio, text_index, audio_index).float()
        if self.matcher.cascade is not None:
            pair = pair + self.fusion_alpha * bi
        n, changes = len(q), kept["change"].tolist()
        out = twin_win_rates(pair[:n], pair[n:], changes, stage)
        if self.matcher.cascade is not None:
            out |= twin_win_rates(bi[:n], bi[n:], changes, f"{stage}_bi")
        return out

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        if not self._eval.get("audio") or not self._eval.get("text"):
            return
        results = self._metrics("val", self._score_collected())
        for name, value in results.items():
            self.log(
                name,
                value,
                prog_bar=name in ("val/t2a_mAP@10", "val_bi/t2a_mAP@10"),
                add_dataloader_idx=False,
                sync_dist=True,  # identical on every rank; silences Lightning's epoch-level DDP warning
            )

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        scores = self._score_collected()
        self.test_scores = (scores.t2a.cpu(), scores.query_index, scores.clip_index)  # for RetrievalExamples
        self.test_results = self._metrics("test", scores)
        self.log_dict(self.test_results, add_dataloader_idx=False, sync_dist=True)

    def on_predict_epoch_start(self) -> None:
        self._start_eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def on_predict_epoch_end(self) -> None:
        scores = self._score_collected()
        sim, query_index, clip_index = scores.t2a, scores.query_index, scores.clip_index
        eval_set = self.trainer.datamodule.eval_set("test")
        k = min(self.predict_top_k, sim.shape[1])
        scores, index = sim.topk(k, dim=1)  # [Q, k]
        names = eval_set.clips["file_name"].to_numpy()[clip_index.numpy()]
        self.rankings = pd.DataFrame(
            {
                "query": eval_set.queries["text"].to_numpy()[query_index.numpy()].repeat(k),
                "rank": list(range(1, k + 1)) * sim.shape[0],
                "file_name": names[index.reshape(-1).cpu().numpy()],
                "score": scores.reshape(-1).float().cpu().numpy(),
            }
        )

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        encoders = {
            id(p) for enc in (self.matcher.audio_encoder, self.matcher.text_encoder) for p in enc.parameters()
        }
        groups: dict[tuple[bool, bool], list[Tensor]] = {}
        for p in self.parameters():
            if p.requires_grad:
                groups.setdefault((id(p) in encoders, p.ndim >= 2), []).append(p)
        param_groups = [
            {
                "params": params,
                "lr": self.encoder_lr if is_encoder else self.lr,
                "weight_decay": self.weight_decay if decays else 0.0,
            }
            for (is_encoder, decays), params in groups.items()
        ]
        optimizer = torch.optim.AdamW(param_groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
