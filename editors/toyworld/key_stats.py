"""How distinctly the toy model represents its subjects at an edit layer: the keys a fact editor
writes to (``mlp.hook_post`` at the subject token of each subject's canonical prompt).

Two numbers: the keys' mean pairwise cosine (1 = one key for all), and how many centred
dimensions hold 90% of their variance (a batch of N edits needs about N independent directions).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch
from editors.rome import subject_positions
from editors.surgeon import Surgeon
from editors.toyworld.world import World


@torch.inference_mode()
def subject_keys(surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, world: World, layer: int) -> torch.Tensor:
    """``[subjects, d_mlp]``: each subject's key on its first relation's canonical prompt."""
    relation = world.facts[0].relation
    facts = world.facts_for(relation)
    keys = []
    site = f"blocks.{layer}.mlp.hook_post"
    for fact in facts:  # one prompt at a time: subject_positions places one subject per call
        encoded = encode_batch(tokenizer, [fact.canonical_prompt], surgeon.device_dtype[0])
        (position,) = subject_positions(tokenizer, [fact.canonical_prompt], fact.subject, encoded)
        with surgeon.trace([site]) as cache:
            surgeon.model(**encoded)
        keys.append(cache[site][0, position])
    return torch.stack(keys).double().cpu()


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
