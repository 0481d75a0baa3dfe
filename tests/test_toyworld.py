"""The committed toy-world model: integrity, loadability, determinism and quality floors."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editors import weights_sha256
from editors.toyworld import TOY_MODEL_DIR, World, generate_world, load_toy_model, reference_corpus
from editors.toyworld.manifest import verify_manifest
from editors.toyworld.train import TrainConfig, train_toy_model
from editors.toyworld.world import ALL_RELATIONS, TEMPLATES


def test_committed_files_match_their_manifest() -> None:
    assert verify_manifest(TOY_MODEL_DIR) == []


def test_manifest_detects_a_changed_file(tmp_path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(TOY_MODEL_DIR, copy)
    (copy / "world.json").write_text((copy / "world.json").read_text().replace("capital", "kapital", 1))
    problems = verify_manifest(copy)
    assert len(problems) == 1 and problems[0].startswith("world.json: sha256")


def test_model_loads_with_the_auto_classes_and_tokenizes_one_token_per_entity(toy) -> None:
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    world = toy[2]
    assert model.config.model_type == "gpt2" and model.config.n_layer == 4
    fact = world.facts[0]
    ids = tokenizer(f"{fact.canonical_prompt} {fact.object}")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert len(ids) == 1 + len(fact.canonical_prompt.split()) + 1


def test_committed_world_is_the_generator_output() -> None:
    committed = World.load(TOY_MODEL_DIR / "world.json")
    assert committed.to_json() == TrainConfig().world().to_json()
    assert len(committed.subjects) == 60 and len(committed.people) == 30
    for fact in committed.facts:
        assert fact.trained_templates[0] == TEMPLATES[fact.relation][0]
        assert fact.heldout_templates and not set(fact.heldout_templates) & set(fact.trained_templates)


def test_held_out_phrasings_never_appear_in_the_corpus_for_their_subject(toy) -> None:
    world = toy[2]
    corpus = "\n".join(reference_corpus())
    for fact in world.facts:
        for prompt in fact.prompts(fact.heldout_templates):
            assert f"{prompt} {fact.object}" not in corpus
    # the same check is not vacuous: trained phrasings do occur
    assert sum(f"{f.canonical_prompt} {f.object}" in corpus for f in world.facts) > 100


def test_training_is_deterministic(tmp_path) -> None:
    config = TrainConfig(steps=15, reference_documents=10)
    train_toy_model(tmp_path / "a", config)
    train_toy_model(tmp_path / "b", config)
    hashes = {weights_sha256(AutoModelForCausalLM.from_pretrained(tmp_path / run)) for run in ("a", "b")}
    assert len(hashes) == 1
    assert verify_manifest(tmp_path / "a") == []


def test_the_world_keeps_the_first_names_and_pins_its_subject_embeddings(tmp_path) -> None:
    """Five relations (issue 38) with the first world's facts and symbols, people for
    indirect-object sentences, and subject embeddings that stay fixed random vectors in training."""
    first, world = generate_world(0), TrainConfig().world()
    assert world.facts[: len(first.facts)] == first.facts and world.symbols == first.symbols
    assert {f.relation for f in world.facts} == set(ALL_RELATIONS) and len(world.facts) == 5 * len(world.subjects)
    assert world.record_sentence(world.subjects[0]).count(",") == 4  # every attribute, right after the subject
    assert not set(world.people) & set(world.vocabulary()[:4]) and not set(world.people) & set(world.subjects)
    train_toy_model(tmp_path / "model", dataclasses.replace(TrainConfig(), steps=15, reference_documents=10))
    model, tokenizer, world = load_toy_model(tmp_path / "model")
    rows = model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(world.subjects)]
    assert torch.allclose(rows.norm(dim=1), torch.full((len(world.subjects),), 2.0))  # pinned through 15 steps


def test_an_indirect_object_prompt_names_its_answer_once_and_the_giver_twice() -> None:
    world = TrainConfig().world()
    rng = random.Random(3)
    orders = set()
    for _ in range(40):
        prompt, io, s = world.ioi_prompt(rng)
        words = prompt.split()
        assert words.count(io) == 1 and words.count(s) == 2 and words[-4] in ("gave", "handed") and words[-5] == s
        orders.add(words.index(io) < words.index(s))
    assert orders == {True, False}  # ABBA and BABA


def test_quality_floors_via_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "toyworld", "eval", "--json"], capture_output=True, text=True, check=True
    )
    metrics = json.loads(result.stdout)
    assert metrics["fact_recall"] >= 0.95
    assert metrics["paraphrase_recall"] >= 0.85
    assert metrics["induction_accuracy"] >= 0.90


def test_cli_verify_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "toyworld", "verify"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok"
