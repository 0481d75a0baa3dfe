"""Sparse autoencoders in the surgery kit (issue 33): SAELens's and Gemma Scope's formats, the
splice with its error term, feature edits that move only their features, per-row batches,
training with its metrics, and a sentiment feature of the toy model found and clamped."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from editors import (
    FeatureAblation,
    FeatureClamp,
    InvalidEditError,
    SparseAutoencoder,
    artifact_blobs_by_hash,
    edit_from_json,
    load_sae,
)
from editors.batching import encode_batch
from editors.sae_features import FeatureIndex, contrast_features, feature_card
from editors.sae_training import SaeTrainConfig, sae_metrics, train_sae
from editors.toyworld import TOY_SAE_DIR, TOY_SAE_SITE, reference_corpus
from editors.toyworld.evaluate import neutral_prompts, positive_probability, sentiment_pairs
from editors.toyworld.manifest import verify_manifest
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.cli.check_report import find_browser
from service.client import ScalpelClient
from service.registry.unit_of_work import utc_now
from tests.test_checks import rendered_dom
from tests.test_service import served_inline  # noqa: F401  (the gRPC server fixture)

SITE = "blocks.1.hook_resid_post"
PROMPTS = ["The capital of Zapouova is", "the film was"]


def random_sae(architecture: str, d_in: int = 128, d_sae: int = 512, seed: int = 0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder(
        W_enc=torch.randn(d_in, d_sae, generator=g) * 0.1,
        W_dec=torch.randn(d_sae, d_in, generator=g) * 0.1,
        b_enc=torch.randn(d_sae, generator=g) * 0.1,
        b_dec=torch.randn(d_in, generator=g),
        site=SITE,
        architecture=architecture,
        threshold=torch.rand(d_sae, generator=g) * 0.2 if architecture == "jumprelu" else None,
        k=20 if architecture == "topk" else None,
    )


def _reference_encode(sae: SparseAutoencoder, x: np.ndarray) -> np.ndarray:
    """SAELens's inference encode, written out in numpy from its documented definition."""
    h = (x - sae.b_dec.numpy() * sae.apply_b_dec_to_input) @ sae.W_enc.numpy() + sae.b_enc.numpy()
    if sae.architecture == "relu":
        return np.maximum(h, 0)
    if sae.architecture == "jumprelu":
        return np.maximum(h, 0) * (h > sae.threshold.numpy())
    out = np.zeros_like(h)
    top = np.argsort(-h, axis=-1)[..., : sae.k]
    np.put_along_axis(out, top, np.maximum(np.take_along_axis(h, top, axis=-1), 0), axis=-1)
    return out


@pytest.fixture(scope="module")
def toy_sae() -> SparseAutoencoder:
    return load_sae(TOY_SAE_DIR)


def _encoded(tokenizer):
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk"])
def test_saelens_format_round_trips_and_encodes_as_saelens_does(architecture, tmp_path) -> None:
    sae = random_sae(architecture)
    back = load_sae(sae.save(tmp_path / "sae"))
    assert back.sha256 == sae.sha256 and back.site == SITE and back.architecture == architecture
    config = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert config["architecture"] == {"relu": "standard"}.get(architecture, architecture)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1)) * 3
    features = back.encode(x)
    assert np.abs(features.numpy() - _reference_encode(sae, x.numpy())).max() <= 1e-5
    decoded = back.decode(features).numpy()
    assert np.abs(decoded - (features.numpy() @ sae.W_dec.numpy() + sae.b_dec.numpy())).max() <= 1e-5
    if architecture == "topk":
        assert ((features > 0).sum(dim=-1) <= 20).all()


def test_older_saelens_configs_and_gemma_scope_params_load(tmp_path) -> None:
    sae = random_sae("topk")
    weights = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    old = tmp_path / "old"
    old.mkdir()
    save_file(weights, old / "sae_weights.safetensors")
    (old / "cfg.json").write_text(
        json.dumps({"architecture": "topk", "hook_name": SITE, "activation_fn_kwargs": {"k": 20}, "d_in": 128})
    )
    assert load_sae(old).sha256 == sae.sha256  # hook_name at the top, k in activation_fn_kwargs
    jump = random_sae("jumprelu")
    scope = tmp_path / "scope"
    scope.mkdir()
    np.savez(scope / "params.npz", **{n: getattr(jump, n).numpy() for n in ("W_enc", "W_dec", "b_enc", "b_dec")},
             threshold=jump.threshold.numpy())  # fmt: skip
    with pytest.raises(InvalidEditError, match="pass site="):
        load_sae(scope)
    loaded = load_sae(scope, site=SITE)
    assert loaded.architecture == "jumprelu" and not loaded.apply_b_dec_to_input  # Gemma Scope encodes x itself
    x = torch.randn(4, 128)
    pre = x @ jump.W_enc + jump.b_enc
    assert torch.allclose(loaded.encode(x), torch.relu(pre) * (pre > jump.threshold), atol=1e-6)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "cfg.json").write_text("{not json"), "cfg.json does not read as JSON"),
        (lambda d: (d / "sae_weights.safetensors").write_bytes(b"junk"), "sae_weights.safetensors does not load"),
        (lambda d: (d / "cfg.json").write_text(json.dumps({"architecture": "gated", "hook_name": SITE})), "gated"),
        (lambda d: (d / "cfg.json").write_text(json.dumps({"hook_name": SITE, "d_sae": 7})), "d_sae = 7"),
        (lambda d: (d / "cfg.json").write_text(json.dumps({"hook_name": "blocks.1.attn.hook_z"})), "site"),
        (lambda d: (d / "cfg.json").unlink(), "neither cfg.json nor params.npz"),
    ],
)
def test_a_malformed_sae_folder_is_refused_naming_what_is_wrong(tmp_path, damage, message) -> None:
    folder = random_sae("relu").save(tmp_path / "sae")
    damage(folder)
    with pytest.raises(InvalidEditError, match=message):
        load_sae(folder)


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk"])
def test_splicing_an_sae_with_its_error_term_leaves_the_logits(toy, toy_surgeon, architecture) -> None:
    model, tokenizer, _ = toy
    sae = random_sae(architecture)
    encoded = _encoded(tokenizer)
    plain = model(**encoded).logits
    spliced = toy_surgeon.run_with_hooks(**encoded, fwd_hooks=[(sae.site, sae.splice)]).logits
    assert (plain - spliced).abs().max() <= 1e-5
    replaced = toy_surgeon.run_with_hooks(**encoded, fwd_hooks=[(sae.site, lambda x: sae.decode(sae.encode(x)))])
    assert (plain - replaced.logits).abs().max() > 1e-2  # without the error term the random SAE loses a lot


def _spliced_with(sae: SparseAutoencoder, change):
    """The explicit splice: encode, change the features, decode, add the error term."""
    return lambda x: sae.splice(x, change(sae.encode(x)))


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk"])
def test_feature_edits_move_only_their_features(toy, toy_surgeon, architecture) -> None:
    model, tokenizer, _ = toy
    sae = random_sae(architecture)
    encoded = _encoded(tokenizer)
    with toy_surgeon.trace([sae.site]) as cache:
        plain = model(**encoded).logits
    chosen = sorted(sae.encode(cache[sae.site])[0, -1].topk(3).indices.tolist())
    index = torch.tensor(chosen)

    def clamped(f: torch.Tensor) -> torch.Tensor:
        kept = f.clone()
        kept[..., index] = torch.where(f[..., index] > 0, torch.full_like(f[..., index], 4.0), f[..., index])
        return kept

    def at_position_2(f: torch.Tensor) -> torch.Tensor:
        kept = f.clone()
        kept[:, 2, index] = -1.5
        return kept

    def steered(f: torch.Tensor) -> torch.Tensor:
        return f + torch.zeros(sae.d_sae).index_fill(0, index, 2.0)

    cases = [
        (sae.ablation(chosen), lambda f: f.index_fill(-1, index, 0.0)),
        (sae.ablation(chosen, scale=0.5), lambda f: f.clone().index_copy_(-1, index, f[..., index] * 0.5)),
        (sae.clamp(chosen, 4.0), clamped),
        (sae.clamp(chosen, -1.5, positions=[2]), at_position_2),
        (sae.steering(chosen, 2.0), steered),
    ]
    for edit, change in cases:
        toy_surgeon.validate([edit])
        expected = toy_surgeon.run_with_hooks(**encoded, fwd_hooks=[(sae.site, _spliced_with(sae, change))]).logits
        with toy_surgeon.apply([edit]):
            got = model(**encoded).logits
        assert (got - expected).abs().max() <= 1e-4, edit.kind
        assert (got - plain).abs().max() > 1e-3, edit.kind  # it did something
        again = edit_from_json(edit.to_json(), artifact_blobs_by_hash(edit))
        assert again == edit and again.sae["sha256"] == sae.sha256
    relu_slice = random_sae("relu").ablation(chosen)
    assert relu_slice.encoder.shape == (128, 3)  # ReLU: only the features' own encoder columns travel
    assert sae.ablation(chosen).encoder.shape == ((128, 512) if architecture == "topk" else (128, 3))


def test_feature_edits_refuse_what_does_not_fit(toy_surgeon) -> None:
    sae = random_sae("relu")
    with pytest.raises(InvalidEditError, match="features"):
        sae.ablation([512])
    with pytest.raises(InvalidEditError, match="features"):
        sae.clamp([], 1.0)
    with pytest.raises(InvalidEditError, match="features"):
        FeatureAblation(**{**_fields(sae.ablation([3, 9])), "features": (9, 3)})
    with pytest.raises(InvalidEditError, match="decoder"):
        toy_surgeon.validate([random_sae("relu", d_in=64).ablation([1])])  # an SAE for another model
    with pytest.raises(InvalidEditError, match="site"):
        toy_surgeon.validate([SparseAutoencoder(**{**_fields(sae), "site": "blocks.9.hook_resid_post"}).ablation([1])])
    with pytest.raises(InvalidEditError, match="site"):
        SparseAutoencoder(**{**_fields(sae), "site": "blocks.1.attn.hook_z"})
    with pytest.raises(InvalidEditError, match="value"):
        sae.clamp([1], float("nan"))
    with pytest.raises(InvalidEditError, match="sae"):
        FeatureClamp(**{**_fields(sae.clamp([1], 1.0)), "sae": {"architecture": "relu"}})


def _fields(value) -> dict:
    import dataclasses

    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def test_rows_with_different_feature_edits_each_equal_their_solo_run(toy, toy_surgeon) -> None:
    model, tokenizer, _ = toy
    sae = random_sae("jumprelu")
    stacks = [
        toy_surgeon.compile([sae.ablation([1, 2, 3])]),
        toy_surgeon.compile([sae.clamp([5], 3.0, positions=[1])]),
        toy_surgeon.compile([]),
        toy_surgeon.compile([sae.steering([7], -2.0), random_sae("topk", seed=2).ablation([4])]),
    ]
    # ReLU and JumpReLU ablations and clamps wherever features fire share one plain form: their rows
    # fuse into one op over the batch (each row masked to its own features)
    fused = [
        toy_surgeon.compile([sae.ablation([1, 2, 3])]),
        toy_surgeon.compile([random_sae("relu", seed=4).clamp([5, 6], 3.0)]),
        toy_surgeon.compile([]),
        toy_surgeon.compile([random_sae("relu", seed=5).ablation([9], scale=0.5)]),
    ]
    assert len(toy_surgeon.rows(fused).groups[toy_surgeon.site(SITE)]) == 1
    # TopK edits fuse over one SAE (one encoder pass); another TopK SAE's rows run apart
    topk, other = random_sae("topk", seed=6), random_sae("topk", seed=7)
    with toy_surgeon.trace([SITE]) as cache:
        model(**tokenizer([PROMPTS[0]], return_tensors="pt"))
    firing = [sorted(sae.encode(cache[SITE])[0].sum(0).topk(3).indices.tolist()) for sae in (topk, other)]
    one_sae = [
        toy_surgeon.compile([topk.ablation(firing[0][:2])]),
        toy_surgeon.compile([topk.clamp(firing[0][2:], 3.0)]),
        toy_surgeon.compile([]),
        toy_surgeon.compile([topk.ablation(firing[0][1:], scale=0.5)]),
    ]
    assert len(toy_surgeon.rows(one_sae).groups[toy_surgeon.site(SITE)]) == 1
    two_saes = [*one_sae[:3], toy_surgeon.compile([other.ablation(firing[1])])]
    assert len(toy_surgeon.rows(two_saes).groups[toy_surgeon.site(SITE)]) == 3
    for case in (stacks, fused, one_sae, two_saes):
        encoded = tokenizer([PROMPTS[0]] * len(case), return_tensors="pt")
        with toy_surgeon.apply_rows(toy_surgeon.rows(case)):
            batched = model(**encoded).logits
        for row, stack in enumerate(case):
            with toy_surgeon.apply(stack):
                solo = model(**{k: v[row : row + 1] for k, v in encoded.items()}).logits
            assert (batched[row] - solo[0]).abs().max() <= 1e-4, row
            if stack.edits:
                assert (
                    solo[0] - model(**{k: v[row : row + 1] for k, v in encoded.items()}).logits[0]
                ).abs().max() > 1e-4


def test_training_streams_activations_and_is_deterministic(toy, toy_surgeon) -> None:
    _, tokenizer, _ = toy
    texts = reference_corpus()[:400]
    config = SaeTrainConfig(site=SITE, d_sae=256, k=8, tokens=8192, batch_tokens=512, buffer_tokens=2048)
    steps: list[int] = []
    first = train_sae(toy_surgeon, tokenizer, texts, config, progress=lambda step, total, loss: steps.append(step))
    assert steps == list(range(1, 17))
    again = train_sae(toy_surgeon, tokenizer, texts, config)
    assert again.sae.sha256 == first.sae.sha256  # same seed, same SAE
    metrics = first.metrics
    assert metrics["l0"] == 8.0 and 0 <= metrics["dead_fraction"] < 1
    assert 0.3 < metrics["explained_variance"] <= 1 and 0.3 < metrics["ce_loss_recovered"] <= 1.01
    assert first.sae.metadata["training"]["tokens"] == 8192 and first.sae.metadata["metrics"] == metrics


def test_the_toy_sae_is_intact_and_its_recorded_metrics_are_its_own(toy, toy_surgeon, toy_sae) -> None:
    assert verify_manifest(TOY_SAE_DIR) == []
    assert toy_sae.site == TOY_SAE_SITE and toy_sae.architecture == "topk"
    recorded = toy_sae.metadata["metrics"]
    texts = reference_corpus()
    cut = max(1, len(texts) // 10)
    measured = sae_metrics(toy_surgeon, toy[1], toy_sae, texts[-cut:])  # on the texts training held out
    assert measured.keys() == recorded.keys()
    assert all(measured[k] == pytest.approx(recorded[k], rel=1e-3, abs=1e-3) for k in recorded)
    assert recorded["ce_loss_recovered"] >= 0.9 and recorded["explained_variance"] >= 0.9


def test_a_sentiment_feature_is_found_and_its_clamp_moves_sentiment(toy, toy_surgeon, toy_sae) -> None:
    model, tokenizer, world = toy
    ranked = contrast_features(toy_surgeon, tokenizer, toy_sae, sentiment_pairs(world))
    positive, negative = ranked[0], ranked[-1]
    assert positive.difference > 1.0 and positive.negative_mean == 0.0  # fires on positive words only
    assert negative.difference < -1.0 and negative.positive_mean == 0.0
    assert ranked[len(ranked) // 2].difference == 0.0  # most features do not care
    # the toy world's sentiment documents keep one polarity: a clamped feature in the context
    # moves the next sentiment word the feature's way (a neutral prompt's every position)
    before = positive_probability(model, tokenizer, world)
    lengths = {len(tokenizer(p)["input_ids"]) for p in neutral_prompts(world)}
    everywhere = list(range(max(lengths)))
    with toy_surgeon.apply([toy_sae.clamp([positive.feature], 4 * positive.positive_mean, positions=everywhere)]):
        up = positive_probability(model, tokenizer, world)
    with toy_surgeon.apply([toy_sae.clamp([negative.feature], 4 * negative.negative_mean, positions=everywhere)]):
        down = positive_probability(model, tokenizer, world)
    assert up > before + 0.05 and down < before - 0.05


def test_feature_edits_are_stored_and_served_over_grpc(served_inline, toy, toy_surgeon, toy_sae) -> None:  # noqa: F811
    server, admin, _, _ = served_inline
    model, tokenizer, world = toy
    positive = contrast_features(toy_surgeon, tokenizer, toy_sae, sentiment_pairs(world))[0]
    clamp = toy_sae.clamp([positive.feature], 4 * positive.positive_mean, positions=[0, 1, 2, 3])
    edit = admin.create_edit("toy", clamp, description="the positive-word feature, clamped")
    assert edit.kind == "feature_clamp" and json.loads(edit.spec_json)["params"]["sae"]["sha256"] == toy_sae.sha256
    version = admin.create_version("toy", 0, [edit.id])
    prompt, words = neutral_prompts(world)[0], [" " + w for w in world.positive_words]
    served = admin.inference.Score(
        pb.ScoreRequest(
            model="models/toy", selector=pb.VersionSelector(version=version.number), prompt=prompt, continuations=words
        )
    ).logprobs
    encoded = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode(), toy_surgeon.apply([clamp]):
        local = model(**encoded).logits[0, -1].log_softmax(-1)
    expected = local[tokenizer.convert_tokens_to_ids(world.positive_words)].tolist()
    assert served == pytest.approx(expected, abs=1e-4)

    # a feature the SAE does not have: refused, naming the field, nothing written
    spec = json.loads(clamp.to_json())
    spec["params"]["features"] = [toy_sae.d_sae]
    edits_before = server.registry.list_edits("toy").items
    with pytest.raises(grpc.RpcError) as caught:
        admin.edits.CreateEdit(
            pb.CreateEditRequest(
                parent="models/toy", spec_json=json.dumps(spec), artifacts=list(clamp.artifact_blobs.values())
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "features" in caught.value.details()
    assert server.registry.list_edits("toy").items == edits_before


def test_an_sae_is_a_registry_resource_and_its_features_are_inspected_over_grpc(
    served_inline,  # noqa: F811
    toy,
    toy_surgeon,
    toy_sae,
    tmp_path,
) -> None:
    server, admin, reader, address = served_inline
    _, tokenizer, world = toy
    created = admin.create_sae("toy", "resid1", TOY_SAE_DIR, description="the toy SAE")
    assert created.name == "models/toy/saes/resid1" and created.sae_sha256 == toy_sae.sha256
    assert created.site == TOY_SAE_SITE and created.d_sae == toy_sae.d_sae
    assert json.loads(created.config_json)["metadata"]["metrics"] == toy_sae.metadata["metrics"]
    assert reader.features.GetSae(pb.GetSaeRequest(name=created.name)) == created
    assert [s.name for s in reader.features.ListSaes(pb.ListSaesRequest(parent="models/toy")).saes] == [created.name]
    events = admin.audit.ListAuditEvents(pb.ListAuditEventsRequest(action="sae.created")).events
    assert [json.loads(e.payload_json)["sae_sha256"] for e in events] == [toy_sae.sha256]

    # refused, each naming what is wrong, and nothing written
    def code(call) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        return caught.value.code(), caught.value.details()

    before = server.registry.verify_audit().events_checked
    assert code(lambda: admin.create_sae("toy", "resid1", TOY_SAE_DIR))[0] == grpc.StatusCode.ALREADY_EXISTS
    other = random_sae("relu", d_in=64).save(tmp_path / "other")
    status, details = code(lambda: admin.create_sae("toy", "other", other))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "d_model" in details
    status, details = code(lambda: reader.create_sae("toy", "mine", TOY_SAE_DIR))
    assert status == grpc.StatusCode.PERMISSION_DENIED
    bad = pb.CreateSaeRequest(parent="models/toy", name="bad", config_json="{}", weights=b"junk")
    status, details = code(lambda: admin.features.CreateSae(bad))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "safetensors" in details
    assert server.registry.verify_audit().events_checked == before

    # inspected: the positive-word feature is among the strongest on a positive word, as in-process
    positive = contrast_features(toy_surgeon, tokenizer, toy_sae, sentiment_pairs(world))[0]
    prompt = sentiment_pairs(world)[0][0]
    reply = reader.features.InspectFeatures(pb.InspectFeaturesRequest(sae=created.name, prompt=prompt, top=16))
    assert reply.version == "models/toy/versions/0" and len(reply.tokens) == len(tokenizer(prompt)["input_ids"])
    last = reply.tokens[-1]
    assert last.active == toy_sae.k and positive.feature in [f.feature for f in last.features]
    with toy_surgeon.trace([f"{toy_sae.site}.sae.acts"], saes=[toy_sae]) as cache:
        toy[0](**tokenizer([prompt], return_tensors="pt"))
    local = cache[f"{toy_sae.site}.sae.acts"][0, -1]
    assert {f.feature: f.activation for f in last.features} == pytest.approx(
        {f.feature: float(local[f.feature]) for f in last.features}, abs=1e-4
    )
    activations = [f.activation for f in last.features]
    assert activations == sorted(activations, reverse=True)
    status, _ = code(
        lambda: reader.features.InspectFeatures(pb.InspectFeaturesRequest(sae=created.name, prompt="x", top=65))
    )
    assert status == grpc.StatusCode.INVALID_ARGUMENT

    # the feature's card over the model's corpus, served as the library computes it
    card = reader.features.GetFeature(
        pb.GetFeatureRequest(sae=created.name, feature=positive.feature, top=5, max_texts=300)
    )
    local = feature_card(toy_surgeon, tokenizer, toy_sae, positive.feature, reference_corpus()[:300], top=5)
    assert card.texts == 300 and card.density == pytest.approx(local.density)
    assert [(c.token, c.text) for c in card.contexts] == [(c.token, c.text) for c in local.contexts]
    assert [e.token for e in card.promoted] == [t for t, _ in local.promoted]
    too_far = pb.GetFeatureRequest(sae=created.name, feature=toy_sae.d_sae)
    assert code(lambda: reader.features.GetFeature(too_far))[0] == grpc.StatusCode.INVALID_ARGUMENT

    # searched by words over the same index, as the library searches
    query = " ".join(world.positive_words)
    found = reader.search_features("toy", "resid1", query, top=5, max_texts=300)
    local = FeatureIndex(toy_surgeon, tokenizer, toy_sae, reference_corpus()[:300]).search(query, top=5)
    assert found.texts == 300 and [(m.feature, m.score, list(m.tokens)) for m in found.features] == [
        (m.feature, pytest.approx(m.score), m.tokens) for m in local
    ]
    assert found.features[0].feature == positive.feature and found.features[0].density == pytest.approx(card.density)
    for bad in (
        pb.SearchFeaturesRequest(sae=created.name, query="  "),
        pb.SearchFeaturesRequest(sae=created.name, query="x", top=101),
        pb.SearchFeaturesRequest(sae=created.name, query="x", max_texts=-1),
    ):
        assert code(lambda bad=bad: reader.features.SearchFeatures(bad))[0] == grpc.StatusCode.INVALID_ARGUMENT
    _dashboard_shows_the_served_cards(server, reader, address, tmp_path, query, [m.feature for m in found.features])

    # weights changed in the database: refused on a replica that has not loaded the SAE yet
    admin.create_sae("toy", "copy", TOY_SAE_DIR)
    with server.registry.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE saes SET sae_sha256 = 'ab' WHERE name = 'copy'")
    copy = pb.InspectFeaturesRequest(sae="models/toy/saes/copy", prompt=prompt)
    assert code(lambda: reader.features.InspectFeatures(copy))[0] == grpc.StatusCode.DATA_LOSS


class _Cards(HTMLParser):
    """Each feature card's numbers as the page carries them (``data-…`` attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[int, dict[str, list[float]]] = {}
        self.current: dict[str, list[float]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-feature" in found:
            self.current = self.cards.setdefault(int(found["data-feature"] or -1), {})
        for key in ("density", "max", "activation", "logit"):
            if f"data-{key}" in found:
                self.current.setdefault(key, []).append(float(found[f"data-{key}"] or "nan"))


def _dashboard_shows_the_served_cards(server, reader, address: str, tmp_path, query: str, searched: list[int]) -> None:
    """`scalpel features report`: one self-contained page whose numbers are the served cards',
    the same once Chromium has rendered it."""
    _, secret = server.registry.create_key("dashboards", "reader", "test")
    env = {**os.environ, "SCALPEL_ADDRESS": address, "SCALPEL_API_KEY": secret}
    page, png = tmp_path / "features.html", tmp_path / "features.png"
    browser = find_browser()
    command = [sys.executable, "-m", "service.cli", "features", "report", "3", "--search", query, "--sae", "resid1",
               "--top", "5", "--max-texts", "300", "--html", str(page)]  # fmt: skip
    command += ["--png", str(png)] if browser else []
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    cards = _Cards()
    cards.feed(html)
    assert list(cards.cards) == [3, *searched]
    for feature, shown in cards.cards.items():
        served = reader.get_feature("toy", "resid1", feature, top=5, max_texts=300)
        assert shown == {
            "density": [served.density],
            "max": [served.max_activation],
            **({"activation": [c.activation for c in served.contexts]} if served.contexts else {}),
            "logit": [e.logit for e in (*served.promoted, *served.suppressed)],
        }
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page was checked by parsing only")
    dom = rendered_dom(browser, page)
    rendered = _Cards()
    rendered.feed(dom)
    assert rendered.cards == cards.cards and "<mark" in dom
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_feature_card_shows_where_it_fires_and_what_it_writes(toy, toy_surgeon, toy_sae) -> None:
    _, tokenizer, world = toy
    positive = contrast_features(toy_surgeon, tokenizer, toy_sae, sentiment_pairs(world))[0]
    texts = reference_corpus()[:300]
    card = feature_card(toy_surgeon, tokenizer, toy_sae, positive.feature, texts, top=5)
    assert len(card.contexts) == 5 and all(c.token in world.positive_words for c in card.contexts)
    activations = [c.activation for c in card.contexts]
    assert activations == sorted(activations, reverse=True)
    assert card.max_activation == pytest.approx(activations[0], abs=1e-4)
    assert all(c.text.endswith(c.token) for c in card.contexts)
    assert 0 < card.density < 0.1  # a word feature: rare
    assert len(card.promoted) == len(card.suppressed) == 5 and card.promoted[0][1] > 0 > card.suppressed[0][1]
    with pytest.raises(InvalidEditError, match="feature"):
        feature_card(toy_surgeon, tokenizer, toy_sae, toy_sae.d_sae, texts)


def test_a_feature_index_holds_each_features_corpus_statistics_and_finds_features_by_words(
    toy, toy_surgeon, toy_sae
) -> None:
    _, tokenizer, world = toy
    texts = reference_corpus()[:300]
    ranked = contrast_features(toy_surgeon, tokenizer, toy_sae, sentiment_pairs(world))
    index = FeatureIndex(toy_surgeon, tokenizer, toy_sae, texts, depth=20, batch=48)
    # every feature's statistics, gathered in one pass, are those of its activations read whole
    encoded = encode_batch(tokenizer, texts)
    with toy_surgeon.trace([f"{toy_sae.site}.sae.acts"], saes=[toy_sae]) as cache:
        toy[0](**encoded)
    acts = (cache[f"{toy_sae.site}.sae.acts"] * encoded["attention_mask"][..., None]).flatten(0, 1)
    tokens = int(encoded["attention_mask"].sum())
    for feature in (ranked[0].feature, ranked[-1].feature, int(acts.sum(0).argmax())):
        card = index.card(feature, top=10)
        assert card.density == pytest.approx(float((acts[:, feature] > 0).sum()) / tokens, abs=1e-6)
        strongest = acts[:, feature].topk(10).values.tolist()
        assert [c.activation for c in card.contexts] == pytest.approx(strongest, abs=1e-4)
        assert card == feature_card(toy_surgeon, tokenizer, toy_sae, feature, texts, top=10)
    # found by words: the positive-word feature fires on positive words in all its top contexts
    found = index.search(" ".join(world.positive_words).upper(), top=5)
    assert found[0].feature == ranked[0].feature and found[0].contexts_matched == found[0].contexts == 10
    assert set(found[0].tokens) <= set(world.positive_words)
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    by_effect = [m for m in found if m.promoted_matched]  # features that write the words, not read them
    assert by_effect and all(m.score >= m.promoted_matched / m.promoted for m in by_effect)
    assert index.search("qqqq zzzz") == []
    with pytest.raises(InvalidEditError, match="query"):
        index.search("   ")
    one = FeatureIndex(toy_surgeon, tokenizer, toy_sae, texts, [ranked[0].feature], depth=5)
    with pytest.raises(InvalidEditError, match="feature"):
        one.card(ranked[-1].feature)
    with pytest.raises(InvalidEditError, match="feature"):
        FeatureIndex(toy_surgeon, tokenizer, toy_sae, texts, [toy_sae.d_sae])


def test_a_large_sae_arrives_in_chunks_and_its_upload_is_consumed(served_inline, toy_sae) -> None:  # noqa: F811
    server, admin, reader, address = served_inline
    blob = (TOY_SAE_DIR / "sae_weights.safetensors").read_bytes()

    def chunks_held() -> int:
        with server.registry.engine.connect() as connection:
            return connection.exec_driver_sql("SELECT count(*) FROM upload_chunks").scalar_one()

    def code(call) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        return caught.value.code(), caught.value.details()

    created = admin.create_sae("toy", "chunked", TOY_SAE_DIR, chunk_bytes=len(blob) // 4 + 1)  # four chunks
    assert created.sae_sha256 == toy_sae.sha256 and created.weights_sha256 == hashlib.sha256(blob).hexdigest()
    assert chunks_held() == 0  # consumed in the transaction that created the SAE

    # resumable and retry-safe: a chunk sent again is a no-op, a gap or other bytes name the offset
    def chunk(client, offset: int, data: bytes, upload: str = "upload-0001") -> pb.UploadStatus:
        return client.features.UploadChunk(pb.UploadChunkRequest(upload_id=upload, offset=offset, data=data))

    assert chunk(admin, 0, blob[:1000]).received_bytes == 1000
    assert chunk(admin, 0, blob[:1000]).received_bytes == 1000
    status, details = code(lambda: chunk(admin, 2000, blob[2000:3000]))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "offset 1000" in details
    status, details = code(lambda: chunk(admin, 0, b"x" * 1000))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "other bytes" in details
    assert code(lambda: chunk(admin, 0, b"x", upload="bad id"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: chunk(reader, 0, b"x", upload="upload-0002"))[0] == grpc.StatusCode.PERMISSION_DENIED

    config = (TOY_SAE_DIR / "cfg.json").read_text()

    def create(client, name: str, upload: str = "upload-0001", **extra) -> pb.Sae:
        return client.features.CreateSae(
            pb.CreateSaeRequest(parent="models/toy", name=name, config_json=config, upload_id=upload, **extra)
        )

    _, secret = server.registry.create_key("another-editor", "editor", "test")
    events = server.registry.verify_audit().events_checked
    status, details = code(lambda: create(admin, "partial"))  # a thousand bytes of a safetensors file
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "upload 'upload-0001'" in details
    with ScalpelClient(address, secret) as other:  # another principal's upload is not there for it
        assert code(lambda: create(other, "theirs"))[0] == grpc.StatusCode.NOT_FOUND
        status, details = code(lambda: chunk(other, 1000, blob[1000:]))
        assert status == grpc.StatusCode.FAILED_PRECONDITION and "another principal" in details
    both = {"weights": blob}
    assert code(lambda: create(admin, "both", **both))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(lambda: create(admin, "none", upload="upload-9999"))[0] == grpc.StatusCode.NOT_FOUND
    assert server.registry.verify_audit().events_checked == events and chunks_held() == 1  # nothing written

    assert chunk(admin, 1000, blob[1000:]).received_bytes == len(blob)
    assert create(admin, "resumed").sae_sha256 == toy_sae.sha256 and chunks_held() == 0

    # an upload left past its time goes when the next one begins; a fresh one stays
    from service.db.models import UploadChunkRow
    from service.registry.upload_store import UPLOAD_TTL

    with server.registry._sessions.begin() as session:
        old = utc_now() - UPLOAD_TTL - timedelta(minutes=1)
        session.add(UploadChunkRow(upload_id="abandoned", offset=0, data=b"x", created_by="admin", created_at=old))
    chunk(admin, 0, b"y", upload="upload-0003")
    assert chunks_held() == 1
    chunk(admin, 0, b"z", upload="upload-0004")
    assert chunks_held() == 2  # upload-0003 is young: kept
