import pytest

from lacoat.data.table import (
    CaptionRules,
    read_csv_strict,
    read_long_captions,
    read_multi_positive,
    record_lines,
    wide_to_long,
)
from lacoat.errors import DataError


def test_strings_kept_exactly(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('file_name,caption\n" lead, comma ""q"" é.wav",NA\nb.wav,  spaced  \n', encoding="utf-8")
    df = read_long_captions(path, "error")
    assert df["file_name"].tolist() == [' lead, comma "q" é.wav', "b.wav"]
    assert df["caption"].tolist() == ["NA", "  spaced  "]  # no NaN conversion, no stripping


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="CSV file not found: '.*nope.csv'"):
        read_csv_strict(tmp_path / "nope.csv", ["file_name"])


def test_missing_column_names_file_and_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("file_name,text\na.wav,hello\n")
    with pytest.raises(
        DataError, match=r"bad.csv' lacks column\(s\) \['caption'\]; it has \['file_name', 'text'\]"
    ):
        read_long_captions(path, "error")


def test_wrong_encoding_says_how_to_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("file_name,caption\ncaf\xe9.wav,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="ISO-8859-1"):
        read_long_captions(path, "error")
    assert read_csv_strict(path, ["file_name"], encoding="ISO-8859-1")["file_name"][0] == "café.wav"


def test_empty_caption_error_names_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("file_name,caption\na.wav,one\nb.wav,   \nc.wav,three\n")
    with pytest.raises(DataError, match="first on line 3 \\(file_name 'b.wav'\\)"):
        read_long_captions(path, "error")
    assert read_long_captions(path, "skip")["file_name"].tolist() == ["a.wav", "c.wav"]


def test_wide_to_long_is_clip_major(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("file_name,caption_1,caption_2\na.wav,a1,a2\nb.wav,b1,b2\n")
    long, lines = wide_to_long(read_csv_strict(path, ["file_name"]), ["caption_1", "caption_2"])
    assert long.values.tolist() == [["a.wav", "a1"], ["a.wav", "a2"], ["b.wav", "b1"], ["b.wav", "b2"]]
    assert lines.tolist() == [2, 2, 3, 3]


def test_multi_positive_parse_and_errors(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("query,audio_filenames\nrain,\"['a.wav', 'b, c.wav']\"\n")
    df = read_multi_positive(path)
    assert df["file_names"][0] == ["a.wav", "b, c.wav"]
    path.write_text("query,audio_filenames\nrain,\"['a.wav'\"\n")
    with pytest.raises(DataError, match="line 2: audio_filenames is not a list literal"):
        read_multi_positive(path)


def test_first_row_longer_than_header_is_not_taken_as_an_index(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("file_name,caption\na.wav,a dog barks, then stops\nb.wav,rain\n")
    # plain pandas would make a.wav the index and shift every column of this row
    with pytest.raises(DataError, match="c.csv' line 2 has more fields than the header.*must be quoted"):
        read_long_captions(path, "error")


def test_line_numbers_follow_blank_lines_and_multiline_fields(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('file_name,caption\na.wav,one\n\n   \nb.wav,"two\nlines"\nc.wav,\n')
    assert record_lines(path, 3).tolist() == [2, 5, 7]
    rules = CaptionRules("skip")
    assert read_long_captions(path, rules)["file_name"].tolist() == ["a.wav"]
    assert [where for where, _ in rules.skipped] == [f"{path}:5", f"{path}:7"]
    assert "line break" in rules.skipped[0][1] and "caption is empty" in rules.skipped[1][1]
