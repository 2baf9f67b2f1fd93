"""Benchmarks: ``python benchmarks/bench.py [--out benchmarks/results.json] [--only SECTION ...]``.

Sections (each runs in its own process, so each reports its own peak RSS):
* ``pair_scoring``: cascade pairs per second in ``score_matrix`` on random features of the real shapes
  (demo and MCAN-small size), and the achieved FLOP/s divided by the FLOP/s of a plain fp32 matmul of
  the model's width measured in the same run;
* ``clotho_size``: text→audio over 5,225 queries × 1,045 clips with the demo-size model on random
  features, exhaustive (estimated from a measured block of queries) and two-stage with K = 16 … 128;
* ``synthcaps``: t2a mAP@10 of the demo checkpoint (``make demo``) on SynthCaps test, exhaustive and
  two-stage with K = 16, 32, 64;
* ``training_online`` / ``training_cached``: training pairs per second with frozen encoders (a
  random-weight CLAP HTSAT-tiny and all-MiniLM-L6-v2) reading audio, or the ``lacoat extract`` cache;
* ``search``: ``lacoat index`` of 200 SynthCaps clips, re-indexing after 10 new files, search latency,
  and ``n100k``, a 100,000-clip index (``benchmarks/search_bench.py``);
* ``train_memory``: memory of B×B pair training of the Clotho heads against the share of recomputed pair
  chunks, the share that fits a 40 GiB budget and its measured step-time cost (``benchmarks/train_memory.py``);
* ``eval_ddp``: exhaustive scoring split across 2 gloo processes against 1 (``benchmarks/eval_ddp.py``).
Timings are printed and saved; tests never assert on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from lacoat.contracts import Tokens
from lacoat.models.cascade import IteratingCascade
from lacoat.models.matcher import AudioTextMatcher

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers: the random-weight CLAP checkpoint the tests use too

SIZES = {  # width, heads, layers, text tokens, audio tokens (demo: LogMel 8-s window; mcan_small: 3 CLAP windows)
    "demo": (128, 4, 2, 20, 50),
    "mcan_small": (512, 8, 6, 20, 96),
}


class _Stub(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim


def matcher_of(size: str) -> AudioTextMatcher:
    d, h, layers, _, _ = SIZES[size]
    cascade = IteratingCascade(d, h, layers, dropout=0.1, lead="text")
    return AudioTextMatcher(_Stub(d), _Stub(d), cascade, embed_dim=d, pair_chunk=512).eval()


def tokens(n: int, length: int, d: int) -> Tokens:
    return Tokens(torch.randn(n, length, d), torch.ones(n, length, dtype=torch.bool))


def flops_per_pair(size: str) -> float:
    """Multiply-adds × 2 of the per-pair work of the text-led iterating cascade (audio follows; the
    text side is prepared and pooled once per text, so it is not per-pair work)."""
    d, _, layers, lt, la = SIZES[size]
    per_layer = 28 * la * d * d + 4 * la * la * d + 4 * la * lt * d  # SA, cross-attention, FFN (4d)
    pools = 2 * la * d * 512 + 2 * d * d  # the audio side's AttFlat MLP and merge
    return layers * per_layer + pools


def matmul_flops(d: int, repeats: int = 20) -> float:
    """Best of 5 timings of ``repeats`` fp32 matmuls ``[4096, d] @ [d, 4d]`` (FLOP/s)."""
    a, b = torch.randn(4096, d), torch.randn(d, 4 * d)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return repeats * 2 * 4096 * d * 4 * d / best


@torch.no_grad()
def pair_scoring(size: str, n_text: int = 16, n_audio: int = 64) -> dict:
    d, _, _, lt, la = SIZES[size]
    matcher = matcher_of(size)
    text, audio = tokens(n_text, lt, d), tokens(n_audio, la, d)
    matcher.score_matrix(text[:2], audio[:8])  # warm-up
    start = time.perf_counter()
    matcher.score_matrix(text, audio)
    seconds = time.perf_counter() - start
    pairs_per_s = n_text * n_audio / seconds
    achieved = pairs_per_s * flops_per_pair(size)
    reference = matmul_flops(d)
    return {
        "pairs_per_s": round(pairs_per_s, 1),
        "flops_per_pair": flops_per_pair(size),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_gflops": round(reference / 1e9, 2),
        "matmul_ratio": round(achieved / reference, 3),
    }


@torch.no_grad()
def clotho_size(n_text: int = 5225, n_audio: int = 1045, measured_queries: int = 16) -> dict:
    d, _, _, lt, la = SIZES["demo"]
    matcher = matcher_of("demo")
    text, audio = tokens(n_text, lt, d), tokens(n_audio, la, d)
    start = time.perf_counter()
    matcher.score_matrix(text[:measured_queries], audio)
    per_query = (time.perf_counter() - start) / measured_queries
    out = {
        "exhaustive": {
            "pair_passes": n_text * n_audio,
            "seconds": round(per_query * n_text, 1),
            "estimated_from_queries": measured_queries,
        }
    }
    for k in (16, 32, 64, 128):
        bi = matcher.bi_scores(text, audio)
        shortlist = torch.zeros_like(bi, dtype=torch.bool)
        shortlist.scatter_(1, bi.topk(k, dim=1).indices, True)
        shortlist.scatter_(0, bi.topk(k, dim=0).indices, True)
        start = time.perf_counter()
        matcher.rerank_scores(text, audio, k)
        out[f"rerank_k{k}"] = {
            "pair_passes": int(shortlist.sum()),
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def demo_checkpoint() -> Path:
    from lacoat.checkpoints import latest_best_checkpoint

    ckpt = latest_best_checkpoint(REPO / "runs" / "demo")
    if ckpt is None or not (REPO / "data" / "synthcaps").is_dir():
        raise SystemExit("no demo checkpoint under runs/demo (or no data/synthcaps): run `make demo` first")
    return ckpt


def synthcaps(ks: tuple[int, ...] = (16, 32, 64)) -> dict:
    """Test t2a mAP@10 of the demo checkpoint, exhaustive and two-stage, through ``Trainer.test``."""
    import lightning as L

    from lacoat.cli.config import instantiate_sections
    from lacoat.data.datamodule import RetrievalDataModule
    from lacoat.train.module import LacoatModule

    ckpt = demo_checkpoint()
    model = LacoatModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    data = instantiate_sections(str(REPO / "configs" / "demo.yaml"), {"data": RetrievalDataModule})["data"]
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    out: dict = {"checkpoint": str(ckpt.relative_to(REPO))}
    for mode, k in [("exhaustive", None), *(("rerank", k) for k in ks)]:
        model.eval_mode, model.rerank_k = mode, k or model.rerank_k
        start = time.perf_counter()
        trainer.test(model, datamodule=data, verbose=False)
        name = mode if k is None else f"rerank_k{k}"
        out[name] = {
            "t2a_mAP@10": round(model.test_results["test/t2a_mAP@10"], 4),
            "a2t_mAP@10": round(model.test_results["test/a2t_mAP@10"], 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
    eval_set = data.eval_set("test")
    out["queries"], out["clips"] = len(eval_set.queries), len(eval_set.clips)
    return out


def training(cached: bool, steps: int = 8, batch_size: int = 16) -> dict:
    """Training pairs per second with frozen CLAP HTSAT-tiny + MiniLM encoders and the demo-size head."""
    import lightning as L

    from lacoat.data import Clotho
    from lacoat.data.datamodule import RetrievalDataModule
    from lacoat.data.synth import synthesize
    from lacoat.models.cascade import IteratingCascade
    from lacoat.models.encoders import ClapAudioEncoder, HFTextEncoder
    from lacoat.models.matcher import AudioTextMatcher
    from lacoat.train.extract import extract
    from lacoat.train.losses import NTXentLoss
    from lacoat.train.module import LacoatModule
    from lacoat.train.objectives import PairObjective
    from tests.helpers import save_random_clap_checkpoint

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []  # wall-clock time at the end of every training step

        def on_train_batch_end(self, *args, **kwargs) -> None:
            self.times.append(time.perf_counter())

    work = Path(tempfile.mkdtemp(prefix="lacoat-bench-"))
    try:
        synthesize(
            str(work / "data"), seed=0, n_development=batch_size * (steps + 1), n_validation=4, n_evaluation=4
        )
        save_random_clap_checkpoint(work / "clap.pt")
        torch.manual_seed(0)
        matcher = AudioTextMatcher(
            ClapAudioEncoder(str(work / "clap.pt"), frozen=True),
            HFTextEncoder("sentence-transformers/all-MiniLM-L6-v2", max_length=48, frozen=True),
            IteratingCascade(128, 4, 2, 0.1, "text"),
            embed_dim=128,
        )
        model = LacoatModule(matcher, PairObjective(NTXentLoss()), lr=1e-3)
        data = RetrievalDataModule(
            Clotho(str(work / "data")),
            batch_size=batch_size,
            num_workers=2,
            sample_rate=48000,
            window_seconds=10.0,
            feature_cache=str(work / "cache") if cached else None,
        )
        out: dict = {}
        if cached:
            start = time.perf_counter()
            data.setup("fit")
            extract(data, matcher.audio_encoder, matcher.text_encoder, ["train"], batch_size=8)
            out["extract_seconds"] = round(time.perf_counter() - start, 1)
        timer = StepTimer()
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(model, datamodule=data)
        t = timer.times
        seconds = t[-1] - t[0]  # steps 2..n: start-up and the first step excluded
        out |= {
            "pairs_per_s": round(batch_size * (len(t) - 1) / seconds, 1),
            "seconds_per_step": round(seconds / (len(t) - 1), 3),
            "batch_size": batch_size,
            "timed_steps": len(t) - 1,
        }
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def search_bench() -> dict:
    """``lacoat index`` of 200 SynthCaps clips, re-index after 10 new files, search latency, and the
    100,000-clip index ``n100k`` (``benchmarks/search_bench.py``)."""
    from benchmarks.search_bench import search_section

    return search_section(demo_checkpoint())


def train_memory() -> dict:
    """Memory of B×B pair training against the share of recomputed pair chunks (``benchmarks/train_memory.py``)."""
    from benchmarks.train_memory import train_memory as section

    return section()


def eval_ddp() -> dict:
    """Exhaustive scoring split across 2 gloo processes against 1 (``benchmarks/eval_ddp.py``)."""
    from benchmarks.eval_ddp import eval_ddp as section

    return section()


SECTIONS = {
    "pair_scoring": lambda: {size: pair_scoring(size) for size in SIZES},
    "clotho_size": clotho_size,
    "synthcaps": synthcaps,
    "training_online": lambda: training(cached=False),
    "training_cached": lambda: training(cached=True),
    "search": search_bench,
    "train_memory": train_memory,
    "eval_ddp": eval_ddp,
}


def run_section(name: str) -> dict:
    """Run one section in this process; its result carries this process's peak RSS."""
    torch.manual_seed(0)
    result = SECTIONS[name]()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def report(results: dict) -> None:
    print(f"machine: {results['machine']}")
    for size, r in results.get("pair_scoring", {}).items():
        if isinstance(r, dict):
            print(
                f"pair_scoring.{size:<10} {r['pairs_per_s']:>10.1f} pairs/s   {r['achieved_gflops']:>7.2f} GFLOP/s   "
                f"matmul {r['matmul_gflops']:>7.2f} GFLOP/s   ratio {r['matmul_ratio']:.3f}"
            )
    for name, r in results.get("clotho_size", {}).items():
        if isinstance(r, dict):
            print(f"clotho_size.{name:<12} {r['pair_passes']:>9} pair passes   {r['seconds']:>8.1f} s")
    for name, r in results.get("synthcaps", {}).items():
        if isinstance(r, dict):
            print(f"synthcaps.{name:<12} t2a mAP@10 {r['t2a_mAP@10']:.4f}   ({r['seconds']:.1f} s)")
    for name, r in results.get("training", {}).items():
        print(f"training.{name:<8} {r['pairs_per_s']:>8.1f} pairs/s   {r['seconds_per_step']:.3f} s/step")
    if "search" in results:
        r = results["search"]
        print(
            f"search: {r['index_clips']} clips, {r['search_seconds_mean']:.3f} s per query (model loaded), "
            f"CLI {r['cli_search_wall_seconds']:.2f} s; re-index after {r['reindex_after_new_files']['new_files']} "
            f"new files encoded {r['reindex_after_new_files']['encoded']}"
        )
        if "n100k" in r:
            n = r["n100k"]
            print(
                f"search.n100k: {n['index_mb']} MB, warm query {n['warm_query_s']} s, CLI ÷ import torch "
                f"{n['cli_vs_import_torch']}, re-index of 10 new touched {n['reindex_10_written_fraction']:.2%}"
            )
    for name, r in results.get("train_memory", {}).items():
        if isinstance(r, dict) and "bf16_plain_gib" in r:
            print(
                f"train_memory.{name:<9} bf16 {r['bf16_plain_gib']:>7.2f} GiB plain, "
                f"{r['bf16_recompute_gib']:>6.2f} GiB at share {r['recompute_share']:.4g} "
                f"(time ×{r['recompute_time_ratio']:.2f}), {r['bf16_full_recompute_gib']:.2f} GiB at share 1 "
                f"(×{r['recompute_time_ratio_full']:.2f})"
            )
    if "eval_ddp" in results:
        r = results["eval_ddp"]
        print(
            f"eval_ddp: {r['pairs']} pairs, 1 process {r['one_process_s']} s, 2 processes {r['two_processes_s']} s "
            f"(×{r['speedup_2proc']})"
        )
    for name, r in results.items():
        if isinstance(r, dict) and "peak_rss_mb" in r:
            print(f"peak RSS {name}: {r['peak_rss_mb']} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="sections to run (default: all)")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.section:
        print(json.dumps(run_section(args.section)))
        return
    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if out.is_file() and args.only else {}
    results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for name in args.only or list(SECTIONS):
        print(f"running {name} ...", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--section", name], capture_output=True, text=True, cwd=REPO
        )
        if child.returncode != 0:
            print(child.stdout[-2000:], child.stderr[-4000:])
            raise SystemExit(f"section {name} failed")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        if name.startswith("training_"):
            results.setdefault("training", {})[name.removeprefix("training_")] = result
        else:
            results[name] = result
        out.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
