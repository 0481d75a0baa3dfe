"""Locate before you cut: attribution, circuit discovery and the proposed edit on the toy model."""

from __future__ import annotations

import json

import pytest
import torch

from editors import HeadAblation, InvalidEditError, Surgeon, weights_sha256
from editors.circuits import DiscoveryRequest, discover_circuit, planned_passes, propose_edit
from editors.locate import Component, MetricSpec, PromptPair, attribute, patching_effects, spearman
from editors.locate_plots import plot_circuit, plot_head_attribution
from editors.patching import causal_trace, recommend_edit_layer
from editors.toyworld.evaluate import fact_recall, induction_accuracy
from editors.toyworld.locate_pairs import CAPITALS_METRIC, INDUCTION_METRIC, capital_pairs, induction_pairs
from tests.conftest import FAMILIES, tiny_model, word_tokenizer
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)


@pytest.fixture(scope="module")
def induction_circuit(toy, toy_surgeon):
    _, tokenizer, world = toy
    request = DiscoveryRequest(tuple(induction_pairs(world, 64, seed=3)), INDUCTION_METRIC, kinds=("heads",))
    seen: list[str] = []
    circuit = discover_circuit(toy_surgeon, tokenizer, request, progress=lambda stage, *_: seen.append(stage))
    assert {"attribution", "means", "grow", "prune", "held-out"} <= set(seen)
    return circuit


@pytest.mark.parametrize("steps", [1, 4])
def test_attribution_ranks_the_induction_heads_first(toy, toy_surgeon, induction_heads, steps) -> None:
    _, tokenizer, world = toy
    attribution = attribute(toy_surgeon, tokenizer, induction_pairs(world, 32), INDUCTION_METRIC, steps=steps)
    assert len(attribution.components) == 4 * 4 + 4 + 4 * 512  # heads, MLPs, neurons
    top = [(c.layer, c.index) for c, _ in attribution.ranked(["heads"], top=len(induction_heads))]
    recall = len(set(top) & set(induction_heads)) / len(induction_heads)
    assert recall >= 0.9, (top, induction_heads)
    assert attribution.clean_metric > attribution.corrupted_metric + 2  # the pairs show the behaviour
    # two batches of 16, each: the corrupted forward, then a forward and backward per step (the
    # first of them the clean run itself when there is one step, else a clean forward of its own)
    assert attribution.passes == 2 * (1 + 2 * steps + (steps > 1))


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_on_induction_tracks_brute_force_patching_when_denoising(
    toy, toy_surgeon, induction_heads, direction
) -> None:
    """Denoising linearises at the corrupted run, where the induction head's attention is not yet
    saturated, and tracks patching; noising linearises at the clean run, where it is (its
    Spearman is in BENCHMARKS.md). Both rank the induction head first. Tracking is measured as the
    correlation of the estimates with the patched effects: on the toy model one head carries the
    denoised effect and the other 15 are near zero, so a rank correlation would rank noise."""
    _, tokenizer, world = toy
    pairs = induction_pairs(world, 32, seed=3)
    attribution = attribute(toy_surgeon, tokenizer, pairs, INDUCTION_METRIC, kinds=("heads",), direction=direction)
    actual, _ = patching_effects(
        toy_surgeon, tokenizer, pairs, attribution.components, INDUCTION_METRIC, direction=direction
    )
    if direction == "denoising":
        assert torch.corrcoef(torch.stack([attribution.estimates, actual]))[0, 1] >= 0.9
    (top, estimate), *_ = attribution.ranked()
    assert (top.layer, top.index) == induction_heads[0] and attribution.importance(estimate) > 0


def test_attribution_on_capitals_tracks_brute_force_patching_and_finds_the_traced_layer(toy, toy_surgeon) -> None:
    _, tokenizer, world = toy
    pairs = capital_pairs(world, tokenizer)
    attribution = attribute(toy_surgeon, tokenizer, pairs, CAPITALS_METRIC, kinds=("heads", "mlps"))
    heads = [c for c in attribution.components if c.kind == "head"]
    actual, forwards = patching_effects(toy_surgeon, tokenizer, pairs, heads, CAPITALS_METRIC)
    assert forwards == 2 + len(heads)
    estimated = torch.tensor(
        [e for c, e in zip(attribution.components, attribution.estimates, strict=True) if c.kind == "head"]
    )
    assert spearman(estimated, actual) >= 0.8
    fact = world.facts_for("capital")[0]
    traced = recommend_edit_layer(
        causal_trace(toy_surgeon, tokenizer, fact.canonical_prompt, fact.subject, show_progress=False)
    )
    (top_mlp, _), *_ = attribution.ranked(["mlps"])
    assert top_mlp.layer == traced


def test_spearman_counts_ties_and_order() -> None:
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.866, abs=1e-3)


def test_the_induction_circuit_is_faithful_held_out_and_its_cut_kills_induction_only(
    toy, toy_surgeon, induction_circuit, induction_heads
) -> None:
    model, tokenizer, world = toy
    circuit = induction_circuit
    names = [c.name for c in circuit.nodes]
    assert all(f"L{layer}.H{head}" in names for layer, head in induction_heads)
    assert circuit.faithfulness >= 0.9 and circuit.completeness >= 0.9, circuit.scores()
    assert circuit.metric_full > circuit.metric_empty
    assert 0 < circuit.passes <= planned_passes(circuit.request, 16)
    before = weights_sha256(model)
    base_induction, base_facts = induction_accuracy(model, tokenizer, world), fact_recall(model, tokenizer, world.facts)
    edits = propose_edit(toy_surgeon, tokenizer, circuit, "ablation")
    assert all(isinstance(e, HeadAblation) and e.mode == "mean" for e in edits)
    provenance = json.loads(json.dumps(edits[0].params()["provenance"]))
    assert provenance["method"] == "locate" and provenance["scores"]["circuit"] == names
    assert provenance["discovery"]["metric"] == {"kind": "tokens_logprob", "score_from": 12}
    assert set(provenance["cut"]["nodes"]) <= set(names) and provenance["cut"]["removed_share"] >= 0.9
    with toy_surgeon.apply(edits):
        assert base_induction - induction_accuracy(model, tokenizer, world) >= 0.5
        assert fact_recall(model, tokenizer, world.facts) >= 0.9 * base_facts  # the cut is targeted
    (directional,) = propose_edit(toy_surgeon, tokenizer, circuit, "directional")
    assert (
        directional.kind == "directional_ablation" and directional.params()["provenance"]["proposal"] == "directional"
    )
    assert weights_sha256(model) == before


def test_pictures_are_pngs(toy, induction_circuit, tmp_path) -> None:
    ranked = induction_circuit.attribution.ranked()
    heatmap = plot_head_attribution(dict(ranked), tmp_path / "heads.png")
    importance = {c: induction_circuit.attribution.importance(e) for c, e in ranked}
    graph = plot_circuit(induction_circuit.nodes, importance, 4, tmp_path / "circuit.png")
    for path in (heatmap, graph):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_component_names_round_trip() -> None:
    for name in ("L1.H0", "L12.MLP", "L2.N37"):
        assert Component.parse(name).name == name
    for bad in ("H0", "L1", "L1.X3", "Lx.H0", "L1.H"):
        with pytest.raises(ValueError, match="not a component name"):
            Component.parse(bad)


def test_an_ablation_without_provenance_keeps_its_spec_and_id() -> None:
    plain = HeadAblation(layer=1, heads=(0,))
    assert "provenance" not in plain.params()
    found = HeadAblation(layer=1, heads=(0,), provenance={"method": "locate"})
    assert found.params()["provenance"] == {"method": "locate"} and found.id != plain.id


@pytest.mark.parametrize(
    ("pairs", "metric", "field"),
    [
        ([], INDUCTION_METRIC, "pairs"),
        ([PromptPair("The capital of Riia is", "The capital of Riia is a")], CAPITALS_METRIC, "pairs[0].corrupted"),
        ([PromptPair("The capital of Riia is", "The capital of Riia is", "", "x")], CAPITALS_METRIC, "pairs[0].answer"),
        ([PromptPair("a b", "a c")], MetricSpec("perplexity"), "metric.kind"),
        ([PromptPair("  ", "a")], INDUCTION_METRIC, "pairs[0]"),
    ],
)
def test_bad_pairs_are_refused_naming_the_field(toy, toy_surgeon, pairs, metric, field) -> None:
    with pytest.raises(InvalidEditError) as caught:
        attribute(toy_surgeon, toy[1], pairs, metric)
    assert caught.value.field == field


def test_pairs_that_show_no_behaviour_are_refused(toy, toy_surgeon) -> None:
    _, tokenizer, world = toy
    same = [PromptPair(p.clean, p.clean) for p in induction_pairs(world, 8)]
    with pytest.raises(InvalidEditError, match="no behaviour"):
        discover_circuit(toy_surgeon, tokenizer, DiscoveryRequest(tuple(same), INDUCTION_METRIC, steps=1))
    with pytest.raises(InvalidEditError) as caught:
        DiscoveryRequest(tuple(same), INDUCTION_METRIC, target=1.5).validated()
    assert caught.value.field == "target"


def test_discover_circuit_over_the_api_streams_proposes_and_stays_in_budget(
    served,  # noqa: F811
    toy,
    induction_heads,
    tmp_path,
    monkeypatch,
    capsys,
) -> None:
    import grpc

    from service.api.scalpel.v1 import scalpel_pb2 as pb
    from service.cli.main import main
    from tests.test_registry import snapshot

    server, admin, reader, address = served
    _, _, world = toy
    pairs = [pb.LocatePair(clean=p.clean, corrupted=p.corrupted) for p in induction_pairs(world, 48, seed=5)]
    request = pb.DiscoverCircuitRequest(
        parent="models/toy",
        pairs=pairs,
        metric="tokens_logprob",
        score_from=INDUCTION_METRIC.score_from,
        kinds=["heads"],
        propose="ablation",
        description="cut induction",
    )
    with pytest.raises(grpc.RpcError) as denied:
        list(reader.edits.DiscoverCircuit(request))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    updates = list(admin.edits.DiscoverCircuit(request))
    assert [u.stage for u in updates][-1] == "done" and {"attribution", "grow", "prune", "held-out", "propose"} <= {
        u.stage for u in updates
    }
    circuit = updates[-1].circuit
    strongest = "L{}.H{}".format(*induction_heads[0])
    assert strongest in circuit.nodes and circuit.faithfulness >= 0.9 and len(circuit.ranked) == 16
    (proposed,) = circuit.proposed
    assert proposed.kind == "head_ablation" and proposed.author == "admin" and proposed.description == "cut induction"
    spec = json.loads(admin.edits.GetEdit(pb.GetEditRequest(name=proposed.name)).spec_json)
    assert spec["params"]["provenance"]["scores"]["circuit"] == list(circuit.nodes)

    before = snapshot(server.registry)
    monkeypatch.setattr(server.servicers, "locate_max_passes", 10)
    for bad, code, needle in (
        (request, grpc.StatusCode.RESOURCE_EXHAUSTED, "locate_max_passes"),
        (
            pb.DiscoverCircuitRequest(parent="models/toy", pairs=pairs, metric="bleu"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "metric",
        ),
        (
            pb.DiscoverCircuitRequest(parent="models/toy", pairs=[pb.LocatePair(clean="a b c", corrupted="a b")] * 4),
            grpc.StatusCode.INVALID_ARGUMENT,
            "pairs[0].corrupted",
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            list(admin.edits.DiscoverCircuit(bad))
        assert refused.value.code() == code and needle in refused.value.details(), refused.value.details()
    assert snapshot(server.registry) == before  # refused: nothing created
    monkeypatch.undo()

    monkeypatch.setenv("SCALPEL_ADDRESS", address)
    monkeypatch.setenv("SCALPEL_API_KEY", server.registry.create_key("ed", "editor", "test")[1])
    assert main(["toyworld", "pairs", "induction", "--n", "24"]) == 0
    (tmp_path / "pairs.yaml").write_text(capsys.readouterr().out)
    argv = ["locate", "-f", str(tmp_path / "pairs.yaml"), "--metric", "tokens_logprob", "--score-from", "12"]
    argv += ["--kinds", "heads", "--png", str(tmp_path / "heads.png"), "--graph", str(tmp_path / "circuit.png")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "circuit: " in printed and "L1.H0" in printed and "faithfulness" in printed
    assert (tmp_path / "heads.png").stat().st_size > 5000 and (tmp_path / "circuit.png").stat().st_size > 5000
    (tmp_path / "bad.yaml").write_text("- {clean: a}\n")
    assert main(["locate", "-f", str(tmp_path / "bad.yaml")]) == 2
    assert "must be a YAML list of {clean, corrupted" in capsys.readouterr().err


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_tracks_patching_on_every_architecture(family) -> None:
    """On small random GPT-2, GPT-NeoX (both residual layouts) and Llama models, where nothing
    saturates, the linear estimates match brute-force patching of every head and MLP."""
    model, tokenizer = tiny_model(family), word_tokenizer()
    surgeon = Surgeon(model)
    pairs = [
        PromptPair(f"w{a} w{b} w{c} w{d} w{e}", f"w{a} w{b + 20} w{c} w{d + 20} w{e}", answer="w7")
        for a, b, c, d, e in [(1, 2, 3, 4, 5), (6, 7, 8, 9, 10), (11, 12, 13, 14, 15), (16, 17, 18, 19, 3)]
    ]
    metric = MetricSpec("answer_logprob")
    attribution = attribute(surgeon, tokenizer, pairs, metric, kinds=("heads", "mlps"))
    actual, _ = patching_effects(surgeon, tokenizer, pairs, attribution.components, metric)
    assert len(attribution.components) == 3 * 4 + 3
    assert spearman(attribution.estimates, actual) >= 0.9
    assert (attribution.estimates - actual).norm() <= 0.3 * actual.norm()
