"""``lacoat download clotho|audiocaps --root DIR``: fetch a data set with aac-datasets.

aac-datasets (``pip install 'lacoat[data]'``) is the field's downloader: it fetches Clotho v2.1 from
Zenodo and checks each file's MD5 checksum, and fetches AudioCaps' caption CSVs from the AudioCaps
repository and each clip from YouTube with ``yt-dlp`` and ``ffmpeg``. What it writes is what
``lacoat.data.Clotho(root)`` and ``lacoat.data.AudioCaps(root)`` read:

* ``ROOT/CLOTHO_v2.1/clotho_csv_files/clotho_captions_<split>.csv`` and
  ``ROOT/CLOTHO_v2.1/clotho_audio_files/<split>/<file_name>``;
* ``ROOT/AUDIOCAPS/{train,val,test}.csv`` and ``ROOT/AUDIOCAPS/audio_32000Hz/<split>/<id>_<start>.flac``
  (aac-datasets 0.6+ writes the CSVs to ``AUDIOCAPS/csv_files_v1/``; they are copied one level up, where
  lacoat, and aac-datasets itself for backward compatibility, read them).

Both are resumable: files already there are not fetched again.
"""

from __future__ import annotations

import http.client
import logging
import shutil
from pathlib import Path
from types import ModuleType
from typing import Literal
from urllib.error import URLError

from lacoat.errors import DataError

log = logging.getLogger(__name__)

ClothoSubset = Literal["dev", "val", "eval"]
AudioCapsSubset = Literal["train", "val", "test"]
CLOTHO_VERSION = "v2.1"
CLOTHO_SPLIT_OF = {"dev": "development", "val": "validation", "eval": "evaluation"}
AUDIOCAPS_VERSION, AUDIOCAPS_RATE = "v1", 32_000
NETWORK_ERRORS = (URLError, ConnectionError, TimeoutError, http.client.HTTPException)
INSTALL = "pip install 'lacoat[data]'"


def import_aac_datasets() -> tuple[ModuleType, ModuleType]:
    """aac-datasets' Clotho and AudioCaps modules (``datasets.functional.{clotho,audiocaps}``).

    aac-datasets ≤ 0.7 imports ``torchaudio.AudioMetaData`` for type hints only; torchaudio 2.9 removed
    it, so a stand-in is put there first (nothing here calls torchaudio).

    Raises:
        DataError: aac-datasets is not installed or cannot be imported, with the install command.
    """
    try:
        import torchaudio

        if not hasattr(torchaudio, "AudioMetaData"):
            torchaudio.AudioMetaData = type("AudioMetaData", (), {})
        from aac_datasets.datasets.functional import audiocaps, clotho
    except ImportError as err:
        raise DataError(
            f"lacoat download needs aac-datasets, which cannot be imported ({err}). Install it with `{INSTALL}`."
        ) from err
    return clotho, audiocaps


def _offline_hint(url: str, err: BaseException, dataset: str) -> DataError:
    return DataError(
        f"cannot download {url} ({err}). Without network here, run `lacoat download {dataset} --root DIR` "
        "on a machine that has it, copy DIR here and point the config's data.source.init_args.root at it."
    )


def download_clotho(
    root: str | Path,
    subsets: tuple[ClothoSubset, ...] = ("dev", "val", "eval"),
    clean_archives: bool = True,
    force: bool = False,
) -> dict[str, int]:
    """Download Clotho v2.1 into ``root/CLOTHO_v2.1`` (about 7 GB of audio archives, MD5-checked).

    Args:
        root: folder to write into (created); ``lacoat.data.Clotho(root)`` reads it afterwards.
        subsets: ``dev`` (development), ``val`` (validation), ``eval`` (evaluation).
        clean_archives: delete the 7z archives once extracted.
        force: download again files already there.

    Returns:
        Clips per split (``{"development": 3839, ...}``), counted by ``lacoat.data.Clotho``.

    Raises:
        DataError: no network (naming the URL), a checksum mismatch, or aac-datasets missing.
    """
    clotho, _ = import_aac_datasets()
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        clotho.download_clotho_datasets(
            root=str(root),
            subsets=list(subsets),
            force=force,
            verbose=1,
            clean_archives=clean_archives,
            verify_files=True,
            version=CLOTHO_VERSION,
        )
    except NETWORK_ERRORS as err:
        raise _offline_hint(
            getattr(err, "url", None) or _pending_clotho_url(clotho, root, subsets), err, "clotho"
        ) from err
    except RuntimeError as err:  # aac-datasets reports bad checksums and extractions this way
        raise DataError(f"Clotho download failed: {' '.join(str(err).split())}") from err
    return _count_clips(root, [CLOTHO_SPLIT_OF[s] for s in subsets], "clotho")


def _pending_clotho_url(clotho: ModuleType, root: Path, subsets: tuple[str, ...]) -> str:
    """The URL of the first Clotho file not on disk yet: the one whose download failed.

    Reads aac-datasets' private link table; should it change, the Zenodo record is named instead.
    """
    try:
        for subset in subsets:
            for info in clotho._CLOTHO_LINKS[CLOTHO_VERSION][subset].values():
                folder = (
                    clotho._get_csv_dpath if info["fname"].endswith(".csv") else clotho._get_archives_dpath
                )
                if not Path(folder(str(root), CLOTHO_VERSION), info["fname"]).is_file():
                    return info["url"]
    except (AttributeError, KeyError, TypeError):
        pass
    return "https://zenodo.org/record/4783391"


def find_tool(path: str) -> str | None:
    """The executable ``path`` names (a name on PATH or a file), or None."""
    return shutil.which(path)


def download_audiocaps(
    root: str | Path,
    subsets: tuple[AudioCapsSubset, ...] = ("train", "val", "test"),
    ytdlp_path: str = "yt-dlp",
    ffmpeg_path: str = "ffmpeg",
    max_workers: int = 4,
    force: bool = False,
) -> dict[str, int]:
    """Download AudioCaps 1.0 into ``root/AUDIOCAPS``: caption CSVs, then 10-s clips from YouTube.

    Clips removed from YouTube cannot be fetched; ``lacoat.data.AudioCaps`` skips and counts them (up
    to its ``max_missing_fraction``). The audio is 32 kHz mono FLAC.

    Args:
        root: folder to write into (created); ``lacoat.data.AudioCaps(root)`` reads it afterwards.
        subsets: ``train``, ``val``, ``test``.
        ytdlp_path: the yt-dlp executable (name on PATH or path).
        ffmpeg_path: the ffmpeg executable (name on PATH or path).
        max_workers: clips fetched in parallel (YouTube throttles high values).
        force: download again files already there.

    Returns:
        Clips per split that have audio on disk.

    Raises:
        DataError: yt-dlp or ffmpeg missing, no network (naming the URL), or aac-datasets missing.
    """
    missing = [
        f"{name} ('{path}')"
        for name, path in (("yt-dlp", ytdlp_path), ("ffmpeg", ffmpeg_path))
        if not find_tool(path)
    ]
    if missing:
        raise DataError(
            f"AudioCaps audio comes from YouTube through yt-dlp and ffmpeg, and {' and '.join(missing)} "
            "cannot be found. Install yt-dlp (`pip install yt-dlp`) and ffmpeg (`apt install ffmpeg` or "
            "`conda install -c conda-forge ffmpeg`), or pass --ytdlp_path / --ffmpeg_path."
        )
    _, audiocaps = import_aac_datasets()
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        audiocaps.download_audiocaps_datasets(
            root=str(root),
            subsets=list(subsets),
            force=force,
            verbose=1,
            verify_files=False,  # lacoat checks every file's header when it loads the data
            ffmpeg_path=find_tool(ffmpeg_path),
            ytdlp_path=find_tool(ytdlp_path),
            max_workers=max_workers,
            sr=AUDIOCAPS_RATE,
            with_tags=False,
            version=AUDIOCAPS_VERSION,
        )
    except NETWORK_ERRORS as err:
        url = getattr(err, "url", None) or _pending_audiocaps_url(audiocaps, root, subsets)
        raise _offline_hint(url, err, "audiocaps") from err
    base = root / "AUDIOCAPS"
    for subset in subsets:
        written = base / f"csv_files_{AUDIOCAPS_VERSION}" / f"{subset}.csv"
        if written.is_file() and not (base / f"{subset}.csv").is_file():
            shutil.copyfile(written, base / f"{subset}.csv")
    return _count_clips(root, list(subsets), "audiocaps")


def _pending_audiocaps_url(audiocaps: ModuleType, root: Path, subsets: tuple[str, ...]) -> str:
    """The URL of the first caption CSV not on disk yet: the one whose download failed.

    Reads aac-datasets' private link table; should it change, the AudioCaps repository is named instead.
    """
    try:
        for subset in subsets:
            info = audiocaps._AUDIOCAPS_LINKS[AUDIOCAPS_VERSION][subset]["captions"]
            folder = audiocaps._get_captions_dpath(str(root), subset, AUDIOCAPS_RATE, AUDIOCAPS_VERSION)
            if not Path(folder, info["fname"]).is_file():
                return info["url"]
    except (AttributeError, KeyError, TypeError):
        pass
    return "https://github.com/cdjkim/audiocaps"


def _count_clips(root: Path, splits: list[str], dataset: Literal["clotho", "audiocaps"]) -> dict[str, int]:
    """Clips of each split whose audio is on disk, as lacoat's own reader finds them."""
    from lacoat.data.audiocaps import read_audiocaps_split
    from lacoat.data.clotho import read_clotho_split

    counts = {}
    for split in splits:
        table = (
            read_clotho_split(root, split) if dataset == "clotho" else read_audiocaps_split(root, split, None)
        )
        clips = table.drop_duplicates("file_name")
        counts[split] = int(sum(Path(p).is_file() for p in clips["audio_path"]))
        if counts[split] < len(clips):
            log.warning(
                "%s: %d of %d clips have no audio file", split, len(clips) - counts[split], len(clips)
            )
    return counts
