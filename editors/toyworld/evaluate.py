"""Quality metrics of a model on the toy world (works under any active edit stack).

All metrics are top-1 next-token accuracies:

- ``fact_recall``: canonical prompts ("The capital of X is") → the object;
- ``paraphrase_recall``: each fact's held-out phrasings (never seen for that subject);
- ``induction_accuracy``: fresh random symbol sequences repeated twice; accuracy on the second
  copy's tokens 2..n (the first token of the second copy is not predictable);
- ``ioi_accuracy`` (worlds with people): fresh indirect-object prompts → the person named once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editors.batching import last_token_index
from editors.toyworld.world import Fact, World


@torch.inference_mode()
def next_token_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Logits of the token after each prompt, shape ``[len(prompts), vocab]``."""
    rows: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        encoded = tokenizer(chunk, return_tensors="pt", padding=True)
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        last = last_token_index(encoded["attention_mask"])
        rows.append(logits[torch.arange(len(chunk)), last].float())
    return torch.cat(rows)


def _token_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> torch.Tensor:
    return torch.tensor(tokenizer.convert_tokens_to_ids(list(words)))


def top1_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str]
) -> float:
    predicted = next_token_logits(model, tokenizer, prompts).argmax(dim=-1)
    return (predicted == _token_ids(tokenizer, answers)).float().mean().item()


def fact_recall(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact]) -> float:
    return top1_accuracy(model, tokenizer, [f.canonical_prompt for f in facts], [f.object for f in facts])


def paraphrase_recall(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, facts: Sequence[Fact]) -> float:
    prompts = [p for f in facts for p in f.prompts(f.heldout_templates)]
    answers = [f.object for f in facts for _ in f.heldout_templates]
    return top1_accuracy(model, tokenizer, prompts, answers)


def induction_sequences(world: World, n: int = 64, length: int = 10, seed: int = 12345) -> list[list[str]]:
    """Random symbol sequences for testing induction (fresh: a seed the trainer never uses)."""
    rng = random.Random(seed)
    return [world.repeated_sequence(rng, length) for _ in range(n)]


@torch.inference_mode()
def induction_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    n: int = 64,
    length: int = 10,
    seed: int = 12345,
) -> float:
    sequences = induction_sequences(world, n, length, seed)
    encoded = tokenizer([" ".join(s + s) for s in sequences], return_tensors="pt")
    ids = encoded["input_ids"]  # [n, 1 + 2 * length], position 0 is <bos>
    logits = model(input_ids=ids).logits
    # position p predicts token p + 1; second copy starts at 1 + length; score its tokens 2..n
    predict_from = torch.arange(1 + length, 2 * length)
    predicted = logits[:, predict_from].argmax(dim=-1)
    return (predicted == ids[:, predict_from + 1]).float().mean().item()


def ioi_prompts(world: World, n: int = 128, seed: int = 12345) -> list[tuple[str, str, str]]:
    """Fresh ``(prompt, indirect object, subject)`` triples (a seed the trainer never uses)."""
    rng = random.Random(seed)
    return [world.ioi_prompt(rng) for _ in range(n)]


def ioi_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World) -> float:
    prompts, answers, _ = zip(*ioi_prompts(world), strict=True)
    return top1_accuracy(model, tokenizer, prompts, answers)


def evaluate_world(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World) -> dict[str, float]:
    """The quality-floor metrics of the toy model (``ioi_accuracy`` where the world has people)."""
    metrics = {
        "fact_recall": fact_recall(model, tokenizer, world.facts),
        "paraphrase_recall": paraphrase_recall(model, tokenizer, world.facts),
        "induction_accuracy": induction_accuracy(model, tokenizer, world),
    }
    if world.people:
        metrics["ioi_accuracy"] = ioi_accuracy(model, tokenizer, world)
    return metrics


def sentiment_pairs(world: World) -> list[tuple[str, str]]:
    """Contrastive (positive, negative) sentences, one per noun and adjective pair."""
    return [
        (f"the {noun} was {good}", f"the {noun} was {bad}")
        for noun in world.sentiment_nouns
        for good, bad in zip(world.positive_words, world.negative_words, strict=True)
    ]


def neutral_prompts(world: World) -> list[str]:
    """Prompts whose continuation is an (unbiased) sentiment word."""
    return [f"the {noun} was" for noun in world.sentiment_nouns]


@torch.inference_mode()
def positive_probability(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World, prompts: Sequence[str] | None = None
) -> float:
    """Mean probability mass on positive words after the prompts (default: :func:`neutral_prompts`)."""
    probs = next_token_logits(model, tokenizer, prompts or neutral_prompts(world)).softmax(dim=-1)
    return probs[:, _token_ids(tokenizer, world.positive_words)].sum(dim=-1).mean().item()
