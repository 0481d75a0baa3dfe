"""The toy world's quality tasks as ordinary task files shipped next to the model
(``task_NAME.jsonl``: one ``{prompt, starts_with}`` per line), so the check runner needs no
toy-world special case: ``fact_recall`` (each fact's canonical prompt → its object),
``induction`` (a fresh random symbol sequence repeated: the next symbol of the second copy) and,
where the world has people, ``ioi`` (an indirect-object sentence: the person named once)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from editors.toyworld.evaluate import induction_sequences, ioi_prompts
from editors.toyworld.world import World


def task_items(world: World) -> dict[str, list[dict[str, str]]]:
    facts = [{"prompt": f.canonical_prompt, "starts_with": f.object} for f in world.facts]
    rng = random.Random(0)
    induction = []
    for sequence in induction_sequences(world, n=64, length=10):
        for k in rng.sample(range(2, 10), 2):  # the second copy's first symbols cannot be predicted
            induction.append({"prompt": " ".join(sequence + sequence[:k]), "starts_with": sequence[k]})
    tasks = {"fact_recall": facts, "induction": induction}
    if world.people:
        tasks["ioi"] = [{"prompt": prompt, "starts_with": io} for prompt, io, _ in ioi_prompts(world, n=64)]
    return tasks


def write_task_files(world: World, directory: Path) -> None:
    for name, items in task_items(world).items():
        lines = [json.dumps(item, sort_keys=True) for item in items]
        (Path(directory) / f"task_{name}.jsonl").write_text("\n".join(lines) + "\n")
