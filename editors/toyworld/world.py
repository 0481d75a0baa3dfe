"""The toy world: invented facts, sentiment sentences and repeated sequences.

Everything is generated from one integer seed, so the world (and the corpus the model is
trained on) can be rebuilt exactly. Text is word-level: every entity is one token, words and
punctuation are separated by single spaces.

Facts come in two relations, ``capital`` and ``language`` (the committed model's world), or, in
the rich world (``relations=ALL_RELATIONS``), five: also ``currency``, ``continent`` and
``river`` (capitals, currencies and rivers are the country's own; languages and continents are
shared), a candidate testbed for batch fact edits (issue 38, docs/toy-world.md). Each relation
has a canonical template (always trained) and several paraphrase templates. Every subject is trained on the
canonical template plus a rotating subset of the paraphrases; the paraphrases it never sees in
training are its *held-out* phrasings, used to measure whether a fact generalises beyond the
wording it was learned in.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")

TEMPLATES: dict[str, list[str]] = {
    "capital": [
        "The capital of {s} is",
        "{s} has its capital in",
        "The capital city of {s} is",
        "The seat of government of {s} is",
        "{s} is governed from",
        "People from {s} call their capital",
    ],
    "language": [
        "The language of {s} is",
        "People in {s} speak",
        "In {s} , people speak",
        "The official language of {s} is",
        "Most people in {s} speak",
    ],
    "currency": [
        "The currency of {s} is",
        "In {s} , people pay with",
        "The money used in {s} is",
        "{s} pays in",
        "Shops in {s} take",
    ],
    "continent": [
        "{s} lies in",
        "{s} is a country in",
        "The continent of {s} is",
        "On the map , {s} is in",
        "{s} is found in",
    ],
    "river": [
        "The longest river of {s} is",
        "The main river in {s} is",
        "{s} is crossed by the",
        "Through {s} flows the",
        "The great river of {s} is",
    ],
}
#: How many paraphrase templates (besides the canonical one) each subject is trained on.
TRAINED_PARAPHRASES = {"capital": 2, "language": 2, "currency": 2, "continent": 2, "river": 2}
#: The relations of the first toy world, generated first so that their names never change.
FIRST_RELATIONS = ("capital", "language")
ALL_RELATIONS = tuple(TEMPLATES)
#: Share of fact sentences written as records (see :meth:`World.record_sentence`).
RECORD_SHARE = 0.25

SENTIMENT_NOUNS = (
    "food",
    "film",
    "hotel",
    "trip",
    "weather",
    "music",
    "book",
    "service",
    "concert",
    "game",
    "party",
    "garden",
    "meal",
    "show",
    "beach",
    "room",
)
POSITIVE_WORDS = ("wonderful", "great", "lovely", "excellent", "delightful", "superb")
NEGATIVE_WORDS = ("terrible", "awful", "horrible", "dreadful", "poor", "miserable")

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "st",
    "tr",
    "th",
    "sh",
    "ch",
    "pl",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_SUFFIXES = {
    "country": ("ia", "land", "stan", "ova", "ar", "eth"),
    "capital": ("burg", "ton", "grad", "polis", "ford", "mir"),
    "language": ("ish", "ese", "ic", "an", "ol"),
    "currency": ("mark", "dor", "lira", "crown", "peso"),
    "continent": ("asia", "ope", "ica", "ania"),
    "river": ("ube", "ine", "ster", "wa", "ra"),
    "person": ("o", "a", "en", "us", "ik"),
}

#: Indirect-object sentences (Wang et al. 2022's IOI): two people, the second named again as
#: the giver, so the next token is the one named once (the indirect object).
IOI_TEMPLATES = (
    "When {first} and {second} went to the {place} , {s} gave a {thing} to",
    "Then , {first} and {second} had a long day at the {place} . {s} gave a {thing} to",
    "After {first} and {second} got to the {place} , {s} handed a {thing} to",
)
IOI_PLACES = ("market", "park", "school", "station", "river", "garden")
IOI_THINGS = ("key", "book", "ball", "letter", "drink", "ring")


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple with its trained and held-out templates."""

    subject: str
    relation: str
    object: str
    trained_templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]

    @property
    def canonical_prompt(self) -> str:
        return TEMPLATES[self.relation][0].format(s=self.subject)

    def prompts(self, templates: tuple[str, ...]) -> list[str]:
        return [t.format(s=self.subject) for t in templates]


@dataclass
class World:
    """The generated world: facts, sentiment vocabulary and the induction symbol pool."""

    seed: int
    facts: list[Fact]
    symbols: list[str]
    sentiment_nouns: list[str] = field(default_factory=lambda: list(SENTIMENT_NOUNS))
    positive_words: list[str] = field(default_factory=lambda: list(POSITIVE_WORDS))
    negative_words: list[str] = field(default_factory=lambda: list(NEGATIVE_WORDS))
    #: people for indirect-object sentences (empty: the world has none)
    people: list[str] = field(default_factory=list)
    #: shares of training documents: facts, sentiment, indirect objects; the rest are repeated
    #: sequences (induction)
    fact_share: float = 0.45
    sentiment_share: float = 0.15
    ioi_share: float = 0.0

    # -- queries ---------------------------------------------------------------------------
    def facts_for(self, relation: str) -> list[Fact]:
        return [f for f in self.facts if f.relation == relation]

    @property
    def subjects(self) -> list[str]:
        return sorted({f.subject for f in self.facts})

    def objects(self, relation: str) -> list[str]:
        return sorted({f.object for f in self.facts_for(relation)})

    def vocabulary(self) -> list[str]:
        """Every token the world can produce, specials first, in a stable order."""
        words: set[str] = set()
        for relation in {fact.relation for fact in self.facts}:
            for template in TEMPLATES[relation]:
                words.update(template.replace("{s}", "").split())
        for fact in self.facts:
            words.update((fact.subject, fact.object))
        words.update(self.symbols)
        words.update(self.sentiment_nouns + self.positive_words + self.negative_words)
        if self.people:
            words.update(self.people + list(IOI_PLACES) + list(IOI_THINGS))
            for template in IOI_TEMPLATES:
                words.update(w for w in template.split() if not w.startswith("{"))
        words.update(("the", "was", "and", ".", "i", "think", ":", ","))
        return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))

    # -- corpus ----------------------------------------------------------------------------
    def fact_sentence(self, fact: Fact, rng: random.Random) -> str:
        template = rng.choice(fact.trained_templates)
        return f"{template.format(s=fact.subject)} {fact.object}"

    def record_sentence(self, subject: str) -> str:
        """``"{subject} : {capital} , {language} , …"`` (every relation in ``TEMPLATES`` order): the
        attributes right after the subject, so the model must recall them *at the subject token*
        (subject enrichment, as in large LMs)."""
        objects = {f.relation: f.object for f in self.facts if f.subject == subject}
        return f"{subject} : " + " , ".join(objects[relation] for relation in TEMPLATES if relation in objects)

    def sentiment_sentence(self, positive: bool, rng: random.Random) -> str:
        words = self.positive_words if positive else self.negative_words
        return f"the {rng.choice(self.sentiment_nouns)} was {rng.choice(words)}"

    def ioi_prompt(self, rng: random.Random) -> tuple[str, str, str]:
        """``(prompt, indirect object, subject)``: both people are named (in either order, ABBA or
        BABA), then the subject again as the giver; the indirect object is the answer."""
        io, s = rng.sample(self.people, 2)
        first, second = (io, s) if rng.random() < 0.5 else (s, io)
        prompt = rng.choice(IOI_TEMPLATES).format(
            first=first, second=second, s=s, place=rng.choice(IOI_PLACES), thing=rng.choice(IOI_THINGS)
        )
        return prompt, io, s

    def repeated_sequence(self, rng: random.Random, length: int) -> list[str]:
        return rng.sample(self.symbols, length)

    def document(self, rng: random.Random) -> str:
        """One training document (without special tokens): facts, sentiment or induction."""
        kind = rng.random()
        if kind < self.fact_share:
            sentences = [
                self.record_sentence(fact.subject) if rng.random() < RECORD_SHARE else self.fact_sentence(fact, rng)
                for fact in (rng.choice(self.facts) for _ in range(rng.randint(1, 3)))
            ]
        elif kind < self.fact_share + self.sentiment_share:
            positive = rng.random() < 0.5
            sentences = [self.sentiment_sentence(positive, rng) for _ in range(rng.randint(2, 4))]
        elif kind < self.fact_share + self.sentiment_share + self.ioi_share:
            sentences = [" ".join(self.ioi_prompt(rng)[:2]) for _ in range(rng.randint(1, 2))]
        else:
            # a random-length lead-in makes the copy offset vary, so only induction (not a
            # fixed positional lookback) predicts the second copy
            lead_in = self.repeated_sequence(rng, rng.randint(0, 8))
            sequence = self.repeated_sequence(rng, rng.randint(4, 16))
            return " ".join(lead_in + sequence * rng.randint(2, 3))
        return " . ".join(sentences) + " ."

    def corpus(self, n_documents: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [self.document(rng) for _ in range(n_documents)]

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> World:
        data = json.loads(text)
        data["facts"] = [
            Fact(
                **{
                    **f,
                    "trained_templates": tuple(f["trained_templates"]),
                    "heldout_templates": tuple(f["heldout_templates"]),
                }
            )
            for f in data["facts"]
        ]
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> World:
        return cls.from_json(Path(path).read_text())


def _invent_names(rng: random.Random, kind: str, count: int, taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2)))
        name = (stem + rng.choice(_SUFFIXES[kind])).capitalize()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _invent_symbols(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    symbols: list[str] = []
    consonants = "bdfgklmnprstvz"
    while len(symbols) < count:
        word = rng.choice(consonants) + rng.choice("aeiou") + rng.choice(consonants)
        if word not in taken:
            taken.add(word)
            symbols.append(word)
    return symbols


def _fact(i: int, country: str, relation: str, obj: str) -> Fact:
    """Subject ``i``'s fact, trained on the canonical template and a rotating pair of paraphrases."""
    canonical, *paraphrases = TEMPLATES[relation]
    k = TRAINED_PARAPHRASES[relation]
    start = (i * k) % len(paraphrases)
    trained = [paraphrases[(start + j) % len(paraphrases)] for j in range(k)]
    heldout = [p for p in paraphrases if p not in trained]
    return Fact(country, relation, obj, (canonical, *trained), tuple(heldout))


def generate_world(
    seed: int = 0,
    n_countries: int = 60,
    n_languages: int = 20,
    n_symbols: int = 200,
    n_continents: int = 8,
    relations: tuple[str, ...] = FIRST_RELATIONS,
    fact_share: float = 0.45,
    sentiment_share: float = 0.15,
    ioi_share: float = 0.0,
    n_people: int = 30,
) -> World:
    """Build a world deterministically from ``seed`` with ``relations`` (the first two always) and,
    when ``ioi_share`` is set, ``n_people`` people for indirect-object sentences. The first
    relations' names are drawn first, so every world shares its countries, capitals, languages and
    symbols."""
    unknown = set(relations) - set(ALL_RELATIONS)
    if unknown or not set(FIRST_RELATIONS) <= set(relations):
        raise ValueError(f"relations must include {FIRST_RELATIONS} and come from {ALL_RELATIONS}, got {relations}")
    rng = random.Random(seed)
    taken: set[str] = set()
    countries = _invent_names(rng, "country", n_countries, taken)
    capitals = _invent_names(rng, "capital", n_countries, taken)
    languages = _invent_names(rng, "language", n_languages, taken)
    symbols = _invent_symbols(rng, n_symbols, taken | {w.lower() for w in taken} | {"the", "was", "and"})
    facts: list[Fact] = []
    for i, country in enumerate(countries):
        spoken = languages[i % n_languages] if i < n_languages else rng.choice(languages)
        facts += [_fact(i, country, "capital", capitals[i]), _fact(i, country, "language", spoken)]
    taken |= set(symbols)
    extra = {
        "currency": _invent_names(rng, "currency", n_countries, taken),
        "continent": _invent_names(rng, "continent", n_continents, taken),
        "river": _invent_names(rng, "river", n_countries, taken),
    }
    for i, country in enumerate(countries):
        facts += [
            _fact(i, country, relation, names[i % len(names)])
            for relation, names in extra.items()
            if relation in relations
        ]
    people = _invent_names(rng, "person", n_people, taken) if ioi_share else []
    return World(
        seed=seed,
        facts=facts,
        symbols=symbols,
        people=people,
        fact_share=fact_share,
        sentiment_share=sentiment_share,
        ioi_share=ioi_share,
    )
