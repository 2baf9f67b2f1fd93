"""Augmented captions in the DataModule: training only, with their clip's identity, subsampled by ratio."""

import pandas as pd
import pytest

from lacoat.augment.run import augment
from lacoat.data import Clotho, RetrievalDataModule
from lacoat.data.clotho import read_clotho_split
from lacoat.errors import DataError


def make_dm(root, **kwargs):
    defaults = dict(batch_size=8, num_workers=0, sample_rate=16000, window_seconds=2.0)
    return RetrievalDataModule(Clotho(str(root)), **{**defaults, **kwargs})


@pytest.fixture(scope="module")
def leaky_augmented(synthcaps, tmp_path_factory):
    """Rules paraphrases of *every* split, in one CSV, plus rows that copy val/test captions verbatim."""
    folder = tmp_path_factory.mktemp("aug")
    parts = []
    for split in ("development", "validation", "evaluation"):
        out = folder / f"{split}.csv"
        augment(
            str(synthcaps / f"clotho_captions_{split}.csv"), str(out), n=2, backend="rules", progress=False
        )
        parts.append(pd.read_csv(out, dtype=str, keep_default_na=False).assign(split=split))
    for split in ("validation", "evaluation"):  # val/test captions, verbatim, under their own clips
        originals = read_clotho_split(synthcaps, split)
        parts.append(originals[["file_name", "caption"]].assign(split=split, original_caption="copied"))
    table = pd.concat(parts, ignore_index=True).fillna("x")
    path = folder / "all_splits.csv"
    table.to_csv(path, index=False)
    return path, table


def test_no_augmented_caption_reaches_validation_or_test(synthcaps, leaky_augmented):
    path, leaky = leaky_augmented
    dm = make_dm(synthcaps, augmented_captions=str(path))
    dm.setup("fit")
    dm.setup("test")
    for stage, split in (("val", "validation"), ("test", "evaluation")):
        originals = read_clotho_split(synthcaps, split)
        queries = dm.eval_sets[stage].queries
        # exactly the split's own captions, nothing added or replaced
        assert queries["text"].tolist() == originals["caption"].tolist()
        assert (
            dm.eval_sets[stage].clips["file_name"].tolist()
            == originals["file_name"].drop_duplicates().tolist()
        )
        paraphrases = set(leaky.loc[leaky["split"] == split, "caption"]) - set(originals["caption"])
        assert paraphrases and not paraphrases & set(queries["text"])
    train = dm.train_table
    added = train[train["source"] == "augmented"]
    dev = leaky[leaky["split"] == "development"]
    assert sorted(zip(added["file_name"], added["caption"], strict=True)) == sorted(
        zip(dev["file_name"], dev["caption"], strict=True)
    )  # all development paraphrases, and only they
    ids = dm.clip_identity()
    first_id = dict(zip(train["file_name"], ids, strict=True))  # any row of the clip
    original = train["source"] == "original"
    clip_of_original = dict(zip(train.loc[original, "file_name"], ids[original.to_numpy()], strict=True))
    for name, clip in zip(added["file_name"], ids[(~original).to_numpy()], strict=True):
        assert clip == clip_of_original[name] == first_id[name]  # a positive of its clip's captions
    assert len(set(ids)) == 40  # no new clips
    paths = train.drop_duplicates("file_name").set_index("file_name")["audio_path"]
    assert (added["audio_path"].to_numpy() == paths.loc[added["file_name"]].to_numpy()).all()


def test_augmented_ratio_keeps_a_seeded_subset(synthcaps, leaky_augmented):
    path, _ = leaky_augmented

    def augmented(**kwargs):
        dm = make_dm(synthcaps, augmented_captions=str(path), check_audio=False, **kwargs)
        table = dm.training_table()
        return table[table["source"] == "augmented"]

    full = augmented()
    half = augmented(augmented_ratio=0.5, seed=1)
    assert len(half) == round(0.5 * len(full))
    assert set(half["caption"]) < set(full["caption"])
    assert half["caption"].tolist() == augmented(augmented_ratio=0.5, seed=1)["caption"].tolist()
    assert half["caption"].tolist() != augmented(augmented_ratio=0.5, seed=2)["caption"].tolist()
    with pytest.raises(DataError, match=r"augmented_ratio must lie in \(0, 1\]"):
        make_dm(synthcaps, augmented_captions=str(path), augmented_ratio=1.5)
