"""The growing KV cache: the concatenating cache's numbers, without copying the cache every step."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from service.engine.growing_cache import MAX_SPARE_COLUMNS, MIN_SPARE_COLUMNS, GrowingCache, GrowingLayer
from tests.conftest import FAMILIES, TEST_DEVICE, VOCAB, tiny_model

ROWS, PREFIX, STEPS, PADDING = 3, 6, 12, 2


def _decode(model: torch.nn.Module, cache: DynamicCache, steps: int) -> torch.Tensor:
    """Greedy steps over ``ROWS`` rows whose first ``PADDING`` columns are masked; their logits."""
    tokens = torch.arange(1, ROWS + 1, device=TEST_DEVICE).unsqueeze(1)
    mask = torch.ones((ROWS, PREFIX), dtype=torch.long, device=TEST_DEVICE)
    mask[:, :PADDING] = 0
    logits = []
    for step in range(steps):
        mask = torch.cat([mask, mask.new_ones((ROWS, 1))], dim=1)
        positions = torch.full((ROWS, 1), PREFIX - PADDING + step, device=TEST_DEVICE)
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        logits.append(out.logits[:, -1])
        tokens = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_steps_give_the_dynamic_caches_logits_exactly(family: str) -> None:
    model = tiny_model(family).to(TEST_DEVICE)
    torch.manual_seed(1)
    with torch.inference_mode():
        prefix = model(input_ids=torch.randint(0, VOCAB, (ROWS, PREFIX), device=TEST_DEVICE), use_cache=True).cache
        kv = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.layers]
        expected = _decode(model, DynamicCache(kv), STEPS)
        growing = GrowingCache((k.clone(), v.clone()) for k, v in kv)
        got = _decode(model, growing, STEPS)
    assert torch.equal(got, expected)
    assert growing.get_seq_length() == PREFIX + STEPS


def test_a_step_writes_in_place_until_the_room_runs_out() -> None:
    layer = GrowingLayer()
    first = torch.randn(2, 4, 5, 8)
    keys, values = layer.update(first, first + 1)
    assert torch.equal(keys, first) and torch.equal(values, first + 1)
    buffer, room = layer._keys, layer._keys.shape[-2]
    assert room - 5 >= MIN_SPARE_COLUMNS
    columns = [torch.randn(2, 4, 1, 8) for _ in range(room - 5)]
    for column in columns:
        layer.update(column, column)
    assert layer._keys is buffer  # every step so far wrote into the same buffer
    layer.update(torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8))
    assert layer._keys is not buffer and layer._keys.shape[-2] > room + 1  # grown once, with room again
    assert torch.equal(layer.keys, torch.cat([first, *columns, torch.zeros(2, 4, 1, 8)], dim=-2))


def test_row_selection_cropping_and_stacking_match_the_plain_tensors() -> None:
    keys, values = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    layer = GrowingLayer(keys.clone(), values.clone())
    layer.update(torch.ones(3, 2, 1, 8), torch.ones(3, 2, 1, 8))
    keys, values = torch.cat([keys, torch.ones(3, 2, 1, 8)], -2), torch.cat([values, torch.ones(3, 2, 1, 8)], -2)
    layer.batch_select_indices(torch.tensor([2, 0]))
    keys, values = keys[[2, 0]], values[[2, 0]]
    layer.drop_left(2)
    keys, values = keys[..., 2:, :], values[..., 2:, :]
    layer.crop(-1)
    keys, values = keys[..., :-1, :], values[..., :-1, :]
    assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)

    other = GrowingLayer(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    layer.stack_rows(other, 4)
    pad = torch.zeros(2, 2, 2, 8)  # the shorter rows are right-aligned after zeros
    assert torch.equal(layer.keys, torch.cat([torch.cat([pad, keys], -2), other.keys]))
    assert torch.equal(layer.values, torch.cat([torch.cat([pad, values], -2), other.values]))
    with pytest.raises(ValueError, match="negative"):
        layer.crop(1)


def test_rows_placed_in_place_replace_a_row_and_fill_a_spare_one_without_a_new_buffer() -> None:
    keys, values = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)
    layer = GrowingLayer(keys.clone(), values.clone())
    layer.stack_rows(GrowingLayer(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)), 5, spare_rows=2)
    assert layer.row_room == 5 and layer.keys.shape == (3, 2, 5, 8)
    before, buffer = layer.keys.clone(), layer._keys
    newcomer = GrowingLayer(torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8))
    layer.place_rows(newcomer, torch.tensor([1, 3]), 4)  # over row 1, and into the first spare row
    assert layer._keys is buffer and layer.keys.shape == (4, 2, 5, 8)
    placed = torch.cat([torch.zeros(2, 2, 1, 8), newcomer.keys], -2)  # right-aligned after zeros
    assert torch.equal(layer.keys[[0, 2]], before[[0, 2]]) and torch.equal(layer.keys[[1, 3]], placed)
    assert torch.equal(layer.values[[1, 3]], torch.cat([torch.zeros(2, 2, 1, 8), newcomer.values], -2))
    column = torch.randn(4, 2, 1, 8)
    layer.update(column, column)  # a step writes every filled row's column, the placed ones too
    assert torch.equal(layer.keys, torch.cat([torch.cat([before[:1], placed[:1], before[2:], placed[1:]]), column], -2))


def test_the_spare_room_is_a_quarter_of_the_length_within_its_bounds() -> None:
    short, long = GrowingLayer(), GrowingLayer()
    short.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
    long.update(torch.zeros(1, 1, 1000, 2), torch.zeros(1, 1, 1000, 2))
    assert short._keys.shape[-2] == 4 + MIN_SPARE_COLUMNS
    assert long._keys.shape[-2] == 1000 + MAX_SPARE_COLUMNS


def test_transformers_generate_takes_it_and_makes_the_same_tokens(toy) -> None:
    """Notebooks can hand it to ``generate`` (``cache=GrowingCache()``): left-padded
    rows, the same greedy tokens as its own cache."""
    model, tokenizer, world = toy
    texts = [" ".join(world.symbols[:12]), " ".join(world.symbols[3:8])]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    assert not encoded["attention_mask"][1, 0]  # (left-padded)
    options = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        plain = model.generate(**encoded, **options)
        cache = GrowingCache()
        growing = model.generate(**encoded, **options, cache=cache)
    assert torch.equal(plain, growing)
    assert cache.get_seq_length() == growing.shape[1] - 1  # generate wrote its keys and values there
