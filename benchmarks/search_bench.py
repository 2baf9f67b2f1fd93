"""The ``search`` section of ``benchmarks/bench.py``: searching a sound library.

* top-level figures: ``lacoat index`` of 200 SynthCaps clips, a re-index after 10 new files, query
  latency with the model loaded, and a ``lacoat search`` from the shell;
* ``n100k``: a library index of 100,000 clips. Its vectors are synthetic (random unit embeddings and
  random tokens, 32 tokens per clip: what the demo encoder keeps of a 10-s clip), stored through the
  real ``IndexStore`` for the real demo checkpoint, beside 100,000 placeholder files whose size and
  mtime the index records, so that ``lacoat search`` and a re-index run unchanged on it. Figures:
  ``index_mb`` (on disk), ``warm_query_s`` (model and index loaded), ``search_peak_rss_mb`` and
  wall time of a fresh ``lacoat search`` process, ``cli_vs_import_torch`` (that wall time ÷ the
  wall time of ``python -c "import torch"``, medians of interleaved runs) and
  ``reindex_10_written_fraction``: bytes a re-index after adding 10 real clips reads from and writes
  to the index folder (counted by ``strace`` per file descriptor), ÷ the index size.

Run alone: ``python benchmarks/search_bench.py --ckpt CKPT [--out benchmarks/results.json]`` (merges
``search.n100k`` into the results file).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SYNTHCAPS = REPO / "data" / "synthcaps"


def _queries(n: int) -> list[str]:
    import pandas as pd

    captions = pd.read_csv(SYNTHCAPS / "clotho_captions_evaluation.csv", dtype=str, keep_default_na=False)
    return captions["caption_1"].tolist()[:n]


def synthcaps_200(ckpt: Path, n_clips: int = 200, n_new: int = 10, n_queries: int = 10) -> dict:
    """``lacoat index`` of 200 SynthCaps clips, re-index after 10 new files, search latency."""
    from lacoat.retrieval.index import build_index
    from lacoat.retrieval.search import Library

    files = sorted((SYNTHCAPS / "evaluation").iterdir())[:n_clips]
    queries = _queries(n_queries)
    work = Path(tempfile.mkdtemp(prefix="lacoat-bench-"))
    try:
        library, index = work / "library", work / "index"
        library.mkdir()
        for f in files[: n_clips - n_new]:
            shutil.copy(f, library / f.name)
        start = time.perf_counter()
        first = build_index(str(ckpt), str(library), str(index), progress=False)
        first_seconds = time.perf_counter() - start
        for f in files[n_clips - n_new :]:
            shutil.copy(f, library / f.name)
        start = time.perf_counter()
        again = build_index(str(ckpt), str(library), str(index), progress=False)
        again_seconds = time.perf_counter() - start
        lib = Library(index)
        lib.search(queries[0])  # warm-up
        latencies = []
        for q in queries:
            start = time.perf_counter()
            lib.search(q, k=10, rerank_k=64)
            latencies.append(time.perf_counter() - start)
        cli_seconds, _ = _timed([sys.executable, "-m", "lacoat", "search", "--index", str(index), queries[0]])
        return {
            "index_clips": again.clips,
            "first_index": {"encoded": first.encoded, "seconds": round(first_seconds, 1)},
            "reindex_after_new_files": {
                "new_files": n_new,
                "encoded": again.encoded,
                "kept": again.unchanged,
                "seconds": round(again_seconds, 2),
            },
            "search_seconds_mean": round(sum(latencies) / len(latencies), 3),
            "search_seconds_max": round(max(latencies), 3),
            "cli_search_wall_seconds": round(cli_seconds, 2),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a command (its own, from ``wait4``)."""
    import os

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def _write_synthetic_index(
    ckpt: Path, library: Path, index: Path, n_clips: int, tokens_per_clip: int
) -> None:
    """100,000 placeholder files and an index of random vectors that records them as encoded."""
    from lacoat.models.factory import load_matcher
    from lacoat.retrieval.index import index_meta
    from lacoat.retrieval.query_encoder import save_query_encoder
    from lacoat.retrieval.store import ClipVectors, IndexStore

    matcher, settings = load_matcher(ckpt, "text")
    store = IndexStore.create(index, index_meta(ckpt.resolve(), library.resolve(), matcher, settings, 30.0))
    meta = store.meta
    save_query_encoder(matcher.text_encoder, index, meta["checkpoint_fingerprint"])  # as build_index does
    e, d = meta["embed_dim"], meta["token_dim"]
    rng = np.random.default_rng(0)
    chunk = 5000
    for first in range(0, n_clips, chunk):
        emb = rng.standard_normal((chunk, e)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        tokens = rng.standard_normal((chunk, tokens_per_clip, d)).astype(np.float16)
        clips = []
        for i in range(chunk):
            name = f"recordings {(first + i) // 1000:03d}/take {first + i:06d}, field.wav"
            path = library / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"\0")  # never decoded: unchanged files are only stat()ed
            st = path.stat()
            clips.append(ClipVectors(name, 0.0, 10.0, st.st_size, st.st_mtime_ns, emb[i], tokens[i]))
        store.add(clips)
    store.close()


def _index_io_bytes(strace_log: Path, index: Path) -> int:
    """Bytes read or written on file descriptors of files under ``index`` (``strace -y`` output)."""
    pattern = re.compile(r"^(?:\d+ +)?(\w+)\((\d+)<([^>]*)>.*\) += +(\d+)")
    total = 0
    for line in strace_log.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        calls = {"read", "write", "pread64", "pwrite64", "readv", "writev"}
        if m and m.group(1) in calls and m.group(3).startswith(str(index.resolve())):
            total += int(m.group(4))
    return total


def n100k(
    ckpt: Path, n_clips: int = 100_000, tokens_per_clip: int = 32, n_new: int = 10, repeats: int = 3
) -> dict:
    """A 100,000-clip index: size, warm query time, a fresh ``lacoat search``, re-index I/O."""
    from lacoat.retrieval.search import Library

    work = Path(tempfile.mkdtemp(prefix="lacoat-bench-n100k-"))
    try:
        library, index = work / "library", work / "index"
        library.mkdir()
        start = time.perf_counter()
        _write_synthetic_index(ckpt, library, index, n_clips, tokens_per_clip)
        build_seconds = time.perf_counter() - start
        index_bytes = sum(p.stat().st_size for p in index.iterdir())
        queries = _queries(11)

        lib = Library(index)
        lib.search(queries[0])  # warm-up: embeddings read, first cascade call
        latencies = []
        for q in queries[1:]:
            start = time.perf_counter()
            lib.search(q, k=10, rerank_k=64)
            latencies.append(time.perf_counter() - start)
        lib.close()

        search_cmd = [sys.executable, "-m", "lacoat", "search", "--index", str(index), queries[0]]
        torch_cmd = [sys.executable, "-c", "import torch"]
        cli, torch_only, rss = [], [], []
        for _ in range(repeats):  # interleaved, so that both see the same machine load
            seconds, peak = _timed(search_cmd)
            cli.append(seconds)
            rss.append(peak)
            torch_only.append(_timed(torch_cmd)[0])

        for f in sorted((SYNTHCAPS / "evaluation").iterdir())[:n_new]:
            shutil.copy(f, library / f.name)
        log = work / "strace.log"
        reindex = (
            "from lacoat.retrieval.index import build_index; "
            f"r = build_index({str(ckpt)!r}, {str(library)!r}, {str(index)!r}, progress=False); "
            "print(r.encoded, r.unchanged)"
        )
        start = time.perf_counter()
        out = subprocess.run(
            ["strace", "-f", "-y", "-e", "trace=read,write,pread64,pwrite64,readv,writev", "-o", str(log)]
            + [sys.executable, "-c", reindex],
            capture_output=True,
            text=True,
            check=True,
        )
        reindex_seconds = time.perf_counter() - start
        encoded, unchanged = map(int, out.stdout.split()[-2:])
        io_bytes = _index_io_bytes(log, index)
        return {
            "clips": n_clips,
            "synthetic": f"random vectors, {tokens_per_clip} tokens per clip, placeholder files",
            "index_mb": round(index_bytes / 2**20, 1),
            "index_bytes_per_clip": round(index_bytes / n_clips),
            "write_seconds": round(build_seconds, 1),
            "warm_query_s": round(statistics.median(latencies), 3),
            "warm_query_s_max": round(max(latencies), 3),
            "cli_search_s": round(statistics.median(cli), 2),
            "import_torch_s": round(statistics.median(torch_only), 2),
            "cli_vs_import_torch": round(statistics.median(cli) / statistics.median(torch_only), 2),
            "search_peak_rss_mb": round(max(rss), 1),
            "reindex_10": {
                "encoded": encoded,
                "unchanged": unchanged,
                "seconds_under_strace": round(reindex_seconds, 1),
            },
            "reindex_10_io_bytes": io_bytes,
            "reindex_10_written_fraction": round(io_bytes / index_bytes, 5),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def search_section(ckpt: Path) -> dict:
    """The whole ``search`` section: the 200-clip figures and ``n100k``."""
    return {**synthcaps_200(ckpt), "n100k": n100k(ckpt)}


def main() -> None:
    parser = argparse.ArgumentParser(description="search.n100k alone, merged into a results file")
    parser.add_argument("--ckpt", required=True, help="the demo checkpoint (make demo)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"))
    args = parser.parse_args()
    result = n100k(Path(args.ckpt))
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("search", {})["n100k"] = result
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
