import collections
import hashlib
import json

import pandas as pd

from lacoat.data.synth import SPLITS, synthesize
from lacoat.data.synth_events import EVENT_TYPES


def tree_digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    sizes = dict(n_development=12, n_validation=4, n_evaluation=4)
    synthesize(str(tmp_path / "a"), seed=5, **sizes)
    synthesize(str(tmp_path / "b"), seed=5, **sizes)
    synthesize(str(tmp_path / "c"), seed=6, **sizes)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_layout_captions_and_files(synthcaps):
    for split in SPLITS:
        df = pd.read_csv(synthcaps / f"clotho_captions_{split}.csv", dtype=str, keep_default_na=False)
        assert list(df.columns) == ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
        assert df["file_name"].is_unique
        for name in df["file_name"]:
            assert (synthcaps / split / name).is_file()
        captions = df.iloc[:, 1:]
        assert (captions.apply(lambda col: col.str.len()) > 3).all().all()
        # captions of a clip are mostly distinct paraphrases
        assert captions.nunique(axis=1).mean() >= 4


def test_content_vocabulary_twins_and_names(tmp_path):
    synthesize(str(tmp_path), seed=0, n_development=300, n_validation=2, n_evaluation=2)
    manifest = json.loads((tmp_path / "synthcaps_events.json").read_text(encoding="utf-8"))
    clips = manifest["splits"]["development"]
    kinds = collections.Counter(ev["kind"] for clip in clips for ev in clip["events"])
    assert set(kinds) == set(EVENT_TYPES) and len(kinds) >= 10
    assert {len(clip["events"]) for clip in clips} == {1, 2, 3}
    assert {clip["arrangement"] for clip in clips} == {"single", "sequence", "overlap"}
    by_name = {clip["file_name"]: clip for clip in clips}
    twins = [clip for clip in clips if clip["twin_of"]]
    assert {t["change"] for t in twins} == {"order", "count", "pitch"}
    for twin in twins:
        orig = by_name[twin["twin_of"]]
        a = [(e["kind"], e["count"], e["pitch"]) for e in orig["events"]]
        b = [(e["kind"], e["count"], e["pitch"]) for e in twin["events"]]
        assert a != b and sorted(e[0] for e in a) == sorted(e[0] for e in b)
        if twin["change"] == "order":
            assert a == b[::-1]
    names = list(by_name)
    assert any(n.startswith(" ") for n in names) and any("," in n for n in names)
    assert any('"' in n for n in names) and any(not n.isascii() for n in names)


def test_captions_state_order_and_counts(tmp_path):
    synthesize(str(tmp_path), seed=1, n_development=200, n_validation=2, n_evaluation=2)
    df = pd.read_csv(tmp_path / "clotho_captions_development.csv", dtype=str, keep_default_na=False)
    text = " ".join(df.iloc[:, 1:].to_numpy().ravel()).lower()
    for word in ("then", "followed by", "after", "while", "two", "three", "twice", "low", "high", "loud"):
        assert word in text, word


def test_manifest_says_what_each_caption_states(tmp_path):
    synthesize(str(tmp_path), seed=2, n_development=150, n_validation=2, n_evaluation=2)
    clips = json.loads((tmp_path / "synthcaps_events.json").read_text(encoding="utf-8"))["splits"][
        "development"
    ]
    pitch_words = {
        "low",
        "deep",
        "low-pitched",
        "medium",
        "mid-pitched",
        "steady",
        "high",
        "shrill",
        "high-pitched",
    }
    seen = collections.Counter()
    for clip in clips:
        assert len(clip["caption_states"]) == len(clip["captions"]) == 5
        for text, states in zip(clip["captions"], clip["caption_states"], strict=True):
            sequence = clip["arrangement"] == "sequence"
            assert ("order" in states) == sequence
            for i, ev in enumerate(clip["events"]):
                if ev["kind"] in ("sweep_up", "sweep_down"):  # their phrases never name a pitch
                    assert f"pitch@{i}" not in states
                if f"pitch@{i}" in states:
                    seen["pitch"] += 1
                    assert set(text.lower().replace(",", " ").replace(".", " ").split()) & pitch_words
        if clip["twin_of"] and clip["change"] != "order":
            assert clip["change_event"] is not None
            event = clip["events"][clip["change_event"]]
            assert clip["change"] in EVENT_TYPES[event["kind"]][0]
    assert seen["pitch"] > 0


def test_eval_twin_fraction_makes_more_twins(tmp_path):
    synthesize(
        str(tmp_path / "a"), seed=0, n_development=2, n_validation=2, n_evaluation=60, eval_twin_fraction=1.0
    )
    synthesize(
        str(tmp_path / "b"), seed=0, n_development=2, n_validation=2, n_evaluation=60, eval_twin_fraction=0.0
    )
    count = [
        sum(
            bool(c["twin_of"])
            for c in json.loads((tmp_path / x / "synthcaps_events.json").read_text())["splits"]["evaluation"]
        )
        for x in "ab"
    ]
    assert count[0] >= 20 and count[1] == 0
