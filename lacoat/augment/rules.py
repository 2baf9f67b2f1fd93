"""Rule-based paraphrases of audio captions: no model, deterministic, from a small built-in lexicon.

Three kinds of rewrite, combined at random with a generator seeded by the caption's text:

* structure: ``X while Y`` → ``While Y, X`` / ``Y as X``; ``X, then Y`` → ``X, followed by Y`` /
  ``After X, Y`` / ``First X, then Y``; ``Y after X`` → ``X, then Y``; ``X can be heard`` →
  ``One can hear X``; active ↔ passive for common transitive verbs (``a man opens a door`` →
  ``a door is opened by a man``). Every rewrite keeps the sound events and their order in time;
* aspect: ``a dog barks`` ↔ ``a dog is barking``, ``birds chirp`` ↔ ``birds are chirping``;
* words: synonyms that keep the sound's meaning (``quietly`` → ``softly``, ``car`` → ``vehicle``,
  ``repeatedly`` → ``over and over``); counts, numbers and sound sources are never changed.

The same caption always gives the same paraphrases, and the first ``k`` of ``n`` do not depend on
``n``. A caption the rules cannot change gets a neutral opening (``In this recording, ...``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

from lacoat.augment.words import (
    ADJECTIVE_SUFFIXES,
    AFTER_NOT_SEQUENCE,
    COUNT_WORDS,
    FORM_3SG,
    FORM_ING,
    ING_NOUNS,
    NOT_BEFORE_PARTICIPLE,
    NOT_SUBJECT,
    OBJECT_DETS,
    OPENINGS,
    PARTICIPLE_BASE,
    PARTICIPLES,
    PEOPLE,
    PHRASE_STARTS,
    PLURAL_SUBJECTS,
    REST_WORDS,
    SEQUENCE_WORDS,
    SUBJECT_DETS,
    SYNONYMS,
    VERB_FORMS,
    VERBS,
    third_person,
)

RULES_VERSION = "1"  # part of the answers' key: raise it when a rewrite changes (the lexicon counts itself)


def fingerprint() -> str:
    """12 hex digits identifying these rules (changes when the lexicon or the version does)."""
    blob = repr((RULES_VERSION, sorted(SYNONYMS.items()), VERBS, sorted(PARTICIPLES.items()), OPENINGS))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


# ---- helpers --------------------------------------------------------------------------------------
def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word looks like a name or acronym (``I``, ``TV``)."""
    word = text.split(" ", 1)[0]
    if not text or word == "I" or (len(word) > 1 and word[1].isupper()):
        return text
    return text[0].lower() + text[1:]


def upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def match_case(replacement: str, original: str) -> str:
    return upper_first(replacement) if original[:1].isupper() else replacement


def subject_like(prev: str, prev2: str) -> bool:
    """Whether a 3rd-person form after the words ``prev2 prev`` is a verb ("a dog barks"), not a plural
    noun ("two loud barks", "3 chirps", "the barks")."""
    if prev in NOT_SUBJECT or prev.endswith(ADJECTIVE_SUFFIXES) or prev.isdigit():
        return False
    return prev2 not in COUNT_WORDS


def has_verb(text: str) -> bool:
    """Whether ``text`` reads as a clause (a known verb form after a subject, or ``is``/``are``)."""
    words = ["", "", *re.findall(r"[\w'-]+", text.lower())]
    return any(
        w in ("is", "are", "was", "were") or (w in FORM_3SG and subject_like(words[i + 1], words[i]))
        for i, w in enumerate(words[2:])
    )


def starts_with_verb(text: str) -> bool:
    """Whether ``text`` begins with a verb, i.e. continues the previous clause's subject."""
    first = text.split(" ", 1)[0].lower()
    return first in FORM_3SG or first in FORM_ING or first in VERB_FORMS or first in ("is", "are")


def fix_articles(text: str) -> str:
    """``a`` / ``an`` agreeing with the next word after a synonym swap (``an engine`` → ``a motor``)."""

    def sub(m: re.Match[str]) -> str:
        word = m.group(2).lower()
        vowel = word[0] in "aeiou" and not word.startswith(("uni", "use", "usu", "one", "eu"))
        vowel = vowel or word.startswith(("hour", "honest"))
        article = "an" if vowel else "a"
        return match_case(article, m.group(1)) + " " + m.group(2)

    return re.sub(r"\b(an?|An?)\s+([A-Za-z][\w-]*)", sub, text)


def starts_clause_or_phrase(text: str) -> bool:
    """Whether ``text`` can stand after ``then``: a clause, a verb phrase or a determined noun phrase."""
    first = text.split(" ", 1)[0].lower()
    return has_verb(text) or starts_with_verb(text) or first in PHRASE_STARTS or first.isdigit()


def _plural(noun_phrase: str) -> bool:
    last = noun_phrase.split()[-1].lower()
    return last.endswith("s") and not last.endswith(("ss", "us", "is"))


# ---- structural rewrites: each takes the caption without its final punctuation -------------------
def rewrite_while(core: str) -> list[str]:
    """``X while Y`` → ``While Y, X`` and ``Y as X`` (simultaneous events: order of mention is free)."""
    m = re.fullmatch(r"(?i)(.+?),? (?<!\ba )while (.+)", core)
    if m and " while " not in m.group(2).lower():
        x, y = m.group(1), m.group(2)
        out = [f"While {lower_first(y)}, {lower_first(x)}"]
        if has_verb(x) and has_verb(y):
            out.append(f"{upper_first(y)} as {lower_first(x)}")
        return out
    m = re.fullmatch(r"(?i)while (.+?), (.+)", core)
    if m:
        return [f"{upper_first(m.group(2))} while {m.group(1)}"]
    return []


def rewrite_then(core: str) -> list[str]:
    """``X, then Y`` → ``X, followed by Y`` / ``After X, Y`` / ``First X, then Y`` (order kept)."""
    m = re.fullmatch(r"(?i)(.+?)(,? and|,) then,? (.+)|(.+?) then,? (.+)", core)
    if not m:
        return []
    joined = m.group(1) is not None
    x, y = (m.group(1), m.group(3)) if joined else (m.group(4), m.group(5))
    if len(x.split()) < 2 or not (joined or not starts_with_verb(y)) or not starts_clause_or_phrase(y):
        return []  # "someone then grabs": "then" inside one clause; "loud and then soft clinking"
    x = x.rstrip(", ")
    out = [f"{x}, and after that {y}"]
    if not SEQUENCE_WORDS.search(y):
        if not has_verb(y):
            out.append(f"{x}, followed by {lower_first(y)}")
        elif not starts_with_verb(y):
            out.append(f"After {lower_first(x)}, {y}")
    if not x.lower().startswith("first"):
        out.append(f"First {lower_first(x)}, then {y}")
    return out


def rewrite_followed(core: str) -> list[str]:
    """``X (is) followed by Y`` → ``X, then Y`` / ``X and then Y``."""
    m = re.fullmatch(r"(?i)(.+?),?(?: is| are)? followed by (.+)", core)
    if not m:
        return []
    return [f"{m.group(1)}, then {m.group(2)}", f"{m.group(1)} and then {m.group(2)}"]


def rewrite_after_before(core: str) -> list[str]:
    """``Y after X`` and ``X before Y`` → ``X, then Y``; ``Y, preceded by X`` → ``X, then Y``."""
    out = []
    m = re.fullmatch(r"(?i)(.+?),? preceded by (.+)", core)
    if m:
        y, x = m.group(1), m.group(2)
        out.append(f"{upper_first(x)}, then {lower_first(y)}")
    for word, first_is_x in (("after", False), ("before", True)):
        m = re.fullmatch(rf"(?i)(.+?) {word} (.+)", core)
        if not m or len(re.findall(rf"(?i)\b{word}\b", core)) != 1:
            continue
        left, right = m.group(1).rstrip(", "), m.group(2)
        if SEQUENCE_WORDS.search(left) or SEQUENCE_WORDS.search(right):
            continue
        last_left = left.split()[-1].lower()
        if (
            len(left.split()) < 2
            or len(right.split()) < 2
            or last_left.endswith(("ing", "ed", "ly"))
            or last_left in AFTER_NOT_SEQUENCE
            or right.split()[0].lower().endswith("ing")
            or right.lower().startswith(
                ("a while", "that", "which", "it ", "being", "some time", "this", "all")
            )
        ):
            continue
        x, y = (left, right) if first_is_x else (right, left)
        out.append(f"{upper_first(x)}, then {lower_first(y)}")
        if not has_verb(y):
            out.append(f"{upper_first(x)}, followed by {lower_first(y)}")
    return out


def rewrite_participle(core: str) -> list[str]:
    """``a man talking`` ↔ ``a man who is talking``, ``birds chirping`` ↔ ``birds that are chirping``."""
    m = re.search(r"(?i)\b(who|that|which) (is|are) ([a-z]{3,}ing)\b", core)
    if m:
        return [core[: m.start()] + m.group(3) + core[m.end() :]]
    words = core.split(" ")
    for i in range(1, min(len(words), 7)):
        word, prev = words[i].lower().rstrip(","), words[i - 1].lower()
        if not word.endswith("ing") or len(word) < 5 or word in ING_NOUNS or words[i].endswith(","):
            continue
        if prev in NOT_SUBJECT or prev in NOT_BEFORE_PARTICIPLE or prev.endswith(("ing", ",", "ly")):
            return []
        if i + 2 < len(words) and words[i + 1] == "and" and words[i + 2].lower().endswith("ing"):
            return []  # "birds screeching and chirping": one rewrite would leave the two forms unequal
        relative = "who" if prev in PEOPLE else "that"
        aux = "are" if prev in PLURAL_SUBJECTS or _plural(prev) else "is"
        return [" ".join([*words[:i], relative, aux, *words[i:]])]
    return []


def rewrite_heard(core: str) -> list[str]:
    """``X can be heard`` ↔ ``One can hear X``; ``The sound of X``, ``There is X`` → ``X can be heard``.

    A bare noun phrase (``A water drop``) also becomes ``The sound of a water drop``.
    """
    m = re.fullmatch(r"(?i)(.+?) (?:can|could) be heard(.*)", core)
    if m:
        return [
            f"One can hear {lower_first(m.group(1))}{m.group(2)}",
            f"You can hear {lower_first(m.group(1))}{m.group(2)}",
        ]
    m = re.fullmatch(r"(?i)(?:one|you|we) (?:can )?hear (.+)", core)
    if m:
        return [f"{upper_first(m.group(1))} can be heard"]
    m = re.fullmatch(r"(?i)(?:the sound of|there is|there are) (.+)", core)
    if m and not has_verb(m.group(1)):
        return [f"{upper_first(m.group(1))} can be heard"]
    if not has_verb(core) and len(core.split()) <= 8:  # a short noun phrase: "A water drop."
        return [f"The sound of {lower_first(core)}", f"{upper_first(core)} can be heard"]
    return []


_WORD = r"(?!(?:{rest})\b)(?![\w-]+ly\b)[\w-]+".format(rest="|".join(sorted(REST_WORDS)))
_REST = r"(?P<rest>(?:,? (?:{rest})\b.*)?)".format(rest="|".join(sorted(REST_WORDS)))
_ACTIVE = re.compile(
    r"(?i)(?P<subj>(?:{subj})(?: {w}){{0,3}}?) (?P<verb>{verbs}) "
    r"(?P<obj>(?:{objs}) {w}(?: {w})?){rest}".format(
        subj="|".join(SUBJECT_DETS),
        verbs="|".join(third_person(v) for v in PARTICIPLES),
        objs="|".join(OBJECT_DETS),
        w=_WORD,
        rest=_REST,
    )
)
_PASSIVE = re.compile(
    r"(?i)(?P<obj>(?:{objs})(?: [\w-]+){{1,2}}) (?:is|are|gets|get) (?P<pp>{pps}) by "
    r"(?P<subj>(?:a|an|the|someone|somebody)(?: {w}){{0,2}}){rest}".format(
        objs="|".join(OBJECT_DETS), pps="|".join(PARTICIPLE_BASE), w=_WORD, rest=_REST
    )
)


def rewrite_voice(core: str) -> list[str]:
    """``a man opens a door`` ↔ ``a door is opened by a man`` (common transitive verbs only)."""
    m = _ACTIVE.fullmatch(core) or _PASSIVE.fullmatch(core)
    rest = m.group("rest").lstrip(", ").split(" ", 1) if m else []
    if len(rest) == 2 and rest[0].lower() in ("and", "then") and starts_with_verb(rest[1]):
        return []  # "a man opens a door and walks away": the subject goes on acting
    m = _ACTIVE.fullmatch(core)
    if m:
        base = next(v for v in PARTICIPLES if third_person(v) == m.group("verb").lower())
        obj = m.group("obj")
        aux = "are" if _plural(obj) else "is"
        return [
            f"{upper_first(obj)} {aux} {PARTICIPLES[base]} by {lower_first(m.group('subj'))}{m.group('rest')}"
        ]
    m = _PASSIVE.fullmatch(core)
    if m:
        base = PARTICIPLE_BASE[m.group("pp").lower()]
        subj = m.group("subj")
        verb = base if _plural(subj) else third_person(base)
        return [f"{upper_first(subj)} {verb} {lower_first(m.group('obj'))}{m.group('rest')}"]
    return []


STRUCTURAL: tuple[Callable[[str], list[str]], ...] = (
    rewrite_while,
    rewrite_then,
    rewrite_followed,
    rewrite_after_before,
    rewrite_heard,
    rewrite_voice,
    rewrite_participle,
)


# ---- word-level rewrites ------------------------------------------------------------------------------
_SYNONYM_RE = re.compile(
    r"(?i)(?<![\w'-])({})(?![\w'-])".format(
        "|".join(re.escape(k) for k in sorted(SYNONYMS, key=len, reverse=True))
    )
)
_ASPECT_RE = re.compile(
    r"(?i)(?<![\w'-])(?:(?P<aux>is|are) (?P<ing>{ing})|(?P<f3>{f3})|(?P<base>{base}))(?![\w'-])".format(
        ing="|".join(FORM_ING), f3="|".join(FORM_3SG), base="|".join(VERB_FORMS)
    )
)


def swap_synonyms(text: str, rng: random.Random, p: float) -> str:
    """Replace each lexicon word or phrase by a synonym with probability ``p``."""

    def sub(m: re.Match[str]) -> str:
        if rng.random() >= p or (m.group(0).lower() == "while" and not _while_joins_clauses(text, m)):
            return m.group(0)
        return match_case(rng.choice(SYNONYMS[m.group(0).lower()]), m.group(0))

    return _SYNONYM_RE.sub(sub, text)


def _while_joins_clauses(text: str, m: re.Match[str]) -> bool:
    """Whether ``while`` can become ``as``: mid-sentence, not ``a while``, not before an -ing/-ly word."""
    following = re.match(r"\s*([\w'-]+)", text[m.end() :])
    word = following.group(1).lower() if following else ""
    return m.start() > 0 and _previous_word(text, m.start()) != "a" and not word.endswith(("ing", "ly"))


def _previous_word(text: str, pos: int, back: int = 1) -> str:
    words = re.findall(r"[\w'-]+", text[:pos])
    return words[-back].lower() if len(words) >= back else ""


def swap_aspect(text: str, rng: random.Random, p: float) -> str:
    """``a dog barks`` ↔ ``a dog is barking``, ``birds chirp`` ↔ ``birds are chirping``, each with prob. p."""

    def sub(m: re.Match[str]) -> str:
        prev = _previous_word(text, m.start())
        if rng.random() >= p or not prev:
            return m.group(0)
        if m.group("ing"):
            if prev in ("there", "here"):
                return m.group(0)
            verb = FORM_ING[m.group("ing").lower()]
            return verb if m.group("aux").lower() == "are" else VERB_FORMS[verb][0]
        subject = subject_like(prev, _previous_word(text, m.start(), 2))
        if m.group("f3") and subject and prev not in PLURAL_SUBJECTS:
            return "is " + VERB_FORMS[FORM_3SG[m.group("f3").lower()]][1]
        base = m.group("base")
        if (
            base
            and subject_like(prev, "")  # "two dogs bark": a count before a plural subject is fine
            and (prev in PLURAL_SUBJECTS or _plural(prev))
            and prev not in ("is", "was", "this", "its", "his")
        ):
            return "are " + VERB_FORMS[base.lower()][1]
        return m.group(0)

    return _ASPECT_RE.sub(sub, text)


def _split_end(caption: str) -> tuple[str, str]:
    core = caption.strip()
    stripped = core.rstrip(".!?;, ")
    end = "." if core != stripped and core.rstrip()[-1:] in ".!?" else ""
    return stripped, end


def _seed(caption: str) -> int:
    return int.from_bytes(hashlib.sha256(caption.encode("utf-8")).digest()[:8], "big")


def rule_paraphrases(
    caption: str, n: int, accept: Callable[[str], bool] | None = None, max_tries: int = 30
) -> list[str]:
    """Up to ``n`` distinct paraphrases of ``caption``, deterministic for a given caption.

    Args:
        caption: the caption to rewrite.
        n: number of paraphrases wanted.
        accept: a check each candidate must pass (e.g. the length and identity checks of
            ``lacoat.augment.validate``); default: all accepted.
        max_tries: candidates generated at most; fewer than ``n`` come back when the rules run dry.

    Returns:
        The paraphrases, in generation order (the first ``k`` do not depend on ``n``).
    """
    from lacoat.augment.validate import normalise

    core, end = _split_end(caption)
    if not core:
        return []
    rng = random.Random(_seed(caption))
    structures = [s for rewrite in STRUCTURAL for s in rewrite(core)]
    seen = {normalise(caption)}
    out: list[str] = []
    fallback: list[str] = []  # with a neutral opening: used only when the rewrites run dry
    for trial in range(max_tries):
        if len(out) >= n:
            break
        text = structures[trial] if trial < len(structures) else rng.choice([core, *structures])
        text = fix_articles(swap_synonyms(swap_aspect(text, rng, 0.7), rng, 0.5))
        if normalise(text) in seen:
            fallback.append(rng.choice(OPENINGS) + lower_first(text))
            continue
        _take(upper_first(text) + end, seen, out, accept)
    for text in fallback:
        if len(out) >= n:
            break
        _take(upper_first(text) + end, seen, out, accept)
    return out


def _take(candidate: str, seen: set[str], out: list[str], accept: Callable[[str], bool] | None) -> None:
    from lacoat.augment.validate import normalise

    key = normalise(candidate)
    if key not in seen and (accept is None or accept(candidate)):
        seen.add(key)
        out.append(candidate)
