"""How distinctly the toy model represents its subjects at an edit layer: the keys a fact editor
writes to (``mlp.hook_post`` at the subject token of each subject's canonical prompt).

Two numbers: the keys' mean pairwise cosine (1 = one key for all), and how many centred
dimensions hold 90% of their variance (a batch of N edits needs about N independent directions).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from editors.surgeon import Surgeon
from editors.toyworld.world import World


@torch.inference_mode()
def subject_keys(surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, world: World, layer: int) -> torch.Tensor:
    """``[subjects, d_mlp]``: each subject's key on its first relation's canonical prompt."""
    relation = world.facts[0].relation
    facts = world.facts_for(relation)
    prompts = [fact.canonical_prompt for fact in facts]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    positions = [
        encoded["input_ids"][i].tolist().index(tokenizer.convert_tokens_to_ids(fact.subject))
        for i, fact in enumerate(facts)
    ]
    site = f"blocks.{layer}.mlp.hook_post"
    with surgeon.trace([site]) as cache:
        surgeon.model(**encoded.to(surgeon.device_dtype[0]))
    return cache[site][torch.arange(len(facts)), torch.tensor(positions)].double().cpu()


def key_statistics(keys: torch.Tensor, share: float = 0.9) -> dict[str, float]:
    """``mean_cosine`` over distinct pairs and ``dims_for_90pct`` of the centred keys."""
    unit = torch.nn.functional.normalize(keys, dim=1)
    cosine = unit @ unit.T
    n = keys.shape[0]
    mean_cosine = (cosine.sum() - n) / (n * (n - 1))
    variance = torch.linalg.svdvals(keys - keys.mean(dim=0)) ** 2
    cumulative = variance.cumsum(0) / variance.sum()
    return {
        "mean_cosine": round(float(mean_cosine), 4),
        "dims_for_90pct": int((cumulative < share).sum()) + 1,
        "subjects": n,
    }
