"""Lightning callbacks: the retrieval-examples report written at the end of ``test``."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from lacoat.data.datasets import EvalSet

log = logging.getLogger(__name__)

EXAMPLE_COLUMNS = ["query", "rank", "file_name", "score", "hit", "correct_file", "correct_rank"]


def retrieval_examples(
    sim: Tensor, query_index: Tensor, clip_index: Tensor, eval_set: EvalSet, rows: np.ndarray, top_k: int
) -> pd.DataFrame:
    """The top ``top_k`` clips of the queries at rows ``rows`` of ``sim``, and the correct clip when missed.

    Args:
        sim: ``[q, n]`` test scores (rows: queries ``query_index``, columns: clips ``clip_index`` of
            ``eval_set``), as the model ranked them.
        query_index: ``[q]`` positions of the rows in ``eval_set.queries``.
        clip_index: ``[n]`` positions of the columns in ``eval_set.clips``.
        eval_set: the split's clips and queries.
        rows: which rows of ``sim`` to report.
        top_k: clips per query.

    Returns:
        One row per (query, clip): ``query``, ``rank`` (1-based), ``file_name``, ``score``, ``hit`` (the
        clip is relevant), ``correct_file`` and ``correct_rank`` (the best-ranked relevant clip and its
        rank, filled when no relevant clip made the top ``top_k``; that clip then gets a row of its own
        after the top ``top_k``). Ties keep the order of ``clip_index``.
    """
    names = eval_set.clips["file_name"].to_numpy()
    clip_ids = clip_index.numpy()
    records = []
    for row in rows:
        query = eval_set.queries.iloc[int(query_index[row])]
        scores = sim[row].float().numpy()
        order = np.argsort(-scores, kind="stable")  # [n] columns, best first
        relevant = np.isin(clip_ids[order], query["relevant"])  # [n] along the ranking
        first = int(np.flatnonzero(relevant)[0]) if relevant.any() else None
        missed = first is not None and first >= top_k
        shown = [*range(min(top_k, len(order)))] + ([first] if missed else [])
        for position in shown:
            column = order[position]
            records.append(
                {
                    "query": query["text"],
                    "rank": position + 1,
                    "file_name": names[clip_ids[column]],
                    "score": float(scores[column]),
                    "hit": bool(relevant[position]),
                    "correct_file": names[clip_ids[order[first]]] if missed else "",
                    "correct_rank": first + 1 if missed else None,
                }
            )
    return pd.DataFrame.from_records(records, columns=EXAMPLE_COLUMNS).astype({"correct_rank": "Int64"})


class RetrievalExamples(Callback):
    """After ``test``: what the model retrieved for a few queries, and where its co-attention looked.

    On disk, beside the test metrics (the checkpoint's folder, else ``trainer.default_root_dir``):
    ``retrieval_examples.csv`` (see ``retrieval_examples``) and ``attention_maps/query_XX.png``, the
    word × time map of the last guided-attention layer for a query and its correct clip (models with a
    co-attention cascade only). With a ``WandbLogger``, the same as a ``wandb.Table`` under
    ``test/retrieval_examples`` (each clip playable as ``wandb.Audio``; W&B stores tables as run
    artifacts) and one ``wandb.Image`` per map under ``test/attention_map_XX``. Runs on global rank 0 only.

    Args:
        n_queries: queries reported, drawn at random (``seed``) among the split's caption queries.
        top_k: clips shown per query.
        n_maps: attention maps drawn (for the first ``n_maps`` reported queries).
        seed: seed of the query draw.
    """

    def __init__(self, n_queries: int = 8, top_k: int = 5, n_maps: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.n_queries, self.top_k, self.n_maps, self.seed = n_queries, top_k, n_maps, seed

    @staticmethod
    def output_dir(trainer: L.Trainer) -> Path:
        """Where the report goes: the checkpoint folder when known, else ``trainer.default_root_dir``."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None) if callback is not None else None
        return Path(dirpath or trainer.default_root_dir)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scores = getattr(pl_module, "test_scores", None)
        if not trainer.is_global_zero or scores is None:
            return
        sim, query_index, clip_index = scores
        eval_set = trainer.datamodule.eval_set("test")
        out = self.output_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)

        groups = eval_set.queries["group"].to_numpy()[query_index.numpy()]
        candidates = np.flatnonzero(groups == "caption")
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(candidates, size=min(self.n_queries, len(candidates)), replace=False))
        table = retrieval_examples(sim, query_index, clip_index, eval_set, rows, self.top_k)
        table.to_csv(out / "retrieval_examples.csv", index=False)

        maps = self._draw_maps(pl_module, eval_set, query_index, rows[: self.n_maps], out / "attention_maps")
        log.info(
            "retrieval examples of %d queries and %d attention maps written to %s", len(rows), len(maps), out
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, table, eval_set, maps, pl_module.matcher.audio_encoder.sample_rate)

    @staticmethod
    def _draw_maps(
        pl_module: L.LightningModule, eval_set: EvalSet, query_index: Tensor, rows: np.ndarray, folder: Path
    ) -> list[tuple[Path, str]]:
        """Attention maps of the queries at ``rows`` with their (first) relevant clip: ``(png, caption)``."""
        from lacoat.evaluation.attention_maps import attention_map, draw_attention_map

        matcher = pl_module.matcher
        if matcher.cascade is None or not len(rows):
            return []
        maps = []
        for number, row in enumerate(rows):
            query = eval_set.queries.iloc[int(query_index[row])]
            clip = eval_set.clips.iloc[int(query["relevant"][0])]
            amap = attention_map(matcher, clip["audio_path"], query["text"])
            path = folder / f"query_{number:02d}.png"
            draw_attention_map(amap, path)
            maps.append((path, f"{query['text']} | {clip['file_name']} | score {amap.score:.3f}"))
        return maps

    @staticmethod
    def _log_wandb(
        logger: WandbLogger,
        table: pd.DataFrame,
        eval_set: EvalSet,
        maps: list[tuple[Path, str]],
        sample_rate: int,
    ) -> None:
        import wandb

        from lacoat.data.audio import read_audio

        paths = dict(zip(eval_set.clips["file_name"], eval_set.clips["audio_path"], strict=True))
        audio: dict[str, wandb.Audio] = {}
        for name in table["file_name"].unique():
            audio[name] = wandb.Audio(
                read_audio(paths[name], sample_rate), sample_rate=sample_rate, caption=name
            )
        data = [
            [r.query, r.rank, r.file_name, audio[r.file_name], r.score, r.hit, r.correct_file]
            for r in table.itertuples(index=False)
        ]
        columns = ["query", "rank", "file", "audio", "score", "hit", "correct file"]
        media = {"test/retrieval_examples": wandb.Table(columns=columns, data=data)}
        for number, (path, caption) in enumerate(maps):  # one key each: the maps differ in height
            media[f"test/attention_map_{number:02d}"] = wandb.Image(str(path), caption=caption)
        logger.log_metrics(media)  # one step for the whole report
