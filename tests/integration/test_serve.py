"""lacoat serve: the search page, JSON API and audio files over HTTP (an in-process HTTP client)."""

import shutil
import socket

import pytest
from fastapi.testclient import TestClient

from lacoat.cli import main
from lacoat.retrieval.index import build_index
from lacoat.retrieval.search import Library
from lacoat.retrieval.serve import create_app
from tests.integration.test_search import checkpoint, library, one_line_error  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def served(checkpoint, synthcaps, tmp_path_factory):  # noqa: F811
    """An app on an index of the SynthCaps test clips (read only: shared by the module's tests)."""
    tmp = tmp_path_factory.mktemp("serve")
    folder = tmp / "library"
    shutil.copytree(synthcaps / "evaluation", folder / "sub")
    (folder / "notes.txt").write_text("not audio, not indexed")
    build_index(str(checkpoint), str(folder), str(tmp / "lib.idx"))
    lib = Library(tmp / "lib.idx")
    yield TestClient(create_app(lib)), folder
    lib.close()


@pytest.fixture()
def client(served):
    return served[0]


def test_a_query_over_http(served):
    client, folder = served
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "10 clips of" in page.text
    reply = client.get("/api/search", params={"q": "two knocks, then a low hum", "k": 3})
    hits = reply.json()
    assert reply.status_code == 200 and [h["rank"] for h in hits] == [1, 2, 3]
    assert set(hits[0]) == {"rank", "file", "score", "start", "duration"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    audio = client.get(f"/audio/{hits[0]['file']}")
    assert audio.status_code == 200 and audio.content == (folder / hits[0]["file"]).read_bytes()


def test_bad_queries_are_400_with_the_reason(client):
    empty = client.get("/api/search", params={"q": "  "})
    assert empty.status_code == 400 and "the query is empty" in empty.json()["detail"]
    zero = client.get("/api/search", params={"q": "a bell", "k": 0})
    assert zero.status_code == 400 and "-k must be at least 1" in zero.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/audio/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/audio/%2Fetc%2Fpasswd",
        "/audio/sub/..%2F..%2Flib.idx%2Findex.sqlite",
        "/audio/notes.txt",  # inside the library, but not an indexed file
    ],
)
def test_no_path_outside_the_index_is_served(client, path):
    reply = client.get(path)
    assert reply.status_code == 404 and "not a file of this index" in reply.json()["detail"]


def test_the_attention_map_of_a_result(client):
    hit = client.get("/api/search", params={"q": "a bell rings", "k": 1}).json()[0]
    reply = client.get("/api/map", params={"q": "a bell rings", "file": hit["file"], "start": hit["start"]})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert reply.content.startswith(b"\x89PNG")
    assert client.get("/api/map", params={"q": "a bell", "file": "/etc/passwd"}).status_code == 404


def test_serve_listens_on_this_machine_only_by_default(checkpoint, library, tmp_path, monkeypatch, capsys):  # noqa: F811
    import uvicorn

    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    main(["serve", "--index", str(out)])
    assert (started["host"], started["port"]) == ("127.0.0.1", 8000)
    assert "at http://127.0.0.1:8000/" in capsys.readouterr().out
    assert TestClient(started["app"]).get("/api/search", params={"q": "a bell"}).status_code == 200


def test_a_taken_port_is_one_line(checkpoint, library, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "lib.idx"
    build_index(str(checkpoint), str(library), str(out))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, "serve", "--index", out, "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
