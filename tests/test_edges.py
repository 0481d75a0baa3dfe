"""Circuits as graphs: the toy model's residual-stream graph adds up to the model, edge patching
moves between the clean and the corrupted run, and EAP-IG finds the induction head's
K-composition edge where plain EAP does not."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from editors import InvalidEditError
from editors.edges import ResidualGraph, acdc, edge_attribution, edge_faithfulness
from editors.locate import Pairs, PromptPair
from editors.toyworld.locate_pairs import INDUCTION_METRIC, induction_pairs
from tests.conftest import tiny_model


def _previous_token_pairs(world, n: int) -> list[PromptPair]:
    """A sequence repeated, against another sequence then the same second half: the corrupted
    run keeps the query tokens and breaks what the first half's keys carry (the previous token)."""
    rng = random.Random(3)
    pairs = []
    for _ in range(n):
        sequence, other = rng.sample(world.symbols, 10), rng.sample(world.symbols, 10)
        pairs.append(PromptPair(" ".join(sequence + sequence), " ".join(other + sequence)))
    return pairs


def test_the_graph_adds_up_to_the_model_and_edge_patching_moves_between_the_runs(toy) -> None:
    model, tokenizer, world = toy
    data = Pairs(tokenizer, induction_pairs(world, 8, seed=3), INDUCTION_METRIC, torch.device("cpu"))
    real = data.mask.bool()
    double = copy.deepcopy(model).double()
    graph = ResidualGraph(double)
    assert len(graph.edges) == 479 and len(graph.writers) == 21 and len(graph.readers) == 53
    with torch.inference_mode():
        plain = double(input_ids=data.clean, attention_mask=data.mask).logits
        rebuilt, clean_out, _ = graph.run(data.clean)
        corrupted_logits, corrupted_out, _ = graph.run(data.corrupted)
        everything_in = graph.run(data.clean, corrupted_out, graph.absent(graph.edges))[0]
        nothing_in = graph.run(data.clean, corrupted_out, graph.absent([]))[0]
    assert float((plain - rebuilt).abs()[real].max()) < 1e-9  # float32 differs by its rounding: 2.7e-5 here
    assert float((everything_in - plain).abs()[real].max()) < 1e-9
    assert float((nothing_in - corrupted_logits).abs()[real].max()) < 1e-9  # every reader sees the corrupted run
    assert float((clean_out - corrupted_out).abs().max()) > 0.1
    with pytest.raises(InvalidEditError, match="GPT-2"):
        ResidualGraph(tiny_model("llama"))


def test_eap_ig_finds_the_k_composition_edge_and_a_faithful_circuit_where_eap_does_not(toy) -> None:
    model, tokenizer, world = toy
    pairs = _previous_token_pairs(world, 48)
    eap = edge_attribution(model, tokenizer, pairs, INDUCTION_METRIC)
    eap_ig = edge_attribution(model, tokenizer, pairs, INDUCTION_METRIC, steps=4)
    assert eap.clean_metric > eap.corrupted_metric + 3 and eap.passes == 4 and eap_ig.passes == 10
    # on this toy the previous-token information reaches the induction head's keys through L0's MLP
    top = [edge.name for edge, _ in eap_ig.ranked(5)]
    assert "L0.MLP->L1.H3.k" in top, top
    assert any(name.startswith("embed->L0.H") and name.endswith(".v") for name in top)  # the previous token, read
    ig_circuit = [edge for edge, _ in eap_ig.ranked(40)]
    eap_circuit = [edge for edge, _ in eap.ranked(40)]
    ig_faithful = edge_faithfulness(model, tokenizer, pairs, ig_circuit, INDUCTION_METRIC)
    eap_faithful = edge_faithfulness(model, tokenizer, pairs, eap_circuit, INDUCTION_METRIC)
    assert ig_faithful >= 0.9 and eap_faithful < 0.5  # 40 of 479 edges: 0.97 against 0.04 here


def test_acdc_keeps_the_edges_the_behaviour_needs_and_only_those(toy) -> None:
    """ACDC, the exact reference (a forward per edge, so a few pairs): the edges it keeps hold the
    behaviour and include the K-composition edge; a threshold of nothing leaves out only edges
    whose removal changes nothing."""
    model, tokenizer, world = toy
    pairs = _previous_token_pairs(world, 6)
    graph = ResidualGraph(model)
    kept, passes = acdc(model, tokenizer, pairs, INDUCTION_METRIC, threshold=0.02)
    assert passes == len(graph.edges) + 3 and 10 < len(kept) < 60 and set(kept) <= set(graph.edges)
    assert "L0.MLP->L1.H3.k" in {edge.name for edge in kept}
    assert edge_faithfulness(model, tokenizer, pairs, kept, INDUCTION_METRIC) > 0.8  # 0.88 here, 32 edges
    everything, _ = acdc(model, tokenizer, pairs, INDUCTION_METRIC, threshold=1e-9)
    assert edge_faithfulness(model, tokenizer, pairs, everything, INDUCTION_METRIC) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InvalidEditError, match="threshold"):
        acdc(model, tokenizer, pairs, INDUCTION_METRIC, threshold=1.5)
