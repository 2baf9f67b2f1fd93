"""Are count twins lost to clip *hubness*? Querybank normalisation of a checkpoint's test scores.

``python benchmarks/querybank_check.py CHECKPOINT`` scores every SynthCaps test caption and a bank of
captions from another split (validation: no test text) against every test clip, with the checkpoint's
co-attention and its bi-encoder, and recomputes test t2a mAP@10, R@1 and the twin win rates of the
comparisons ``lacoat test`` wrote beside the checkpoint (``test_twins_exhaustive.csv``) after taking a
per-clip term out of every score, as querybank normalisation does (QB-Norm, Bogolin et al., CVPR 2022):

* ``lse β``: ``s(q, c) - β·log Σ_bank exp(s(b, c) / β)`` (its inverted softmax, in log form),
* ``mean λ``: ``s(q, c) - λ·mean_bank s(b, c)``.

A clip that many captions score high (a *hub*) loses; if a twin's loss were such a bias (the clip with
one occurrence more simply outscoring its twin for every caption), taking it out would win it back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from count_sensitivity import wave_encoder  # benchmarks/, beside this script
from scipy.special import logsumexp

from lacoat.contracts import Tokens
from lacoat.data.audio import read_audio
from lacoat.models.factory import load_matcher


def captions(root: Path, split: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The split's clips and its ``(file_name, caption)`` rows, from its Clotho-layout CSV."""
    table = pd.read_csv(root / f"clotho_captions_{split}.csv", keep_default_na=False)
    return table["file_name"].tolist(), [(f, c) for f, *cs in table.itertuples(index=False) for c in cs]


def scores(checkpoint: Path, root: Path) -> dict[str, np.ndarray]:
    """Co-attention and bi-encoder scores ``[captions, clips]`` of the test captions and of the bank."""
    matcher, _ = load_matcher(checkpoint, "both")
    sample_rate, encode = matcher.audio_encoder.sample_rate, wave_encoder(matcher)
    clips, test = captions(root, "evaluation")
    _, bank = captions(root, "validation")
    with torch.no_grad():
        audio = Tokens.cat([encode(read_audio(root / "evaluation" / c, sample_rate)) for c in clips])
        text, bank_text = (matcher.encode_text([c for _, c in rows]) for rows in (test, bank))
        return {
            "clips": np.array(clips),
            "test": np.array(test),
            "co": matcher.score_matrix(text, audio).numpy(),
            "co_bank": matcher.score_matrix(bank_text, audio).numpy(),
            "bi": matcher.bi_scores(text, audio).numpy(),
            "bi_bank": matcher.bi_scores(bank_text, audio).numpy(),
        }


def normalised(s: np.ndarray, bank: np.ndarray) -> dict[str, np.ndarray]:
    """``s`` as it is and with each clip's querybank term taken out (``[captions, clips]`` each)."""
    out = {"raw": s}
    for beta in (0.02, 0.05, 0.1):
        out[f"lse {beta}"] = s - beta * logsumexp(bank / beta, axis=0)[None]
    for lam in (0.5, 1.0):
        out[f"mean {lam}"] = s - lam * bank.mean(0)[None]
    return out


def table(z: dict[str, np.ndarray], twins: pd.DataFrame) -> pd.DataFrame:
    column = {c: i for i, c in enumerate(z["clips"])}
    row = {(f, t): i for i, (f, t) in enumerate(map(tuple, z["test"]))}
    own = np.array([column[f] for f, _ in z["test"]])
    q = np.array([row[(f, t)] for f, t in zip(twins["file_name"], twins["text"], strict=True)])
    a, b = (np.array([column[f] for f in twins[k]]) for k in ("file_name", "twin_file_name"))
    rows = {}
    for kind in ("co", "bi"):
        for name, s in normalised(z[kind], z[f"{kind}_bank"]).items():
            rank = (s > s[np.arange(len(s)), own][:, None]).sum(1) + 1
            won = s[q, a] > s[q, b]
            rows[(kind, name)] = {
                "t2a_mAP@10": np.where(rank <= 10, 1 / rank, 0).mean(),
                "t2a_R@1": (rank == 1).mean(),
                **{
                    f"twin_{c}": won[twins["change"].to_numpy() == c].mean()
                    for c in ("order", "count", "pitch")
                },
            }
    return pd.DataFrame(rows).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/synthcaps"), help="SynthCaps root")
    args = parser.parse_args()
    twins = pd.read_csv(args.checkpoint.parent / "test_twins_exhaustive.csv", keep_default_na=False)
    print(table(scores(args.checkpoint, args.data), twins).round(3).to_string())


if __name__ == "__main__":
    main()
