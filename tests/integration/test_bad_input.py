"""Broken audio, CSVs and captions, each ending in its documented behaviour.

Every case damages a fresh copy of a tiny SynthCaps set (Clotho layout) and is run twice:
- ``on_bad_audio: error`` / ``on_bad_caption: error``: setting up the DataModule and iterating its
  loaders raises a ``LacoatError`` whose message names the file (or CSV and line) and the fix;
- ``skip``: a Lightning ``fit`` + ``test`` with a probe model finishes, the item never reaches a batch,
  and ``skipped.csv`` lists it.
Some inputs look odd but are valid (silence, a UTF-8 BOM, captions reading "nan" or "None"): they are
kept in both modes. Problems of a whole CSV cannot be skipped: they are errors in both modes.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from lacoat.data import CaptionCsv, Clotho, RetrievalDataModule
from lacoat.data.report import write_report
from lacoat.errors import DataError, LacoatError

SKIP_AUDIO = r"on_bad_audio: skip"
SKIP_CAPTION = r"on_bad_caption: skip"


@dataclass
class Broken:
    """What a damage did and what must follow from it.

    Attributes:
        expect: ``skip`` (an error, or left out and reported), ``keep`` (valid: loads in both modes)
            or ``error`` (a whole-table problem: an error in both modes).
        message: regex the error message must match (``skip`` and ``error``).
        item: the audio path, or the caption text, that must not reach a batch (``skip``) or must
            (``keep``).
        report: the ``path`` expected in ``skipped.csv`` (audio path, or ``CSV:LINE``).
        when: ``setup`` or ``batch``: when the skip happens.
        later: damage done after setup, while training (a file deleted mid-run).
        stage: the stage the report files the skip under.
        also: further ``path`` values the report must list.
    """

    expect: str
    message: str = ""
    item: str = ""
    report: str = ""
    when: str = "setup"
    later: Callable[[], None] | None = None
    stage: str = "train"
    also: list[str] = field(default_factory=list)


STAGE = {"development": "train", "validation": "val", "evaluation": "test"}


def all_of(*patterns: str) -> str:
    """A regex matching text that contains every pattern, in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in patterns)


# ---- helpers that damage a copy ------------------------------------------------------------------
def rows_of(root: Path, split: str) -> list[list[str]]:
    with open(root / f"clotho_captions_{split}.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_rows(root: Path, split: str, rows: list[list[str]]) -> Path:
    path = root / f"clotho_captions_{split}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def clip(root: Path, split: str, i: int) -> Path:
    """Audio file of the ``i``-th clip of ``split`` (clip 7 has one of Clotho's awkward names)."""
    return root / split / rows_of(root, split)[i + 1][0]


def audio_case(split: str, i: int, damage: Callable[[Path], None], message: str, when: str = "setup"):
    def apply(root: Path) -> Broken:
        path = clip(root, split, i)
        damage(path)
        message_ = all_of(re.escape(path.name), message, SKIP_AUDIO)
        return Broken("skip", message_, str(path), str(path), when, stage=STAGE[split])

    return apply


def float_wav(values: np.ndarray) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        sf.write(str(path), values, 16000, subtype="FLOAT", format="WAV")

    return damage


def nan_wave() -> np.ndarray:
    wave = np.full(16000, 0.1, np.float32)
    wave[100] = np.nan
    return wave


def inf_wave() -> np.ndarray:
    wave = np.full(16000, 0.1, np.float32)
    wave[5000] = -np.inf
    return wave


def truncated_flac(root: Path) -> Broken:
    """A FLAC stream cut in half: its header is fine, decoding fails while a batch is loaded."""
    rows = rows_of(root, "development")
    old = root / "development" / rows[3][0]
    rows[3][0] = rows[3][0].replace(".wav", ".flac")
    new = root / "development" / rows[3][0]
    wave, rate = sf.read(str(old), dtype="float32")
    sf.write(str(new), wave, rate, format="FLAC")
    new.write_bytes(new.read_bytes()[: new.stat().st_size // 2])
    write_rows(root, "development", rows)
    return Broken(
        "skip", all_of(re.escape(new.name), "cannot decode", SKIP_AUDIO), str(new), str(new), "batch"
    )


def deleted_mid_training(root: Path) -> Broken:
    path = clip(root, "development", 7)
    message = all_of(re.escape(path.name), "not found", SKIP_AUDIO)
    return Broken("skip", message, str(path), str(path), "batch", path.unlink)


def dangling_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "nowhere.wav")


def folder_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()


def cut_after_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:44])  # RIFF/fmt/data headers, no sample data


def silent(root: Path) -> Broken:
    path = clip(root, "development", 2)
    sf.write(str(path), np.zeros(24000, np.float32), 16000, subtype="PCM_16")
    return Broken("keep", item=str(path))


def cut_mid_data(root: Path) -> Broken:
    """A WAV cut inside its sample data is read up to the cut (libsndfile), so the clip is kept."""
    path = clip(root, "development", 4)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return Broken("keep", item=str(path))


def caption_case(line: int, column: int, value: str, problem: str):
    """Set caption ``column`` (1-5) of CSV line ``line`` of the training split to ``value``."""

    def apply(root: Path) -> Broken:
        rows = rows_of(root, "development")
        rows[line - 1][column] = value
        path = write_rows(root, "development", rows)
        message = all_of(re.escape(path.name), f"first on line {line} ", problem, SKIP_CAPTION)
        return Broken("skip", message, value, f"{path}:{line}")

    return apply


def kept_caption(value: str):
    def apply(root: Path) -> Broken:
        rows = rows_of(root, "development")
        rows[2][4] = value
        write_rows(root, "development", rows)
        return Broken("keep", item=value)

    return apply


def csv_case(damage: Callable[[Path], None], message: str, split: str = "development"):
    def apply(root: Path) -> Broken:
        path = root / f"clotho_captions_{split}.csv"
        damage(path)
        return Broken("error", all_of(re.escape(path.name), message))

    return apply


def drop_column(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("caption_3", "caption3", 1), encoding="utf-8")


def latin1_caption(path: Path) -> None:
    rows = rows_of(path.parent, "development")
    rows[2][2] = "a bell in a café"
    with open(path, "w", newline="", encoding="latin-1") as f:
        csv.writer(f).writerows(rows)


def unclosed_quote(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8") + 'z.wav,"never closed,b,c,d,e\n', encoding="utf-8")


def unquoted_comma(path: Path) -> None:
    rows = rows_of(path.parent, "development")
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    text[4] = f'"{rows[4][0]}",a dog barks, then stops,b,c,d,e\n'  # six captions' worth of fields
    path.write_text("".join(text), encoding="utf-8")


def nul_bytes(path: Path) -> None:
    raw = path.read_bytes()
    cut = raw.index(b"\n", len(raw) // 2) + 1
    path.write_bytes(raw[:cut] + b"\x00" * 64 + raw[cut:])  # a block zeroed by a crash


def with_bom(root: Path) -> Broken:
    path = root / "clotho_captions_development.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return Broken("keep", item=rows_of(root, "development")[1][1].lstrip("\ufeff"))


def repeated_clip_line(root: Path) -> Broken:
    rows = rows_of(root, "development")
    rows.insert(6, list(rows[2]))  # line 7 lists the clip of line 3 again
    path = write_rows(root, "development", rows)
    message = all_of(re.escape(path.name), "first on line 7 ", "clip already listed on line 3", SKIP_CAPTION)
    return Broken("skip", message, report=f"{path}:7")


def short_row(root: Path) -> Broken:
    rows = rows_of(root, "development")
    rows[5] = rows[5][:3]  # caption_3..5 missing
    path = write_rows(root, "development", rows)
    return Broken("skip", rf"first on line 6 .*caption_3 is empty.*{SKIP_CAPTION}", report=f"{path}:6")


def blank_file_name(root: Path) -> Broken:
    rows = rows_of(root, "development")
    rows[4][0] = "  "
    path = write_rows(root, "development", rows)
    return Broken("skip", rf"first on line 5 .*file_name is blank.*{SKIP_CAPTION}", rows[4][1], f"{path}:5")


def line_break(root: Path) -> Broken:
    rows = rows_of(root, "development")
    rows[2][1] = "a hum, then\nclicks"  # what an unclosed quote closed further down leaves
    rows[6][2] = ""  # a later row: its line number must still be the one an editor shows
    path = write_rows(root, "development", rows)
    message = all_of(r"2 bad row\(s\), first on line 3 ", "caption_1 holds a line break", SKIP_CAPTION)
    return Broken("skip", message, rows[2][1], f"{path}:3", also=[f"{path}:8"])


CASES: dict[str, Callable[[Path], Broken]] = {
    # audio, found by the header check at setup
    "audio missing": audio_case("development", 1, Path.unlink, r"missing or unreadable"),
    "audio dangling symlink": audio_case("development", 6, dangling_link, r"missing or unreadable"),
    "audio empty (0 bytes)": audio_case("evaluation", 1, lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
    "audio garbage bytes": audio_case(
        "development", 7, lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), "cannot read"
    ),
    "audio text renamed .wav": audio_case(
        "validation", 0, lambda p: p.write_text("not audio\n" * 50), "cannot read audio file"
    ),
    "audio unsupported format (MP4/AAC)": audio_case(
        "development",
        2,
        lambda p: p.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(4000)),
        r"format soundfile cannot decode",
    ),
    "audio zero frames": audio_case(
        "development", 3, lambda p: sf.write(str(p), np.zeros((0, 1), np.float32), 16000), "no samples"
    ),
    "audio WAV cut after its header": audio_case("evaluation", 2, cut_after_header, "no samples"),
    "audio folder instead of file": audio_case("development", 5, folder_instead, "is a folder"),
    # audio, found when a batch loads it
    "audio NaN samples": audio_case("development", 0, float_wav(nan_wave()), "NaN or infinite", "batch"),
    "audio Inf samples": audio_case("development", 7, float_wav(inf_wave()), "NaN or infinite", "batch"),
    "audio FLAC cut in the stream": truncated_flac,
    "audio deleted mid-training": deleted_mid_training,
    # valid audio that looks odd
    "audio all silent (valid)": silent,
    "audio WAV cut inside the data (valid, shorter)": cut_mid_data,
    # whole CSV: an error in both modes
    "csv missing": csv_case(Path.unlink, r"CSV file not found.*Check the data root"),
    "csv wrong column": csv_case(drop_column, r"lacks column\(s\) \['caption_3'\].*Expected a header"),
    "csv undecodable bytes": csv_case(latin1_caption, r"cannot decode .*Save it as UTF-8"),
    "csv unclosed quote": csv_case(unclosed_quote, r"cannot parse CSV.*Check quoting"),
    "csv unquoted comma (row too long)": csv_case(unquoted_comma, r"line 5 has more fields.*must be quoted"),
    "csv empty file": csv_case(lambda p: p.write_bytes(b""), r"is empty; expected a header", "evaluation"),
    "csv header only": csv_case(
        lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"), "has a header but no rows", "validation"
    ),
    "csv NUL bytes": csv_case(nul_bytes, r"NUL bytes \(first on line \d+\).*Restore it"),
    "csv UTF-8 BOM (valid)": with_bom,
    # rows: an error naming the line, or left out and reported
    "row repeats a clip": repeated_clip_line,
    "row short (missing fields)": short_row,
    "row blank file_name": blank_file_name,
    "caption empty": caption_case(4, 2, "", "caption_2 is empty"),
    "caption whitespace only": caption_case(5, 5, "   \t ", r"caption_5 is blank"),
    "caption over-long": caption_case(6, 1, "a dog barks " * 100, r"caption_1 has 1200 characters.*1000"),
    "caption line break": line_break,
    "caption control character": caption_case(9, 3, "a bell\x1b[0m rings", r"control character U\+001B"),
    # valid captions that look odd
    "caption 'nan' (valid text)": kept_caption("nan"),
    "caption 'None' (valid text)": kept_caption("None"),
    "caption non-ASCII and emoji (valid)": kept_caption("Ein Hund bellt 🐕, très fort"),
}


# ---- running a case --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lacoat.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(str(root), seed=7, n_development=8, n_validation=3, n_evaluation=3)
    return root


def make_dm(root: Path, policy: str) -> RetrievalDataModule:
    return RetrievalDataModule(
        Clotho(str(root)),
        batch_size=4,
        num_workers=0,
        sample_rate=16000,
        window_seconds=4.0,
        on_bad_audio=policy,
        on_bad_caption=policy,
    )


class Probe(L.LightningModule):
    """Records what reaches the model: audio paths and captions of training batches and test queries."""

    def __init__(self, later: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.later = later
        self.paths: list[str] = []
        self.captions: list[str] = []

    def on_train_start(self) -> None:
        if self.later is not None:
            self.later()

    def training_step(self, batch, batch_idx):
        self.paths += batch.get("audio_paths", [])
        self.captions += batch.get("captions", [])
        return (self.weight * batch["audio"].mean()).sum() if "audio" in batch else None

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.paths += batch.get("audio_paths", [])

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.paths += batch.get("audio_paths", [])
        self.captions += batch.get("captions", [])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run_error_mode(root: Path, broken: Broken) -> None:
    dm = make_dm(root, "error")
    dm.setup("fit")
    if broken.later is not None:
        broken.later()
    for _ in dm.train_dataloader():
        pass
    dm.setup("test")
    for loader in dm.val_dataloader() + dm.test_dataloader():
        for _ in loader:
            pass


def run_skip_mode(root: Path, out: Path, broken: Broken) -> tuple[Probe, pd.DataFrame | None]:
    dm = make_dm(root, "skip")
    probe = Probe(broken.later)
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, datamodule=dm)
    trainer.test(probe, datamodule=dm, verbose=False)
    report = out / "skipped.csv"
    table = pd.read_csv(report, dtype=str, keep_default_na=False) if report.is_file() else None
    return probe, table


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input(kind: str, tiny: Path, tmp_path: Path) -> None:
    copies = {mode: tmp_path / mode for mode in ("error", "skip")}
    broken = {}
    for mode, root in copies.items():
        shutil.copytree(tiny, root)
        broken[mode] = CASES[kind](root)
    expect = broken["error"].expect

    if expect == "keep":
        run_error_mode(copies["error"], broken["error"])
        probe, report = run_skip_mode(copies["skip"], tmp_path / "out", broken["skip"])
        assert broken["skip"].item in probe.paths + probe.captions
        assert report is None  # nothing was skipped
        return

    with pytest.raises(LacoatError, match=broken["error"].message):
        run_error_mode(copies["error"], broken["error"])
    if expect == "error":
        with pytest.raises(DataError, match=broken["skip"].message):
            run_skip_mode(copies["skip"], tmp_path / "out", broken["skip"])
        return

    b = broken["skip"]
    probe, report = run_skip_mode(copies["skip"], tmp_path / "out", b)
    assert len(probe.paths) > 0 and len(probe.captions) > 0  # the run went on
    if b.item:
        assert b.item not in probe.paths + probe.captions
    assert report is not None, "skip mode must write skipped.csv"
    listed = report.set_index("path")
    for where in [b.report, *b.also]:
        assert where in listed.index, f"{where} missing from {report['path'].tolist()}"
    mine = listed.loc[[b.report]]
    assert (mine["when"] == b.when).all() and (mine["stage"] == b.stage).all()
    assert (mine["count"].astype(int) >= 1).all() and (mine["reason"].str.len() > 10).all()
    if kind == "row repeats a clip":  # the clip stays, with its five captions seen once per epoch
        assert report[["path", "count"]].values.tolist() == [[b.report, "5"]]  # five captions dropped
        first = clip(copies["skip"], "development", 1)
        assert probe.paths.count(str(first)) == 5


# ---- further checks of the policy and the report -----------------------------------------------------
def test_repeated_rows_of_own_csv(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(str(audio / name), np.full(4000, 0.1, np.float32), 16000)
    train = tmp_path / "train.csv"
    train.write_text(
        "file_name,caption,annotator\na.wav,a hum,1\nb.wav,a hiss,1\na.wav,a hum,2\na.wav,a hum,1\n",
        encoding="utf-8",
    )
    source = CaptionCsv(str(audio), train_csv=str(train))
    with pytest.raises(DataError, match=r"first on line 5 \(file_name 'a.wav'\): repeats line 2"):
        RetrievalDataModule(source, num_workers=0).setup("fit")
    dm = RetrievalDataModule(source, num_workers=0, on_bad_caption="skip")
    dm.setup("fit")
    assert dm.train_table["annotator"].tolist() == ["1", "1", "2"]  # another annotator's same caption stays
    assert dm.skipped["train"] == [(f"{train}:5", "repeats line 2 (file_name 'a.wav')")]


def test_too_much_skipped_is_still_an_error(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    for path in (root / "development").iterdir():
        if not path.name.startswith(("dev_00000", "dev_00001")):
            path.unlink()  # 6 of 8 clips gone: a wrong root, not a few bad files
    with pytest.raises(DataError, match=r"6 of 8 clips \(75.0%\).*more than max_skipped_fraction=0.5"):
        make_dm(root, "skip").setup("fit")
    rows = rows_of(root, "validation")
    for row in rows[1:]:
        row[1:] = [""] * 5
    write_rows(root, "validation", rows)
    with pytest.raises(DataError, match=r"15 of 15 caption rows .*more than max_skipped_fraction"):
        make_dm(root, "skip").eval_set("val")


def test_report_merges_stages_and_disappears_when_clean(tmp_path: Path) -> None:
    columns = ["stage", "split", "path", "reason", "when", "count"]
    fit = pd.DataFrame(
        [["train", "dev", "a.wav", "empty", "setup", 1], ["val", "val", "b.wav", "x", "batch", 3]],
        columns=columns,
    )
    write_report(fit, tmp_path, ("train", "val"))
    test = pd.DataFrame([["test", "eval", "c.wav", "nan", "batch", 1]], columns=columns)
    write_report(test, tmp_path, ("test",))
    report = pd.read_csv(tmp_path / "skipped.csv", dtype=str)
    assert report["path"].tolist() == ["a.wav", "b.wav", "c.wav"]
    write_report(fit.iloc[:0], tmp_path, ("train", "val"))  # a clean re-run of fit
    assert pd.read_csv(tmp_path / "skipped.csv", dtype=str)["path"].tolist() == ["c.wav"]
    write_report(test.iloc[:0], tmp_path, ("test",))
    assert not (tmp_path / "skipped.csv").exists()


# ---- through `lacoat fit` with the real model ----------------------------------------------------------
def test_fit_in_skip_mode_reports_setup_and_batch_skips(tiny: Path, tmp_path: Path, caplog) -> None:
    from lacoat.cli import main
    from tests.integration.test_train import write_config

    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    empty, poisoned = clip(root, "development", 2), clip(root, "development", 7)
    empty.write_bytes(b"")  # found at setup
    float_wav(nan_wave())(poisoned)  # found when a batch loads it
    config = write_config(tmp_path, root, cascade="null")  # a bi-encoder: the data path is what is tested
    # 35 pairs in batches of 8: 4 steps see all but 3, so the poisoned clip's five captions meet a batch
    args = ["--data.on_bad_audio", "skip", "--data.batch_size", "8", "--trainer.max_steps", "4"]
    main(["fit", "--config", str(config), *args, "--trainer.val_check_interval", "4"])
    reports = list((tmp_path / "runs" / "checkpoints").glob("*/skipped.csv"))
    assert len(reports) == 1 and (reports[0].parent / "last.ckpt").is_file()  # beside the checkpoints
    report = pd.read_csv(reports[0], dtype=str, keep_default_na=False)
    assert report.set_index("path").loc[str(empty), "when"] == "setup"
    batch = report.set_index("path").loc[str(poisoned)]
    assert batch["when"] == "batch" and "NaN" in batch["reason"] and int(batch["count"]) >= 1
    metrics = pd.read_csv(next((tmp_path / "runs" / "logs").glob("version_*/metrics.csv")))
    assert metrics["skipped/train"].dropna().tolist() == [1 + 1]  # one at setup, one clip in batches
    assert metrics["train/skipped"].dropna().sum() == int(batch["count"])  # the module's own count
    assert f"train: 2 item(s) of split 'development' were skipped; see {reports[0]}" in caplog.text


def test_non_finite_loss_stops_fit_naming_the_batch_files(tiny: Path, tmp_path: Path, capsys) -> None:
    """Clips with absurd (finite) sample values pass the data checks but overflow the features."""
    from lacoat.cli import main
    from tests.integration.test_train import write_config

    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    names = set()
    for path in (root / "development").iterdir():
        float_wav(np.full(16000, 1e25, np.float32))(path)
        names.add(path.name)
    config = write_config(tmp_path, root)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--data.batch_size", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lacoat fit: error: training loss is nan at step 0 (epoch 0, batch 0) in a batch")
    named = re.findall(r"'([^']*/development/[^']*)'", err)
    n_clips = int(
        re.search(r"in a batch of (\d) clip\(s\): ", err).group(1)
    )  # 4 captions, maybe of fewer clips
    assert 1 <= n_clips <= 4 and len(named) == n_clips and {Path(p).name for p in named} <= names
    assert "Lower model.lr, set trainer.gradient_clip_val" in err and "--ckpt_path last" in err


def test_a_text_rate_for_a_frozen_text_model_is_refused(tiny: Path, tmp_path: Path, capsys) -> None:
    from lacoat.cli import main
    from tests.integration.test_train import write_config

    config = write_config(tmp_path, tiny)  # its text model is frozen
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--model.text_encoder_lr", "3e-5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.text_encoder_lr is 3e-05, but the text encoder is frozen" in err
    assert "frozen: false" in err and not (tmp_path / "runs" / "checkpoints").exists()


def test_eval_clips_skip_marker_and_collate(tiny: Path, tmp_path: Path) -> None:
    from lacoat.data.collate import collate
    from lacoat.data.datasets import AudioLoader, ClipDataset

    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    paths = [str(clip(root, "evaluation", i)) for i in range(3)]
    float_wav(nan_wave())(Path(paths[1]))
    loader = AudioLoader(16000, 4.0)
    with pytest.raises(LacoatError, match=all_of(re.escape(Path(paths[1]).name), "NaN", SKIP_AUDIO)):
        collate([ClipDataset(paths, loader)[i] for i in range(3)])
    batch = collate([ClipDataset(paths, loader, on_bad_audio="skip")[i] for i in range(3)])
    assert batch["clip_index"].tolist() == [0, 2] and batch["audio_paths"] == [paths[0], paths[2]]
    assert batch["n_skipped"] == 1 and batch["skipped"][0][0] == paths[1]


GATHER = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import torch.distributed as dist
from lacoat.data.report import gather
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
items = gather([("train", f"rank{rank}.wav", "bad")] * (rank + 1), SimpleNamespace(world_size=2))
Path(out, f"{rank}.json").write_text(json.dumps(items))
dist.destroy_process_group()
"""


def test_batch_skips_are_gathered_from_every_process(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    init = f"file://{tmp_path}/rendezvous"
    procs = [
        subprocess.Popen([sys.executable, "-c", GATHER, str(rank), init, str(tmp_path)], cwd=REPO)
        for rank in (0, 1)
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    expected = [["train", "rank0.wav", "bad"]] + [["train", "rank1.wav", "bad"]] * 2
    for rank in (0, 1):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == expected


def test_a_failed_run_still_writes_its_report(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    empty = clip(root, "development", 3)
    empty.write_bytes(b"")

    class Crash(Probe):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("pre-empted")

    out = tmp_path / "out"
    trainer = L.Trainer(default_root_dir=out, max_epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="pre-empted"):
        trainer.fit(Crash(), datamodule=make_dm(root, "skip"))
    report = pd.read_csv(out / "checkpoints" / "skipped.csv", dtype=str, keep_default_na=False)  # beside them
    assert report["path"].tolist() == [str(empty)] and report["stage"].tolist() == ["train"]
