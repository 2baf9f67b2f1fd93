import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from lacoat.data.audiocaps import AudioCaps, read_audiocaps_split
from lacoat.data.datamodule import RetrievalDataModule
from lacoat.data.table import CaptionRules
from lacoat.errors import DataError

PATTERN = "{split}_audio/Y{youtube_id}_{start_time}_{end_time}.wav"


@pytest.fixture()
def audiocaps_root(shared_data, tmp_path):
    """The real AudioCaps CSVs with placeholder audio for every test clip, under a custom pattern."""
    for name in ("train.csv", "val.csv", "test.csv"):
        (tmp_path / name).write_bytes((shared_data / "audiocaps" / name).read_bytes())
    table = read_audiocaps_split(tmp_path, "test", PATTERN)
    for path in table["audio_path"].drop_duplicates():
        (tmp_path / "test_audio").mkdir(exist_ok=True)
        sf.write(path, np.zeros(80, np.float32), 8000)
    return tmp_path


def test_real_csvs_and_pattern(shared_data):
    raw = pd.read_csv(shared_data / "audiocaps" / "test.csv", dtype=str)
    table = read_audiocaps_split(shared_data / "audiocaps", "test", PATTERN)
    assert len(table) == len(raw) == 4875
    first = raw.iloc[0]
    assert (
        table["file_name"][0]
        == f"test_audio/Y{first.youtube_id}_{first.start_time}_{int(first.start_time) + 10}.wav"
    )
    assert table["caption"].tolist() == raw["caption"].tolist()
    n_clips = table["file_name"].nunique()
    assert n_clips == raw.groupby(["youtube_id", "start_time"]).ngroups
    train = read_audiocaps_split(shared_data / "audiocaps", "train", None)
    assert train["file_name"][0].startswith("train/") and train["file_name"][0].endswith(".wav")


def test_missing_clips_skipped_counted_then_error(audiocaps_root):
    clips = read_audiocaps_split(audiocaps_root, "test", PATTERN)["audio_path"].drop_duplicates().tolist()
    rng = np.random.default_rng(0)
    gone = rng.choice(len(clips), size=len(clips) // 10, replace=False)
    for i in gone:
        (audiocaps_root / clips[i]).unlink()

    dm = RetrievalDataModule(
        AudioCaps(str(audiocaps_root), PATTERN, max_missing_fraction=0.2), check_audio=False
    )
    eval_set = dm.eval_set("test")
    assert len(dm.skipped["test"]) == len(gone)
    assert {p for p, reason in dm.skipped["test"]} == {clips[i] for i in gone}
    assert len(eval_set.clips) == len(clips) - len(gone)

    strict = RetrievalDataModule(
        AudioCaps(str(audiocaps_root), PATTERN, max_missing_fraction=0.05), check_audio=False
    )
    with pytest.raises(
        DataError, match=r"\d+ of \d+ clips \(9.9%\) of split 'test' are missing .*max_missing_fraction=0.05"
    ):
        strict.eval_set("test")


def test_unknown_pattern_field(shared_data):
    with pytest.raises(DataError, match=r"unknown field\(s\) \['id'\]"):
        AudioCaps(str(shared_data / "audiocaps"), "{id}.wav")


def test_aac_datasets_layout(tmp_path):
    base = tmp_path / "AUDIOCAPS"
    base.mkdir()
    (base / "val.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,30,a dog barks\n")
    table = AudioCaps(str(tmp_path)).read_stage("val", "error")
    assert table["audio_path"][0] == str(base / "audio_32000Hz" / "val" / "abc_30.flac")


def test_bad_start_time(tmp_path):
    (tmp_path / "val.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,x,a dog\n")
    with pytest.raises(
        DataError, match=r"first on line 2 \(file_name 'val/abc_x.wav'\): start_time 'x' is not"
    ):
        read_audiocaps_split(tmp_path, "val", None)
    (tmp_path / "val.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n1,abc,x,a dog\n2,abc,30,a cat\n"
    )
    rules = CaptionRules("skip")
    table = read_audiocaps_split(tmp_path, "val", None, rules)
    assert table["caption"].tolist() == ["a cat"] and rules.skipped[0][0] == f"{tmp_path / 'val.csv'}:2"


def test_real_identical_captions_of_a_clip_are_kept(shared_data):
    # AudioCaps has rows with the same clip and caption but their own audiocap_id; evaluations count both
    raw = pd.read_csv(shared_data / "audiocaps" / "test.csv", dtype=str)
    assert raw.duplicated(["youtube_id", "start_time", "caption"]).sum() == 118
    table = read_audiocaps_split(shared_data / "audiocaps", "test", None, "error")
    assert len(table) == len(raw)


def test_repeated_row_is_bad(tmp_path):
    rows = "1,abc,30,a dog\n2,abc,30,a dog\n1,abc,30,a dog\n"
    (tmp_path / "val.csv").write_text("audiocap_id,youtube_id,start_time,caption\n" + rows)
    with pytest.raises(DataError, match="first on line 4 .*repeats line 2"):
        read_audiocaps_split(tmp_path, "val", None)
    assert read_audiocaps_split(tmp_path, "val", None, "skip")["audiocap_id"].tolist() == ["1", "2"]
