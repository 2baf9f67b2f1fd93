"""``lacoat serve``: the search of one index over HTTP, with a page to type queries and listen.

The model and the index are loaded once (a ``Library``); each request is one query. Routes:

* ``GET /[?q=TEXT&k=N]`` — the page: a query box, ranked results with an audio player each, score,
  duration, and the co-attention map of a result on demand (with ``q``, it searches at once);
* ``GET /api/search?q=TEXT&k=N[&rerank_k=K]`` — JSON list of ``{rank, file, score, start,
  duration}`` (``file`` relative to the library); a bad query or count is a 400 with ``{"detail"}``;
* ``GET /audio/FILE`` — the audio file FILE (relative to the library), only if the index holds it:
  no other path, inside the library or outside it, can be fetched;
* ``GET /api/map?q=TEXT&file=FILE&start=S`` — PNG of the word × time co-attention of the query and
  that clip (the audio encoder is loaded at the first such request).

Served by uvicorn, bound to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, Response

from lacoat.data.folders import read_segments, segment_samples
from lacoat.defaults import RERANK_K
from lacoat.errors import LacoatError
from lacoat.retrieval.search import Library, check_query

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lacoat search</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
 form { display: flex; gap: .5rem; } input[type=text] { flex: 1; font-size: 1.1rem; padding: .4rem; }
 table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
 td, th { padding: .3rem .5rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; } .err { color: #b00; }
 img.map { max-width: 100%; display: block; }
</style></head><body>
<h1>lacoat</h1>
<p>__SUMMARY__</p>
<form id="f"><input type="text" id="q" placeholder="a dog barks while cars pass in the rain" autofocus>
<input type="number" id="k" value="10" min="1" style="width:4rem"><button>Search</button></form>
<p id="msg"></p>
<table id="hits" hidden><thead><tr><th>#</th><th>score</th><th>s</th><th>file</th><th>listen</th><th></th>
</tr></thead><tbody></tbody></table>
<script>
const el = (tag, props = {}, ...kids) => {
  const e = Object.assign(document.createElement(tag), props); e.append(...kids); return e;
};
document.getElementById("f").onsubmit = async (ev) => {
  ev.preventDefault();
  const q = document.getElementById("q").value, k = document.getElementById("k").value;
  const msg = document.getElementById("msg"), table = document.getElementById("hits");
  const body = table.querySelector("tbody");
  msg.textContent = "searching…"; msg.className = "";
  const r = await fetch(`/api/search?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
  const data = await r.json();
  if (!r.ok) { msg.textContent = data.detail; msg.className = "err"; table.hidden = true; return; }
  msg.textContent = `${data.length} results for “${q}”`;
  body.replaceChildren(...data.map((h) => {
    const src = `/audio/${h.file.split("/").map(encodeURIComponent).join("/")}`
      + (h.start ? `#t=${h.start},${h.start + h.duration}` : "");
    const name = h.file + (h.start ? ` (at ${Math.round(h.start)} s)` : "");
    const row = el("tr", {}, el("td", {className: "num", textContent: h.rank}),
      el("td", {className: "num", textContent: h.score.toFixed(3)}),
      el("td", {className: "num", textContent: h.duration.toFixed(1)}),
      el("td", {textContent: name}), el("td", {}, el("audio", {controls: true, preload: "none", src})));
    const btn = el("button", {textContent: "attention map"});
    btn.onclick = () => {
      const img = el("img", {className: "map", alt: "co-attention map",
        src: `/api/map?q=${encodeURIComponent(q)}&file=${encodeURIComponent(h.file)}&start=${h.start}`});
      const cell = el("td", {colSpan: 6}, img);
      row.after(el("tr", {}, cell)); btn.disabled = true;
    };
    row.append(el("td", {}, btn));
    return row;
  }));
  table.hidden = false;
  history.replaceState(null, "", `?q=${encodeURIComponent(q)}&k=${encodeURIComponent(k)}`);
};
const asked = new URLSearchParams(location.search);  // /?q=TEXT&k=N: a bookmarkable search
if (asked.get("q")) {
  document.getElementById("q").value = asked.get("q");
  document.getElementById("k").value = asked.get("k") || 10;
  document.getElementById("f").requestSubmit();
}
</script></body></html>
"""


def create_app(library: Library) -> FastAPI:
    """The web application answering from ``library`` (loaded once, shared by all requests)."""
    app = FastAPI(title="lacoat", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one model: requests take turns
    mapper: dict = {}  # the full matcher, loaded at the first map request

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        summary = f"{len(library.clips)} clips of <code>{library.folder}</code>"
        return PAGE.replace("__SUMMARY__", summary)

    @app.get("/api/search")
    def api_search(q: str = Query(""), k: int = 10, rerank_k: int = RERANK_K) -> list[dict]:
        try:
            with lock:
                hits = library.search(q, k, rerank_k)
        except LacoatError as err:
            raise HTTPException(status_code=400, detail=str(err)) from err
        return [
            {"rank": h.rank, "file": h.file, "score": h.score, "start": h.start, "duration": h.duration}
            for h in hits
        ]

    @app.get("/audio/{file:path}")
    def audio(file: str) -> FileResponse:
        with lock:
            path = library.indexed_file(file)
        if path is None:
            raise HTTPException(status_code=404, detail=f"'{file}' is not a file of this index")
        return FileResponse(path)

    @app.get("/api/map")
    def api_map(q: str, file: str, start: float = 0.0) -> Response:
        with lock:
            path = library.indexed_file(file)
        if path is None:
            raise HTTPException(status_code=404, detail=f"'{file}' is not a file of this index")
        try:
            check_query(q, 1, 1)
            with lock:
                png = _attention_png(library, mapper, path, q, start)
        except LacoatError as err:
            raise HTTPException(status_code=400, detail=str(err)) from err
        return Response(png, media_type="image/png")

    return app


def _attention_png(library: Library, mapper: dict, path: Path, query: str, start: float) -> bytes:
    """PNG of the co-attention map of ``query`` and the clip of ``path`` that begins at ``start``."""
    import tempfile

    import soundfile as sf
    from matplotlib import pyplot as plt

    from lacoat.evaluation.attention_maps import attention_figure, attention_map
    from lacoat.models.factory import load_matcher

    if "matcher" not in mapper:
        mapper["matcher"], _ = load_matcher(library.checkpoint, "both")
    matcher = mapper["matcher"]
    encoder = matcher.audio_encoder
    segment = segment_samples(encoder, library.store.meta["segment_seconds"])
    offset = round(start * encoder.sample_rate)
    wave = next((w for s, w in read_segments(path, encoder.sample_rate, segment) if s == offset), None)
    if wave is None:
        raise LacoatError(f"'{path.name}' has no clip starting at {start} s")
    with tempfile.TemporaryDirectory() as tmp:  # the clip alone, as it was indexed
        clip = Path(tmp) / "clip.wav"
        sf.write(str(clip), wave, encoder.sample_rate, subtype="FLOAT")
        fig = attention_figure(attention_map(matcher, clip, query))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def serve(index: str, port: int = 8000, host: str = "127.0.0.1", checkpoint: str | None = None) -> None:
    """Load ``index`` and its model, then answer HTTP requests until Ctrl-C.

    Raises:
        LacoatError: the index or checkpoint is unusable, or the port is taken.
    """
    import uvicorn

    if not 0 < port < 65536:
        raise LacoatError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a clear error before loading
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LacoatError(
                f"cannot listen on {host}:{port} ({err.strerror}); pass another --port"
            ) from err
    library = Library(index, checkpoint)
    print(
        f"lacoat serve: {len(library.clips)} clips of {library.folder} at http://{host}:{port}/ (Ctrl-C stops)"
    )
    uvicorn.run(create_app(library), host=host, port=port, log_level="warning")
