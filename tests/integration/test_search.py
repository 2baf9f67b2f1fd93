"""lacoat index / lacoat search over a folder of audio with a checkpoint trained here."""

import functools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lacoat.cli import main
from lacoat.data import folders
from lacoat.errors import LacoatError
from lacoat.models.factory import load_matcher
from lacoat.retrieval.index import build_index
from lacoat.retrieval.search import search
from lacoat.retrieval.store import IndexStore
from tests.helpers import write_tone
from tests.integration.test_train import write_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthcaps):
    tmp = tmp_path_factory.mktemp("search_model")
    main(["fit", "--config", str(write_config(tmp, synthcaps)), "--trainer.max_steps", "2"])
    return next((tmp / "runs" / "checkpoints").glob("*/last.ckpt"))


@pytest.fixture()
def library(tmp_path, synthcaps):
    folder = tmp_path / "library"
    shutil.copytree(synthcaps / "evaluation", folder / "sub")
    return folder


@pytest.fixture()
def own_checkpoint(checkpoint, tmp_path):
    """A copy of the checkpoint this test may move or overwrite."""
    path = tmp_path / "model.ckpt"
    shutil.copy(checkpoint, path)
    return path


def run_cli(capsys, *argv):
    """``lacoat ARGV``: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv) -> str:
    """Run a command that must fail with exit status 2 and one line on stderr; return that line."""
    code, _, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert code == 2 and len(lines) == 1, (code, err)
    return lines[0]


def test_checkpoint_rebuilds_the_model_without_a_config(checkpoint):
    matcher, _ = load_matcher(checkpoint, "both")
    assert type(matcher.cascade).__name__ == "IteratingCascade" and not matcher.training


def test_index_search_and_incremental_update(checkpoint, library, tmp_path, capsys):
    out = tmp_path / "lib.idx"
    report = build_index(str(checkpoint), str(library), str(out))
    assert report.counts() == {
        "encoded": 10,
        "unchanged": 0,
        "removed": 0,
        "ignored": 0,
        "files": 10,
        "clips": 10,
    }
    hits = search(str(out), "two knocks, then a low hum", k=4, rerank_k=6)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all((library / h.file).is_file() and h.duration >= 3.0 and h.start == 0 for h in hits)
    assert all(h.file.startswith("sub/") and h.path == str(library.resolve() / h.file) for h in hits)
    every = search(str(out), "two knocks, then a low hum", k=10, rerank_k=3)  # 7 past the shortlist
    scores = [h.score for h in every]
    assert scores == sorted(scores, reverse=True)
    # past the shortlist scores stay cosine-like and follow on just below it (no internal offset)
    assert min(scores) > -1.1 and scores[3] == pytest.approx(scores[2] - 1e-3, abs=1e-5)

    originals = sorted((library / "sub").iterdir())
    for i in range(2):  # two new files
        shutil.copy(originals[i], library / f"new {i}.wav")
    originals[2].unlink()  # one removed
    (library / "broken.wav").write_bytes(b"not audio" * 10)  # one unreadable
    report = build_index(str(checkpoint), str(library), str(out))
    assert report.counts() == {
        "encoded": 2,
        "unchanged": 9,
        "removed": 1,
        "skipped unreadable": 1,
        "ignored": 0,
        "files": 11,
        "clips": 11,
    }
    assert report.skipped == {"unreadable": ["broken.wav"]}

    code, printed, _ = run_cli(capsys, "search", "--index", out, "a bell rings twice", "-k", "3", "--json")
    rows = json.loads(printed)
    assert code == 0 and len(rows) == 3
    assert {"rank", "score", "file", "path", "start", "duration"} == set(rows[0])
    assert rows[0]["path"].startswith(str(library.resolve())) and not rows[0]["file"].startswith("/")


def test_search_refuses_an_overwritten_checkpoint(own_checkpoint, library, tmp_path, capsys):
    out = tmp_path / "lib.idx"
    build_index(str(own_checkpoint), str(library), str(out))
    own_checkpoint.write_bytes(own_checkpoint.read_bytes() + b"\0")  # retrained in place: another file
    line = one_line_error(capsys, "search", "--index", out, "a bell")
    assert "is not the one index" in line and "re-index" in line and "--ckpt" in line


def test_a_moved_checkpoint_is_found_with_ckpt(own_checkpoint, checkpoint, library, tmp_path, capsys):
    out = tmp_path / "lib.idx"
    build_index(str(own_checkpoint), str(library), str(out))
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    own_checkpoint.rename(moved)
    line = one_line_error(capsys, "search", "--index", out, "a bell")
    assert "is gone" in line and "--ckpt PATH" in line
    code, printed, _ = run_cli(capsys, "search", "--index", out, "a bell", "--ckpt", moved, "-k", "2")
    assert code == 0 and len(printed.splitlines()) == 3
    other = tmp_path / "other.ckpt"
    other.write_bytes(checkpoint.read_bytes() + b"\0")
    assert "is not the one index" in one_line_error(
        capsys, "search", "--index", out, "a bell", "--ckpt", other
    )
    build_index(str(moved), str(library), str(out))  # re-index from the new place: nothing re-encoded
    assert IndexStore.open(out).meta["checkpoint"] == str(moved)
    assert len(search(str(out), "a bell", k=2)) == 2


def test_another_checkpoint_or_folder_replaces_the_index_and_says_so(checkpoint, library, tmp_path, capsys):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    other = tmp_path / "other.ckpt"
    other.write_bytes(checkpoint.read_bytes() + b"\0")  # a different file: another fingerprint
    report = build_index(str(other), str(library), str(out))
    assert (report.encoded, report.removed, report.files) == (10, 10, 10)
    assert "another checkpoint" in report.replaced and str(checkpoint.resolve()) in report.replaced
    assert "10 files" in report.replaced
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(library / "sub", elsewhere)
    (sorted(elsewhere.iterdir())[0]).unlink()
    code, printed, _ = run_cli(capsys, "index", "--ckpt", other, "--audio_dir", elsewhere, "--out", out)
    assert code == 0 and printed.startswith("replaced (built with another folder): 10 files of")
    assert "9 files, 9 clips (9 encoded, 0 unchanged, 10 removed" in printed


def test_bad_index_and_query_are_clear_errors(checkpoint, library, tmp_path):
    out = tmp_path / "lib.idx"
    with pytest.raises(LacoatError, match="index not found"):
        search(str(out), "a dog")
    build_index(str(checkpoint), str(library), str(out))
    with pytest.raises(LacoatError, match="the query is empty"):
        search(str(out), "   ")
    (out / "index.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(LacoatError, match="cannot read index"):
        search(str(out), "a dog")


def test_a_killed_build_keeps_its_work_and_the_rerun_encodes_the_rest(
    checkpoint, library, tmp_path, monkeypatch
):
    out = tmp_path / "lib.idx"
    real_add, calls = IndexStore.add, []

    def add_then_die(self, clips):
        if calls:  # the second commit never happens: the process is killed
            raise KeyboardInterrupt
        calls.append(len(clips))
        real_add(self, clips)

    monkeypatch.setattr(IndexStore, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_index(str(checkpoint), str(library), str(out), batch_size=4)
    monkeypatch.setattr(IndexStore, "add", real_add)
    assert calls == [4] and len(IndexStore.open(out).clips()) == 4
    # a kill between writing vectors and committing them leaves bytes past the committed end
    tokens = next(out.glob("tokens.*.f16"))
    with tokens.open("ab") as handle:
        handle.write(b"\1" * 1000)
    report = build_index(str(checkpoint), str(library), str(out), batch_size=4)
    assert (report.encoded, report.unchanged, report.clips) == (6, 4, 10)
    store = IndexStore.open(out)
    assert tokens.stat().st_size == store.meta["tok_rows"] * store.meta["token_dim"] * 2
    fresh = tmp_path / "fresh.idx"
    build_index(str(checkpoint), str(library), str(fresh))
    query = "two knocks, then a low hum"
    assert [h.file for h in search(str(out), query)] == [h.file for h in search(str(fresh), query)]


def test_removed_files_are_compacted_away(checkpoint, library, tmp_path):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    before = next(out.glob("tokens.*.f16")).stat().st_size
    for path in sorted((library / "sub").iterdir())[:6]:  # more dead rows than live ones
        path.unlink()
    report = build_index(str(checkpoint), str(library), str(out))
    assert (report.removed, report.clips) == (6, 4)
    assert [p.name for p in out.glob("*.f16")] and all(".1.f16" in p.name for p in out.glob("*.f16"))
    assert next(out.glob("tokens.*.f16")).stat().st_size < before / 2
    hits = search(str(out), "a bell", k=10)
    assert sorted(h.file for h in hits) == sorted(f"sub/{p.name}" for p in (library / "sub").iterdir())


def test_long_recordings_become_segments_with_offsets(checkpoint, tmp_path):
    folder = tmp_path / "long"
    write_tone(folder / "short.wav", seconds=2.0, sample_rate=16000)
    write_tone(folder / "long.flac", seconds=50.0, sample_rate=44100, channels=2)
    out = tmp_path / "lib.idx"
    report = build_index(str(checkpoint), str(folder), str(out), segment_seconds=16.0)
    assert (report.files, report.clips) == (2, 4)  # 50 s at 16-s segments: 16 + 16 + 18
    store = IndexStore.open(out)
    long = [(s, d) for f, s, d in store.describe(store.clips().id.tolist()) if f == "long.flac"]
    assert [s for s, _ in long] == [0.0, 16.0, 32.0]
    assert [d for _, d in long] == pytest.approx([16.0, 16.0, 18.0], abs=0.01)
    hits = search(str(out), "a steady tone", k=4)
    assert {(h.file, h.start) for h in hits} == {
        ("short.wav", 0.0),
        ("long.flac", 0.0),
        ("long.flac", 16.0),
        ("long.flac", 32.0),
    }


def test_read_segments_streams_what_read_audio_reads(tmp_path):
    from lacoat.data.audio import read_audio

    path = tmp_path / "a.wav"
    write_tone(path, seconds=9.3, sample_rate=44100, channels=2, freq=220.0)
    whole = read_audio(path, 16000)
    parts = list(folders.read_segments(path, 16000, 3 * 16000, block_seconds=0.7))
    assert [s for s, _ in parts] == [0, 48000, 96000]  # 3 + 3 + 3.3 s: the last takes the rest
    joined = np.concatenate([w for _, w in parts])
    assert len(joined) == len(whole)
    assert np.abs(joined - whole)[100:-100].max() < 1e-3  # streaming and whole-file resampling agree


# ---- every mistake: one line, exit status 2 -------------------------------------------------------
def test_index_mistakes_are_one_line(checkpoint, library, tmp_path, capsys):
    args = ["--audio_dir", library, "--out", tmp_path / "i.idx"]
    assert "checkpoint not found" in one_line_error(capsys, "index", "--ckpt", tmp_path / "typo.ckpt", *args)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    assert "is not a checkpoint written by" in one_line_error(capsys, "index", "--ckpt", text, *args)
    folder = tmp_path / "stuff"
    (folder / "x").mkdir(parents=True)
    line = one_line_error(capsys, "index", "--ckpt", checkpoint, "--audio_dir", library, "--out", folder)
    assert "is a folder that is not a lacoat index" in line
    old_index = tmp_path / "old.idx"
    old_index.write_bytes(b"PK")
    assert "is a file" in one_line_error(
        capsys, "index", "--ckpt", checkpoint, "--audio_dir", library, "--out", old_index
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(
        capsys, "index", "--ckpt", checkpoint, "--audio_dir", empty, "--out", tmp_path / "e.idx"
    )
    assert "no audio files under" in line and "the folder is empty" in line
    (empty / "readme.txt").write_text("x")
    line = one_line_error(
        capsys, "index", "--ckpt", checkpoint, "--audio_dir", empty, "--out", tmp_path / "e.idx"
    )
    assert "ignored: 1 .txt" in line and not (tmp_path / "e.idx").exists()
    assert "--batch_size must be positive" in one_line_error(
        capsys, "index", "--ckpt", checkpoint, *args, "--batch_size", 0
    )


def test_search_mistakes_are_one_line(checkpoint, library, tmp_path, capsys):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    for k in ("0", "-3"):
        assert "-k must be at least 1" in one_line_error(capsys, "search", "--index", out, "a bell", "-k", k)
    line = one_line_error(capsys, "search", "--index", out, "a bell", "--rerank_k", "0")
    assert "--rerank_k must be at least 1" in line
    assert "the query is empty" in one_line_error(capsys, "search", "--index", out, "")
    assert "index not found" in one_line_error(capsys, "search", "--index", tmp_path / "nope", "a bell")
    assert "not a lacoat index" in one_line_error(capsys, "search", "--index", library, "a bell")


def test_ctrl_c_is_one_line_and_not_zero(checkpoint, library, tmp_path, capsys, monkeypatch):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lacoat.retrieval.search.search", interrupted)
    code, _, err = run_cli(capsys, "search", "--index", out, "a bell")
    assert code == 130 and err.strip() == "lacoat search: interrupted"
    # lacoat index takes its options from build_index's signature: the stand-in keeps it
    monkeypatch.setattr("lacoat.retrieval.index.build_index", functools.wraps(build_index)(interrupted))
    code, _, err = run_cli(capsys, "index", "--ckpt", checkpoint, "--audio_dir", library, "--out", out)
    assert code == 130 and len(err.strip().splitlines()) == 1 and "re-run the same command" in err


def test_a_closed_pipe_ends_quietly(checkpoint, library, tmp_path):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lacoat", "search", "--index", str(out), "a bell", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `| head` that has already gone
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "Error" not in err, err


def test_explain_mistakes_are_one_line(checkpoint, library, tmp_path, capsys):
    clip = sorted((library / "sub").iterdir())[0]
    args = ["explain", "--ckpt", checkpoint, "--audio", clip]
    assert "the query is empty" in one_line_error(capsys, *args, "", "--out", tmp_path / "m.png")
    line = one_line_error(capsys, *args, "a bell", "--out", tmp_path / "m.xyz")
    assert "'.xyz'" in line and "png" in line and not (tmp_path / "m.xyz").exists()


def write_messy_library(folder) -> set[str]:
    """A library as found on a real disk: every readable format, odd names, and broken files.

    Returns the files that must be indexed.
    """
    import soundfile as sf

    readable = {
        "pcm 8.wav": dict(subtype="PCM_U8"),
        "pcm16.wav": dict(subtype="PCM_16"),
        "pcm 24.wav": dict(subtype="PCM_24"),
        "pcm32.wav": dict(subtype="PCM_32"),
        "float.wav": dict(subtype="FLOAT"),
        "hi-res 96k 24-bit stereo.wav": dict(subtype="PCM_24", rate=96000, channels=2),
        'a, b "quoted" 🐕.flac': dict(),
        "bell.ogg": dict(format="OGG", subtype="VORBIS"),
        "complete.oga": dict(format="OGG", subtype="VORBIS"),
        "voice.opus": dict(format="OGG", subtype="OPUS", rate=48000),
        "song.mp3": dict(format="MP3", subtype="MPEG_LAYER_III", rate=44100),
        "clip.aiff": dict(),
        "clip.au": dict(),
        "sub dir/ leading space, 'quote'.wav": dict(),
    }
    for i, (name, spec) in enumerate(readable.items()):
        rate, channels = spec.pop("rate", 16000), spec.pop("channels", 1)
        t = np.arange(int(1.5 * rate)) / rate
        wave = 0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t)[:, None].repeat(channels, 1)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(folder / name), wave.astype(np.float32), rate, **spec)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file renamed .wav\n")
    (folder / "gone.wav").symlink_to(folder / "deleted.wav")
    (folder / "sub dir" / "back to the top").symlink_to(folder)  # a link loop: walked once
    write_tone(folder / "click.wav", seconds=0.01)
    write_tone(folder / "long.wav", seconds=25.0, sample_rate=8000)
    write_tone(folder / "locked.wav", seconds=1.0)
    (folder / "locked.wav").chmod(0)
    (folder / "notes.txt").write_text("session notes")
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return set(readable)


def test_a_messy_library_indexes_every_readable_file(checkpoint, tmp_path, monkeypatch, capsys):
    import os

    folder = tmp_path / "messy"
    folder.mkdir()
    readable = write_messy_library(folder)
    if os.geteuid() == 0:  # root reads a chmod-000 file anyway: let the check see what a user would
        real_access = os.access
        monkeypatch.setattr(
            folders.os, "access", lambda p, m: not str(p).endswith("locked.wav") and real_access(p, m)
        )
    out = tmp_path / "messy.idx"
    code, printed, _ = run_cli(
        capsys, "index", "--ckpt", checkpoint, "--audio_dir", folder, "--out", out, "--max_seconds", 20
    )
    assert code == 0, printed
    assert f"{len(readable)} files, {len(readable)} clips ({len(readable)} encoded" in printed
    assert "6 skipped, 2 ignored" in printed and "ignored, not audio: 2" in printed
    report = build_index(str(checkpoint), str(folder), str(out), max_seconds=20.0)
    assert report.unchanged == len(readable) and report.encoded == 0
    assert report.skipped == {
        "broken link": ["gone.wav"],
        "unreadable": ["empty.wav", "text.wav"],
        "too short": ["click.wav"],
        "too long": ["long.wav"],
        "permission": ["locked.wav"],
    }
    assert dict(report.ignored) == {".txt": 1, ".jpg": 1}
    hits = search(str(out), "a steady tone", k=100)
    assert {h.file for h in hits} == readable
    assert all(h.duration == pytest.approx(1.5, abs=0.05) for h in hits)


def test_queries_use_the_saved_text_encoder_and_rank_as_transformers_does(checkpoint, library, tmp_path):
    import torch

    from lacoat.retrieval.query_encoder import SETTINGS, TRACED, TracedTextEncoder
    from lacoat.retrieval.search import Library

    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    query = "two knocks, then a low hum"
    saved = Library(out)
    assert isinstance(saved.matcher.text_encoder, TracedTextEncoder)
    fast = saved.search(query, k=10, rerank_k=4)
    (out / TRACED).unlink()  # an index without it loads the encoder with transformers
    transformers = Library(out)
    assert not isinstance(transformers.matcher.text_encoder, TracedTextEncoder)
    slow = transformers.search(query, k=10, rerank_k=4)
    assert [h.file for h in fast] == [h.file for h in slow]
    assert [h.score for h in fast] == pytest.approx([h.score for h in slow], abs=1e-4)
    texts = [query, "a bell"]
    (fast_tokens, fast_mask), (tokens, mask) = (
        lib.text_encoder(texts) for lib in (saved.matcher, transformers.matcher)
    )
    assert fast_mask.tolist() == mask.tolist() and torch.allclose(fast_tokens, tokens, atol=1e-4)
    build_index(str(checkpoint), str(library), str(out))  # the next build saves it again
    assert (out / TRACED).is_file()
    settings = json.loads((out / SETTINGS).read_text())
    (out / SETTINGS).write_text(json.dumps({**settings, "checkpoint_fingerprint": "another model"}))
    assert not isinstance(Library(out).matcher.text_encoder, TracedTextEncoder)  # not used: not this model's


def test_search_from_the_shell_imports_neither_lightning_nor_transformers(checkpoint, library, tmp_path):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    code = (
        "import sys\n"
        "from lacoat.cli import main\n"
        f"main(['search', '--index', {str(out)!r}, 'a bell', '-k', '2'])\n"
        "heavy = {'lightning', 'torchmetrics', 'transformers', 'librosa', 'torch._dynamo'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 3


def test_a_build_shows_its_progress(checkpoint, library, tmp_path, capsys):
    build_index(str(checkpoint), str(library), str(tmp_path / "lib.idx"), batch_size=4, progress=True)
    bar = capsys.readouterr().err
    assert (
        "encoding (s of audio)" in bar and "10/10 files committed" in bar and "<" in bar
    )  # ETA: elapsed<left
    build_index(str(checkpoint), str(library), str(tmp_path / "quiet.idx"), progress=False)
    assert "encoding" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_build_killed_with_sigkill_resumes(checkpoint, synthcaps, tmp_path):
    import signal
    import sqlite3
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    clips = sorted((synthcaps / "evaluation").iterdir())
    for i in range(200):
        shutil.copy(clips[i % len(clips)], folder / f"take {i:03d}.wav")
    out = tmp_path / "lib.idx"
    cmd = [sys.executable, "-m", "lacoat", "index", "--ckpt", str(checkpoint), "--audio_dir", str(folder)]
    proc = subprocess.Popen([*cmd, "--out", str(out), "--batch_size", "1"], stderr=subprocess.DEVNULL)

    def committed() -> int:
        try:
            with sqlite3.connect(f"file:{out / 'index.sqlite'}?mode=ro", uri=True) as db:
                return db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
        except sqlite3.Error:  # not created yet, or mid-transaction
            return 0

    deadline = time.monotonic() + 300
    while committed() < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = committed()
    assert 20 <= kept < 200, kept  # killed half-way
    report = build_index(str(checkpoint), str(folder), str(out))
    assert (report.unchanged, report.encoded, report.clips) == (kept, 200 - kept, 200)
