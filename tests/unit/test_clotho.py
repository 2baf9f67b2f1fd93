import csv

import numpy as np
import pytest
import soundfile as sf

from lacoat.data.clotho import Clotho, clotho_layout, read_clotho_split
from lacoat.errors import DataError


def placeholder_audio(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    silence = np.zeros(80, np.float32)
    for name in names:
        sf.write(str(folder / name), silence, 8000)


def test_real_evaluation_csv_loads_with_names_intact(shared_data, tmp_path):
    src = shared_data / "clotho_v2.1" / "clotho_captions_evaluation.csv"
    with open(src, newline="", encoding="utf-8") as f:  # independent reader of the same file
        rows = list(csv.DictReader(f))
    names = [r["file_name"] for r in rows]
    root = tmp_path / "clotho"
    root.mkdir()
    (root / src.name).write_bytes(src.read_bytes())
    placeholder_audio(root / "evaluation", names)

    table = read_clotho_split(root, "evaluation")
    assert len(table) == 5225 and table["file_name"].nunique() == 1045
    assert table["file_name"].drop_duplicates().tolist() == names
    assert any("," in n for n in names) and any("&#39;" in n for n in names)  # real Clotho names
    expected = [r[f"caption_{i}"] for r in rows for i in range(1, 6)]
    assert table["caption"].tolist() == expected
    assert table["audio_path"].tolist() == [str(root / "evaluation" / n) for n in table["file_name"]]


def test_aac_datasets_layout_is_recognised(tmp_path):
    csv_dir = tmp_path / "CLOTHO_v2.1" / "clotho_csv_files"
    audio_dir = tmp_path / "CLOTHO_v2.1" / "clotho_audio_files"
    csv_dir.mkdir(parents=True)
    (csv_dir / "clotho_captions_validation.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n a.wav,1,2,3,4,5\n", encoding="utf-8"
    )
    placeholder_audio(audio_dir / "validation", [" a.wav"])
    assert clotho_layout(tmp_path) == (csv_dir, audio_dir)
    table = Clotho(str(tmp_path)).read_stage("val", "error")
    assert table["audio_path"][0] == str(audio_dir / "validation" / " a.wav")


def test_wrong_root_explains_layouts(tmp_path):
    with pytest.raises(DataError, match="no Clotho data found under .*lacoat synth"):
        Clotho(str(tmp_path))


def test_missing_caption_column(tmp_path):
    (tmp_path / "clotho_captions_evaluation.csv").write_text("file_name,caption_1\na.wav,x\n")
    with pytest.raises(DataError, match=r"clotho_captions_evaluation.csv' lacks column\(s\) \['caption_2'"):
        read_clotho_split(tmp_path, "evaluation")
