import numpy as np
import pandas as pd
import pytest
import torch

from lacoat.data import Clotho, RetrievalDataModule
from lacoat.data.clotho import read_clotho_split
from lacoat.data.source import CaptionCsv
from lacoat.errors import AudioReadError, DataError
from tests.helpers import write_tone


def make_dm(root, **kwargs):
    defaults = dict(batch_size=8, num_workers=0, sample_rate=16000, window_seconds=2.0)
    return RetrievalDataModule(Clotho(str(root)), **{**defaults, **kwargs})


def test_synthcaps_loads_train_batches_with_clip_identity(synthcaps):
    dm = make_dm(synthcaps)
    dm.setup("fit")
    table = dm.train_table
    assert len(table) == 5 * 40
    ids = dm.clip_identity()
    per_clip = pd.Series(ids).groupby(table["file_name"].to_numpy()).nunique()
    assert (per_clip == 1).all()  # all captions of a clip share one identity
    assert len(set(ids)) == 40
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape[0] == 8 and batch["audio"].shape[2] == 32000
    assert batch["audio_valid"].shape == batch["audio"].shape[:2]
    assert (batch["audio_valid"][:, 0] > 0).all()
    assert len(batch["captions"]) == 8 and batch["clip_index"].dtype == torch.long
    # a clip of 3-7 s in 2-s windows: padding windows have 0 valid samples and zero audio
    pad = batch["audio_valid"] == 0
    assert batch["audio"][pad].abs().sum() == 0


def test_training_batches_are_deterministic(synthcaps):
    def first_batches(seed):
        dm = make_dm(synthcaps, seed=seed, max_train_windows=1)
        dm.setup("fit")
        it = iter(dm.train_dataloader())
        return [next(it) for _ in range(2)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for x, y in zip(a, b, strict=True):
        assert x["captions"] == y["captions"] and torch.equal(x["audio"], y["audio"])
    assert a[0]["captions"] != c[0]["captions"]


def epoch_captions(loader, epoch: int, skip: int = 0) -> list[list[str]]:
    """The captions of the loader's batches of ``epoch`` (Lightning sets the epoch like this)."""
    loader.batch_sampler.sampler.set_epoch(epoch)
    return [b["captions"] for b in loader][skip:]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumed_mid_epoch_meets_the_same_later_epochs(synthcaps, workers):
    dm = make_dm(synthcaps, num_workers=workers)
    dm.setup("fit")
    first = dm.train_dataloader()
    first.batch_sampler.sampler.set_epoch(0)
    it = iter(first)
    seen = [next(it)["captions"] for _ in range(2)]
    state = first.state_dict()
    rest = [b["captions"] for b in it]
    later = epoch_captions(first, 1)
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    assert [b["captions"] for b in resumed] == rest
    assert epoch_captions(resumed, 1) == later != seen + rest  # the next epoch: the same new order


def test_under_ddp_each_epoch_gives_each_rank_a_new_share(synthcaps):
    # what Lightning's data connector does with a training loader under DDP (use_distributed_sampler)
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled

    dm = make_dm(synthcaps)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert _is_dataloader_shuffled(loader)
    ranks = [
        _get_distributed_sampler(loader, shuffle=True, mode=None, overfit_batches=0, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    orders = {}
    for epoch in (0, 1):
        for r, sampler in enumerate(ranks):
            sampler.set_epoch(epoch)
            orders[epoch, r] = list(sampler)
    assert set(orders[0, 0]).isdisjoint(orders[0, 1]) and orders[0, 0] != orders[1, 0]


def test_eval_set_clips_queries_relevance(synthcaps):
    dm = make_dm(synthcaps, eval_batch_size=4)
    dm.setup("fit")
    val = dm.eval_sets["val"]
    assert len(val.clips) == 10 and len(val.queries) == 50
    rel = val.relevance("caption")
    assert rel.shape == (50, 10) and (rel.sum(1) == 1).all() and (rel.sum(0) == 5).all()
    clips_loader, query_loader = dm.val_dataloader()
    seen = torch.cat([b["clip_index"] for b in clips_loader])
    assert seen.tolist() == list(range(10))
    texts = [t for b in query_loader for t in b["captions"]]
    assert texts == val.queries["text"].tolist()
    table = read_clotho_split(synthcaps, "validation")
    assert texts == table["caption"].tolist()


def test_multi_positive_queries_on_test(synthcaps, tmp_path):
    names = read_clotho_split(synthcaps, "evaluation")["file_name"].drop_duplicates().tolist()
    path = tmp_path / "metadata_eval.csv"
    pd.DataFrame({"query": ["two things"], "audio_filenames": [str(names[:2])]}).to_csv(path, index=False)
    dm = make_dm(synthcaps, multi_positive=str(path))
    dm.setup("test")
    test = dm.eval_sets["test"]
    assert test.groups() == ["caption", "multi"]
    assert test.relevance("multi").tolist() == [[True, True] + [False] * 8]
    assert test.query_indices("multi").tolist() == [50]


def test_augmented_captions_reach_training_only(synthcaps, tmp_path):
    train_names = read_clotho_split(synthcaps, "development")["file_name"].drop_duplicates().tolist()
    val_names = read_clotho_split(synthcaps, "validation")["file_name"].drop_duplicates().tolist()
    aug = pd.DataFrame(
        {
            "file_name": [train_names[0], train_names[1], val_names[0]],
            "caption": ["AUG one", "AUG two", "AUG leak"],
            "model": "rules",
            "prompt_hash": "abc",
        }
    )
    path = tmp_path / "aug.csv"
    aug.to_csv(path, index=False)
    dm = make_dm(synthcaps, augmented_captions=str(path))
    dm.setup("fit")
    dm.setup("test")
    train = dm.train_table
    added = train[train["source"] == "augmented"]
    assert added["caption"].tolist() == ["AUG one", "AUG two"]
    assert added["model"].tolist() == ["rules", "rules"]
    ids = dm.clip_identity()
    first = train.index[train["file_name"] == train_names[0]]
    assert len(set(ids[first])) == 1 and len(first) == 6  # augmented caption shares its clip's identity
    for stage in ("val", "test"):
        assert not dm.eval_sets[stage].queries["text"].str.startswith("AUG").any()


def copy_split(synthcaps, tmp_path, split="validation"):
    root = tmp_path / "copy"
    (root / split).mkdir(parents=True)
    csv = synthcaps / f"clotho_captions_{split}.csv"
    (root / csv.name).write_bytes(csv.read_bytes())
    for p in (synthcaps / split).iterdir():
        (root / split / p.name).write_bytes(p.read_bytes())
    return root


@pytest.mark.parametrize("damage", ["corrupt", "empty"])
def test_bad_audio_error_names_file_or_skip_counts(synthcaps, tmp_path, damage):
    root = copy_split(synthcaps, tmp_path)
    victim = sorted((root / "validation").iterdir())[3]
    victim.write_bytes(b"" if damage == "empty" else b"RIFF\x00\x01garbage" * 10)
    with pytest.raises(DataError, match=f"(?s)1 unreadable audio file.*{victim.name}.*on_bad_audio: skip"):
        make_dm(root).eval_set("val")
    dm = RetrievalDataModule(Clotho(str(root), max_missing_fraction=0.2), on_bad_audio="skip", num_workers=0)
    eval_set = dm.eval_set("val")
    assert len(eval_set.clips) == 9 and [p for p, _ in dm.skipped["val"]] == [str(victim)]


def test_bad_audio_found_while_training_is_skipped_and_counted(synthcaps, tmp_path):
    root = tmp_path / "own"
    audio = root / "audio"
    for i in range(4):
        write_tone(audio / f"c{i}.wav", seconds=0.5)
    (root / "train.csv").write_text("file_name,caption\n" + "".join(f"c{i}.wav,clip {i}\n" for i in range(4)))
    dm = RetrievalDataModule(
        CaptionCsv(str(audio), train_csv=str(root / "train.csv")),
        batch_size=4,
        num_workers=0,
        sample_rate=16000,
        window_seconds=1.0,
        on_bad_audio="skip",
    )
    dm.setup("fit")
    (audio / "c2.wav").write_bytes(b"not audio at all" * 8)  # broken after the setup-time check
    batch = next(iter(dm.train_dataloader()))
    assert batch["n_skipped"] == 1
    assert sorted(batch["captions"]) == ["clip 0", "clip 1", "clip 3"]
    dm.on_bad_audio = "error"
    with pytest.raises(AudioReadError, match="c2.wav"):
        next(iter(dm.train_dataloader()))


def test_empty_caption_error_names_row(synthcaps, tmp_path):
    root = copy_split(synthcaps, tmp_path)
    csv = root / "clotho_captions_validation.csv"
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[4, "caption_3"] = " "
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match="first on line 6"):
        make_dm(root).eval_set("val")
    dm = make_dm(root, on_bad_caption="skip")
    assert len(dm.eval_set("val").queries) == 49
    assert [where for where, _ in dm.skipped["val"]] == [f"{csv}:6"]


def test_missing_split_for_own_data(tmp_path):
    write_tone(tmp_path / "a.wav")
    (tmp_path / "t.csv").write_text("file_name,caption\na.wav,x\n")
    dm = RetrievalDataModule(CaptionCsv(str(tmp_path), train_csv=str(tmp_path / "t.csv")), num_workers=0)
    with pytest.raises(DataError, match="has no test split"):
        dm.setup("test")
    assert dm.val_dataloader() == []


def test_pinned_memory_follows_cuda(synthcaps):
    assert make_dm(synthcaps).pin_memory == torch.cuda.is_available()
    assert np.isclose(make_dm(synthcaps).train_loader.window_samples, 32000)


def test_training_start_shift_is_random_per_read_and_deterministic(synthcaps):
    def first_batch(seed, shift):
        dm = make_dm(synthcaps, seed=seed, train_shift_seconds=shift)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, plain = first_batch(1, 0.3), first_batch(1, 0.3), first_batch(1, 0.0)
    assert a["captions"] == b["captions"] == plain["captions"]  # the shift leaves batches alone
    assert torch.equal(a["audio"], b["audio"])
    shorter = a["audio_valid"].sum(1) < plain["audio_valid"].sum(1)
    assert shorter.any() and (a["audio_valid"].sum(1) <= plain["audio_valid"].sum(1)).all()
    with pytest.raises(DataError, match="train_shift_seconds"):
        make_dm(synthcaps, train_shift_seconds=-0.1)


def test_a_datamodule_built_at_another_rate_than_the_encoder_is_refused(synthcaps):
    """Configs link the data's rate to the encoder's; a DataModule built in Python can still differ."""
    from lacoat.contracts import ModelFacts

    dm = make_dm(synthcaps, sample_rate=8000)
    facts = ModelFacts(16000, 2.0, "LogMelAudioEncoder", frozen_audio=None, frozen_text=None)
    with pytest.raises(DataError, match="read at 8000 Hz") as err:
        dm.connect_model(facts)
    assert "set data.sample_rate: 16000" in str(err.value)
