"""Neo et al. (ICLR 2025)'s three findings about LLaVA's image tokens, measured on a LLaVA model
of the toy vision world (issue 34; ``bench/vision.py`` prints them, the tests hold them).

Object identification is the toy's "what shape is {colour}" (the object is named by its colour,
the answer is its shape) over every object of fresh scenes; the drops are shares of the
questions the model answered right that it no longer does:

- ``object_ablation_drop``: the object's image tokens (its grid cell's patches) replaced by the
  mean image token (the mean projector output over the scenes), as the paper ablates;
- ``random_ablation_drop``: as many image tokens drawn at random from the patches the object
  does not cover, the same question;
- ``logit_lens_object_top5_rate``: the share of objects whose name (its shape) is among the top
  5 tokens that one of its image tokens decodes to, at the best language-model layer (the final
  norm, then the unembedding); ``logit_lens_background_top5_rate`` is the same for an empty
  cell's token at that layer (the chance of the name showing where there is no object);
- ``knockout_*_drop``: attention from the last position to the object's image tokens blocked at
  the language model's early half of layers, or at its mid-to-late half.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from editors.edits import Edit
from editors.surgeon import Surgeon
from editors.toyworld.vision.scenes import PATCH_GRID, Question, Scene, object_patches, questions, random_scene
from editors.toyworld.vision.train import encode_questions, pixels
from editors.vision import ImageTokenAblation, attention_knockout, image_logit_lens, mean_image_token


def identification_cases(scenes: int, seed: int) -> list[tuple[Scene, Question]]:
    rng = random.Random(seed)
    drawn = [random_scene(rng) for _ in range(scenes)]
    return [(scene, q) for scene in drawn for q in questions(scene) if q.kind == "shape_of"]


@torch.inference_mode()
def answers(
    surgeon: Surgeon,
    processor: Any,
    cases: list[tuple[Scene, Question]],
    edits_per_case: list[list[Edit]] | None = None,
    knockout: tuple[list[int], list[list[int]]] | None = None,
) -> list[bool]:
    """Whether each case's greedy answer is right, under its own edits or with the last
    position's attention to its own patches (``knockout``'s second part) blocked at
    ``knockout``'s layers, if given."""
    model, tokenizer = surgeon.model, processor.tokenizer
    right = []
    for i, (scene, question) in enumerate(cases):
        batch = encode_questions(processor, [question])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        inputs["pixel_values"] = pixels([scene])
        edits = [] if edits_per_case is None else edits_per_case[i]
        with surgeon.apply(edits):
            if knockout is None:
                logits = model(**inputs).logits[0, -1]
            else:
                layers, patches = knockout[0], knockout[1][i]
                with attention_knockout(surgeon, inputs["input_ids"], layers, queries="last", patches=patches):
                    logits = model(**inputs).logits[0, -1]
        right.append(tokenizer.convert_ids_to_tokens(int(logits.argmax())) == question.answer)
    return right


def drop(before: list[bool], after: list[bool]) -> float:
    kept = [a for b, a in zip(before, after, strict=True) if b]
    return round(1 - sum(kept) / len(kept), 4) if kept else 0.0


def image_token_findings(model: Any, processor: Any, scenes: int = 200, seed: int = 7) -> dict[str, Any]:
    """The three findings (see the module docstring) over the objects of ``scenes`` fresh scenes."""
    surgeon = Surgeon(model)
    surgeon = Surgeon(model)
    cases = identification_cases(scenes, seed)
    mean = mean_image_token(surgeon, pixels([scene for scene, _ in cases]))
    rng = random.Random(seed)
    cells = [object_patches(q.about) for _, q in cases]
    others = [rng.sample([p for p in range(PATCH_GRID**2) if p not in cell], len(cell)) for cell in cells]

    clean = answers(surgeon, processor, cases)
    object_cut = answers(surgeon, processor, cases, [[ImageTokenAblation(mean=mean, patches=tuple(c))] for c in cells])
    random_cut = answers(surgeon, processor, cases, [[ImageTokenAblation(mean=mean, patches=tuple(o))] for o in others])
    n_layers = surgeon.dims.n_layers
    early, late = list(range(n_layers // 2)), list(range(n_layers // 2, n_layers))
    knock_early = answers(surgeon, processor, cases, knockout=(early, cells))
    knock_late = answers(surgeon, processor, cases, knockout=(late, cells))

    shape_ids = {q.answer: processor.tokenizer.convert_tokens_to_ids(q.answer) for _, q in cases}
    hits, background = torch.zeros(n_layers), torch.zeros(n_layers)
    for (scene, question), cell in zip(cases, cells, strict=True):
        batch = encode_questions(processor, [question])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        lens = image_logit_lens(surgeon, {**inputs, "pixel_values": pixels([scene])}, top_k=5)  # [layers, patches, 5]
        named = lens == shape_ids[question.answer]
        hits += named[:, cell].any(dim=-1).any(dim=-1).float()
        empty = [p for p in range(PATCH_GRID**2) if all(p not in object_patches(t) for t in scene.things)]
        background += named[:, empty].any(dim=-1).float().mean(dim=-1)  # one empty cell's chance
    by_layer = (hits / len(cases)).tolist()
    best = int(torch.tensor(by_layer).argmax())
    object_drop, random_drop = drop(clean, object_cut), drop(clean, random_cut)
    return {
        "cases": len(cases),
        "identification_accuracy": round(sum(clean) / len(clean), 4),
        "object_ablation_drop": object_drop,
        "random_ablation_drop": random_drop,
        "object_over_random": round(object_drop / random_drop, 2) if random_drop else float("inf"),
        "logit_lens_object_top5_rate": round(max(by_layer), 4),
        "logit_lens_best_layer": best,
        "logit_lens_background_top5_rate": round(float(background[best] / len(cases)), 4),
        "logit_lens_object_top5_by_layer": [round(x, 4) for x in by_layer],
        "knockout_early_layers": early,
        "knockout_mid_late_layers": late,
        "knockout_early_drop": drop(clean, knock_early),
        "knockout_mid_late_drop": drop(clean, knock_late),
    }
