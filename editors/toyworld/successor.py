"""A successor of the toy model: the committed checkpoint trained on for a few hundred steps on a
world where some facts changed (capitals moved between countries), as a base model is retrained
in production. Deterministic; the tokenizer stays the same, so every edit's site and token still
exist (new countries or renamed languages would need new tokens: a successor with another
vocabulary is refused by :func:`editors.rebase.check_successor`)."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editors.edit_defaults import EDIT_HPARAMS_FILE
from editors.toyworld import CORPUS_FILE, TOY_MODEL_DIR, WORLD_FILE, World
from editors.toyworld.manifest import file_sha256, write_manifest
from editors.toyworld.tasks import write_task_files
from editors.toyworld.train import TrainConfig, _PackedStream, _subject_pinning, train_steps
from editors.validation import check_int

#: In a successor's directory: the weights it was trained from and how (``train_successor``'s arguments).
LINEAGE_FILE = "lineage.json"


def moved_capitals(world: World, n: int, seed: int = 0) -> World:
    """``world`` with ``n`` countries' capitals rotated among them (each moves to the next)."""
    capitals = world.facts_for("capital")
    check_int("moved", n, 2, len(capitals))  # one capital "rotated" onto itself would move nothing
    rng = random.Random(seed)
    chosen = rng.sample(capitals, n)
    moved = {fact.subject: chosen[(i + 1) % n].object for i, fact in enumerate(chosen)}
    facts = [
        dataclasses.replace(f, object=moved[f.subject]) if f.relation == "capital" and f.subject in moved else f
        for f in world.facts
    ]
    return dataclasses.replace(world, facts=facts)


def train_successor(
    out_dir: Path,
    base_dir: Path = TOY_MODEL_DIR,
    moved: int = 6,
    steps: int = 150,
    lr: float = 3e-4,
    seed: int = 0,
) -> World:
    """Continue training ``base_dir``'s model on the world with ``moved`` capitals moved, as the base
    was trained (its subjects' embeddings stay pinned); save the successor (weights, the same
    tokenizer, the base's editor defaults, its world, task files and reference corpus, and ``lineage.json``
    naming the base's weights and this recipe) into ``out_dir``."""
    world = moved_capitals(World.load(Path(base_dir) / WORLD_FILE), moved, seed)  # checked before any work
    torch.manual_seed(seed)
    config = TrainConfig()
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    stream = _PackedStream(world, tokenizer, random.Random(seed + 100))
    train_steps(model, stream, optimizer, config, steps, _subject_pinning(model, tokenizer, world, config))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / WORLD_FILE).write_text(world.to_json() + "\n")
    corpus = world.corpus(config.reference_documents, seed=seed + 1)
    (out_dir / CORPUS_FILE).write_text("\n".join(corpus) + "\n")
    write_task_files(world, out_dir)  # its own facts: six capitals moved
    if (Path(base_dir) / EDIT_HPARAMS_FILE).exists():
        shutil.copyfile(Path(base_dir) / EDIT_HPARAMS_FILE, out_dir / EDIT_HPARAMS_FILE)
    recipe = {"moved": moved, "steps": steps, "lr": lr, "seed": seed}
    lineage = {"base_model_sha256": file_sha256(Path(base_dir) / "model.safetensors"), **recipe}
    (out_dir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=1, sort_keys=True) + "\n")
    write_manifest(out_dir)
    return world
