"""The commands besides fit/validate/test/predict: ``synth``, ``inspect``, ``extract``, ``augment``,
``download`` (data), ``index``, ``search``, ``serve`` (a library) and ``explain`` (a map). Each parses
its options (most from the typed signature of the function it calls) and imports its work on use."""

from __future__ import annotations

import time
from typing import Literal

from jsonargparse import ArgumentParser

from lacoat.defaults import RERANK_K


def _parse(func, prog: str, argv: list[str]) -> dict:
    """Parse ``argv`` against the signature and docstring of ``func``."""
    parser = ArgumentParser(prog=prog, description=(func.__doc__ or "").split("\n")[0], exit_on_error=True)
    parser.add_function_arguments(func, as_group=False)
    return vars(parser.parse_args(argv).clone())


def synth_main(argv: list[str]) -> None:
    """``lacoat synth --out DIR [--seed S] [--n_development N] ...``"""
    from lacoat.data.synth import synthesize

    kwargs = _parse(synthesize, "lacoat synth", argv)
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    start = time.perf_counter()
    sizes = synthesize(**kwargs)
    total = sum(sizes.values())
    print(
        f"SynthCaps: {total} clips ({sizes}) written to {kwargs['out']} in {time.perf_counter() - start:.1f} s"
    )


def inspect_main(argv: list[str]) -> None:
    """``lacoat inspect --config FILE [--config …] [--data.KEY VALUE …]``: load the data a config points at
    and report what was found."""
    from lacoat.cli.config import parse_and_build, sections_parser
    from lacoat.data.datamodule import RetrievalDataModule

    parser = sections_parser(
        "lacoat inspect", "Check a data set before training on it.", {"data": RetrievalDataModule}
    )
    parser.add_argument(
        "--stages",
        type=list[Literal["train", "val", "test"]],
        default=["train", "val", "test"],
        help="splits to load",
    )
    args, built = parse_and_build(parser, argv, ["data"])
    dm: RetrievalDataModule = built["data"]
    print(f"source: {dm.source!r}")
    for stage in args.stages:
        if stage not in dm.source.splits:
            print(f"{stage:5s}  (no split configured)")
            continue
        if stage == "train":
            table = dm.training_table()
            n_aug = int((table["source"] == "augmented").sum())
            line = f"{table['file_name'].nunique()} clips, {len(table) - n_aug} captions, {n_aug} augmented"
        else:
            eval_set = dm.eval_set(stage)
            groups = ", ".join(
                f"{(eval_set.queries['group'] == g).sum()} {g} queries" for g in eval_set.groups()
            )
            line = f"{len(eval_set.clips)} clips, {groups}"
        skipped = dm.skipped.get(stage, [])
        print(f"{stage:5s}  split '{dm.source.splits[stage]}': {line}, {len(skipped)} skipped")
        for path, reason in skipped[:5]:
            print(f"         skipped {path}: {reason}")


def index_main(argv: list[str]) -> None:
    """``lacoat index --ckpt CKPT --audio_dir DIR --out INDEX``"""
    import sys

    from jsonargparse import ActionYesNo

    from lacoat.retrieval.index import build_index

    parser = ArgumentParser(
        prog="lacoat index", description="Index (or update the index of) a folder of audio."
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lacoat fit`")
    # the other options and their defaults are build_index's own
    parser.add_function_arguments(build_index, skip={"checkpoint", "progress"}, as_group=False)
    parser.add_argument(
        "--progress",
        action=ActionYesNo(no_prefix="no_"),
        default=None,
        help="progress bar (default: on a terminal)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        report = build_index(args.ckpt, **{k: v for k, v in vars(args).items() if k != "ckpt"})
    except KeyboardInterrupt:
        print(
            "\nlacoat index: interrupted; files encoded so far are in the index, re-run the same command to "
            "encode the rest",
            file=sys.stderr,
        )
        sys.exit(130)
    if report.replaced:
        print(report.replaced)
    skipped = sum(len(files) for files in report.skipped.values())
    print(
        f"index {args.out}: {report.files} files, {report.clips} clips ({report.encoded} encoded, "
        f"{report.unchanged} unchanged, {report.removed} removed, {skipped} skipped, "
        f"{sum(report.ignored.values())} ignored) in {time.perf_counter() - start:.1f} s"
    )
    for reason, files in report.skipped.items():
        first = ", ".join(repr(f) for f in files[:3]) + (", ..." if len(files) > 3 else "")
        print(f"  skipped, {reason}: {len(files)} ({first})")
    if report.ignored:
        kinds = ", ".join(f"{n} {ext}" for ext, n in report.ignored.most_common(6))
        print(f"  ignored, not audio: {sum(report.ignored.values())} ({kinds})")


def search_main(argv: list[str]) -> None:
    """``lacoat search --index INDEX "query" [-k 10] [--json]``"""
    import json
    import sys

    from lacoat.retrieval.search import search

    parser = ArgumentParser(prog="lacoat search", description="Find the clips of an index that match a text.")
    parser.add_argument("query", help="what the sound should be, in words")
    parser.add_argument("--index", required=True, help="index folder written by `lacoat index`")
    parser.add_argument(
        "--ckpt", default=None, help="the index's checkpoint, if it moved (checked: it must be the same file)"
    )
    parser.add_argument("-k", type=int, default=10, help="number of results")
    parser.add_argument("--rerank_k", type=int, default=RERANK_K, help="clips re-scored with co-attention")
    parser.add_argument(
        "--json", action="store_true", help="print JSON (with absolute paths) instead of a table"
    )
    args = parser.parse_args(argv)
    try:
        hits = search(args.index, args.query, args.k, args.rerank_k, args.ckpt)
        if args.json:
            lines = [json.dumps([hit.__dict__ for hit in hits], indent=1, ensure_ascii=False)]
        else:
            lines = [f"{'rank':>4}  {'score':>6}  {'dur/s':>6}  file"]
            for hit in hits:
                at = f"  (at {hit.start:.0f} s)" if hit.start else ""
                lines.append(f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.duration:>6.1f}  {hit.file}{at}")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("\nlacoat search: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `lacoat search ... | head`: the reader has what it wanted
        _stdout_closed()


def serve_main(argv: list[str]) -> None:
    """``lacoat serve --index INDEX [--port 8000]``"""
    from lacoat.retrieval.serve import serve

    parser = ArgumentParser(
        prog="lacoat serve",
        description="Search an index from a web page (and a JSON API) on this machine, model loaded once.",
    )
    parser.add_argument("--index", required=True, help="index folder written by `lacoat index`")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    parser.add_argument(
        "--ckpt", default=None, help="the index's checkpoint, if it moved (checked: it must be the same file)"
    )
    args = parser.parse_args(argv)
    serve(args.index, args.port, args.host, args.ckpt)
    print("lacoat serve: stopped")


def _stdout_closed() -> None:
    """Exit quietly after the reader of stdout went away (status 141, as a program killed by SIGPIPE):
    stdout is pointed at /dev/null so that Python's final flush does not print a traceback."""
    import contextlib
    import os
    import sys

    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor (tests' capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(141)


def extract_main(argv: list[str]) -> None:
    """``lacoat extract --config FILE [--config …] [--KEY VALUE …]``: cache the outputs of the config's
    frozen encoders."""
    from lacoat.cli.config import parse_and_build, sections_parser
    from lacoat.data.datamodule import RetrievalDataModule
    from lacoat.errors import ModelError
    from lacoat.train.extract import extract
    from lacoat.train.module import LacoatModule

    parser = sections_parser(
        "lacoat extract",
        "Run the frozen encoders of a config once and cache their outputs in data.feature_cache.",
        {"model": LacoatModule, "data": RetrievalDataModule},
    )
    parser.add_argument(
        "--stages",
        type=list[Literal["train", "val", "test"]],
        default=["train", "val", "test"],
        help="splits",
    )
    parser.add_argument("--shard_size", type=int, default=256, help="items per cache file (unit of resuming)")
    parser.add_argument("--batch_size", type=int, default=16, help="items encoded at once")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    args, built = parse_and_build(parser, argv, ["model", "data"])
    matcher = built["model"].matcher
    audio = matcher.audio_encoder if matcher.audio_encoder.frozen else None
    text = matcher.text_encoder if matcher.text_encoder.frozen else None
    if audio is None and text is None:
        configs = " + ".join(f"'{path}'" for path in args.config or []) or "the command line"
        raise ModelError(
            f"neither encoder of {configs} is frozen, so their outputs change while training and "
            "cannot be cached; set frozen: true on an encoder to cache it."
        )
    for name, enc in (("audio", matcher.audio_encoder), ("text", matcher.text_encoder)):
        if not enc.frozen:
            print(f"{name} encoder is trained (frozen: false): its outputs are not cached")
    start = time.perf_counter()
    reports = extract(built["data"], audio, text, args.stages, args.shard_size, args.batch_size, args.device)
    for r in reports:
        print(
            f"{r.side:5s} {r.split:12s} {r.items:6d} items: {r.encoded} encoded, {r.reused} already cached, "
            f"{len(r.skipped)} skipped ({r.seconds:.1f} s)"
        )
        for name, reason in list(r.skipped.items())[:5]:
            print(f"      skipped {name}: {reason}")
    print(f"features in {built['data'].feature_cache} ({time.perf_counter() - start:.1f} s)")


def augment_main(argv: list[str]) -> None:
    """``lacoat augment --input CAPTIONS.csv --output AUG.csv --n 2 --model NAME [--base_url URL]``"""
    import logging
    import sys

    from jsonargparse import ActionYesNo

    from lacoat.augment.run import augment, failure_report_path

    for name in ("httpx", "httpx2"):  # one INFO line per request otherwise; retries are logged by lacoat
        logging.getLogger(name).setLevel(logging.WARNING)

    parser = ArgumentParser(prog="lacoat augment", description=(augment.__doc__ or "").split("\n")[0])
    parser.add_function_arguments(augment, as_group=False, skip={"dry_run", "progress"})
    parser.add_argument(
        "--dry_run",
        action=ActionYesNo(no_prefix="no_"),
        default=False,
        help="count the requests a run would send and estimate their tokens; send nothing",
    )
    parser.add_argument(
        "--progress",
        action=ActionYesNo(no_prefix="no_"),
        default=True,
        help="progress bar (--no_progress: none)",
    )
    kwargs = {k: v for k, v in vars(parser.parse_args(argv).clone()).items() if not k.startswith("__")}
    try:
        stats = augment(**kwargs)
    except KeyboardInterrupt:
        print(
            "\nlacoat augment: interrupted; answers received so far are stored, re-run to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    if kwargs["dry_run"] and kwargs["backend"] == "rules":
        print(
            f"dry run: {stats.rows} captions ({stats.unique} distinct), {stats.to_ask} to paraphrase (rules: no tokens)"
        )
        return
    if kwargs["dry_run"]:
        print(
            f"dry run: {stats.rows} captions ({stats.unique} distinct), {stats.cached} already in the store: "
            f"{stats.to_ask} request(s) to send (more if some are retried). Estimated tokens (characters / 4, "
            f"an estimate only): {stats.estimated_prompt_tokens} prompt + {stats.estimated_completion_tokens} "
            "completion."
        )
        return
    print(f"augment: {stats.summary()}")
    print(f"wrote {kwargs['output']}")
    if stats.written < stats.rows * kwargs["n"]:
        retry = "the rules give no more for them" if kwargs["backend"] == "rules" else "re-run to retry them"
        print(
            f"{stats.rows * kwargs['n'] - stats.written} paraphrase rows missing: the captions are listed "
            f"in {failure_report_path(kwargs['output'])} ({retry})"
        )


def explain_main(argv: list[str]) -> None:
    """``lacoat explain --ckpt CKPT --audio FILE "query" --out map.png [--layer -1]``"""
    from lacoat.evaluation.attention_maps import attention_map, draw_attention_map
    from lacoat.models.factory import load_matcher

    parser = ArgumentParser(
        prog="lacoat explain",
        description="Draw the word × time co-attention of one query and one clip (mean of heads).",
    )
    parser.add_argument("query", type=str, help="the text query")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lacoat fit` (with a cascade)")
    parser.add_argument("--audio", required=True, help="audio file (read whole, every window)")
    parser.add_argument("--out", default="attention_map.png", help="image to write (PNG, PDF, SVG by suffix)")
    parser.add_argument(
        "--layer", type=int, default=-1, help="guided-attention layer, counted from 0 (-1 = the last)"
    )
    args = parser.parse_args(argv)
    _check_explain(args.query, args.out)
    matcher, _ = load_matcher(args.ckpt, "both")
    amap = attention_map(matcher, args.audio, args.query, layer=args.layer)
    draw_attention_map(amap, args.out)
    print(
        f"{amap.layer}: {len(amap.rows)} words x {amap.weights.shape[1]} audio tokens "
        f"({amap.token_seconds * 1000:.0f} ms each), score {amap.score:.3f}; written to {args.out}"
    )


def _check_explain(query: str, out: str) -> None:
    """Refuse, before any work, an empty query or an image format matplotlib cannot write."""
    from pathlib import Path

    from matplotlib.backend_bases import FigureCanvasBase

    from lacoat.errors import LacoatError

    if not query.strip():
        raise LacoatError('the query is empty; type the words to map, e.g. "a dog barks in the rain".')
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise LacoatError(
            f"--out '{out}': cannot draw a '.{suffix}' image; end the name with one of "
            f"{', '.join('.' + f for f in sorted(formats))} (e.g. map.png)."
        )


def download_main(argv: list[str]) -> None:
    """``lacoat download clotho|audiocaps --root DIR``"""
    from lacoat.data.download import download_audiocaps, download_clotho

    parser = ArgumentParser(
        prog="lacoat download",
        description="Download Clotho v2.1 or AudioCaps with aac-datasets (pip install 'lacoat[data]').",
    )
    parser.add_argument("dataset", type=Literal["clotho", "audiocaps"], help="clotho or audiocaps")
    parser.add_argument("--root", required=True, help="folder to download into (the config's data root)")
    parser.add_argument(
        "--subsets",
        type=list[str] | None,
        default=None,
        help="clotho: dev, val, eval; audiocaps: train, val, test (default: all three)",
    )
    parser.add_argument("--force", type=bool, default=False, help="download again files already there")
    parser.add_argument("--keep_archives", type=bool, default=False, help="clotho: keep the 7z archives")
    parser.add_argument("--ytdlp_path", default="yt-dlp", help="audiocaps: the yt-dlp executable")
    parser.add_argument("--ffmpeg_path", default="ffmpeg", help="audiocaps: the ffmpeg executable")
    parser.add_argument("--max_workers", type=int, default=4, help="audiocaps: clips fetched in parallel")
    args = parser.parse_args(argv)
    if args.dataset == "clotho":
        subsets = tuple(args.subsets or ("dev", "val", "eval"))
        _check_subsets(subsets, ("dev", "val", "eval"), "clotho")
        counts = download_clotho(args.root, subsets, clean_archives=not args.keep_archives, force=args.force)
        config = "configs/clotho_iter.yaml"
    else:
        subsets = tuple(args.subsets or ("train", "val", "test"))
        _check_subsets(subsets, ("train", "val", "test"), "audiocaps")
        counts = download_audiocaps(
            args.root, subsets, args.ytdlp_path, args.ffmpeg_path, args.max_workers, args.force
        )
        config = "configs/audiocaps_iter.yaml"
    clips = ", ".join(f"{split} {n} clips" for split, n in counts.items())
    print(
        f"{args.dataset} ready in {args.root}: {clips}. Use it with "
        f"`lacoat fit --config {config} --data.source.init_args.root {args.root}`"
    )


def _check_subsets(subsets: tuple[str, ...], allowed: tuple[str, ...], dataset: str) -> None:
    from lacoat.errors import DataError

    unknown = sorted(set(subsets) - set(allowed))
    if unknown:
        raise DataError(f"unknown {dataset} subset(s) {unknown}; choose among {', '.join(allowed)}")
