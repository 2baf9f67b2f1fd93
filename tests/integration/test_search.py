"""lacoat index / lacoat search over a folder of audio with a checkpoint trained here."""

import json
import shutil

import pytest

from lacoat.cli import main
from lacoat.errors import LacoatError
from lacoat.retrieval.library import build_index, load_model, search
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


def test_checkpoint_rebuilds_the_model_without_a_config(checkpoint):
    model = load_model(checkpoint)
    assert type(model.matcher.cascade).__name__ == "IteratingCascade" and not model.training


def test_index_search_and_incremental_update(checkpoint, library, tmp_path, capsys):
    out = tmp_path / "lib.idx"
    assert build_index(str(checkpoint), str(library), str(out)) == {
        "encoded": 10,
        "kept": 0,
        "removed": 0,
        "skipped": 0,
        "total": 10,
    }
    hits = search(str(out), "two knocks, then a low hum", k=4, rerank_k=6)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all((library / h.file).is_file() and h.duration >= 3.0 for h in hits)
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
    counts = build_index(str(checkpoint), str(library), str(out))
    assert counts == {"encoded": 2, "kept": 9, "removed": 1, "skipped": 1, "total": 11}

    main(["search", "--index", str(out), "a bell rings twice", "-k", "3", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == 3 and {"rank", "score", "file", "duration"} == set(printed[0])


def test_another_checkpoint_re_encodes_everything(checkpoint, library, tmp_path):
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    other = tmp_path / "other.ckpt"
    other.write_bytes(checkpoint.read_bytes() + b"\0")  # a different file: another fingerprint
    assert build_index(str(other), str(library), str(out))["encoded"] == 10


def test_bad_index_and_query_are_clear_errors(checkpoint, library, tmp_path):
    out = tmp_path / "lib.idx"
    with pytest.raises(LacoatError, match="index not found"):
        search(str(out), "a dog")
    build_index(str(checkpoint), str(library), str(out))
    with pytest.raises(LacoatError, match="the query is empty"):
        search(str(out), "   ")
    out.write_bytes(out.read_bytes()[:100])
    with pytest.raises(LacoatError, match="cannot read index"):
        search(str(out), "a dog")
