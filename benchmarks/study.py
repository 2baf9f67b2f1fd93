"""The co-attention study: ``python benchmarks/study.py RUN [RUN ...] [--seeds 0 1 2]``, then ``--table``.

Each run is ``lacoat fit`` + ``lacoat test`` (exhaustive and two-stage) of a regime's base config
(``configs/demo_scratch.yaml``: from scratch; ``configs/demo.yaml``: frozen encoders, cached features)
with the config files and overrides named in ``RUNS``, once per seed, under ``runs/study/<run>/seed<k>``;
a cascade run is also tested two-stage with score fusion (``fused``: ``s_co + α·s_bi``, α of
``ALPHAS`` chosen by ``lacoat validate``'s ``val/t2a_mAP@10``, as the README tells users to choose it).
Results (test metrics of both modes, fit seconds) accumulate in ``benchmarks/study.json``; ``--table``
prints the README's table of mean ± sd over seeds. A finished run/seed is not run again (delete its
entry to redo it). Runs take minutes each on 2 CPU cores: this is an experiment, not a test.
``--results benchmarks/study_quiet.json`` keeps another protocol apart: the same runs fitted one at a
time on the quiet machine with torch's default threads (the issue's "30 minutes on 2 quiet cores"),
where the main file's longer runs were mostly fitted two or three at a time with one thread each.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# --results: another protocol's file (its runs under runs/<its stem>)
RESULTS = REPO / "benchmarks" / "study.json"
LACOAT = str(Path(sys.executable).parent / "lacoat")
HEADS = {
    "iterating": [],
    "single": ["--config", "configs/demo/head/single.yaml"],
    "stacking": ["--config", "configs/demo/head/stack.yaml"],
    "biencoder": ["--config", "configs/demo/head/biencoder.yaml"],
}
# the frozen regime's heads besides: the bi-encoder of the cascade's depth, and towers then fusion
FROZEN_HEADS = {
    **HEADS,
    "towers": ["--config", "configs/demo/head/towers.yaml"],
    "towers_iterating": ["--config", "configs/demo/head/towers_iter.yaml"],
}
# the two regimes' base configs: a log-mel audio encoder trained with the head (from scratch), and
# frozen aiSFX and MiniLM read from the feature cache with only the head trained (frozen)
SCRATCH = ["--config", "configs/demo_scratch.yaml"]
FROZEN = ["--config", "configs/demo.yaml"]
HARD_BATCHES = ["--data.hard_share", "0.5", "--data.hard_neighbours", "2"]
ORDER_NEGATIVES = ["--model.objective.init_args.order_negatives", "audio"]
TEXT_ORDER_NEGATIVES = ["--model.objective.init_args.order_negatives", "text"]
BOTH_ORDER_NEGATIVES = ["--config", "configs/demo/negatives/order_negatives.yaml"]  # both sides
COUNT_NEGATIVES = ["--config", "configs/demo/negatives/count_negatives.yaml"]
ORDER_COUNT = BOTH_ORDER_NEGATIVES + COUNT_NEGATIVES
# count negatives on the audio side too: each counting caption's clip with one occurrence more or fewer
COUNT_BOTH = ["--config", "configs/demo/negatives/count_negatives_both.yaml"]
ORDER_COUNT_BOTH = BOTH_ORDER_NEGATIVES + COUNT_BOTH
LONG = ["--config", "configs/demo/budget/long.yaml"]
SEVEN_EPOCHS = ["--trainer.max_epochs", "7"]  # after LONG: the whole of a 30-minute quiet fit
POOL_MASS_BOTH = ["--model.matcher.init_args.pool_mass", "both"]
POOL_MASS = ["--config", "configs/demo/pool/pool_mass.yaml"]  # the audio pool alone
SHIFT = ["--config", "configs/demo/data/train_shift.yaml"]  # training reads start within the quiet
GLIMPSES = ["--config", "configs/demo/pool/audio_glimpses.yaml"]  # three audio maps (after POOL_MASS)
FULL_PAIRS = ["--model.objective.init_args.pairs", "full"]
AUDIO_LEAD = ["--model.matcher.init_args.cascade.init_args.lead", "audio"]
TEXT_FINETUNE = ["--config", "configs/demo/text/text_finetune.yaml"]  # MiniLM not frozen
TEXT_TOP2 = ["--config", "configs/demo/text/text_finetune_top2.yaml"]  # its top 2 layers trained
# order and count negatives on both sides with the text model's top 2 layers trained (after LONG and a head)
COUNT_BOTH_TOP2 = ORDER_COUNT_BOTH + TEXT_TOP2
# the longer budget's recipe with the text model's top 2 layers trained at 1e-4 (after LONG and a head)
LR_1E4 = [*COUNT_BOTH_TOP2, "--model.text_encoder_lr", "1e-4"]


def each_head(suffix: str, *more: str) -> dict[str, list[str]]:
    """``{head}{suffix}`` for every head: the longer budget, the head's variant, then ``more``."""
    return {f"{head}{suffix}": LONG + args + list(more) for head, args in HEADS.items()}


# the from-scratch study (docs/study.md), each row after SCRATCH
SCRATCH_RUNS: dict[str, list[str]] = {
    # the demo recipe (configs/demo.yaml) with each head: the same batches for all
    **{head: args for head, args in HEADS.items()},
    # ablations of the iterating recipe
    "iterating_encoder_lr_1e-5_full_pairs": ["--model.encoder_lr", "1e-5", *FULL_PAIRS],  # the demo before
    "iterating_full_pairs": FULL_PAIRS,
    "iterating_hard_batches_full_pairs": HARD_BATCHES + FULL_PAIRS,
    "iterating_hard_batches": HARD_BATCHES,
    "iterating_order_negatives": ORDER_NEGATIVES,
    "biencoder_order_negatives": HEADS["biencoder"] + ORDER_NEGATIVES,
    "iterating_text_order_negatives": TEXT_ORDER_NEGATIVES,
    "biencoder_text_order_negatives": HEADS["biencoder"] + TEXT_ORDER_NEGATIVES,
    "iterating_both_order_negatives": BOTH_ORDER_NEGATIVES,
    # count negatives on both sides at the demo budget: does an audio judgement favour co-attention?
    **{f"{head}_count_both_negatives": args + COUNT_BOTH for head, args in HEADS.items()},
    # the text model fine-tuned, not frozen
    **{f"{head}_text_finetune": args + TEXT_FINETUNE for head, args in HEADS.items()},
    # the longer CPU budget
    **{f"{head}_long": LONG + args for head, args in HEADS.items()},
    "iterating_long_order_negatives": LONG + ORDER_NEGATIVES,
    "iterating_long_text_order_negatives": LONG + TEXT_ORDER_NEGATIVES,
    "iterating_long_both_order_negatives": LONG + BOTH_ORDER_NEGATIVES,
    "biencoder_long_both_order_negatives": LONG + HEADS["biencoder"] + BOTH_ORDER_NEGATIVES,
    # order negatives on both sides and count negatives, each head
    **{f"{head}_long_order_count_negatives": LONG + args + ORDER_COUNT for head, args in HEADS.items()},
    # the iterating head with the audio leading: the text side follows (hears) the audio
    "iterating_audio_lead_long_order_count_negatives": LONG + AUDIO_LEAD + ORDER_COUNT,
    **{
        f"{head}_long_order_count_negatives_text_finetune": LONG + args + ORDER_COUNT + TEXT_FINETUNE
        for head, args in HEADS.items()
    },
    # only the text model's top 2 layers trained: a cheaper step
    **{
        f"{head}_long_order_count_negatives_text_top2": LONG + args + ORDER_COUNT + TEXT_TOP2
        for head, args in HEADS.items()
    },
    **{
        f"{head}_long_order_count_both_negatives_text_top2": LONG + args + COUNT_BOTH_TOP2
        for head, args in HEADS.items()
    },
    # the same with the text model's top layers trained at 1e-4 instead of 3e-5: is order learnt sooner?
    **each_head("_long_order_count_both_negatives_text_top2_lr1e-4", *LR_1E4),
    # the same with 7 epochs (2,184 steps) instead of 6: about the whole budget of a 30-minute quiet fit
    **each_head("_long_order_count_both_negatives_text_top2_lr1e-4_7epochs", *LR_1E4, *SEVEN_EPOCHS),
    # the 1e-4 recipe with every count change of a caption as a negative of its clip (up to 4: each
    # stated count one up and one down) rather than one: are counts among several sounds learnt then?
    **each_head(
        "_long_order_count_both_negatives_text_top2_lr1e-4_rewrites4",
        *LR_1E4,
        "--config",
        "configs/demo/negatives/count_rewrites_all.yaml",
    ),
    # the 1e-4 recipe with each counting caption's clip recounted both ways (one occurrence more and
    # one fewer, two audio negatives) rather than one way: does the caption → audio side learn counts?
    **each_head(
        "_long_order_count_both_negatives_text_top2_lr1e-4_edits2",
        *LR_1E4,
        "--config",
        "configs/demo/negatives/count_edits_both.yaml",
    ),
    # the 1e-4 recipe with half of each batch filled with the clips whose captions are most alike
    # (mostly the twins): do twin clips met as in-batch negatives move the counts at this budget?
    **each_head("_long_order_count_both_negatives_text_top2_lr1e-4_hard_batches", *LR_1E4, *HARD_BATCHES),
    # the 1e-4 recipe with pools that also read how much of what they attend to there is
    # (AttFlat's softmax mean cannot count; can this?): both pools, then the audio pool alone
    # (configs/demo/pool/pool_mass.yaml)
    **each_head("_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass_both", *LR_1E4, *POOL_MASS_BOTH),
    **each_head("_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass", *LR_1E4, *POOL_MASS),
    # the same with 7 epochs: the two levers that each moved one rate (7 epochs: order steadier over
    # seeds; pool_mass: counts), together, still inside a 30-minute quiet fit
    **each_head(
        "_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass_7epochs",
        *LR_1E4,
        *POOL_MASS,
        *SEVEN_EPOCHS,
    ),
    # the same with each training clip read from a random start within its leading quiet (up to one
    # 0.32-s token): a 50-ms shift moves a trained model's scores as much as a count does
    **each_head(
        "_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass_7epochs_shift",
        *LR_1E4,
        *POOL_MASS,
        *SEVEN_EPOCHS,
        *SHIFT,
    ),
    # the same with three attention maps in the audio pool, each with its own mass: among 2–3 sounds
    # an added occurrence moved the one map's mass too little (benchmarks/count_sensitivity.py)
    **each_head(
        "_long_order_count_both_negatives_text_top2_lr1e-4_pool_mass_7epochs_shift_glimpses3",
        *LR_1E4,
        *POOL_MASS,
        *SEVEN_EPOCHS,
        *SHIFT,
        *GLIMPSES,
    ),
    # the pool_mass recipe at the demo budget (2 epochs, 624 steps): does co-attention's margin over the
    # bi-encoder trained the same way show at the demo's step count?
    **{
        f"{head}_order_count_both_negatives_text_top2_lr1e-4_pool_mass": args + LR_1E4 + POOL_MASS
        for head, args in HEADS.items()
    },
    # the demo recipe with the start shift (configs/demo/data/train_shift.yaml), each head: the
    # shift lifted the longer recipe's t2a by ~5 points; does it open co-attention's margin at 2 epochs?
    **{f"{head}_shift": args + SHIFT for head, args in HEADS.items()},
    # the longer budget's final recipe (pool mass, shift, three audio maps) at the demo budget: does the
    # recipe that met the twin targets in 7 epochs open co-attention's margin in 2?
    **{
        f"{head}_order_count_both_negatives_text_top2_lr1e-4_pool_mass_shift_glimpses3": args
        + LR_1E4
        + POOL_MASS
        + SHIFT
        + GLIMPSES
        for head, args in HEADS.items()
    },
    # the same with audio tokens of 0.16 s instead of 0.32 s: repeats 0.18 s apart in separate tokens
    "iterating_long_order_count_both_negatives_text_top2_tokens160": LONG
    + COUNT_BOTH_TOP2
    + ["--config", "configs/demo/pool/audio_tokens_160ms.yaml"],
    # the same without the negatives: does a trained text model learn order from random batches?
    **{f"{head}_long_text_finetune": LONG + args + TEXT_FINETUNE for head, args in HEADS.items()},
    **{f"{head}_long_text_top2": LONG + args + TEXT_TOP2 for head, args in HEADS.items()},
}
# the frozen regime (configs/demo.yaml: aiSFX and MiniLM frozen, read from the feature cache; only
# the head trains): each head at the demo budget, and with the twins negatives on both sides
TWINS_NEGATIVES = ORDER_COUNT_BOTH
FROZEN_RUNS: dict[str, list[str]] = {
    **{f"frozen_{head}": args for head, args in FROZEN_HEADS.items()},
    **{f"frozen_{head}_twins_negatives": args + TWINS_NEGATIVES for head, args in FROZEN_HEADS.items()},
    **{f"frozen_{head}_long": LONG + args for head, args in FROZEN_HEADS.items()},
}
RUNS: dict[str, list[str]] = {name: SCRATCH + args for name, args in SCRATCH_RUNS.items()} | {
    name: FROZEN + args for name, args in FROZEN_RUNS.items()
}

ALPHAS = [0.0, 0.25, 0.5, 1.0, 2.0]
KEYS = [
    "test/t2a_mAP@10",
    "test/t2a_R@1",
    "test/a2t_mAP@10",
    "test/twin_order",
    "test/twin_count",
    "test/twin_pitch",
    "test_bi/t2a_mAP@10",
    "test_bi/twin_order",
    "test_bi/twin_count",
]


class Run:
    """One run and seed of the study: its folder and the ``lacoat`` commands it is made with."""

    def __init__(self, name: str, seed: int, runs: Path) -> None:
        self.name, self.root = name, runs / name / f"seed{seed}"
        self.args = [
            *RUNS[name],  # the regime's base config first
            "--seed_everything",
            str(seed),
            "--data.seed",
            str(seed),
            "--trainer.default_root_dir",
            str(self.root),
            "--trainer.logger.init_args.save_dir",
            str(self.root),
        ]

    def lacoat(self, command: str, log_name: str, *more: str) -> None:
        """``lacoat COMMAND`` with the run's arguments and ``more``, its output in ``log_name``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / log_name, "w") as log:
            subprocess.run(
                [LACOAT, command, *self.args, *more],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )

    def test(self, mode: str, *more: str) -> dict:
        self.lacoat(
            "test", f"test_{mode}.log" if not more else "test_fused.log", "--model.eval_mode", mode, *more
        )
        (report,) = self.root.glob(f"checkpoints/*/test_metrics_{mode}.json")
        return json.loads(report.read_text())["metrics"]

    def fit_and_test(self, fusion: bool = True) -> dict:
        """Fit, then test exhaustive and two-stage (and fused, for a cascade, unless ``fusion`` is off)."""
        start = time.perf_counter()
        self.lacoat("fit", "fit.log")
        out = {"fit_s": round(time.perf_counter() - start, 1), "args": RUNS[self.name]}
        for mode in ("exhaustive", "rerank"):
            out[mode] = self.test(mode)
        if fusion and "test_bi/t2a_mAP@10" in out["rerank"]:  # a cascade
            out["fused"] = self.fused()
        return out

    def fused(self) -> dict:
        """Two-stage test metrics with score fusion, α of ``ALPHAS`` chosen on validation."""
        val = {}
        for alpha in ALPHAS:
            before = set(self.root.glob("logs/*/metrics.csv"))
            self.lacoat("validate", f"validate_fusion_{alpha}.log", "--model.fusion_alpha", str(alpha))
            (metrics,) = set(self.root.glob("logs/*/metrics.csv")) - before  # the validation's CSV log
            with open(metrics) as f:
                val[alpha] = next(
                    float(r["val/t2a_mAP@10"]) for r in csv.DictReader(f) if r["val/t2a_mAP@10"]
                )
        best = max(ALPHAS, key=lambda a: (val[a], -a))
        metrics = self.test("rerank", "--model.fusion_alpha", str(best))
        return metrics | {"fusion_alpha": best, "val_by_alpha": val}


def table(results: dict) -> str:
    """Markdown table: mean ± sd over seeds of the exhaustive test metrics, and fit time."""
    short = [k.replace("test/", "").replace("test_bi/", "bi ") for k in KEYS]
    lines = ["| run | seeds | " + " | ".join(short) + " | fit s |", "|---" * (len(KEYS) + 3) + "|"]
    for name in [*RUNS, *(n for n in results if n not in RUNS)]:  # then runs of earlier code (see notes)
        seeds = results.get(name, {})
        if not seeds:
            continue
        cells = []
        for key in [*KEYS, "fit_s"]:
            values = [s["fit_s"] if key == "fit_s" else s["exhaustive"].get(key) for s in seeds.values()]
            values = [v for v in values if v is not None]
            if not values:
                cells.append("–")
            elif key == "fit_s":
                cells.append(f"{statistics.mean(values):.0f}")
            else:
                sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.3f}{sd}")
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _twin_comparisons(names: list[str], runs: Path) -> tuple[pd.DataFrame, int, dict[str, dict]]:
    """Every twin comparison of these runs' seeds (their folders under ``runs``) whose exhaustive test
    wrote them (with ``win``, ``bi_win`` and ``events``: 1 or 2–3 in the caption's clip), how many
    tables, and the test split's clip specifications by file name."""
    from lacoat.data.twins import read_twin_manifest

    specs = {s["file_name"]: s for s in read_twin_manifest(REPO / "data" / "synthcaps", "evaluation") or []}
    tables = []
    for name in names:
        for path in sorted((runs / name).glob("seed*/checkpoints/*/test_twins_exhaustive.csv")):
            t = pd.read_csv(path, keep_default_na=False).assign(run=name)
            t["events"] = ["1" if len(specs[f]["events"]) == 1 else "2–3" for f in t["file_name"]]
            t["win"] = t["own_score"] > t["twin_score"]
            t["bi_win"] = t["own_score_bi"] > t["twin_score_bi"]
            tables.append(t)
    return (pd.concat(tables) if tables else pd.DataFrame()), len(tables), specs


def twins_by_events(names: list[str], runs: Path) -> str:
    """Markdown table: each run's twin win rates (co-attention, and ``bi`` its bi-encoder) per change,
    for clips of one event and of two or three, mean over the seeds whose exhaustive test wrote its
    comparisons (``test_twins_exhaustive.csv``); ``n`` is comparisons per seed."""
    lines = ["| run | seeds | change | events | n | win | bi win |", "|---" * 7 + "|"]
    for name in names:
        every, seeds, _ = _twin_comparisons([name], runs)
        for (change, n_events), group in every.groupby(["change", "events"]) if seeds else []:
            n = len(group) // seeds
            lines.append(
                f"| {name} | {seeds} | {change} | {n_events} | {n} | {group['win'].mean():.3f} "
                f"| {group['bi_win'].mean():.3f} |"
            )
    return "\n".join(lines)


def count_twin_pairs(names: list[str], runs: Path) -> str:
    """Markdown table: each count twin pair of the test split (A and its twin B) both ways — how often
    the captions of A score A above B, and those of B score B above A — pooled over these runs'
    seeds. A pair whose two rates are far apart is decided by the clips, not by the stated counts."""
    every, seeds, specs = _twin_comparisons(names, runs)
    lines = [
        f"| clip A / twin B ({seeds} tests) | events | counted | count A → B | A's captions win "
        "| B's captions win |",
        "|---" * 6 + "|",
    ]
    every = every[every["change"] == "count"] if seeds else every
    rows = []
    for twin, spec in specs.items():
        if spec["change"] != "count" or spec["twin_of"] not in specs:
            continue
        original = spec["twin_of"]
        wins = [
            every[(every["file_name"] == a) & (every["twin_file_name"] == b)]["win"].mean()
            for a, b in ((original, twin), (twin, original))
        ]
        if any(pd.isna(w) for w in wins):
            continue  # no caption of one side tells the two apart
        event = spec["change_event"]
        counts = specs[original]["events"][event]["count"], spec["events"][event]["count"]
        rows.append(
            (
                abs(wins[0] - wins[1]),
                original,
                twin,
                len(spec["events"]),
                spec["events"][event]["kind"],
                counts,
                wins,
            )
        )
    for _, a, b, n_events, kind, (count_a, count_b), wins in sorted(rows, key=lambda r: -r[0]):
        lines.append(
            f"| {a} / {b} | {n_events} | {kind} | {count_a} → {count_b} | {wins[0]:.2f} | {wins[1]:.2f} |"
        )
    return "\n".join(lines)


def load(path: Path) -> dict:
    """The results in ``path`` (run → seed → figures); empty before the first run."""
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", choices=[*RUNS, []], help="runs to do (see RUNS)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--table", action="store_true", help="print the table of benchmarks/study.json")
    parser.add_argument(
        "--fuse", action="store_true", help="add fused test metrics to finished cascade runs that lack them"
    )
    parser.add_argument("--no-fusion", action="store_true", help="leave out the fused test of new runs")
    parser.add_argument(
        "--twins",
        nargs="+",
        metavar="RUN",
        help="print twin win rates by change and events per clip of these runs",
    )
    parser.add_argument(
        "--count-pairs",
        nargs="+",
        metavar="RUN",
        help="print each count twin pair's win rates both ways, pooled over these runs",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="results file of the protocol (default benchmarks/study.json); runs go to runs/<its stem>",
    )
    args = parser.parse_args()
    path, runs = args.results, REPO / "runs" / args.results.stem
    results = load(path)
    for name in args.runs:
        for seed in args.seeds:
            done = results.get(name, {}).get(str(seed))
            if done is None:
                print(f"{name} seed {seed} ...", flush=True)
                out = Run(name, seed, runs).fit_and_test(fusion=not args.no_fusion)
            elif args.fuse and "fused" not in done and "test_bi/t2a_mAP@10" in done["rerank"]:
                print(f"{name} seed {seed}: fusion ...", flush=True)
                out = done | {"fused": Run(name, seed, runs).fused()}
            else:
                continue
            results = load(path)  # runs may go in parallel
            results.setdefault(name, {})[str(seed)] = out
            path.write_text(json.dumps(results, indent=1) + "\n")
    if args.table:
        print(table(results))
    if args.twins:
        print(twins_by_events(args.twins, runs))
    if args.count_pairs:
        print(count_twin_pairs(args.count_pairs, runs))


if __name__ == "__main__":
    main()
