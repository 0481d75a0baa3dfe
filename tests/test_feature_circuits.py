"""Feature circuits: attribution over an SAE's features and its error term, a circuit of features
verified on held-out pairs, and the feature edit that cuts it, in the kit and over gRPC."""

from __future__ import annotations

import dataclasses
import json

import grpc
import pytest
import torch

from editors import InvalidEditError, load_sae
from editors.circuits import DiscoveryRequest, discover_circuit, propose_edit
from editors.edits import Op
from editors.locate import Pairs, attribute, spearman
from editors.toyworld import TOY_SAE_DIR
from editors.toyworld.locate_pairs import task_pairs
from service.api.scalpel.v1 import scalpel_pb2 as pb
from tests.test_sae import random_sae
from tests.test_service import run_checks, served_inline  # noqa: F401  (the gRPC server fixture)


@pytest.fixture(scope="module")
def toy_sae():
    return load_sae(TOY_SAE_DIR)


def _patched_feature_effect(surgeon, data: Pairs, sae, feature: int, clean: torch.Tensor) -> float:
    """The metric's mean change when one feature's clean activation is patched into the corrupted
    run (the SAE spliced in with its error term): the ground truth of that feature's estimate."""

    def patch(x: torch.Tensor, _: object) -> torch.Tensor:
        acts = sae.encode(x)
        error = x - sae.decode(acts)
        acts[..., feature] = clean[..., feature]
        return sae.decode(acts) + error

    with torch.inference_mode():
        base = data.score(surgeon.model(input_ids=data.corrupted, attention_mask=data.mask).logits)
        with surgeon.apply(surgeon.compile([], [(sae.site, Op(patch))])):
            patched = data.score(surgeon.model(input_ids=data.corrupted, attention_mask=data.mask).logits)
    return float((patched - base).mean())


def test_feature_attribution_tracks_patching_each_feature(toy, toy_surgeon, toy_sae) -> None:
    _, tokenizer, world = toy
    pairs, metric = task_pairs("sentiment", world, tokenizer, n=24)
    attribution = attribute(toy_surgeon, tokenizer, pairs, metric, kinds=("features",), sae=toy_sae)
    assert len(attribution.components) == toy_sae.d_sae + 1 and attribution.components[-1].name == "L1.SAE_ERR"
    data = Pairs(tokenizer, pairs, metric, torch.device("cpu"))
    point = f"{toy_sae.site}.sae.acts"
    with torch.inference_mode(), toy_surgeon.trace([point], saes=[toy_sae]) as cache:
        toy[0](input_ids=data.clean, attention_mask=data.mask)
    top = [(c, e) for c, e in attribution.ranked(absolute=True) if c.kind == "feature"][:10]
    estimates = torch.tensor([e for _, e in top])
    effects = torch.tensor([_patched_feature_effect(toy_surgeon, data, toy_sae, c.index, cache[point]) for c, _ in top])
    assert bool(((estimates > 0) == (effects > 0)).all()) and spearman(estimates, effects) > 0.8
    assert estimates.abs().min() > 0.05  # the strongest features matter, for the behaviour and against it
    with pytest.raises(InvalidEditError, match="sae"):
        attribute(toy_surgeon, tokenizer, pairs, metric, kinds=("features",))
    with pytest.raises(InvalidEditError, match="sae"):
        attribute(toy_surgeon, tokenizer, pairs, metric, kinds=("features",), sae=random_sae("relu", d_in=64))


def test_a_feature_circuit_holds_on_held_out_pairs_and_its_feature_cut_removes_the_behaviour(
    toy, toy_surgeon, toy_sae
) -> None:
    _, tokenizer, world = toy
    pairs, metric = task_pairs("sentiment", world, tokenizer, n=48)
    request = DiscoveryRequest(tuple(pairs), metric, kinds=("features",), sae=toy_sae)
    circuit = discover_circuit(toy_surgeon, tokenizer, request)
    kinds = {n.kind for n in circuit.nodes}
    assert kinds <= {"feature", "sae_error"} and 1 < len(circuit.nodes) < 100
    assert circuit.faithfulness >= 0.85 and circuit.completeness >= 0.7  # held out
    _, held = request.split()
    held_data = Pairs(tokenizer, held, metric, torch.device("cpu"))
    with torch.inference_mode():
        plain = held_data.score(toy[0](input_ids=held_data.clean, attention_mask=held_data.mask).logits)
    assert circuit.metric_full == pytest.approx(float(plain.mean()), abs=1e-4)  # nothing ablated: the model

    (edit,) = propose_edit(toy_surgeon, tokenizer, circuit, "feature_ablation")
    assert edit.kind == "feature_ablation" and set(edit.features) <= set(circuit.features)
    provenance = edit.provenance
    assert provenance["discovery"]["sae"] == {"sha256": toy_sae.sha256, "site": toy_sae.site}
    with torch.inference_mode(), toy_surgeon.apply([edit]):
        cut = held_data.score(toy[0](input_ids=held_data.clean, attention_mask=held_data.mask).logits)
    removed = (float(plain.mean()) - float(cut.mean())) / (circuit.metric_full - circuit.metric_empty)
    assert removed > 0.2 and provenance["cut"]["removed_share"] > 0.2  # on held-out and discovery pairs

    with pytest.raises(InvalidEditError, match="sae"):
        DiscoveryRequest(tuple(pairs), metric, kinds=("heads", "features")).validated()
    heads_only = discover_circuit(toy_surgeon, tokenizer, DiscoveryRequest(tuple(pairs), metric, kinds=("heads",)))
    with pytest.raises(InvalidEditError, match="feature_ablation"):
        propose_edit(toy_surgeon, tokenizer, heads_only, "feature_ablation")


def test_a_feature_circuit_is_found_and_cut_over_grpc(served_inline, toy, toy_sae) -> None:  # noqa: F811
    server, admin, _, _ = served_inline
    _, tokenizer, world = toy
    admin.create_sae("toy", "resid1", TOY_SAE_DIR)
    pairs, metric = task_pairs("sentiment", world, tokenizer, n=32)
    request = pb.DiscoverCircuitRequest(
        parent="models/toy",
        pairs=[pb.LocatePair(clean=p.clean, corrupted=p.corrupted, answer=p.answer, wrong=p.wrong) for p in pairs],
        metric=metric.kind,
        kinds=["features"],
        sae="models/toy/saes/resid1",
        propose="feature_ablation",
        description="the features that carry a sentence's sentiment to the next",
    )
    final = list(admin.edits.DiscoverCircuit(request))[-1]
    circuit = final.circuit
    assert circuit.nodes and all(".F" in n or n.endswith(".SAE_ERR") for n in circuit.nodes)
    assert circuit.faithfulness > 0.8
    (proposed,) = circuit.proposed
    assert proposed.kind == "feature_ablation"
    version = admin.create_version("toy", 0, [proposed.id])
    prompt = pairs[0].clean
    served = admin.inference.Score(
        pb.ScoreRequest(
            model="models/toy",
            selector=pb.VersionSelector(version=version.number),
            prompt=prompt,
            continuations=[" " + pairs[0].answer, " " + pairs[0].wrong],
        )
    ).logprobs
    base = admin.inference.Score(
        pb.ScoreRequest(model="models/toy", prompt=prompt, continuations=[" " + pairs[0].answer, " " + pairs[0].wrong])
    ).logprobs
    assert served[0] - served[1] < base[0] - base[1]  # the cut weakens the carried sentiment

    # the gate's edit_intent holds the cut to its claim on the discovery's held-out pairs: the
    # real cut meets it; the same claim on a feature that never fires there does not
    run = run_checks(admin, version.number)
    (intent,) = [r for r in run.results if r.name == "edit_intent"]
    assert not intent.not_applicable and intent.passed, intent.reason
    real = json.loads(proposed.spec_json)["params"]["provenance"]
    idle = int(toy_sae.W_enc.norm(dim=0).argmin())  # not a feature of the cut
    claimed = dataclasses.replace(toy_sae.ablation([idle]), provenance=real)
    forged = admin.create_version("toy", 0, [admin.create_edit("toy", claimed).id])
    run = run_checks(admin, forged.number)
    (intent,) = [r for r in run.results if r.name == "edit_intent"]
    assert not intent.passed and json.loads(intent.worst_json)[0]["case"] == "located"

    edits_before = server.registry.list_edits("toy").items
    for bad, code in (
        (pb.DiscoverCircuitRequest(parent="models/toy", pairs=request.pairs, kinds=["features"]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.DiscoverCircuitRequest(parent="models/toy", pairs=request.pairs, kinds=["features"],
                                   sae="models/toy/saes/nope"), grpc.StatusCode.NOT_FOUND),
        (pb.DiscoverCircuitRequest(parent="models/toy", pairs=request.pairs, kinds=["heads"],
                                   sae="models/other/saes/resid1"), grpc.StatusCode.INVALID_ARGUMENT),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:
            list(admin.edits.DiscoverCircuit(bad))
        assert caught.value.code() == code, caught.value.details()
    assert server.registry.list_edits("toy").items == edits_before
