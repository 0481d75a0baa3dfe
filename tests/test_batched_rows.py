"""One forward, a stack per row: each row of a mixed, left-padded, changing batch equals its solo run."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig, Qwen2Config

from editors import HeadAblation, LowRank, NeuronAblation, Steering, Surgeon, weights_sha256
from service.engine.decode_batch import DecodeBatch, Prefill
from service.engine.growing_cache import GrowingCache
from service.engine.prefix_cache import PrefixCache, reuse_is_exact
from service.engine.ragged import can_ride, ride
from service.engine.scheduler import Scheduler
from tests.conftest import FAMILIES, TEST_DEVICE, VOCAB, tiny_model, word_tokenizer
from tests.test_surgeon import _rand, every_edit

#: float32: a row's logits in a batch against its solo run (the bar is 1e-4)
F32_TOLERANCE = 1e-4
#: bfloat16 has 8 mantissa bits: batch shapes change the accumulation order of its matmuls
BF16_TOLERANCE = 0.02  # measured 2e-3 on the tiny Llama
STACKS = 6  # every edit kind at every site, dealt over this many stacks; one more stack is empty


def _stacks(surgeon: Surgeon) -> list:
    edits = every_edit(surgeon)
    return [surgeon.compile(edits[i::STACKS]) for i in range(STACKS)] + [surgeon.compile([])]


def _solo_last_logits(model, surgeon: Surgeon, stack, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode(), surgeon.apply(stack):
        return model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float()


def _prompt(row: int) -> list[int]:
    generator = torch.Generator().manual_seed(100 + row)
    return torch.randint(1, VOCAB, (3 + (row * 5) % 9,), generator=generator).tolist()


@pytest.mark.parametrize(
    ("columns", "cached", "riding"),
    [(None, False, False), (4, False, False), (None, True, False), (4, False, True), (4, True, True)],
    ids=["one-forward-prefill", "chunked-prefill", "prefix-cached", "riding", "riding-prefix-cached"],
)
@pytest.mark.parametrize(("family", "dtype"), [(f, torch.float32) for f in FAMILIES] + [("llama", torch.bfloat16)])
def test_rows_joining_and_leaving_each_match_their_solo_run(
    family: str, dtype: torch.dtype, columns: int | None, cached: bool, riding: bool
) -> None:
    """With ``columns``, newcomers are prefilled 4 positions per forward, and the running rows take
    a decode step between two chunks, as the scheduler interleaves them. With ``cached``, each
    newcomer's prompt starts with an earlier prompt of its stack (whose prefill stored it in a
    prefix cache of 2-token blocks) and runs only the rest, after that prefix's keys and values.
    With ``riding``, each chunk runs in the same forward as the running rows' decode step
    (service.engine.ragged), the last chunk included. Later newcomers are written in place
    (:meth:`DecodeBatch.place`), into the row of a request that ended (still computed, under no
    edits) and into the spare rows an earlier merge left."""
    model = tiny_model(family).to(TEST_DEVICE, dtype)
    surgeon = Surgeon(model)
    base_hash = weights_sha256(model)
    stacks = _stacks(surgeon)
    tolerance = F32_TOLERANCE if dtype == torch.float32 else BF16_TOLERANCE
    texts: dict[int, list[int]] = {}  # request number → its ids so far
    stack_of: dict[int, int] = {}
    order: list[int | None] = []  # request number of each batch row (None: ended, still in the batch)
    no_edits = surgeon.compile([])
    batch: DecodeBatch | None = None
    worst = [0.0]
    prefixes = PrefixCache(1 << 30, block=2) if cached else None

    def compare(logits: torch.Tensor, requests: list[int]) -> None:
        """Each request's row against its solo run; the solo argmax becomes its next token."""
        for row, request in enumerate(requests):
            if request is None:
                continue
            solo = _solo_last_logits(model, surgeon, stacks[stack_of[request]], texts[request])
            worst[0] = max(worst[0], float((logits[row].float() - solo).abs().max()))
            texts[request].append(int(solo.argmax()))

    def join(requests: list[int], spare_rows: int = 0) -> None:
        """Prefill ``requests`` and bring them into the batch: written in place into ended rows
        and spare rows if there are any, else merged (with ``spare_rows`` of room)."""
        nonlocal batch
        for request in requests:
            texts[request], stack_of[request] = _prompt(request), request % len(stacks)
            if prefixes is not None and request >= len(stacks):  # the same stack as request - len(stacks)
                texts[request] = _prompt(request - len(stacks)) + texts[request]
        prompts, requested = [torch.tensor(texts[r]) for r in requests], [stacks[stack_of[r]] for r in requests]
        found = None
        if prefixes is not None:
            found = [prefixes.lookup(stack, texts[r]) for stack, r in zip(requested, requests, strict=True)]
        chunks, rode = 1, 0
        with torch.inference_mode():
            pending = Prefill(model, surgeon, prompts, requested, 0, columns, found)
            while True:
                if riding and batch is not None:  # the running rows' step and the chunk in one forward
                    assert can_ride(model)
                    running, done = ride(model, surgeon, batch, *_step_inputs(), pending)
                    compare(running, order)
                    rode += 1
                else:
                    done = pending.advance()
                if done is not None:
                    break
                chunks += 1
                if batch is not None and not riding:
                    step()  # the running rows go on between two chunks
            joined, logits = done
        assert rode == (chunks if riding and batch is not None else 0)
        assert chunks == (1 if columns is None else -(-pending.width // columns)) and pending.width > 4
        if prefixes is not None:
            hits = [f.length if f is not None else 0 for f in found]
            assert all(hits) == (requests[0] >= len(stacks))  # the newcomers each found their earlier prompt
            assert pending.width == max(len(texts[r]) - h for r, h in zip(requests, hits, strict=True))
            missing = [prefixes.missing(requested[row], texts[r]) for row, r in enumerate(requests)]
            spans = [(row, blocks.start * 2, blocks.stop * 2) for row, blocks in enumerate(missing)]
            for row, (blocks, kv) in enumerate(zip(missing, pending.prompt_kv(spans), strict=True)):
                prefixes.insert(requested[row], texts[requests[row]], blocks, kv)
        ended = [row for row, request in enumerate(order) if request is None]
        if batch is None:
            batch = joined
            order.extend(requests)
        elif ended or len(batch) < batch.cache.layers[0].row_room:
            slots = batch.slots(joined, ended)
            assert slots is not None, "the newcomers fit the ended and spare rows"
            batch.place(joined, slots)
            order.extend([None] * (max(slots) + 1 - len(order)))
            for row, request in zip(slots, requests, strict=True):
                order[row] = request
        else:
            batch.merge(joined, spare_rows)
            order.extend(requests)
        assert len(batch) == len(order)
        compare(logits, requests)

    def _step_inputs() -> tuple:
        """The running rows' stacks and the tokens they take next."""
        tokens = torch.tensor([texts[r][-1] if r is not None else 0 for r in order], device=model.device)
        return surgeon.rows([stacks[stack_of[r]] if r is not None else no_edits for r in order]), tokens

    def step() -> None:
        with torch.inference_mode():
            logits = batch.step(model, surgeon, *_step_inputs())
        compare(logits, order)

    join(list(range(8)))  # eight prompts of different lengths: left padding, every stack
    for _ in range(3):
        step()
    batch.keep([1, 3, 4, 6])  # rows 0, 2, 5 and 7 finish; the longest prompt among them leaves
    order[:] = [order[i] for i in (1, 3, 4, 6)]
    step()
    join([8, 9, 10], spare_rows=2)  # newcomers mid-stream, prefilled and merged, with room for two more
    for _ in range(3):
        step()
    order[1] = None  # its request ended: the row stays in the batch
    step()
    join([11, 12])  # written in place: into the ended row and a spare one
    assert order == [1, 11, 4, 6, 8, 9, 10, 12] and batch.cache.layers[0].row_room == 9
    for _ in range(2):
        step()
    batch.keep([4, 0, 2])
    order[:] = [order[i] for i in (4, 0, 2)]
    step()
    assert worst[0] <= tolerance, f"max |Δ| {worst[0]:.2e} over rows against their solo runs"
    assert weights_sha256(model) == base_hash


def batch(rows: int, length: int) -> DecodeBatch:
    """``rows`` rows of random keys and values, ``length`` columns each, no padding."""
    kv = [(torch.randn(rows, 2, length, 4), torch.randn(rows, 2, length, 4))]
    return DecodeBatch(GrowingCache(kv), torch.ones((rows, length), dtype=torch.long), torch.arange(rows) + length)


def test_compacting_in_place_moves_only_the_last_live_rows_into_the_ended_ones() -> None:
    running = batch(6, 5)
    keys, buffer = running.cache.layers[0].keys.clone(), running.cache.layers[0]._keys
    positions = running.positions.clone()
    order = running.compact([0, 2, 4, 5])  # rows 1 and 3 ended: rows 4 and 5 take their places
    assert order == [0, 4, 2, 5] and len(running) == 4
    assert running.cache.layers[0]._keys is buffer and running.cache.layers[0].row_room == 6  # spare rows now
    assert torch.equal(running.cache.layers[0].keys, keys[order]) and torch.equal(running.positions, positions[order])
    assert running.compact([0, 1, 2]) == [0, 1, 2] and len(running) == 3  # the last row ended: nothing moves
    assert torch.equal(running.cache.layers[0].keys, keys[[0, 4, 2]])


def test_newcomers_go_in_place_only_into_ended_or_spare_rows_and_when_no_longer_than_the_batch() -> None:
    running = batch(3, 6)
    running.merge(batch(1, 6), spare_rows=2)  # 4 rows, room for 6
    assert running.slots(batch(2, 6), ended=[1]) == [1, 4]  # an ended row first, then a spare one
    assert running.slots(batch(3, 5), ended=[0, 2]) == [0, 2, 4]
    assert running.slots(batch(3, 5), ended=[]) is None  # two spare rows only
    assert running.slots(batch(1, 7), ended=[1]) is None  # longer than the batch: a merge widens it
    newcomers, before = batch(2, 4), running.mask.clone()
    running.place(newcomers, [1, 4])
    assert len(running) == 5 and torch.equal(before, torch.ones((4, 6), dtype=torch.long))  # (a new mask)
    assert running.mask[[1, 4]].tolist() == [[0, 0, 1, 1, 1, 1]] * 2 and running.mask[[0, 2, 3]].all()
    assert running.positions[[1, 4]].tolist() == newcomers.positions.tolist()
    assert torch.equal(running.cache.layers[0].keys[[1, 4], :, 2:], newcomers.cache.layers[0].keys)

    running.mask[[0, 2, 3, 4], :3] = 0  # only row 1 uses the first 3 columns
    running.mask[1] = 1
    old = running.cache.layers[0].keys[[0, 2, 3, 4]].clone()
    running.place(batch(1, 2), [1])  # replaced by a row of 2 columns
    assert running.length == 3 and running.mask[[0, 2, 3, 4]].all()  # columns no row uses are dropped
    assert torch.equal(running.cache.layers[0].keys[[0, 2, 3, 4]], old[..., 3:, :])


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_forms_fuse_into_one_op_per_site_and_each_row_still_matches_its_solo_run(family: str) -> None:
    """Steering adds (at every position or at some), zero ablations and low-rank deltas from
    different stacks at one site run as one op over the whole batch (a per-row table, zero where a
    row's stack leaves the site alone)."""
    model = tiny_model(family).to(TEST_DEVICE)
    surgeon = Surgeon(model)
    d = surgeon.dims
    base_hash = weights_sha256(model)
    steer, weight = "blocks.1.hook_resid_post", "blocks.1.mlp.W_out"
    stacks = [
        surgeon.compile(edits)
        for edits in (
            [
                Steering(site=steer, vector=_rand(d.d_model, seed=1)),
                HeadAblation(layer=0, heads=(1,)),
                NeuronAblation(layer=2, neurons=(0, 5)),
                LowRank(site=weight, U=_rand(d.d_model, 1, seed=2), V=_rand(d.d_mlp, 1, seed=3)),
            ],
            [
                Steering(site=steer, vector=_rand(d.d_model, seed=4), scale=3.0),
                HeadAblation(layer=0, heads=(0, d.n_heads - 1)),
                LowRank(site=weight, U=_rand(d.d_model, 3, seed=5), V=_rand(d.d_mlp, 3, seed=6)),
            ],
            [],
            [
                NeuronAblation(layer=2, neurons=(7,)),
                Steering(site=steer, vector=_rand(d.d_model, seed=7), positions=(1, 4)),
            ],
        )
    ]
    order = [stacks[i] for i in (0, 2, 1, 3, 0, 1, 2)]
    rows = surgeon.rows(order)
    assert set(rows.groups) == {*stacks[0].ops, *stacks[1].ops}
    assert all(len(groups) == 1 and groups[0].rows is None for groups in rows.groups.values())  # fused
    prompts = [_prompt(row) for row in range(len(order))]
    worst = 0.0
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(model, surgeon, [torch.tensor(p) for p in prompts], order, 0)
        for step in range(3):  # the prefill, then two decode steps
            if step:
                tokens = torch.tensor([p[-1] for p in prompts], device=model.device)
                logits = batch.step(model, surgeon, rows, tokens)
            for row, stack in enumerate(order):
                solo = _solo_last_logits(model, surgeon, stack, prompts[row])
                worst = max(worst, float((logits[row] - solo).abs().max()))
                prompts[row].append(int(solo.argmax()))
    assert worst <= F32_TOLERANCE, f"max |Δ| {worst:.2e} over rows against their solo runs"
    assert weights_sha256(model) == base_hash


def test_under_a_sliding_window_a_cached_prefix_is_not_exact_so_the_scheduler_keeps_none() -> None:
    """transformers measures a sliding window in cache columns, and a cached prefix is followed by
    a gap of masked columns: with a 4-token window the row's logits move. So the prefix cache is
    used only where reuse is exact, and a scheduler for such a model keeps no prefixes."""
    model = tiny_model("mistral").to(TEST_DEVICE)
    config = model.config
    surgeon = Surgeon(model)
    stack = surgeon.compile([])
    cached, short, long = _prompt(1)[:4], _prompt(2)[:3], _prompt(3)[:9]
    prefixes = PrefixCache(1 << 20, block=2)
    with torch.inference_mode():
        first = Prefill(model, surgeon, [torch.tensor(cached + short)], [stack], 0)
        first.advance()
        blocks = prefixes.missing(stack, cached + short)
        prefixes.insert(stack, cached + short, blocks, first.prompt_kv([(0, 0, blocks.stop * 2)])[0])
        found = [prefixes.lookup(stack, cached + short), None]  # 6 tokens cached, then a gap of 8 columns
        gapped = Prefill(
            model, surgeon, [torch.tensor(cached + short), torch.tensor(long)], [stack] * 2, 0, None, found
        )
        _, logits = gapped.advance()
    assert found[0] is not None and found[0].length == 6
    solo = _solo_last_logits(model, surgeon, stack, cached + short)
    assert float((logits[0].float() - solo).abs().max()) > 1e-3  # the gap moved tokens out of the window
    assert not reuse_is_exact(config)
    assert reuse_is_exact(MistralConfig(sliding_window=None)) and reuse_is_exact(Qwen2Config())
    assert all(reuse_is_exact(tiny_model(family).config) for family in FAMILIES)
    tokenizer = word_tokenizer()
    scheduler = Scheduler(model, surgeon, tokenizer, "windowed")
    try:
        assert scheduler.prefix_cache.max_bytes == 0
    finally:
        scheduler.close()
