"""Circuits as graphs: the toy model's residual-stream graph adds up to the model, edge patching
moves between the clean and the corrupted run, and EAP-IG finds the induction head's
K-composition edge where plain EAP does not."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys

import grpc
import pytest
import torch
import yaml

from editors import InvalidEditError
from editors.edges import (
    Edge,
    ResidualGraph,
    acdc,
    compare_hypotheses,
    discover_edges,
    edge_attribution,
    edge_faithfulness,
)
from editors.locate import Pairs, PromptPair
from editors.toyworld.locate_pairs import INDUCTION_METRIC, induction_pairs
from service.api.scalpel.v1 import scalpel_pb2 as pb
from tests.conftest import tiny_model
from tests.test_service import served_inline  # noqa: F401  (the gRPC server fixture)


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


def test_a_circuit_of_edges_is_found_over_grpc_with_intervals(served_inline, toy, tmp_path) -> None:  # noqa: F811
    server, admin, _, address = served_inline
    _, tokenizer, world = toy
    pairs = _previous_token_pairs(world, 32)
    request = pb.DiscoverCircuitRequest(
        parent="models/toy",
        pairs=[pb.LocatePair(clean=p.clean, corrupted=p.corrupted) for p in pairs],
        metric=INDUCTION_METRIC.kind,
        score_from=INDUCTION_METRIC.score_from,
        kinds=["edges"],
    )
    circuit = list(admin.edits.DiscoverCircuit(request))[-1].circuit
    local = discover_edges(toy[0], tokenizer, pairs, INDUCTION_METRIC)
    assert list(circuit.nodes) == [edge.name for edge in local.edges] and "L0.MLP->L1.H3.k" in circuit.nodes
    assert circuit.faithfulness == pytest.approx(local.faithfulness.value) and circuit.faithfulness >= 0.85
    assert circuit.faithfulness_low <= circuit.faithfulness <= circuit.faithfulness_high
    assert circuit.completeness_low <= circuit.completeness <= circuit.completeness_high
    assert len(circuit.ranked) == 479
    edits_before = server.registry.list_edits("toy").items
    for field, value in (("propose", "ablation"), ("on_version", 0), ("kinds", ["edges", "heads"])):
        bad = pb.DiscoverCircuitRequest()
        bad.CopyFrom(request)
        if field == "kinds":
            del bad.kinds[:]
            bad.kinds.extend(value)
        else:
            setattr(bad, field, value)
        with pytest.raises(grpc.RpcError) as caught:
            list(admin.edits.DiscoverCircuit(bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in caught.value.details()
    assert server.registry.list_edits("toy").items == edits_before
    # the CLI lists it, with the intervals
    _, secret = server.registry.create_key("edges", "editor", "test")
    yaml_pairs = tmp_path / "pairs.yaml"
    yaml_pairs.write_text(yaml.safe_dump([{"clean": p.clean, "corrupted": p.corrupted} for p in pairs]))
    command = [sys.executable, "-m", "service.cli", "locate", "-f", str(yaml_pairs), "--kinds", "edges",
               "--metric", INDUCTION_METRIC.kind, "--score-from", str(INDUCTION_METRIC.score_from),
               "--graph", str(tmp_path / "edges.png")]  # fmt: skip
    env = {**os.environ, "SCALPEL_ADDRESS": address, "SCALPEL_API_KEY": secret}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"circuit: {len(circuit.nodes)} edges: " in done.stdout and "held out: faithfulness" in done.stdout
    picture = (tmp_path / "edges.png").read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 10_000


def test_two_hypotheses_of_the_k_composition_are_told_apart_on_held_out_pairs(toy) -> None:
    """Does the previous token reach the induction head's keys through L0's MLP, or straight
    from the previous-token head? The circuit with the MLP path keeps the behaviour; the same
    circuit with that edge swapped for the direct one does not, and the paired interval says so."""
    model, tokenizer, world = toy
    pairs = _previous_token_pairs(world, 64)
    found = discover_edges(model, tokenizer, pairs, INDUCTION_METRIC)
    held = [pair for i, pair in enumerate(pairs) if i % 4 == 3]  # the pairs discovery did not see
    via_mlp = list(found.edges)
    direct = [e for e in via_mlp if e.name != "L0.MLP->L1.H3.k"] + [Edge("L0.H1", "L1.H3.k")]
    result = compare_hypotheses(model, tokenizer, held, INDUCTION_METRIC, via_mlp, direct)
    assert result.a.value == pytest.approx(found.faithfulness.value)
    assert result.a.value > 0.9 > 0.2 > result.b.value  # 0.95 against 0.05 here
    assert result.difference.low > 0.5 and result.difference.n == len(held)
    same = compare_hypotheses(model, tokenizer, held, INDUCTION_METRIC, via_mlp, via_mlp)
    assert same.difference.value == 0.0 and same.difference.low == same.difference.high == 0.0
