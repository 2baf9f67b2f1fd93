"""Count negatives: every change ``change_count`` may make to a caption, and its deterministic pick."""

import pytest

from lacoat.negatives.text import _repetition_changes, _thing_changes, change_count, count_changes, rewritten


@pytest.mark.parametrize(
    ("caption", "changes"),
    [
        ("Three knocks before a siren.", {"Two knocks before a siren.", "Four knocks before a siren."}),
        ("First 3 knocks, then a siren.", {"First 2 knocks, then a siren.", "First 4 knocks, then a siren."}),
        ("A buzzer before a single soft water drop.", {"A buzzer before two soft water drops."}),
        ("One sharp click.", {"Two sharp clicks."}),
        ("2 drips, then a hiss.", {"A single drip, then a hiss.", "3 drips, then a hiss."}),
        (
            "A bell ringing twice, then a hum.",
            {"A bell ringing once, then a hum.", "A bell ringing three times, then a hum."},
        ),
        ("a chime ringing 4 times", {"a chime ringing 3 times", "a chime ringing 5 times"}),
        ("A bell ringing once.", {"A bell ringing twice."}),
        ("Two dull knocks and a bush.", {"A single dull knock and a bush.", "Three dull knocks and a bush."}),
        ("Five ducks quack.", {"Four ducks quack.", "Six ducks quack."}),
        ("One ding while a hum continues.", {"Two dings while a hum continues."}),
        (
            "Two loud bird-like tweets first.",
            {"A single loud bird-like tweet first.", "Three loud bird-like tweets first."},
        ),
        ("A single bird chirping", set()),  # "chirping" is no noun to make plural
        ("One of the dogs barks.", set()),  # "one" without a noun phrase
        ("A dog barks.", set()),  # a bare article is no stated count
        ("A two-tone siren wails.", set()),
        ("Sheep call while children speak to one another.", set()),  # "one another" counts nothing
        ("A man talks about one or two inches.", set()),  # the end of a range is no count
        ("A single bird is chirping.", {"Two birds are chirping."}),  # the verb agrees
        ("Two kids are talking.", {"A single kid is talking.", "Three kids are talking."}),
    ],
)
def test_count_changes(caption, changes):
    assert set(_repetition_changes(caption) + _thing_changes(caption)) == changes


def test_change_count_picks_one_change_the_same_every_time():
    caption = "Two knocks, then a bell ringing three times."
    options = set(_repetition_changes(caption) + _thing_changes(caption))
    assert len(options) == 4
    assert change_count(caption) in options
    assert change_count(caption) == change_count(caption)
    assert change_count("A bell rings.") is None


def test_count_changes_are_every_count_up_and_down_the_pick_first():
    caption = "Three chirps, then two knocks."
    changes = count_changes(caption)
    assert changes[0] == change_count(caption)
    assert sorted(changes) == sorted(
        [
            "Two chirps, then two knocks.",
            "Four chirps, then two knocks.",
            "Three chirps, then a single knock.",
            "Three chirps, then three knocks.",
        ]
    )
    assert count_changes("A single drip.") == ["Two drips."]  # no count below one
    assert count_changes("A bell rings.") == []


def test_different_captions_are_changed_both_ways():
    picks = {change_count(f"{n} knocks, then a hum number {k}.") for n in ("Two", "Three") for k in range(12)}
    assert any(p.startswith("A single") for p in picks) and any(p.startswith("Three") for p in picks)
    assert any(p.startswith("Four") for p in picks)


def test_rewritten_marks_the_recounted_captions():
    turned, done = rewritten(["Two knocks.", "A hum."], change_count)
    assert turned[0] in {"A single knock.", "Three knocks."} and turned[1] == "A hum."
    assert done.tolist() == [True, False]
