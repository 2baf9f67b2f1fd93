"""How loud is a count to a trained model, against a shift of the clip in time?

``python benchmarks/count_sensitivity.py CHECKPOINT [CHECKPOINT ...]`` takes every count comparison
that ``lacoat test`` wrote beside each checkpoint (``test_twins_exhaustive.csv``: a caption of clip A
that states a count, against A's count twin B) and scores the caption, with the checkpoint's
co-attention, against

* B, the twin (another rendering with one stated count changed),
* A with one occurrence of its briefest sound more and fewer (``lacoat.negatives.audio_edits.recount``, the
  audio count negative of training),
* A started 50 ms later and 50 ms earlier (the clip's own first / last 50 ms fill the gap): the same
  sounds, the same count, on another grid of audio tokens.

It prints, per clips of one event and of two or three, how often A scores above each and the median
difference ``s(c, A) - s(c, X)`` (for the shifts the median of its absolute value: a shift should not
matter at all). Pooled over the checkpoints given. SynthCaps test split (``data/synthcaps``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lacoat.contracts import Tokens
from lacoat.data.audio import cut_windows, read_audio
from lacoat.data.twins import read_twin_manifest
from lacoat.models.factory import load_matcher
from lacoat.models.matcher import AudioTextMatcher
from lacoat.negatives.audio_edits import frame_samples, recount

SHIFT_S = 0.05


def variants(wave: np.ndarray, sample_rate: int) -> dict[str, np.ndarray | None]:
    """The clip's count edits and time shifts (None where ``recount`` cannot make the edit)."""
    n, frame = int(SHIFT_S * sample_rate), frame_samples(sample_rate)
    real = torch.from_numpy(wave)
    more, fewer = recount(real, frame, more=True), recount(real, frame, more=False)
    return {
        "one more": None if more is None else more.numpy(),
        "one fewer": None if fewer is None else fewer.numpy(),
        "later": np.concatenate([wave[:n], wave[:-n]]),
        "earlier": np.concatenate([wave[n:], wave[-n:]]),
    }


def wave_encoder(matcher: AudioTextMatcher) -> Callable[[np.ndarray], Tokens]:
    """``encode(wave)``: one clip's samples ``[T]`` (at the encoder's rate) cut into the encoder's
    windows and encoded, ``Tokens`` of one clip."""
    window = round(matcher.audio_encoder.sample_rate * matcher.audio_encoder.window_seconds)

    def encode(wave: np.ndarray) -> Tokens:
        w = cut_windows(wave.astype(np.float32), window)
        return matcher.encode_audio(
            torch.from_numpy(w.waveform)[None], torch.from_numpy(w.valid_samples)[None]
        )

    return encode


def score_differences(checkpoint: Path, root: Path) -> pd.DataFrame:
    """One row per (count caption, compared clip): ``events`` of A, ``against``, ``d = s(c,A) - s(c,X)``."""
    matcher, _ = load_matcher(checkpoint, "both")
    sample_rate = matcher.audio_encoder.sample_rate
    encode = wave_encoder(matcher)
    specs = {s["file_name"]: s for s in read_twin_manifest(root, "evaluation") or []}
    twins = pd.read_csv(checkpoint.parent / "test_twins_exhaustive.csv", keep_default_na=False)
    twins = twins[twins["change"] == "count"]

    rows = []
    with torch.no_grad():
        for (a, b), group in twins.groupby(["file_name", "twin_file_name"]):
            wave = read_audio(root / "evaluation" / a, sample_rate)
            clips = {"own": wave, "twin": read_audio(root / "evaluation" / b, sample_rate)}
            clips |= {k: v for k, v in variants(wave, sample_rate).items() if v is not None}
            audio = Tokens.cat([encode(w) for w in clips.values()])
            scores = matcher.score_matrix(matcher.encode_text(group["text"].tolist()), audio)  # [C, N]
            d = scores[:, :1] - scores[:, 1:]  # [C, N-1]
            events = "1" if len(specs[a]["events"]) == 1 else "2–3"
            for j, against in enumerate(list(clips)[1:]):
                rows += [{"events": events, "against": against, "d": float(x)} for x in d[:, j]]
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/synthcaps"), help="SynthCaps root")
    args = parser.parse_args()
    torch.set_num_threads(1)
    every = pd.concat([score_differences(c, args.data) for c in args.checkpoints])
    print(f"| events | against | n | own clip wins | median d ({len(args.checkpoints)} checkpoints) |")
    print("|---|---|---|---|---|")
    every["against"] = pd.Categorical(every["against"], ["twin", "one more", "one fewer", "later", "earlier"])
    for (events, against), g in every.groupby(["events", "against"], observed=True):
        shift = against in ("later", "earlier")
        median = g["d"].abs().median() if shift else g["d"].median()
        label = f"|d| {median:.3f}" if shift else f"{median:.3f}"
        print(f"| {events} | {against} | {len(g)} | {(g['d'] > 0).mean():.3f} | {label} |")


if __name__ == "__main__":
    main()
