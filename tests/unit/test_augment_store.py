"""The answer store, input formats and output files of lacoat augment."""

import sqlite3

import pandas as pd
import pytest

from lacoat.augment.backends import retry_after
from lacoat.augment.inputs import read_captions
from lacoat.augment.run import OUTPUT_COLUMNS, augment, failure_report_path
from lacoat.augment.store import Answer, AnswerStore, now
from lacoat.data.audiocaps import read_audiocaps_split
from lacoat.data.clotho import read_clotho_split
from lacoat.errors import DataError


def answer(caption, texts=("one", "two")):
    return Answer(caption, list(texts), "openai", "raw", 1, 10, 5, now())


def test_store_keys_answers_by_model_prompt_caption_and_n(tmp_path):
    path = tmp_path / "answers.sqlite"
    with AnswerStore(path) as store:
        store.put("m1", "h1", 2, answer("a dog barks"))
        store.put_failure("m1", "h1", 2, "a cat meows", "500: boom", 3, ["half"])
        assert store.failures("m1", "h1", 2) == {"a cat meows": ("500: boom", 3)}
        store.put("m1", "h1", 2, answer("a cat meows"))  # a later success clears the failure
        assert store.failures("m1", "h1", 2) == {}
    with AnswerStore(path) as store:  # reopened: everything is still there
        got = store.answers("m1", "h1", 2)
        assert set(got) == {"a dog barks", "a cat meows"} and got["a dog barks"].paraphrases == ["one", "two"]
        assert got["a dog barks"].prompt_tokens == 10
        for key in (("m2", "h1", 2), ("m1", "h2", 2), ("m1", "h1", 3)):
            assert store.answers(*key) == {}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_store_that_is_not_sqlite_is_a_clear_error(tmp_path):
    path = tmp_path / "answers.sqlite"
    path.write_text("not a database\n" * 100)
    with pytest.raises(DataError, match="cannot open the answer store"):
        AnswerStore(path)


def test_retry_after_header_forms():
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_inputs_in_every_format_keep_the_sources_file_names(synthcaps, tmp_path):
    clotho, kind = read_captions(synthcaps / "clotho_captions_development.csv")
    assert kind == "clotho"
    expected = read_clotho_split(synthcaps, "development")
    assert clotho["file_name"].tolist() == expected["file_name"].tolist()  # leading spaces, commas kept
    assert clotho["caption"].tolist() == expected["caption"].tolist()

    root = tmp_path / "audiocaps"
    root.mkdir()
    (root / "train.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n1,abc,30,A dog barks\n2,-xy_z,0,Rain falls\n"
    )
    audiocaps, kind = read_captions(root / "train.csv")
    assert kind == "audiocaps"
    assert audiocaps["file_name"].tolist() == read_audiocaps_split(root, "train", None)["file_name"].tolist()
    assert audiocaps["file_name"].tolist() == ["train/abc_30.wav", "train/-xy_z_0.wav"]
    pattern = "{split}/{youtube_id}.flac"
    own, _ = read_captions(root / "train.csv", audio_pattern=pattern)
    assert own["file_name"].tolist() == ["train/abc.flac", "train/-xy_z.flac"]

    plain = tmp_path / "plain.csv"
    plain.write_text('file_name,caption,extra\n" a, b.wav",A dog barks,x\n" a, b.wav",A hound barks,y\n')
    table, kind = read_captions(plain)
    assert kind == "plain" and table.columns.tolist() == ["file_name", "caption"]
    assert table["file_name"].tolist() == [" a, b.wav", " a, b.wav"]

    other = tmp_path / "other.csv"
    other.write_text("name,text\nx,y\n")
    with pytest.raises(DataError, match="not a captions CSV lacoat knows"):
        read_captions(other)


def test_real_metadata_files_are_read(shared_data):
    clotho, kind = read_captions(shared_data / "clotho_v2.1" / "clotho_captions_evaluation.csv")
    assert kind == "clotho" and len(clotho) == 5 * 1045
    audiocaps, kind = read_captions(shared_data / "audiocaps" / "val.csv")
    source = read_audiocaps_split(shared_data / "audiocaps", "val", None)
    assert kind == "audiocaps" and audiocaps["file_name"].tolist() == source["file_name"].tolist()


def test_rules_run_writes_provenance_atomically_and_reuses_the_store(synthcaps, tmp_path):
    out = tmp_path / "aug" / "rules.csv"
    source = synthcaps / "clotho_captions_validation.csv"
    stats = augment(str(source), str(out), n=2, backend="rules", progress=False)
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df.columns.tolist() == OUTPUT_COLUMNS
    originals = read_clotho_split(synthcaps, "validation")
    assert stats.rows == len(originals) == 50
    report = failure_report_path(out)
    failed_rows = len(pd.read_csv(report)) if report.exists() else 0
    assert stats.written == len(df) == 2 * (50 - failed_rows)
    assert set(df["model"]) == {"rules"} and set(df["backend"]) == {"rules"}
    assert df["created_at"].str.match(r"\d{4}-\d\d-\d\dT").all()
    pairs = set(zip(originals["file_name"], originals["caption"], strict=True))
    assert all((f, o) in pairs for f, o in zip(df["file_name"], df["original_caption"], strict=True))
    assert not list(out.parent.glob(".*.tmp"))  # the temporary file was renamed
    again = augment(str(source), str(out), n=2, backend="rules", progress=False)
    assert again.requests == 0 and again.cached == stats.unique - stats.failed
    assert again.failed_before == stats.failed  # the rules would fail the same way: not asked again
    assert pd.read_csv(out, dtype=str, keep_default_na=False).equals(df)
    with pytest.raises(DataError, match="is the input file"):
        augment(str(source), str(source), backend="rules")


def test_command_line_errors_are_clear(tmp_path, monkeypatch):
    plain = tmp_path / "plain.csv"
    plain.write_text("file_name,caption\na.wav,A dog barks in the yard\n")
    out = str(tmp_path / "out.csv")
    from lacoat.errors import ModelError

    with pytest.raises(ModelError, match="--model is required"):
        augment(str(plain), out)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ModelError, match=r"no API key: set \$OPENAI_API_KEY"):
        augment(str(plain), out, model="gpt-4o-mini")
    with pytest.raises(DataError, match="--n, --concurrency and --max_attempts must be at least 1"):
        augment(str(plain), out, n=0, backend="rules")
