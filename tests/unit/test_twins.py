"""The twin diagnostic: which comparisons are made, and win rates equal to a hand count."""

import pandas as pd
import pytest
import torch

from lacoat.data.datasets import EvalSet
from lacoat.data.twins import read_twin_manifest
from lacoat.errors import DataError
from lacoat.evaluation.evaluator import EvalScores, Evaluator
from lacoat.evaluation.metrics import twin_win_rates


def spec(name, captions, twin_of=None, change=None, change_event=None, states=None):
    return {
        "file_name": name,
        "captions": captions,
        "twin_of": twin_of,
        "change": change,
        "change_event": change_event,
        "caption_states": states or [],
    }


def toy_set():
    """Clips a (order twin b), c (count twin d, its first caption names no count), e (no twin)."""
    specs = [
        spec("a.wav", ["A hum, then a click.", "A hum before a click."], states=[["order"], ["order"]]),
        spec(
            "b.wav",
            ["A click, then a hum.", "a hum, then a click"],  # the 2nd is a's 1st: both left out
            twin_of="a.wav",
            change="order",
            states=[["order"], ["order"]],
        ),
        spec("c.wav", ["Knocks.", "Two knocks."], states=[[], ["count@0"]]),
        spec(
            "d.wav", ["Three knocks."], twin_of="c.wav", change="count", change_event=0, states=[["count@0"]]
        ),
        spec("e.wav", ["A bell."]),
    ]
    table = pd.DataFrame(
        [(s["file_name"], c) for s in specs for c in s["captions"]], columns=["file_name", "caption"]
    )
    table["audio_path"] = table["file_name"]
    return EvalSet.from_table(table, twin_specs=specs)


def test_comparisons_both_directions_without_captions_that_fit_the_twin():
    ev = toy_set()
    rows = sorted(map(tuple, ev.twins.to_numpy().tolist()))
    # queries: 0,1 (a) · 2,3 (b) · 4,5 (c) · 6 (d) · 7 (e); clips a=0 b=1 c=2 d=3 e=4
    # q0 and q3 are one sentence (fits both clips); q4 "Knocks." names no count; e has no twin
    assert rows == [(1, 0, 1, "order"), (2, 1, 0, "order"), (5, 2, 3, "count"), (6, 3, 2, "count")]


def test_win_rates_equal_a_hand_count():
    ev = toy_set()
    sim = torch.zeros(8, 5)
    wins = {1: True, 2: False, 5: True, 6: True}  # query -> own clip above the twin?
    for q, clip, twin, _ in ev.twins.itertuples(index=False):
        sim[q, clip], sim[q, twin] = (0.9, 0.1) if wins[q] else (0.1, 0.1)  # a tie is a loss
    t = ev.twins
    rates = twin_win_rates(
        sim[t["query"], t["clip"]], sim[t["query"], t["twin"]], t["change"].tolist(), "test"
    )
    assert rates == pytest.approx({"test/twin_order": 1 / 2, "test/twin_count": 1.0, "test/twin_all": 3 / 4})


class PairLookup:
    """A bi-encoder stand-in whose pair scores are a fixed matrix's entries."""

    cascade = None

    def __init__(self, sim):
        self.sim = sim

    def score_index_pairs(self, text, audio, text_index, audio_index):
        return self.sim[text_index, audio_index]


def test_evaluator_keeps_each_comparison_with_its_scores():
    ev = toy_set()
    sim = torch.zeros(8, 5)
    sim[1, 0], sim[1, 1] = 0.9, 0.2  # q1 (a): own clip above the order twin
    sim[2, 1], sim[2, 0] = 0.3, 0.4  # q2 (b): below it
    sim[5, 2], sim[5, 3] = 0.7, 0.1  # q5 (c): above the count twin
    sim[6, 3], sim[6, 2] = 0.5, 0.5  # q6 (d): a tie, a loss
    scores = EvalScores(sim, sim, sim, torch.arange(8), torch.arange(5), None, None)
    evaluator = Evaluator(PairLookup(sim))
    rates = evaluator.twin_rates("test", ev, scores, fusion_alpha=0.0)
    assert rates == pytest.approx(
        {"test/twin_order": 1 / 2, "test/twin_count": 1 / 2, "test/twin_all": 2 / 4}
    )
    table = evaluator.twins.sort_values("query")
    assert table["text"].tolist() == [
        "A hum before a click.",
        "A click, then a hum.",
        "Two knocks.",
        "Three knocks.",
    ]
    assert table["file_name"].tolist() == ["a.wav", "b.wav", "c.wav", "d.wav"]
    assert table["twin_file_name"].tolist() == ["b.wav", "a.wav", "d.wav", "c.wav"]
    assert table["own_score"].tolist() == pytest.approx([0.9, 0.3, 0.7, 0.5])
    assert table["twin_score"].tolist() == pytest.approx([0.2, 0.4, 0.1, 0.5])
    assert table["own_score_bi"].tolist() == pytest.approx(table["own_score"].tolist())


def test_without_manifest_nothing_changes(tmp_path):
    assert read_twin_manifest(tmp_path, "evaluation") is None
    (tmp_path / "synthcaps_events.json").write_text("[not json")
    with pytest.raises(DataError, match="not a SynthCaps events manifest"):
        read_twin_manifest(tmp_path, "evaluation")
    assert twin_win_rates(torch.zeros(0), torch.zeros(0), [], "test") == {}
