"""``RetrievalDataModule``: any ``CaptionSource`` as training pairs and evaluation sets.

Training batches are caption–clip pairs with a clip identity per item (captions of one clip are
positives of each other). Evaluation uses two loaders, unique clips and text queries, so each clip is
read once; ``EvalSet`` says which clips each query should find.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from lacoat.contracts import CachedAudioEncoder, CachedEncoder, ModelFacts
from lacoat.data.audio import audio_info
from lacoat.data.batches import EpochShuffle, NeighbourBatchSampler, caption_neighbours
from lacoat.data.collate import collate
from lacoat.data.datasets import AudioLoader, ClipDataset, EvalSet, PairDataset, QueryDataset
from lacoat.data.features import CachedFeatures, CacheSpec, FeatureStore, audio_spec, text_spec
from lacoat.data.report import STAGE_OF_RUNNING, publish
from lacoat.data.source import CaptionSource
from lacoat.data.table import CaptionRules, Policy, read_augmented, read_multi_positive
from lacoat.errors import AudioReadError, DataError

log = logging.getLogger(__name__)


def drop_unavailable_clips(
    table: pd.DataFrame,
    split: str,
    max_missing_fraction: float,
    on_bad_audio: Policy,
    check_audio: bool,
    max_skipped_fraction: float = 0.5,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Remove rows whose clip is missing or unreadable, by policy, and report them.

    Unreadable means a folder or other non-file, or, with ``check_audio``, a header that cannot be
    read: empty, corrupt, unsupported format, no samples. Under ``error``, an unreadable file stops
    loading and missing files are skipped up to ``max_missing_fraction`` of the split's clips (YouTube
    removals in AudioCaps). Under ``skip``, missing and unreadable files are both skipped, up to the
    larger of ``max_missing_fraction`` and ``max_skipped_fraction`` (more is a wrong data root or pattern).

    Returns:
        The remaining rows and the ``(audio_path, reason)`` of every skipped clip.
    """
    paths = table["audio_path"].drop_duplicates().tolist()
    missing, bad = [], []
    for path in paths:
        if not Path(path).exists():  # a dangling link counts as missing
            missing.append((path, "missing (file not found)"))
        elif check_audio or not Path(path).is_file():
            try:
                audio_info(path)
            except AudioReadError as err:
                bad.append((path, str(err)))
    if bad and on_bad_audio == "error":
        raise DataError(
            f"{len(bad)} unreadable audio file(s) in split '{split}'; first: {bad[0][1]} "
            "Replace them, or set data.on_bad_audio: skip to leave them out (they are then counted and "
            "listed in skipped.csv)."
        )
    skipped = missing + bad
    if not skipped:
        return table, []
    fraction = len(skipped) / len(paths)
    if on_bad_audio == "error" and fraction > max_missing_fraction:
        raise DataError(
            f"{len(skipped)} of {len(paths)} clips ({fraction:.1%}) of split '{split}' are missing or "
            f"unreadable, more than max_missing_fraction={max_missing_fraction:g}; first: '{skipped[0][0]}'. "
            "Check the data root and the audio file pattern, raise max_missing_fraction, or set "
            "data.on_bad_audio: skip to leave missing clips out (they are then listed in skipped.csv)."
        )
    limit = max(max_missing_fraction, max_skipped_fraction)
    if fraction > limit:
        raise DataError(
            f"{len(skipped)} of {len(paths)} clips ({fraction:.1%}) of split '{split}' are missing or "
            f"unreadable, more than max_skipped_fraction={limit:g}; first: '{skipped[0][0]}'. "
            "So many usually means a wrong data root or audio file pattern; else raise "
            "data.max_skipped_fraction."
        )
    log.warning(
        "split '%s': skipped %d of %d clips (%.1f%%: %d missing, %d unreadable), first: %s",
        split,
        len(skipped),
        len(paths),
        100 * fraction,
        len(missing),
        len(bad),
        skipped[0][0],
    )
    gone = {p for p, _ in skipped}
    return table[~table["audio_path"].isin(gone)].reset_index(drop=True), skipped


class RetrievalDataModule(L.LightningDataModule):
    """Language-based audio retrieval data from any ``CaptionSource`` (Clotho, AudioCaps, own CSV).

    Args:
        source: the data set (``lacoat.data.Clotho``, ``lacoat.data.AudioCaps``, ``lacoat.data.CaptionCsv``).
        batch_size: training pairs per batch.
        eval_batch_size: clips or queries per evaluation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        sample_rate: rate the audio encoder expects (Hz); files are resampled to it.
        window_seconds: window length (s); longer clips become several windows.
        max_train_windows: windows per training clip (a random run of them); None keeps all.
        max_eval_windows: windows per evaluation clip (the first ones); None keeps all.
        min_last_window: drop a trailing partial window shorter than this fraction of a window.
        train_shift_seconds: each time a training clip is read, start it up to this much later, at
            random, skipping only samples of its leading quiet stretch (never a sound), so its sounds
            fall on another grid of audio tokens; 0 (the default) reads clips as they are. Needs
            waveforms (not with cached audio features).
        on_bad_audio: ``error`` stops on a missing, corrupt, empty or undecodable file (missing ones are
            tolerated up to the source's ``max_missing_fraction``), naming it; ``skip`` leaves such
            clips out, at setup or when a batch meets them, counts them and lists them in the run's
            ``skipped.csv`` (see ``lacoat.data.report``). Silent clips are valid audio and kept.
        on_bad_caption: ``error`` stops on a bad caption row (empty or blank caption, line break,
            control character, longer than ``max_caption_chars``, blank file name, repeated row),
            naming the CSV line; ``skip`` drops such rows, counts them and lists them in ``skipped.csv``.
        max_caption_chars: longest caption accepted (None: no limit). A longer one is almost always a
            broken row (lines merged by a stray quote); real captions stay under 300 characters.
        max_skipped_fraction: under ``skip``, the fraction of a split's clips or caption rows that may
            be skipped before loading fails (skipping more usually means a wrong root or file).
        check_audio: read every file's header at setup, so bad files surface before training starts.
        augmented_captions: CSV of paraphrased training captions (``file_name,caption`` + provenance);
            added to the training split only, each with its clip's identity (``lacoat augment`` makes it).
        augmented_ratio: fraction of the augmented captions used, in (0, 1]: a fixed random subset
            chosen by ``seed`` (1.0 uses all). With ``lacoat augment --n N``, ``1/N`` adds about one
            paraphrase per original caption.
        multi_positive: DCASE 2025 ``metadata_eval.csv`` (``query,audio_filenames``) for the test split.
        pin_memory: pin batches (default: when CUDA is available).
        seed: seed of shuffling and of random window choice.
        feature_cache: folder of features written by ``lacoat extract``; the model's *frozen* encoders
            read their outputs from it instead of running (see ``use_cached_features``).
        hard_share: share of each training batch filled with hard negatives: captions of clips whose
            captions are most alike those of the batch's random items (``lacoat.data.batches``); 0 gives
            random batches. Neighbours are mined with the model's text encoder (``set_caption_embedder``).
        hard_neighbours: nearest clips per clip that hard negatives are drawn from.
    """

    def __init__(
        self,
        source: CaptionSource,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        sample_rate: int = 48000,
        window_seconds: float = 10.0,
        max_train_windows: int | None = None,
        max_eval_windows: int | None = None,
        min_last_window: float = 0.0,
        train_shift_seconds: float = 0.0,
        on_bad_audio: Policy = "error",
        on_bad_caption: Policy = "error",
        max_caption_chars: int | None = 1000,
        max_skipped_fraction: float = 0.5,
        check_audio: bool = True,
        augmented_captions: str | None = None,
        augmented_ratio: float = 1.0,
        multi_positive: str | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
        feature_cache: str | None = None,
        hard_share: float = 0.0,
        hard_neighbours: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["source"])
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        if train_shift_seconds < 0:
            raise DataError(f"train_shift_seconds must be 0 or more, got {train_shift_seconds}")
        self.train_loader = AudioLoader(
            sample_rate, window_seconds, max_train_windows, min_last_window, train_shift_seconds
        )
        self.eval_loader = AudioLoader(sample_rate, window_seconds, max_eval_windows, min_last_window)
        self.on_bad_audio = on_bad_audio
        self.on_bad_caption = on_bad_caption
        self.max_caption_chars = max_caption_chars
        self.max_skipped_fraction = max_skipped_fraction
        self.check_audio = check_audio
        self.augmented_captions = augmented_captions
        if not 0.0 < augmented_ratio <= 1.0:
            raise DataError(f"augmented_ratio must lie in (0, 1], got {augmented_ratio}")
        self.augmented_ratio = augmented_ratio
        self.multi_positive = multi_positive
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        self.feature_cache = feature_cache
        if not 0.0 <= hard_share < 1.0:
            raise DataError(f"hard_share must lie in [0, 1), got {hard_share}")
        if hard_neighbours < 1:
            raise DataError(f"hard_neighbours must be at least 1, got {hard_neighbours}")
        self.hard_share, self.hard_neighbours = hard_share, hard_neighbours
        self.caption_embedder: Callable[[list[str]], Tensor] | None = None  # set_caption_embedder
        self.neighbours: np.ndarray | None = None  # [n_clips, k], from training_neighbours
        self.cache_specs: dict[str, CacheSpec] = {}  # side -> spec, set by use_cached_features
        self.tokens_per_window = 1
        self.train_table: pd.DataFrame | None = None
        self.eval_sets: dict[str, EvalSet] = {}
        self.skipped: dict[str, list[tuple[str, str]]] = {}  # stage -> (path or CSV:LINE, reason)
        self.batch_skips: list[tuple[str, str, str]] = []  # (stage, path, reason) dropped from batches

    # ---- reading -------------------------------------------------------------------------------
    def load_table(self, stage: str) -> pd.DataFrame:
        """Caption table of ``stage`` (train/val/test) with bad rows and unavailable clips removed
        (or an error, by policy); what was skipped is kept in ``skipped[stage]``."""
        rules = CaptionRules(self.on_bad_caption, self.max_caption_chars)
        table = self.source.read_stage(stage, rules)
        n_rows = len(table) + len(rules.skipped)
        if len(rules.skipped) > self.max_skipped_fraction * n_rows:
            raise DataError(
                f"{len(rules.skipped)} of {n_rows} caption rows of the {stage} split of {self.source!r} are "
                f"bad, more than max_skipped_fraction={self.max_skipped_fraction:g}; first: "
                f"{rules.skipped[0][0]}: {rules.skipped[0][1]}. Is it the right file?"
            )
        table, skipped = drop_unavailable_clips(
            table,
            self.source.splits[stage],
            self.source.max_missing_fraction,
            self.on_bad_audio,
            self.check_audio,
            self.max_skipped_fraction,
        )
        self.skipped[stage] = rules.skipped + skipped
        if table.empty:
            raise DataError(f"the {stage} split of {self.source!r} has no captions left.")
        return table

    def training_table(self) -> pd.DataFrame:
        """Training captions, with augmented captions (``augmented_ratio`` of them) appended if configured."""
        table = self.load_table("train")
        if self.augmented_captions:
            rules = CaptionRules(self.on_bad_caption, self.max_caption_chars)
            aug = read_augmented(self.augmented_captions, table["file_name"].tolist(), rules)
            self.skipped["train"] = self.skipped.get("train", []) + rules.skipped
            if self.augmented_ratio < 1.0:
                keep = max(round(self.augmented_ratio * len(aug)), 1)
                rows = np.sort(np.random.default_rng(self.seed).choice(len(aug), size=keep, replace=False))
                log.info(
                    "augmented captions: using %d of %d (augmented_ratio=%g)",
                    keep,
                    len(aug),
                    self.augmented_ratio,
                )
                aug = aug.iloc[rows].reset_index(drop=True)
            paths = table.drop_duplicates("file_name").set_index("file_name")["audio_path"]
            aug["audio_path"] = paths.loc[aug["file_name"]].to_numpy()
            table = pd.concat([table, aug], ignore_index=True)
        return table

    def eval_set(self, stage: str) -> EvalSet:
        """The ``EvalSet`` of ``val`` or ``test`` (multi-positive annotations on ``test``)."""
        if stage not in self.eval_sets:
            multi = (
                read_multi_positive(self.multi_positive) if stage == "test" and self.multi_positive else None
            )
            self.eval_sets[stage] = EvalSet.from_table(
                self.load_table(stage), multi, self.source.twin_specs(stage)
            )
        return self.eval_sets[stage]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            if self.train_table is None:
                self.train_table = self.training_table()
            if "val" in self.source.splits:
                self.eval_set("val")
        elif stage == "validate":
            self.eval_set("val")
        elif stage in ("test", "predict"):
            self.eval_set("test")

    # ---- skip report ---------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the items a loader dropped from ``batch`` (``batch["skipped"]``) for the skip report."""
        if isinstance(batch, dict) and batch.get("skipped"):
            stage = STAGE_OF_RUNNING.get(getattr(self.trainer.state.stage, "value", ""), "train")
            self.batch_skips.extend((stage, path, reason) for path, reason in batch["skipped"])
        return batch

    def teardown(self, stage: str) -> None:
        """At the end of a run: log the skip counts and write ``skipped.csv`` (``lacoat.data.report``)."""
        if self.trainer is not None:
            publish(self.skipped, self.batch_skips, self.source.splits, self.trainer, stage)

    def on_exception(self, exception: BaseException) -> None:
        """A failed run reports what it skipped too (this process's batches only: no collective call)."""
        fn = getattr(self.trainer.state.fn, "value", "") if self.trainer is not None else ""
        if not fn:
            return
        try:
            publish(self.skipped, self.batch_skips, self.source.splits, self.trainer, fn, collective=False)
        except Exception as err:  # never hide the exception that stopped the run
            log.warning("could not report skipped items: %s", err)

    # ---- the model's side ----------------------------------------------------------------------
    def connect_model(self, model: ModelFacts) -> None:
        """Take what the data needs of the model (the one seam, ``lacoat.contracts``): check that audio is
        cut the way its audio encoder reads it, serve cached outputs of its frozen encoders
        (``feature_cache``) and mine hard negatives with its caption embedder (``hard_share``)."""
        loader = self.eval_loader
        expected = (model.sample_rate, round(model.sample_rate * model.window_seconds))
        if (loader.sample_rate, loader.window_samples) != expected:
            raise DataError(
                f"the data is read at {loader.sample_rate} Hz in {loader.window_seconds:g}-s windows but "
                f"{model.audio_encoder_name} expects {model.sample_rate} Hz and {model.window_seconds:g}-s "
                f"windows; set data.sample_rate: {model.sample_rate} and data.window_seconds: "
                f"{model.window_seconds:g}"
            )
        if model.caption_embedder is not None:
            self.set_caption_embedder(model.caption_embedder)
        self.use_cached_features(model.frozen_audio, model.frozen_text)

    # ---- cached features -----------------------------------------------------------------------
    def use_cached_features(
        self, audio_encoder: CachedAudioEncoder | None, text_encoder: CachedEncoder | None
    ) -> None:
        """Serve cached outputs of these (frozen) encoders instead of audio / text, when
        ``feature_cache`` holds features of exactly their configuration.

        Called by ``connect_model`` with the model's frozen encoders (None for a trained one). A side
        without features of this configuration is encoded online, with a warning that names what the
        cache holds instead; an incomplete, stale or damaged cache is an error when the loaders are made.
        """
        self.cache_specs = {}
        if not self.feature_cache:
            return
        specs = {}
        if audio_encoder is not None:
            loader = self.eval_loader
            specs["audio"] = audio_spec(
                self.feature_cache,
                audio_encoder,
                loader.sample_rate,
                loader.window_seconds,
                loader.min_last_window,
            )
            self.tokens_per_window = audio_encoder.tokens_per_window
            if self.train_loader.max_shift_seconds > 0:
                raise DataError(
                    "data.train_shift_seconds shifts training waveforms, and data.feature_cache serves "
                    "the audio encoder's outputs instead; set train_shift_seconds to 0 or remove "
                    "data.feature_cache."
                )
            cuts = self.train_loader.max_windows is not None or self.eval_loader.max_windows is not None
            if cuts and not getattr(audio_encoder, "window_local", False):
                raise DataError(
                    f"{type(audio_encoder).__name__} encodes a clip's windows together, so its cached "
                    "features cannot be cut into windows; set data.max_train_windows and "
                    "data.max_eval_windows to null, or remove data.feature_cache."
                )
        if text_encoder is not None:
            specs["text"] = text_spec(self.feature_cache, text_encoder)
        for side, spec in specs.items():
            if spec.folder.is_dir():
                self.cache_specs[side] = spec
                log.info("using cached %s features from %s", side, spec.folder)
                continue
            others = spec.others()
            log.warning(
                "no cached %s features for %s %s in '%s'%s; encoding online. Run `lacoat extract --config …` "
                "to cache them.",
                side,
                spec.identity,
                spec.settings or "",
                self.feature_cache,
                f" (it holds features of: {'; '.join(others)})" if others else "",
            )

    def cached_features(self, stage: str, clips: pd.DataFrame, captions: list[str]) -> CachedFeatures | None:
        """The cached features of a stage's ``clips`` (``file_name``, ``audio_path``) and ``captions``."""
        if not self.cache_specs:
            return None
        split = self.source.splits[stage]
        stores = {}
        if "audio" in self.cache_specs:
            expected = dict(zip(clips["file_name"], clips["audio_path"], strict=True))
            stores["audio"] = FeatureStore(self.cache_specs["audio"], split, expected)
        if "text" in self.cache_specs:
            stores["text"] = FeatureStore(self.cache_specs["text"], split, dict.fromkeys(captions))
        return CachedFeatures(stores.get("audio"), stores.get("text"), self.tokens_per_window)

    # ---- hard negatives ------------------------------------------------------------------------
    def set_caption_embedder(self, embed: Callable[[list[str]], Tensor]) -> None:
        """Give the function that maps captions to embeddings ``[n, E]`` for mining hard negatives
        (the model passes its text encoder's mean token states). Neighbours are mined from it once,
        when the training loader is first made."""
        self.caption_embedder = embed
        self.neighbours = None

    def training_neighbours(self) -> np.ndarray:
        """``[n_clips, k]``: each training clip's ``hard_neighbours`` nearest clips by caption similarity."""
        if self.neighbours is None:
            if self.caption_embedder is None:
                raise DataError(
                    "data.hard_share needs caption embeddings to mine neighbours with; the model gives them "
                    "(LacoatModule.setup hands it to connect_model) — connect the model before making the train loader."
                )
            start = time.perf_counter()
            embeddings = self.caption_embedder(self.train_table["caption"].tolist())  # [n_captions, E]
            self.neighbours = caption_neighbours(embeddings, self.clip_identity(), self.hard_neighbours)
            log.info(
                "hard negatives: %d nearest clips of each of %d training clips mined from caption "
                "similarity in %.1f s; %.0f%% of each batch",
                self.neighbours.shape[1],
                len(self.neighbours),
                time.perf_counter() - start,
                100 * self.hard_share,
            )
        return self.neighbours

    # ---- loaders -------------------------------------------------------------------------------
    def clip_identity(self) -> np.ndarray:
        """``[len(train_table)]`` clip index of each training caption (equal index = same clip)."""
        assert self.train_table is not None, "call setup('fit') first"
        return pd.factorize(self.train_table["file_name"])[0]

    def _eval_loader(self, dataset: torch.utils.data.Dataset) -> DataLoader:
        return StatefulDataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_table is not None, "call setup('fit') first"
        table = self.train_table
        features = self.cached_features(
            "train", table.drop_duplicates("file_name"), table["caption"].unique().tolist()
        )
        clip_of = self.clip_identity()
        dataset = PairDataset(table, clip_of, self.train_loader, self.on_bad_audio, self.seed, features)
        # Stateful: a checkpoint taken mid-epoch records the loader's position (and its workers'), so
        # `--ckpt_path last` continues with the very next batch; the order is a function of seed and epoch.
        batches = NeighbourBatchSampler(  # random batches when hard_share is 0
            EpochShuffle(len(dataset), self.seed),
            min(self.batch_size, len(dataset)),  # a set smaller than a batch is one batch
            True,
            clip_of,
            self.training_neighbours() if self.hard_share > 0 else None,
            self.hard_share,
            self.seed,
        )
        return StatefulDataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds
        )

    def eval_dataloaders(self, stage: str) -> list[DataLoader]:
        """``[clips, queries]`` loaders of the ``val`` or ``test`` set."""
        eval_set = self.eval_set(stage)
        texts = eval_set.queries["text"].tolist()
        features = self.cached_features(stage, eval_set.clips, list(dict.fromkeys(texts)))
        clips = ClipDataset(
            eval_set.clips["audio_path"].tolist(),
            self.eval_loader,
            eval_set.clips["file_name"].tolist(),
            features,
            self.on_bad_audio,
        )
        queries = QueryDataset(texts, features)
        return [self._eval_loader(clips), self._eval_loader(queries)]

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders("val") if "val" in self.source.splits else []

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders("test")
