"""Vision-language models in the kit (issue 34): LLaVA's sites (its vision encoder under
``vision.``, the projector's ``hook_image_embeds``), image tokens found from the input ids,
their mean ablation per row, attention knockout and the image logit lens, on a small randomly
initialised LLaVA (the toy VLM's shapes)."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from PIL import Image

from editors import InvalidEditError, LowRank, Steering, Surgeon, UnsupportedArchitectureError
from editors.edits import edit_from_parts
from editors.serialization import artifact_blobs_by_hash, edit_from_json
from editors.toyworld.manifest import verify_manifest
from editors.toyworld.vision import TOY_VLM_DIR, load_toy_vlm
from editors.toyworld.vision.findings import image_token_findings
from editors.toyworld.vision.scenes import PATCH_GRID, Scene, Thing, draw, object_patches, questions, random_scene
from editors.toyworld.vision.train import (
    EVALUATION_FILE,
    VisionTrainConfig,
    build_model,
    build_processor,
    encode_questions,
    evaluate,
    pixels,
    prompt,
    train_toy_vlm,
)
from editors.toyworld.vision.train import sample as sample_questions
from editors.vision import (
    ImageTokenAblation,
    attention_knockout,
    image_attribution,
    image_logit_lens,
    image_token_index,
    mean_image_token,
    region_patches,
    trace_image_region,
)

#: accuracy floors of the committed toy VLM (measured: see BENCHMARKS.md, the toy VLM)
VLM_FLOORS = {"colour_of_accuracy": 0.6, "shape_of_accuracy": 0.75, "is_there_accuracy": 0.65}


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    processor = build_processor()
    model = build_model(VisionTrainConfig(), processor).eval()
    return model, processor, Surgeon(model)


def _batch(processor, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    scenes, asked = sample_questions(random.Random(seed), count)
    encoded = encode_questions(processor, asked)
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "pixel_values": pixels(scenes),
    }


def _left_padded(processor, row: dict[str, torch.Tensor], pad: int) -> dict[str, torch.Tensor]:
    """``row`` (one unpadded row) with ``pad`` pad tokens in front of it."""
    ids, mask = row["input_ids"], row["attention_mask"]
    pad_ids = torch.full((1, pad), processor.tokenizer.pad_token_id)
    return {
        "input_ids": torch.cat([pad_ids, ids], dim=1),
        "attention_mask": torch.cat([torch.zeros(1, pad, dtype=mask.dtype), mask], dim=1),
        "pixel_values": row["pixel_values"],
    }


def test_llava_sites_name_both_towers_and_tracing_changes_nothing(vlm) -> None:
    model, processor, surgeon = vlm
    assert surgeon.adapter.family == "llava"
    vision = surgeon.dims.at(surgeon.site("vision.blocks.0.hook_resid_post"))
    assert (vision.n_layers, vision.d_model, surgeon.dims.d_model) == (2, 64, 128)
    batch = _batch(processor, 3)
    sites = [
        "vision.blocks.0.hook_resid_pre",
        "vision.blocks.1.hook_resid_mid",
        "vision.blocks.1.attn.hook_z",
        "vision.blocks.0.mlp.hook_post",
        "vision.blocks.0.attn.hook_k",
        "hook_image_embeds",
        "blocks.3.hook_resid_post",
    ]
    with torch.no_grad():
        plain = model(**batch).logits
        with surgeon.trace(sites) as cache:
            traced = model(**batch).logits
    assert torch.equal(plain, traced)
    assert cache["vision.blocks.1.attn.hook_z"].shape == (3, 1 + PATCH_GRID**2, 4, 16)  # class token + patches
    assert cache["hook_image_embeds"].shape == (3, PATCH_GRID**2, 128)
    seq = batch["input_ids"].shape[1]
    assert cache["blocks.3.hook_resid_post"].shape == (3, seq, 128)


def test_steering_in_the_vision_encoder_reaches_the_image_tokens(vlm) -> None:
    """A vector added after the encoder's last block (the layer LLaVA reads) arrives at the
    projector exactly: the projector of (the encoder's output + v)."""
    model, processor, surgeon = vlm
    batch = _batch(processor, 2)
    vector = torch.randn(64)
    with torch.no_grad():
        encoded = model.model.vision_tower(batch["pixel_values"]).last_hidden_state[:, 1:]
        expected = model.model.multi_modal_projector(encoded + 3.0 * vector)
        steering = Steering(site="vision.blocks.1.hook_resid_post", vector=vector, scale=3.0)
        with surgeon.trace(["hook_image_embeds"], edits=[steering]) as cache:
            steered = model(**batch).logits
        plain = model(**batch).logits
    torch.testing.assert_close(cache["hook_image_embeds"], expected, atol=1e-5, rtol=1e-5)
    assert (steered - plain).abs().max() > 1e-3


def test_a_weight_edit_in_the_vision_encoder_equals_the_changed_weight(vlm) -> None:
    model, processor, surgeon = vlm
    batch = _batch(processor, 2, seed=6)
    U, V = torch.randn(64, 2) * 0.1, torch.randn(256, 2) * 0.1  # fc2: 256 -> 64
    edit = LowRank(site="vision.blocks.0.mlp.W_out", U=U, V=V)
    fc2 = model.model.vision_tower.encoder.layers[0].mlp.fc2
    with torch.no_grad():
        with surgeon.apply([edit]):
            edited = model(**batch).logits
        original = fc2.weight.clone()
        fc2.weight += U @ V.T
        try:
            merged = model(**batch).logits
        finally:
            fc2.weight.copy_(original)
    torch.testing.assert_close(edited, merged, atol=1e-5, rtol=1e-5)
    with pytest.raises(InvalidEditError, match=r"\[256, r\]"):
        surgeon.compile([LowRank(site="vision.blocks.0.mlp.W_out", U=U, V=torch.randn(512, 2))])


@pytest.mark.parametrize(
    ("site", "width", "problem"),
    [
        ("vision.blocks.2.hook_resid_post", 64, "out of range"),
        ("vision.blocks.0.hook_resid_post", 128, "length 128 != d_model"),
        ("vision.blocks.0.hook_resid_post", 63, "length 63 != d_model"),
    ],
)
def test_bad_vision_sites_are_refused_naming_the_field(vlm, site, width, problem) -> None:
    _, _, surgeon = vlm
    with pytest.raises(InvalidEditError, match=problem):
        surgeon.compile([Steering(site=site, vector=torch.randn(width))])


def test_a_text_model_has_no_vision_sites(toy_surgeon) -> None:
    with pytest.raises(InvalidEditError, match="no vision tower"):
        toy_surgeon.compile([Steering(site="vision.blocks.0.hook_resid_post", vector=torch.randn(128))])
    with pytest.raises(InvalidEditError, match="hook_image_embeds"):
        toy_surgeon.site("hook_image_embeds")
    with pytest.raises(InvalidEditError, match="vision-language model"):
        toy_surgeon.compile([ImageTokenAblation(mode="zero")])


def test_image_tokens_are_found_from_the_ids_whatever_the_padding() -> None:
    grid, image = 2, 9
    tokens = torch.tensor([[0, 0, 5, 9, 9, 9, 9, 7], [5, 9, 9, 9, 9, 6, 9, 9]])  # row 1: an image split by text
    patch, which = image_token_index(tokens, image, grid)
    assert patch.tolist() == [[-1, -1, -1, 0, 1, 2, 3, -1], [-1, 0, 1, 2, 3, -1, 0, 1]]
    assert which.tolist() == [[-1, -1, -1, 0, 0, 0, 0, -1], [-1, 0, 0, 0, 0, -1, 1, 1]]
    assert region_patches((0, 2), (1, 3), 4) == (1, 2, 5, 6)
    with pytest.raises(InvalidEditError, match="region"):
        region_patches((0, 5), (0, 1), 4)


def test_mean_ablation_writes_the_mean_image_token_at_the_named_patches_only(vlm) -> None:
    model, processor, surgeon = vlm
    batch = _batch(processor, 4, seed=1)
    mean = mean_image_token(surgeon, batch["pixel_values"])
    with surgeon.trace(["hook_image_embeds"]):
        model.model.get_image_features(pixel_values=batch["pixel_values"])
    patches = region_patches((1, 3), (0, 2), PATCH_GRID)
    edit = ImageTokenAblation(mean=mean, patches=patches)
    with torch.no_grad():
        with surgeon.trace(["blocks.0.hook_resid_pre"]) as plain:
            model(**batch)
        with surgeon.trace(["blocks.0.hook_resid_pre"], edits=[edit]) as cut:
            model(**batch)
    before, after = plain["blocks.0.hook_resid_pre"], cut["blocks.0.hook_resid_pre"]
    patch, _ = image_token_index(batch["input_ids"], surgeon.dims.image_token_id, PATCH_GRID)
    hit = torch.isin(patch, torch.tensor(patches))
    assert int(hit.sum()) == 4 * len(patches)
    torch.testing.assert_close(after[hit], mean.expand(int(hit.sum()), -1))
    assert torch.equal(after[~hit], before[~hit])


def test_rows_with_different_image_cuts_each_equal_their_solo_run_under_left_padding(vlm) -> None:
    model, processor, surgeon = vlm
    batch = _batch(processor, 3, seed=2)
    mean = mean_image_token(surgeon, batch["pixel_values"])
    edits = [
        ImageTokenAblation(mean=mean, patches=(0, 5)),
        ImageTokenAblation(mode="zero"),
        None,
    ]
    rows = []
    for i in range(3):
        width = int(batch["attention_mask"][i].sum())
        rows.append({k: v[i : i + 1, :width] if k != "pixel_values" else v[i : i + 1] for k, v in batch.items()})
    width = max(r["input_ids"].shape[1] for r in rows) + 2
    padded = [_left_padded(processor, r, width - r["input_ids"].shape[1]) for r in rows]
    together = {k: torch.cat([p[k] for p in padded]) for k in padded[0]}
    positions = (together["attention_mask"].cumsum(1) - 1).clamp_min(0)
    stacks = [surgeon.compile([] if e is None else [e]) for e in edits]
    with torch.no_grad(), surgeon.apply_rows(surgeon.rows(stacks)):
        batched = model(**together, position_ids=positions).logits[:, -1]
    for i, edit in enumerate(edits):
        with torch.no_grad(), surgeon.apply([] if edit is None else [edit]):
            solo = model(**rows[i]).logits[0, -1]
        torch.testing.assert_close(batched[i], solo, atol=1e-4, rtol=1e-4)


def test_an_edit_that_reads_the_ids_refuses_a_forward_given_embeddings(vlm) -> None:
    """A forward from ``inputs_embeds`` has no ids: an image cut must not read the last forward's."""
    model, processor, surgeon = vlm
    batch = _batch(processor, 1, seed=10)
    edit = ImageTokenAblation(mode="zero")
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad(), surgeon.apply([edit]):
        model(**batch)  # reads its own ids
        with pytest.raises(InvalidEditError, match="input ids"):
            model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])


def test_image_token_ablation_round_trips_and_validates(vlm) -> None:
    _, _, surgeon = vlm
    edit = ImageTokenAblation(mean=torch.randn(128), patches=(3, 1), images=(0,))
    assert edit_from_json(edit.to_json(), artifact_blobs_by_hash(edit)).id == edit.id
    assert edit_from_parts("image_token_ablation", {"mode": "zero"}, {}).mode == "zero"
    cases = [
        ({"mode": "mean"}, "mean"),  # mean mode with no mean
        ({"mode": "zero", "mean": torch.zeros(128)}, "mean"),
        ({"mode": "blur"}, "mode"),
    ]
    for fields, field in cases:
        with pytest.raises(InvalidEditError) as caught:
            ImageTokenAblation(**fields)
        assert caught.value.field == field
    with pytest.raises(InvalidEditError, match=r"patches\[0\]"):
        surgeon.compile([ImageTokenAblation(mode="zero", patches=(16,))])
    with pytest.raises(InvalidEditError, match="length 64 != d_model"):
        surgeon.compile([ImageTokenAblation(mean=torch.zeros(64))])


def test_knockout_of_every_image_token_at_every_layer_makes_the_answer_blind(vlm) -> None:
    """With every text position cut off from the image tokens at every layer, the last position's
    logits no longer depend on the picture; with the last position alone cut off, the picture
    still reaches it through the text between (so the knockout is of attention, not of the
    image); cut at no layer, they do."""
    model, processor, surgeon = vlm
    batch = _batch(processor, 1, seed=3)
    other = pixels([random_scene(random.Random(99))])
    layers = range(surgeon.dims.n_layers)
    with torch.no_grad():
        seen = [model(**{**batch, "pixel_values": px}).logits[0, -1] for px in (batch["pixel_values"], other)]
        with attention_knockout(surgeon, batch["input_ids"], layers, queries="text"):
            blind = [model(**{**batch, "pixel_values": px}).logits[0, -1] for px in (batch["pixel_values"], other)]
        with attention_knockout(surgeon, batch["input_ids"], layers, queries="last"):
            last_only = [model(**{**batch, "pixel_values": px}).logits[0, -1] for px in (batch["pixel_values"], other)]
        again = model(**batch).logits[0, -1]
    assert (seen[0] - seen[1]).abs().max() > 1e-4
    torch.testing.assert_close(blind[0], blind[1], atol=1e-6, rtol=0)
    assert (last_only[0] - last_only[1]).abs().max() > 1e-4
    torch.testing.assert_close(again, seen[0], atol=0, rtol=0)  # the knockout is gone after the block
    with pytest.raises(InvalidEditError, match="queries"):
        attention_knockout(surgeon, batch["input_ids"], [0], queries="first").__enter__()
    with pytest.raises(InvalidEditError, match=r"patches\[0\]"):
        attention_knockout(surgeon, batch["input_ids"], [0], patches=[16]).__enter__()


def test_image_logit_lens_decodes_every_patch_at_every_layer(vlm) -> None:
    """Its last layer is the model's own prediction at each image token."""
    model, processor, surgeon = vlm
    batch = _batch(processor, 1, seed=4)
    lens = image_logit_lens(surgeon, batch, top_k=3)
    assert lens.shape == (surgeon.dims.n_layers, PATCH_GRID**2, 3)
    with torch.no_grad():
        logits = model(**batch).logits[0]
    image = batch["input_ids"][0] == surgeon.dims.image_token_id
    assert torch.equal(lens[-1], logits[image].topk(3, dim=-1).indices)


# -- the toy VLM: committed weights, loaded as transformers loads them -----------------------


@pytest.fixture(scope="module")
def toy_vlm():
    return load_toy_vlm()


def test_the_toy_vlm_loads_as_llava_and_its_processor_reads_what_it_was_trained_on(toy_vlm) -> None:
    model, processor = toy_vlm
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not verify_manifest(TOY_VLM_DIR)
    scenes, asked = sample_questions(random.Random(5), 4)
    ours = encode_questions(processor, asked)
    for i, (scene, question) in enumerate(zip(scenes, asked, strict=True)):
        theirs = processor(images=[Image.fromarray(draw(scene))], text=[prompt(question)], return_tensors="pt")
        width = int(ours["attention_mask"][i].sum())
        assert torch.equal(theirs["input_ids"][0], ours["input_ids"][i, :width])
        torch.testing.assert_close(theirs["pixel_values"][0], pixels([scene])[0])


def test_the_toy_vlm_answers_questions_about_its_pictures(toy_vlm) -> None:
    model, processor = toy_vlm
    measured = evaluate(model, processor, scenes=60, seed=11)
    recorded = json.loads((TOY_VLM_DIR / EVALUATION_FILE).read_text())["evaluation"]
    for kind, floor in VLM_FLOORS.items():
        assert measured[kind] >= floor and recorded[kind] >= floor, (kind, measured, recorded)


def test_neo_et_al_findings_hold_on_the_toy_vlm(toy_vlm) -> None:
    """The object's own image tokens carry it (ablating them costs far more than as many other
    tokens); the last position reads them in the language model's later layers, not its first."""
    model, processor = toy_vlm
    found = image_token_findings(model, processor, scenes=40, seed=3)
    assert found["cases"] >= 60 and found["identification_accuracy"] >= 0.7
    assert found["object_ablation_drop"] >= 2 * found["random_ablation_drop"] and found["object_ablation_drop"] >= 0.3
    assert found["knockout_mid_late_drop"] >= found["knockout_early_drop"] + 0.15
    assert found["logit_lens_object_top5_rate"] > found["logit_lens_background_top5_rate"]


def test_toy_vlm_training_is_deterministic(tmp_path) -> None:
    config = dataclasses.replace(VisionTrainConfig(), steps=4, eval_scenes=8)
    first = train_toy_vlm(tmp_path / "a", config)
    again = train_toy_vlm(tmp_path / "b", config)
    assert first["final_loss"] == again["final_loss"]
    weights = "model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert not verify_manifest(tmp_path / "a")


# -- named position sets: image, a region of it, text, last ------------------------------------


def test_steering_at_a_region_of_the_image_moves_those_tokens_only_whatever_the_padding(vlm) -> None:
    model, processor, surgeon = vlm
    batch = _batch(processor, 2, seed=8)
    row = {
        k: v[:1, : int(batch["attention_mask"][0].sum())] if k != "pixel_values" else v[:1] for k, v in batch.items()
    }
    padded = _left_padded(processor, row, 3)
    vector = torch.randn(128)
    edit = Steering(site="blocks.1.hook_resid_pre", vector=vector, scale=2.0, positions="image[0:2,2:4]")
    site = "blocks.1.hook_resid_pre"
    for inputs, pad in ((row, 0), (padded, 3)):
        positions = (inputs["attention_mask"].cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            with surgeon.trace([site]) as plain:
                model(**inputs, position_ids=positions)
            with surgeon.trace([site], edits=[edit]) as steered:
                model(**inputs, position_ids=positions)
        moved = (steered[site] - plain[site]).abs().amax(dim=-1)[0] > 1e-6
        expected = pad + 1 + torch.tensor([2, 3, 6, 7])  # after <bos>, the patches row-major on a 4-wide grid
        assert moved.nonzero().flatten().tolist() == expected.tolist()
    everything = Steering(site=site, vector=vector, positions="image")
    with torch.no_grad():
        with surgeon.trace([site]) as plain:
            model(**row)
        with surgeon.trace([site], edits=[everything]) as steered:
            model(**row)
    changed = (steered[site] - plain[site]).abs().amax(dim=-1)[0] > 1e-6
    assert changed.tolist() == (row["input_ids"][0] == surgeon.dims.image_token_id).tolist()


def test_rows_with_different_position_sets_each_equal_their_solo_run(vlm) -> None:
    model, processor, surgeon = vlm
    batch = _batch(processor, 3, seed=9)
    vector = torch.randn(128)
    sets = ["image", "text", "last"]
    rows = []
    for i in range(3):
        width = int(batch["attention_mask"][i].sum())
        rows.append({k: v[i : i + 1, :width] if k != "pixel_values" else v[i : i + 1] for k, v in batch.items()})
    width = max(r["input_ids"].shape[1] for r in rows)
    padded = [_left_padded(processor, r, width - r["input_ids"].shape[1]) for r in rows]
    together = {k: torch.cat([p[k] for p in padded]) for k in padded[0]}
    positions = (together["attention_mask"].cumsum(1) - 1).clamp_min(0)
    edits = [Steering(site="blocks.2.hook_resid_pre", vector=vector, scale=3.0, positions=s) for s in sets]
    with torch.no_grad(), surgeon.apply_rows(surgeon.rows([surgeon.compile([e]) for e in edits])):
        batched = model(**together, position_ids=positions).logits[:, -1]
    for i, edit in enumerate(edits):
        with torch.no_grad(), surgeon.apply([edit]):
            solo = model(**rows[i]).logits[0, -1]
        torch.testing.assert_close(batched[i], solo, atol=1e-4, rtol=1e-4)


def test_position_sets_are_checked_against_the_model_and_round_trip(vlm, toy_surgeon) -> None:
    _, _, surgeon = vlm
    steering = Steering(site="blocks.0.hook_resid_pre", vector=torch.randn(128), positions="image[1:3,0:4]")
    assert edit_from_json(steering.to_json(), artifact_blobs_by_hash(steering)).positions == "image[1:3,0:4]"
    assert Steering(site="blocks.0.hook_resid_pre", vector=torch.randn(128), positions=[3, 1]).positions == (1, 3)
    for bad in ("images", "image[2:1,0:1]", "image[0:1]", "last "):
        with pytest.raises(InvalidEditError) as caught:
            Steering(site="blocks.0.hook_resid_pre", vector=torch.randn(128), positions=bad)
        assert caught.value.field == "positions"
    with pytest.raises(InvalidEditError, match="leaves the 4-patch grid"):
        surgeon.compile([Steering(site="blocks.0.hook_resid_pre", vector=torch.randn(128), positions="image[0:5,0:1]")])
    with pytest.raises(InvalidEditError, match="language-model tokens"):
        surgeon.compile([Steering(site="vision.blocks.0.hook_resid_pre", vector=torch.randn(64), positions="last")])
    with pytest.raises(InvalidEditError, match="need a vision-language model"):
        toy_surgeon.compile([Steering(site="blocks.0.hook_resid_pre", vector=torch.randn(128), positions="image")])


def test_last_and_text_on_a_text_model_equal_their_position_ids(toy, toy_surgeon) -> None:
    model, tokenizer, _ = toy
    inputs = tokenizer(["the capital of Riia is"], return_tensors="pt")
    last = inputs["input_ids"].shape[1] - 1
    vector = torch.randn(128)
    cases = [("last", [last]), ("text", list(range(last + 1)))]
    with torch.no_grad():
        for named, ids in cases:
            by_name = Steering(site="blocks.1.hook_resid_pre", vector=vector, scale=2.0, positions=named)
            by_ids = Steering(site="blocks.1.hook_resid_pre", vector=vector, scale=2.0, positions=ids)
            with toy_surgeon.apply([by_name]):
                named_logits = model(**inputs).logits
            with toy_surgeon.apply([by_ids]):
                id_logits = model(**inputs).logits
            torch.testing.assert_close(named_logits, id_logits, atol=1e-6, rtol=0)


def test_causal_tracing_over_the_objects_patch_finds_where_the_answer_lives(toy_vlm) -> None:
    """Noising the red object's image token loses "what shape is red"; restoring that token's
    state after layer 0 or 1 gives the answer back, after layer 2 no longer (the last position
    has read it by then, as the knockout finding says); an empty cell's state gives nothing back,
    and the final state at the last position gives the clean answer back exactly."""
    model, processor = toy_vlm
    surgeon = Surgeon(model)
    things = (Thing("triangle", "red", 1, 2), Thing("square", "green", 3, 3), Thing("cross", "yellow", 0, 0))
    scene = Scene(things, seed=4)
    question = next(q for q in questions(scene) if q.text == "what shape is red")
    encoded = encode_questions(processor, [question])
    inputs = {"input_ids": encoded["input_ids"], "pixel_values": pixels([scene])}
    answer_id = processor.tokenizer.convert_tokens_to_ids(question.answer)
    trace = trace_image_region(surgeon, inputs, object_patches(things[0]), answer_id, samples=4, kinds=("resid",))
    clean, corrupted = trace.clean_probability, trace.corrupted_probability
    assert clean > 0.9 and corrupted < 0.1
    resid = trace.grids["resid"]
    assert resid.shape == (surgeon.dims.n_layers, inputs["input_ids"].shape[1])
    at_object = resid[:, trace.positions[0]]
    assert at_object[0] > clean - 0.05 and at_object[1] > clean - 0.05 and at_object[3] < corrupted + 0.05
    empty_cell = 1 + 2  # after <bos>: patch 2, the top row's third cell, holds nothing
    assert resid[0, empty_cell] < corrupted + 0.05
    assert abs(float(resid[-1, -1]) - clean) < 1e-5
    with pytest.raises(InvalidEditError, match=r"patches\[0\]"):
        trace_image_region(surgeon, inputs, [16], answer_id)


def test_attribution_over_image_tokens_and_vision_heads_agrees_with_patching(toy_vlm) -> None:
    """The red object changes shape: integrated-gradient attribution names its token, and the
    vision head it ranks first is the one whose patching moves the answer most; plain
    attribution at the corrupted run (steps=1) gets the token's sign wrong (why IG is the default)."""
    model, processor = toy_vlm
    surgeon = Surgeon(model)
    things = (Thing("triangle", "red", 1, 2), Thing("square", "green", 3, 3), Thing("cross", "yellow", 0, 0))
    clean_scene, corrupted_scene = Scene(things, seed=4), Scene((Thing("circle", "red", 1, 2), *things[1:]), seed=4)
    question = next(q for q in questions(clean_scene) if q.text == "what shape is red")
    ids = encode_questions(processor, [question])["input_ids"]
    clean, corrupted = ({"input_ids": ids, "pixel_values": pixels([scene])} for scene in (clean_scene, corrupted_scene))
    triangle, circle = processor.tokenizer.convert_tokens_to_ids(["triangle", "circle"])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, triangle] - logits[:, circle]

    found = image_attribution(surgeon, clean, corrupted, metric)
    red = object_patches(things[0])[0]
    assert int(found.patches.argmax()) == red and found.clean_metric > 0 > found.corrupted_metric
    with torch.no_grad(), surgeon.trace(["blocks.0.hook_resid_pre"]) as cache:
        model(**clean)
    clean_input = cache["blocks.0.hook_resid_pre"]

    def restore_token(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 1 + red] = clean_input[:, 1 + red]
        return x

    with torch.no_grad():
        patched = metric(
            surgeon.run_with_hooks(**corrupted, fwd_hooks=[("blocks.0.hook_resid_pre", restore_token)]).logits[:, -1]
        )
    actual = float(patched) - found.corrupted_metric
    assert 0.6 * actual < float(found.patches[red]) < 1.4 * actual
    layer, head = divmod(int(found.vision_heads.argmax()), found.vision_heads.shape[1])
    effects = []
    for candidate in range(found.vision_heads.numel()):
        at, h = divmod(candidate, found.vision_heads.shape[1])
        site = f"vision.blocks.{at}.attn.hook_z"
        with torch.no_grad(), surgeon.trace([site]) as cache:
            model(**clean)
        source = cache[site]

        def restore_head(z: torch.Tensor, h: int = h, source: torch.Tensor = source) -> torch.Tensor:
            z = z.clone()
            z[:, :, h] = source[:, :, h]
            return z

        with torch.no_grad():
            logits = surgeon.run_with_hooks(**corrupted, fwd_hooks=[(site, restore_head)]).logits[:, -1]
        effects.append(float(metric(logits)) - found.corrupted_metric)
    assert max(range(len(effects)), key=effects.__getitem__) == layer * found.vision_heads.shape[1] + head
    plain = image_attribution(surgeon, clean, corrupted, metric, steps=1)
    assert float(plain.patches[red]) < 0 < actual


def test_a_siglip_encoder_and_a_qwen2_language_model_work_the_same_way() -> None:
    """The second LLaVA shape: SigLIP (no class token, so every token is kept) and a grouped-query
    Qwen2 language model."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    torch.manual_seed(1)
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4
    )
    text = Qwen2Config(
        vocab_size=40,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=39,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
    ).eval()
    surgeon = Surgeon(model)
    assert (surgeon.dims.image_grid, surgeon.dims.at(surgeon.site("vision.blocks.0.hook_resid_post")).d_model) == (
        4,
        32,
    )
    ids = torch.tensor([[1, *[39] * 16, 5, 6, 7]])
    inputs = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 16, 16)}
    mean = torch.randn(64)
    with torch.no_grad():
        plain = model(**inputs).logits
        with surgeon.trace(
            ["blocks.0.hook_resid_pre", "hook_image_embeds"], edits=[ImageTokenAblation(mean=mean, patches=(5,))]
        ) as cache:
            cut = model(**inputs).logits
        with surgeon.apply([Steering(site="vision.blocks.1.hook_resid_post", vector=torch.randn(32), scale=4.0)]):
            steered = model(**inputs).logits
    assert cache["hook_image_embeds"].shape == (1, 16, 64)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"][0, 1 + 5], mean)
    assert (cut - plain).abs().max() > 1e-5 and (steered - plain).abs().max() > 1e-5
    refused = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=39, vision_feature_select_strategy="default"
    )
    with pytest.raises(UnsupportedArchitectureError, match="SigLIP with 'full'"):
        Surgeon(LlavaForConditionalGeneration(refused))
