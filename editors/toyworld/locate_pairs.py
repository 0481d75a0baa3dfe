"""Prompt pairs for locating the toy world's mechanisms (``scalpel toyworld pairs``, the tests and
``bench/locate.py``): induction (a random symbol sequence repeated, against the same first half
followed by other symbols), capitals (a country's capital prompt, against another country's
of the same token length, whose capital differs) and sentiment (a positive sentence then a
neutral prompt, against the same with a negative sentence: a document keeps one polarity)."""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from editors.choices import LOCATE_TASKS
from editors.locate import MetricSpec, PromptPair
from editors.toyworld.world import World

TASKS = LOCATE_TASKS
INDUCTION_LENGTH = 10


def induction_pairs(world: World, n: int, seed: int = 0, length: int = INDUCTION_LENGTH) -> list[PromptPair]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        sequence, other = rng.sample(world.symbols, length), rng.sample(world.symbols, length)
        pairs.append(PromptPair(" ".join(sequence + sequence), " ".join(sequence + other)))
    return pairs


#: Induction's metric: the mean log-probability of the repeated half's symbols after its first
#: (position 0 is <bos>, the second copy starts at 1 + length; its first symbol is unpredictable).
INDUCTION_METRIC = MetricSpec("tokens_logprob", score_from=2 + INDUCTION_LENGTH)
CAPITALS_METRIC = MetricSpec("logit_diff")


def capital_pairs(world: World, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> list[PromptPair]:
    rng = random.Random(seed)
    facts = world.facts_for("capital")
    length = {f.subject: len(tokenizer(f.canonical_prompt)["input_ids"]) for f in facts}
    pairs = []
    for fact in facts:
        others = [g for g in facts if g.object != fact.object and length[g.subject] == length[fact.subject]]
        if others:
            other = rng.choice(others)
            pairs.append(PromptPair(fact.canonical_prompt, other.canonical_prompt, fact.object, other.object))
    return pairs


SENTIMENT_METRIC = MetricSpec("logit_diff")


def sentiment_pairs(world: World, n: int, seed: int = 0) -> list[PromptPair]:
    """``the film was wonderful . the show was`` → a positive word over a negative one, against the
    same with the first sentence negative (the polarity the next sentence follows)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        good, bad = rng.randrange(len(world.positive_words)), rng.randrange(len(world.negative_words))
        first, second = rng.sample(world.sentiment_nouns, 2)
        lead = f"the {first} was {{}} . the {second} was"
        answer, wrong = rng.choice(world.positive_words), rng.choice(world.negative_words)
        pairs.append(PromptPair(lead.format(world.positive_words[good]), lead.format(world.negative_words[bad]),
                                answer, wrong))  # fmt: skip
    return pairs


def task_pairs(
    task: str, world: World, tokenizer: PreTrainedTokenizerBase, n: int = 64, seed: int = 0
) -> tuple[list[PromptPair], MetricSpec]:
    """The pairs and metric of ``task`` (one of :data:`TASKS`)."""
    if task == "induction":
        return induction_pairs(world, n, seed), INDUCTION_METRIC
    if task == "capitals":
        return capital_pairs(world, tokenizer, seed)[:n], CAPITALS_METRIC
    if task == "sentiment":
        return sentiment_pairs(world, n, seed), SENTIMENT_METRIC
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
