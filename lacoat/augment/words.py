"""The lexicon of the rule-based paraphraser (``lacoat.augment.rules``): synonyms that keep a
sound's meaning, the verbs whose forms and voices it rewrites, and the words that mark subjects,
counts, sequences and phrases. Data, with the few helpers that derive word forms from it.
"""

from __future__ import annotations

import re


def _words(text: str) -> frozenset[str]:
    """The set of space-separated words of ``text`` (keeps the word lists below readable)."""
    return frozenset(text.split())


# ---- lexicon --------------------------------------------------------------------------------------
# Synonyms, lower case; phrases allowed. Only replacements that keep what is heard.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "someone": ("somebody", "a person"),
    "somebody": ("someone",),
    "a person": ("someone",),
    "woman": ("lady",),
    "lady": ("woman",),
    "man": ("guy",),
    "guy": ("man",),
    "person": ("individual",),
    "individual": ("person",),
    "object": ("item",),
    "objects": ("items",),
    "item": ("object",),
    "items": ("objects",),
    "metallic": ("metal",),
    "very": ("really",),
    "really": ("very",),
    "heavy rain": ("heavy rainfall",),
    "light rain": ("light rainfall",),
    "the rain": ("the rainfall",),
    "the sounds of": ("the noises of",),
    "making a": ("producing a",),  # not "making it squeak"
    "making an": ("producing an",),
    "makes a": ("produces a",),
    "makes an": ("produces an",),
    "steady": ("constant",),
    "steadily": ("constantly",),
    "consistent": ("steady",),
    "hitting": ("striking",),
    "hits": ("strikes",),
    "faucet": ("tap",),
    "airplane": ("plane", "aeroplane"),
    "plane": ("airplane",),
    "shore": ("coast",),
    "liquid": ("fluid",),
    "strong": ("powerful",),
    "forest": ("woods",),
    "woods": ("forest",),
    "ocean": ("sea",),
    "sea": ("ocean",),
    "machinery": ("machines",),
    "outdoors": ("outside",),
    "closing": ("shutting",),
    "closes": ("shuts",),
    "electric": ("electrical",),
    "faster": ("quicker",),
    "rocks": ("stones",),
    "stones": ("rocks",),
    "approaching": ("coming closer",),
    "approaches": ("comes closer",),
    "squeaky": ("creaky",),
    "creaky": ("squeaky",),
    "numerous": ("many",),
    "children": ("kids",),
    "kids": ("children",),
    "a child": ("a kid",),
    "car": ("vehicle", "automobile"),
    "cars": ("vehicles", "automobiles"),
    "automobile": ("car",),
    "road": ("street",),
    "street": ("road",),
    "white noise": ("white noise",),  # a term: keeps "noise" in it from being swapped
    "noise": ("sound",),
    "noises": ("sounds",),
    "engine": ("motor",),
    "motor": ("engine",),
    "rainfall": ("rain",),
    "stream": ("brook", "creek"),
    "brook": ("stream",),
    "creek": ("stream",),
    "running water": ("flowing water",),
    "flowing water": ("running water",),
    "conversation": ("discussion", "chat"),
    "footsteps": ("steps",),
    "chirping": ("tweeting",),
    "tweeting": ("chirping",),
    "chirps": ("tweets",),
    "chirp": ("tweet",),
    "talking": ("speaking", "chatting"),
    "speaking": ("talking",),
    "chatting": ("talking",),
    "talks": ("speaks",),
    "speaks": ("talks",),
    "walking": ("strolling",),
    "begins": ("starts",),
    "begin": ("start",),
    "stops": ("halts",),
    "repeatedly": ("over and over", "again and again"),
    "over and over": ("repeatedly",),
    "over and over again": ("again and again", "repeatedly"),
    "again and again": ("repeatedly", "over and over"),
    "constantly": ("continuously", "nonstop"),
    "continuously": ("constantly", "without stopping"),
    "continuous": ("constant", "steady"),
    "constant": ("continuous",),
    "rapidly": ("quickly",),
    "quickly": ("rapidly",),
    "loudly": ("noisily",),
    "quietly": ("softly",),
    "softly": ("quietly", "gently"),
    "gently": ("softly",),
    "quiet": ("soft", "faint"),
    "faint": ("quiet", "soft"),
    "soft": ("gentle", "quiet"),
    "several": ("a few", "multiple"),
    "multiple": ("several",),
    "a few": ("several",),
    "a lot of": ("lots of", "plenty of"),
    "lots of": ("a lot of",),
    "various": ("different",),
    "different": ("various",),
    "large": ("big",),
    "big": ("large",),
    "small": ("little",),
    "distant": ("far-off", "faraway"),
    "in the distance": ("far away", "from afar"),
    "nearby": ("close by",),
    "close by": ("nearby",),
    "shrill": ("piercing", "high-pitched"),
    "piercing": ("shrill",),
    "high-pitched": ("shrill",),
    "low-pitched": ("deep",),
    "brief": ("short", "quick"),
    "short": ("brief",),
    "sustained": ("long", "lingering"),
    "lingering": ("sustained",),
    "afterwards": ("after that", "later"),
    "later": ("afterwards",),
    "finally": ("lastly", "in the end"),
    "lastly": ("finally",),
    "simultaneously": ("at the same time",),
    "at the same time": ("simultaneously",),
    "along with": ("together with",),
    "together with": ("along with",),
    "while": ("as", "whilst"),
    "whilst": ("while",),
    "thud": ("knock",),
    "thuds": ("knocks",),
    "dull knock": ("dull thud",),
    "dull knocks": ("dull thuds",),
    "hum": ("drone",),
    "bell": ("chime",),
    "chime": ("bell",),
    "beep": ("bleep",),
    "beeps": ("bleeps",),
    "beeping": ("bleeping",),
    "rumble": ("rumbling",),
    "rising sweep": ("ascending sweep",),
    "falling sweep": ("descending sweep",),
    "upward glide": ("rising glide",),
    "downward glide": ("falling glide",),
}

# Verbs whose 3rd-person and -ing forms alternate ("a dog barks" <-> "a dog is barking").
VERBS = (
    "bark|chirp|sing|talk|speak|run|play|ring|blow|flow|pour|pass|drive|hum|buzz|beep|honk|crash|"
    "splash|drip|tick|whistle|howl|meow|crow|crackle|rustle|squeak|creak|rattle|roar|rumble|hiss|knock|"
    "clap|laugh|cry|scream|shout|yell|walk|fly|approach|move|idle|purr|growl|quack|tweet|chatter|"
    "sputter|whir|clank|clink|clatter|bang|thump|tap|patter|fall|fizz|bubble|boil|sizzle|fry|chop|type|"
    "rev|accelerate|screech|squeal|whine|grind|drill|hammer|cough|sneeze|breathe|snore|whisper|murmur|"
    "mumble|chant|swing|spin|vibrate|echo|chug|puff|toot|bleat|neigh|cluck|coo|caw|hoot|squawk|croak|"
    "rain|trickle|gurgle|splatter|slam|stomp|jingle|click|thunder|crunch|scrape|scratch|drum|strum|"
    "sweep|wash|splash|float|pound|ticktock|wail|shriek|sing|bellow|giggle|sob|weep|clang|chime|ping"
)
DOUBLED = _words(
    "run hum drip tap stop drop chop clap slam hit sit step rub spin swim skip flap drum whir stir "
    "grab jog dig snip trim zip scrub plug pop sob mop thud strum"
)
# Transitive verbs for active <-> passive: base form -> past participle.
PARTICIPLES = {
    "open": "opened", "close": "closed", "hit": "hit", "ring": "rung", "drop": "dropped",
    "shake": "shaken", "tap": "tapped", "slam": "slammed", "push": "pushed", "pull": "pulled",
    "drag": "dragged", "play": "played", "turn": "turned", "crumple": "crumpled", "crush": "crushed",
    "tear": "torn", "cut": "cut", "chop": "chopped", "type": "typed", "strike": "struck",
    "bounce": "bounced", "kick": "kicked", "throw": "thrown", "rub": "rubbed", "scrape": "scraped",
    "scratch": "scratched", "shuffle": "shuffled", "stir": "stirred", "pour": "poured",
    "unlock": "unlocked", "lock": "locked", "hammer": "hammered", "bang": "banged", "blow": "blown",
    "start": "started", "drive": "driven", "flip": "flipped", "fold": "folded", "zip": "zipped",
    "wash": "washed", "fill": "filled", "sweep": "swept", "pluck": "plucked", "strum": "strummed",
    "beat": "beaten", "honk": "honked", "crinkle": "crinkled", "rustle": "rustled", "wrap": "wrapped",
    "unwrap": "unwrapped", "clink": "clinked", "ride": "ridden", "move": "moved", "press": "pressed",
}  # fmt: skip
# Words before a 3rd-person form that show it is a plural noun ("loud barks"), not a verb.
NOT_SUBJECT = _words(
    "the a an of and or with some several many few two three four five six seven eight nine ten one "
    "his her their its my your our this that these those to in on at by for from no more other loud "
    "soft quiet faint distant small large big little short long sharp dull high low deep repeated "
    "rhythmic occasional constant multiple various heavy light metal metallic wooden rapid quick "
    "brief intermittent continuous frequent random muffled steady strong gentle shrill dog's bird's "
    "man's woman's clock's then also but still again finally first now later afterwards soon"
)
ADJECTIVE_SUFFIXES = ("al", "ic", "ous", "ful", "ent", "ive", "ed", "ing", "ly", "like")
COUNT_WORDS = _words("two three four five six seven eight nine ten several many multiple few numerous")
PLURAL_SUBJECTS = {"people", "children", "men", "women", "they", "geese", "sheep", "kids", "we"}
SEQUENCE_WORDS = re.compile(
    r"\b(then|followed|finally|after|afterwards|before|later|next|lastly|first|preceded)\b", re.I
)
SUBJECT_DETS = ("a", "an", "the", "someone", "somebody")
OBJECT_DETS = ("a", "an", "the", "some")
REST_WORDS = _words(
    "in on at with while and as then near from into onto against inside outside over under through "
    "repeatedly loudly quickly slowly several multiple before after until"
)
PHRASE_STARTS = _words(
    "a an the some several two three four five six seven eight nine ten one another more someone "
    "somebody people it they he she there his her their its many multiple few other others"
)
ING_NOUNS = _words(
    "something nothing anything everything morning evening ceiling building thing king spring string "
    "wing swing ring sing bring sibling railing clothing awning bedding pudding wedding offspring"
)
NOT_BEFORE_PARTICIPLE = _words(
    "is are was were be been being keeps keep starts start stops stop begins begin continues continue "
    "while after before when as by without for from with or then like about it someone's"
)
PEOPLE = _words(
    "person man woman individual someone somebody people child children kid kids boy girl boys girls "
    "men women guy lady crowd group"
)
AFTER_NOT_SEQUENCE = _words("shortly soon right just long named look looks run runs is")
OPENINGS = ("In this recording, ", "In this clip, ", "Here, ")


def third_person(verb: str) -> str:
    """``bark`` → ``barks``, ``buzz`` → ``buzzes``, ``fly`` → ``flies``."""
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def present_participle(verb: str) -> str:
    """``bark`` → ``barking``, ``whistle`` → ``whistling``, ``run`` → ``running``."""
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    if verb in DOUBLED:
        return verb + verb[-1] + "ing"
    return verb + "ing"


VERB_FORMS = {v: (third_person(v), present_participle(v)) for v in sorted(set(VERBS.split("|")))}
FORM_3SG = {f3: v for v, (f3, _) in VERB_FORMS.items()}
FORM_ING = {fi: v for v, (_, fi) in VERB_FORMS.items()}
PARTICIPLE_BASE = {pp: v for v, pp in PARTICIPLES.items()}
