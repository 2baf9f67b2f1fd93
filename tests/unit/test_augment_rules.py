"""Rule-based paraphrases, answer parsing and validation, prompt templates (lacoat.augment)."""

import os
import re
import subprocess
import sys

import pytest

from lacoat.augment.prompt import PromptTemplate
from lacoat.augment.rules import fingerprint, rule_paraphrases, swap_aspect
from lacoat.augment.validate import Limits, normalise, parse_answer, rejection, select
from lacoat.errors import DataError

CAPTIONS = [
    "A dog barks while cars pass in the rain.",
    "Two dull knocks, then a shrill buzzer.",
    "A siren after three knocks.",
    "A man opens a door.",
    "Birds chirp loudly in the distance.",
    "Someone is typing on a keyboard quickly.",
    "A rising sweep while a low hum continues.",
    "The wind howls through the trees and a door creaks open.",
]


def accept(caption):
    return lambda text: rejection(text, caption, Limits()) is None


@pytest.mark.parametrize("caption", CAPTIONS)
def test_rules_give_distinct_valid_paraphrases_deterministically(caption):
    first = rule_paraphrases(caption, 4, accept(caption))
    assert len(first) == 4
    assert rule_paraphrases(caption, 4, accept(caption)) == first  # same caption, same answer
    assert rule_paraphrases(caption, 2, accept(caption)) == first[:2]  # the first k do not depend on n
    keys = {normalise(p) for p in first}
    assert len(keys) == 4 and normalise(caption) not in keys
    for paraphrase in first:
        assert rejection(paraphrase, caption, Limits()) is None
        # counts and numbers are kept
        for count in ("two", "three"):
            assert (count in caption.lower()) == (count in paraphrase.lower()), paraphrase


def test_rules_follow_the_lexicon_and_structures():
    def variants(caption, n=12):
        return rule_paraphrases(caption, n)

    assert any("is barking" in p for p in variants("A dog barks in the yard."))
    assert any("barks" in p for p in variants("A dog is barking in the yard."))
    assert any(p.startswith(("While cars pass", "As cars pass", "While vehicles", "While automobiles"))
               or " as " in p for p in variants("A dog barks while cars pass."))  # fmt: skip
    then = variants("A low hum, then two sharp clicks.")
    assert any("followed by two sharp clicks" in p for p in then)
    for p in then:  # the order of the events is kept ("hum" may become "drone")
        assert re.search(r"hum|drone", p).start() < p.index("click"), p
    after = variants("A siren after three knocks.")
    assert "Three knocks, then a siren." in after  # "Y after X" -> "X, then Y": time order spelled out
    assert "A door is opened by a man." in variants("A man opens a door.")
    assert "A man opens a door." in variants("A door is opened by a man.")
    assert any(p.startswith("The sound of") or "can be heard" in p for p in variants("A water drop."))


def test_aspect_swap_leaves_plural_nouns_alone():
    import random

    rng = random.Random(0)
    for text in ("Two loud barks.", "Three bird-like tweets.", "3 chirps.", "The barks of a dog."):
        assert swap_aspect(text, rng, 1.0) == text
    assert swap_aspect("A dog barks and birds chirp.", rng, 1.0) == "A dog is barking and birds are chirping."


def test_rules_are_the_same_in_every_process():
    """Paraphrases must not depend on Python's per-process hash seed (set iteration order)."""
    code = f"from lacoat.augment.rules import rule_paraphrases as r; print([r(c, 3) for c in {CAPTIONS!r}])"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1 and str(rule_paraphrases(CAPTIONS[0], 3)) in outs.pop()
    assert re.fullmatch(r"[0-9a-f]{12}", fingerprint())


@pytest.mark.parametrize(
    "text, expected",
    [
        ('["a dog is barking", "barking can be heard"]', ["a dog is barking", "barking can be heard"]),
        ('```json\n["one", "two"]\n```', ["one", "two"]),
        ('Here you go:\n["one", "two"]\nEnjoy!', ["one", "two"]),
        ('{"paraphrases": ["one", "two"]}', ["one", "two"]),
        ('1. A dog barks.\n2) "A hound is barking."', ["A dog barks.", "A hound is barking."]),
        ("- first\n- second", ["first", "second"]),
        ("Sure! I cannot do that.", None),
        ('["one", 2]', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text, 2) == expected


def test_single_line_answer_counts_only_when_one_was_asked():
    assert parse_answer("A hound is barking.", 1) == ["A hound is barking."]
    assert parse_answer("A hound is barking.", 2) is None


def test_rejections():
    caption = "A dog barks in the yard."
    limits = Limits(0.5, 2.0)
    assert rejection("  ", caption, limits) == "empty"
    assert rejection("a DOG barks, in the yard", caption, limits) == "identical"  # case and punctuation
    assert rejection("Dog.", caption, limits) == "length"
    assert rejection(caption * 3, caption, limits) == "length"
    assert rejection("In the yard, a dog is barking.", caption, limits) is None
    taken, reasons = select(
        [
            "In the yard, a dog is barking.",
            "in the yard a dog is barking",
            caption,
            "A hound barks in the yard.",
        ],
        caption,
        2,
        limits,
        [],
    )
    assert taken == ["In the yard, a dog is barking.", "A hound barks in the yard."]
    assert reasons == ["duplicate", "identical"]


def test_default_prompt_and_hash(tmp_path):
    prompt = PromptTemplate.load()
    messages = prompt.messages("A dog {n} barks.", 3)
    assert messages[0]["role"] == "system" and "3" in messages[1]["content"]
    assert "A dog {n} barks." in messages[1]["content"]  # the caption is inserted as is
    assert "order" in prompt.user and "JSON array" in prompt.user
    own = tmp_path / "p.yaml"
    own.write_text('user: "Rewrite {caption} {n} times as {\\"json\\": []}"\ntemperature: 0.2\n')
    other = PromptTemplate.load(own)
    assert other.hash != prompt.hash and len(other.hash) == 12 and other.temperature == 0.2
    assert other.messages("x", 2) == [{"role": "user", "content": 'Rewrite x 2 times as {"json": []}'}]
    own.write_text("user: no placeholders\n")
    with pytest.raises(DataError, match=r"must contain \['\{caption\}', '\{n\}'\]"):
        PromptTemplate.load(own)
    with pytest.raises(DataError, match="cannot read prompt template"):
        PromptTemplate.load(tmp_path / "missing.yaml")
