"""The test report: an offline W&B run with metrics, the retrieval-examples table and attention maps,
the same artefacts on disk, runs named after their config, and ``lacoat explain`` on the checkpoint."""

import json
import logging
import struct
from pathlib import Path

import pandas as pd
import pytest

from lacoat.cli import main
from lacoat.cli.lightning import name_wandb_run
from tests.helpers import read_wandb_run
from tests.integration.test_train import write_config

WANDB = "class_path: lightning.pytorch.loggers.WandbLogger\n    init_args: {{save_dir: {root}, project: lacoat-test}}"
CALLBACK = """  callbacks:
    - class_path: lacoat.evaluation.examples.RetrievalExamples
      init_args: {n_queries: 4, top_k: 3, n_maps: 2, seed: 1}
model:"""


def wandb_records(path: Path, kind: str) -> list:
    """Records of one type (``artifact``, ``history``, ...) in an offline run file (see helpers.read_wandb_run)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, found = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _crc, length, chunk_kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if chunk_kind in (1, 2) else buf + chunk
        if chunk_kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == kind:
                found.append(getattr(record, kind))
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory, synthcaps):
    """fit (3 steps) then test a tiny iterating model with an offline WandbLogger and the callback."""
    import wandb

    tmp_path = tmp_path_factory.mktemp("report")
    config = write_config(tmp_path, synthcaps)
    runs = tmp_path / "runs"
    text = config.read_text()
    csv_logger = (
        f"class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {{save_dir: {runs}, name: logs}}"
    )
    assert csv_logger in text
    config.write_text(text.replace(csv_logger, WANDB.format(root=runs)).replace("model:", CALLBACK, 1))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging, not ~/.local/share
        main(["fit", "--config", str(config), "--trainer.max_steps", "3"])
        wandb.finish()
        main(["test", "--config", str(config)])
        names = {"name": wandb.run.name, "group": wandb.run.group}
        wandb.finish()  # `lacoat test` finishes the run at exit; in-process, finish it here
        wandb.teardown()  # offline, finish() returns before the run file is complete; teardown waits
    (checkpoint,) = (runs / "checkpoints").glob("*/best-*.ckpt")
    run_files = {r: next(r.glob("run-*.wandb")) for r in (runs / "wandb").glob("offline-run-*")}
    assert len(run_files) == 2  # fit and test
    ((test_run, run_file),) = [
        (r, f) for r, f in run_files.items() if "test/t2a_mAP@10" in read_wandb_run(f)["history"]
    ]
    return {"checkpoint": checkpoint, "run": test_run, "run_file": run_file, "names": names}


def test_wandb_run_holds_metrics_examples_table_and_maps(report):
    recorded = read_wandb_run(report["run_file"])
    assert {"test/t2a_mAP@10", "test/t2a_R@1", "test_bi/t2a_mAP@10"} <= recorded["history"]
    assert {
        "test/retrieval_examples/_type",
        "test/attention_map_00/_type",
        "test/attention_map_01/_type",
    } <= recorded["history"]

    # W&B stores a table as a run artifact: the table JSON and every clip's audio
    (table,) = [a for a in wandb_records(report["run_file"], "artifact") if a.type == "run_table"]
    contents = {c.path: c.local_path for c in table.manifest.contents}
    content = json.loads(Path(contents["test/retrieval_examples.table.json"]).read_text())
    assert content["columns"] == ["query", "rank", "file", "audio", "score", "hit", "correct file"]
    assert len(content["data"]) >= 4 * 3
    audio_cells = [row[3] for row in content["data"]]
    assert all(cell["_type"] == "audio-file" and cell["path"] in contents for cell in audio_cells)
    assert {row[2] for row in content["data"]} == {cell["caption"] for cell in audio_cells}

    images = report["run"] / "files" / "media" / "images" / "test"
    assert len(list(images.glob("attention_map_00_*.png"))) == 1
    assert len(list(images.glob("attention_map_01_*.png"))) == 1


def test_same_report_on_disk_beside_the_checkpoint(report):
    folder = report["checkpoint"].parent
    examples = pd.read_csv(folder / "retrieval_examples.csv", keep_default_na=False)
    assert list(examples.columns) == [
        "query",
        "rank",
        "file_name",
        "score",
        "hit",
        "correct_file",
        "correct_rank",
    ]
    assert examples["query"].nunique() == 4
    for _query, rows in examples.groupby("query", sort=False):
        top = rows[rows["rank"] <= 3]
        assert top["rank"].tolist() == [1, 2, 3] and top["score"].is_monotonic_decreasing
        hit = top["hit"].astype(str).eq("True").any()
        missed = rows[rows["rank"] > 3]
        # a miss shows the correct clip, at its true rank, as its own row
        assert len(missed) == (0 if hit else 1)
        if not hit:
            assert rows["correct_file"].eq(missed["file_name"].iloc[0]).all()
            assert int(missed["correct_rank"].iloc[0]) == int(missed["rank"].iloc[0]) > 3
    maps = sorted((folder / "attention_maps").glob("*.png"))
    assert [p.name for p in maps] == ["query_00.png", "query_01.png"]
    assert (folder / "test_metrics_rerank.json").is_file()


def test_runs_are_named_and_grouped_by_config(report):
    assert report["names"]["group"] == "tiny"
    assert report["names"]["name"].startswith("tiny-")


def test_explain_draws_the_checkpoints_attention(report, synthcaps, tmp_path, capsys):
    captions = pd.read_csv(synthcaps / "clotho_captions_evaluation.csv", keep_default_na=False)
    clip = synthcaps / "evaluation" / captions["file_name"][0]
    out = tmp_path / "map.png"
    main(
        [
            "explain",
            "--ckpt",
            str(report["checkpoint"]),
            "--audio",
            str(clip),
            captions["caption_1"][0],
            "--out",
            str(out),
        ]
    )
    assert out.stat().st_size > 1000
    assert "decoder.0.cross:" in capsys.readouterr().out  # 1 GA layer in the tiny model
    with pytest.raises(SystemExit):
        main(["explain", "--ckpt", str(report["checkpoint"]), "--audio", str(clip), "x", "--layer", "4"])
    assert "layer 4 does not exist" in capsys.readouterr().err


def test_log_model_is_dropped_offline_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    init_args = {"name": None, "group": None, "log_model": True, "offline": False}
    with caplog.at_level(logging.WARNING, logger="lacoat.cli.lightning"):
        name_wandb_run(init_args, ["demo", "single"])
    assert init_args["log_model"] is False and "log_model turned off" in caplog.text
    assert init_args["group"] == "demo+single" and init_args["name"].startswith("demo+single-")

    monkeypatch.setenv("WANDB_MODE", "online")
    init_args = {"name": "mine", "group": "g", "log_model": "all", "offline": False}
    name_wandb_run(init_args, ["clotho_iter"])
    assert init_args == {"name": "mine", "group": "g", "log_model": "all", "offline": False}
