"""``lacoat download`` through aac-datasets' real code, against a local HTTP server and fake yt-dlp/ffmpeg."""

import functools
import hashlib
import http.server
import socket
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from lacoat.cli import main
from lacoat.data import AudioCaps, Clotho
from lacoat.data.clotho import read_clotho_split
from lacoat.errors import DataError
from tests.helpers import write_tone

SPLITS = {"dev": "development", "val": "validation", "eval": "evaluation"}
NAMES = [" leading space.wav", "comma, and 'quotes'.wav", "caf\u00e9 d&#39;eau.wav"]  # Clotho's hazards


@pytest.fixture(scope="module")
def aac():
    from lacoat.data.download import import_aac_datasets

    try:
        return import_aac_datasets()
    except DataError as err:
        pytest.skip(str(err))


@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path/www`` on a local port; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *args: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_clotho(www: Path, base: str) -> dict:
    """Zenodo's Clotho v2.1 files in miniature (captions, metadata, 7z audio archive per split)."""
    import py7zr

    links = {}
    for subset, split in SPLITS.items():
        names = [f"{split[:3]}_{n}" for n in NAMES]
        captions = pd.DataFrame(
            {"file_name": names} | {f"caption_{i}": [f"{n} caption {i}" for n in names] for i in range(1, 6)}
        )
        captions.to_csv(www / f"clotho_captions_{split}.csv", index=False)
        (www / f"clotho_metadata_{split}.csv").write_text("file_name,keywords\n", encoding="ISO-8859-1")
        staging = www / "staging" / split
        for n in names:
            write_tone(staging / n, seconds=0.3)
        with py7zr.SevenZipFile(www / f"clotho_audio_{split}.7z", "w") as archive:
            archive.writeall(staging, arcname=split)
        links[subset] = {
            kind: {"fname": fname, "url": f"{base}/{fname}?download=1", "hash_value": md5(www / fname)}
            for kind, fname in [
                ("audio_archive", f"clotho_audio_{split}.7z"),
                ("captions", f"clotho_captions_{split}.csv"),
                ("metadata", f"clotho_metadata_{split}.csv"),
            ]
        }
    return links


def test_clotho_download_ends_in_a_folder_lacoat_reads(aac, server, tmp_path, monkeypatch, capsys):
    clotho, _ = aac
    www, base = server
    monkeypatch.setitem(clotho._CLOTHO_LINKS, "v2.1", fake_clotho(www, base))
    root = tmp_path / "data"
    main(["download", "clotho", "--root", str(root)])
    out = capsys.readouterr().out
    assert "development 3 clips, validation 3 clips, evaluation 3 clips" in out
    assert f"--data.source.init_args.root {root}" in out

    Clotho(str(root))  # recognises the aac-datasets layout
    for split in SPLITS.values():
        table = read_clotho_split(root, split)
        assert sorted(table["file_name"].unique()) == sorted(f"{split[:3]}_{n}" for n in NAMES)
        assert all(Path(p).is_file() for p in table["audio_path"])
    assert not list((root / "CLOTHO_v2.1" / "archives").glob("*.7z"))  # cleaned after extraction

    main(["download", "clotho", "--root", str(root), "--subsets", "[val]"])  # resumable: nothing to fetch
    assert "validation 3 clips" in capsys.readouterr().out


def test_clotho_checksum_mismatch_is_reported(aac, server, tmp_path, monkeypatch, capsys):
    clotho, _ = aac
    www, base = server
    links = fake_clotho(www, base)
    links["dev"]["captions"]["hash_value"] = "0" * 32
    monkeypatch.setitem(clotho._CLOTHO_LINKS, "v2.1", links)
    with pytest.raises(SystemExit) as exit_info:
        main(["download", "clotho", "--root", str(tmp_path / "data"), "--subsets", "[dev]"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "lacoat download: error: Clotho download failed: Invalid checksum for file 'clotho_captions_development.csv'"
        in err
    )


def test_network_failure_is_one_clear_line(aac, tmp_path, monkeypatch, capsys):
    clotho, _ = aac
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    links = {
        subset: {
            kind: {
                "fname": f"{kind}_{subset}.{'7z' if kind == 'audio_archive' else 'csv'}",
                "url": f"http://127.0.0.1:{port}/{kind}_{subset}",
                "hash_value": "0" * 32,
            }
            for kind in ("audio_archive", "captions", "metadata")
        }
        for subset in SPLITS
    }
    monkeypatch.setitem(clotho._CLOTHO_LINKS, "v2.1", links)
    with pytest.raises(SystemExit) as exit_info:
        main(["download", "clotho", "--root", str(tmp_path / "data")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"lacoat download: error: cannot download http://127.0.0.1:{port}/audio_archive_dev ("
    )
    assert "run `lacoat download clotho --root DIR` on a machine that has it, copy DIR here" in err


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    from lacoat.data import download

    monkeypatch.setitem(sys.modules, "aac_datasets", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "aac_datasets.datasets.functional", None)
    with pytest.raises(DataError, match=r"needs aac-datasets.*pip install 'lacoat\[data\]'"):
        download.download_clotho(tmp_path)


def fake_tool(folder: Path, name: str, body: str) -> Path:
    """A shell script standing in for yt-dlp or ffmpeg (``--help`` succeeds, as aac-datasets checks)."""
    path = folder / name
    path.write_text(f'#!/bin/sh\ncase "$1" in --help) exit 0;; esac\n{body}')
    path.chmod(0o755)
    return path


# yt-dlp -g LINK prints the video and the audio stream URLs; a video without a separate audio stream
# (here: id "novideo_aud") cannot be fetched, as with clips removed from YouTube.
YTDLP = 'echo "https://video.example/x"\ncase "$*" in *novideo_aud*) echo "";; *) echo "https://audio.example/x";; esac\n'
# ffmpeg ... OUT writes the clip: a copy of a short FLAC made beforehand.
FFMPEG = 'for out; do :; done\ncp "$(dirname "$0")/clip.flac" "$out"\n'


def test_audiocaps_reports_missing_tools(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SystemExit):
        main(["download", "audiocaps", "--root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert "yt-dlp ('yt-dlp') and ffmpeg ('ffmpeg') cannot be found" in err and "pip install yt-dlp" in err

    fake_tool(bin_dir, "ffmpeg", FFMPEG)
    with pytest.raises(SystemExit):
        main(["download", "audiocaps", "--root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert (
        "and yt-dlp ('yt-dlp') cannot be found" in err and "ffmpeg (" not in err.split("cannot be found")[0]
    )


def test_audiocaps_download_ends_in_a_folder_lacoat_reads(aac, server, tmp_path, monkeypatch, capsys):
    _, audiocaps = aac
    www, base = server
    links = {}
    for split in ("val", "test"):
        rows = [f"{i},{split}vid{i:04d},{10 * i},a sound {i}" for i in range(4)] + ["9,novideo_aud,30,gone"]
        (www / f"{split}.csv").write_text(
            "audiocap_id,youtube_id,start_time,caption\n" + "\n".join(rows) + "\n"
        )
        links[split] = {"captions": {"url": f"{base}/{split}.csv", "fname": f"{split}.csv"}}
    monkeypatch.setitem(audiocaps._AUDIOCAPS_LINKS, "v1", links)
    bin_dir = tmp_path / "bin"
    write_tone(bin_dir / "clip.flac", seconds=0.25, sample_rate=32000, fmt="FLAC")
    ytdlp, ffmpeg = fake_tool(bin_dir, "yt-dlp", YTDLP), fake_tool(bin_dir, "ffmpeg", FFMPEG)
    root = tmp_path / "data"
    main(["download", "audiocaps", "--root", str(root), "--subsets", "[val, test]", "--ytdlp_path", str(ytdlp),
          "--ffmpeg_path", str(ffmpeg), "--max_workers", "2"])  # fmt: skip
    assert "val 4 clips, test 4 clips" in capsys.readouterr().out
    assert (root / "AUDIOCAPS" / "test.csv").is_file() and not (root / "AUDIOCAPS" / "train.csv").exists()

    from lacoat.data.datamodule import RetrievalDataModule

    source = AudioCaps(str(root))  # the aac-datasets layout, read as it is
    table = source.read_split("test", "error")
    assert table["file_name"].tolist()[:2] == [
        "audio_32000Hz/test/testvid0000_0.flac",
        "audio_32000Hz/test/testvid0001_10.flac",
    ]
    data = RetrievalDataModule(source=source, sample_rate=16000, window_seconds=1.0, num_workers=0)
    eval_set = data.eval_set("test")  # the removed video is skipped and counted, not an error
    assert len(eval_set.clips) == 4 and len(eval_set.queries) == 4
