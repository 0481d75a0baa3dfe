"""The serving engine: continuous batching on one scheduler thread, each row under its own version."""

from __future__ import annotations

import copy
import itertools
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import torch

from editors import HeadAblation, LowRank, Steering, Surgeon, weights_sha256
from editors.covariance import key_covariance
from editors.rome import compute_rome
from editors.toyworld import TOY_MODEL_DIR, load_toy_model, reference_corpus
from editors.toyworld.counterfact import edit_cases
from service.db.migrate import upgrade
from service.engine.decode_batch import DecodeBatch, column_bytes
from service.engine.intra_op import forward_threads
from service.engine.scheduler import (
    CAP_REGROWTH_STEPS,
    GATHER_STEPS,
    KV_HEADROOM_STEPS,
    MIN_SPARE_ROWS,
    Finished,
    Sampling,
    Scheduler,
    SchedulerClosed,
    Token,
)
from service.hosting import ModelHost
from service.registry import InvalidArgument, NotFound, Registry
from service.server import ModelSpec
from tests.conftest import TEST_DEVICE
from tests.scheduler_hold import scheduler_held
from tests.test_service import served  # noqa: F401  (the gRPC server fixture)

NEW_TOKENS = 12
T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> ModelHost:
    url = f"sqlite:///{tmp_path_factory.mktemp('scheduler') / 'registry.db'}"
    upgrade("head", url)
    host = ModelHost("toy", str(TOY_MODEL_DIR), Registry(url), device=TEST_DEVICE)
    yield host
    host.close()


def _texts(world, n: int) -> list[str]:
    """Prompts of different lengths that the toy model keeps continuing (left padding in the batch):
    a random symbol sequence and the start of its copy, which induction carries on for at least
    ``NEW_TOKENS`` tokens (the toy model ends a document soon after a finished copy)."""
    generator = torch.Generator().manual_seed(5)
    prompts = []
    for i in range(n):
        order = torch.randperm(len(world.symbols), generator=generator)[: NEW_TOKENS + 3 + i % 9].tolist()
        sequence = [world.symbols[j] for j in order]
        prompts.append(" ".join(sequence + sequence[:2]))
    return prompts


def _solo(model, tokenizer, surgeon: Surgeon, edits: list, text: str, new_tokens: int) -> list[int]:
    """Greedy tokens of ``text`` alone under ``edits``: transformers' own generate, batch 1."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode(), surgeon.apply(edits):
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    produced = out[0, ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return produced[: produced.index(eos)] if eos in produced else produced


def _greedy_past_eos(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy tokens of ``prompt`` alone, one plain forward per token, going on past EOS."""
    ids, made = prompt.unsqueeze(0).to(model.device), []
    with torch.inference_mode():
        for _ in range(new_tokens):
            made.append(int(model(input_ids=ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, ids.new_tensor([[made[-1]]])], dim=1)
    return made


def _collect(events) -> tuple[list[int], Finished]:
    tokens = []
    for event in events:
        if isinstance(event, Token):
            tokens.extend(event.token_ids)
        else:
            return tokens, event
    raise AssertionError("the stream ended without a Finished event")


def _queued_together(
    scheduler: Scheduler, prompts: list[torch.Tensor], stack, new_tokens: int = NEW_TOKENS
) -> list[tuple[list[int], Finished]]:
    """Each prompt's greedy stream (past EOS), all queued while the scheduler is held so that they
    are admitted together, each read to its end."""
    sampling = Sampling(max_tokens=new_tokens, ignore_eos=True)
    with scheduler_held(scheduler):
        streams = [scheduler.generate(prompt, stack, sampling) for prompt in prompts]
    return [_collect(stream) for stream in streams]


@contextmanager
def _forward_inputs(model) -> Iterator[list[tuple[torch.Size, torch.Tensor]]]:
    """While inside, each forward's input ids' shape and its attention mask, in order."""
    seen: list[tuple[torch.Size, torch.Tensor]] = []

    def record(_: object, args: tuple, kwargs: dict) -> None:
        seen.append((kwargs["input_ids"].shape, kwargs["attention_mask"]))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield seen
    finally:
        hook.remove()


@contextmanager
def _running_out(model, rows: int, prefill: bool = False) -> Iterator[list[int]]:
    """While inside, a decode step (with ``prefill``: a prefill) over more than ``rows`` rows runs
    out of memory in the second block, after the first appended its keys and values; yields the
    rows of each such forward, in order."""
    seen: list[int] = []

    def run_out(_: object, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if (hidden.shape[1] > 1) == prefill:
            seen.append(hidden.shape[0])
            if hidden.shape[0] > rows:
                raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    hook = model.transformer.h[1].register_forward_pre_hook(run_out, with_kwargs=True)
    try:
        yield seen
    finally:
        hook.remove()


def concurrently(run: Callable[[int], T], count: int) -> dict[int, T]:
    """``run(i)`` for i in 0..count-1, each on its own thread, all released at once."""
    barrier = threading.Barrier(count)
    results: dict[int, T] = {}

    def one(i: int) -> None:
        barrier.wait()
        results[i] = run(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_streams_share_forwards_and_each_gets_its_solo_output(host, toy) -> None:
    model, tokenizer, world = toy
    registry = host.registry
    vector = torch.randn(128, generator=torch.Generator().manual_seed(0))
    steer = Steering(site="blocks.2.hook_resid_pre", vector=vector)
    versions = [0]
    for edits in ([steer], [HeadAblation(layer=1, heads=(0, 3))]):
        ids = [registry.create_edit("toy", edit, "test").id for edit in edits]
        versions.append(registry.create_version("toy", 0, "test", append=ids).number)
    edit_lists = [[], [steer], [HeadAblation(layer=1, heads=(0, 3))]]
    texts = _texts(world, 12)
    before = host.scheduler.forwards
    results = concurrently(
        lambda i: _collect(host.generate(versions[i % 3], texts[i], max_tokens=NEW_TOKENS - i % 4)), len(texts)
    )
    surgeon = Surgeon(model)
    produced = 0
    for i, text in enumerate(texts):
        tokens, finished = results[i]
        assert tokens == _solo(model, tokenizer, surgeon, edit_lists[i % 3], text, NEW_TOKENS - i % 4), i
        assert finished.tokens == len(tokens)
        produced += len(tokens)
    forwards = host.scheduler.forwards - before
    # one forward per decode step over every row, not one per token: taking turns would need `produced`
    assert forwards <= produced // 3, (forwards, produced)


def test_a_cancelled_stream_frees_its_row_and_the_others_go_on(host, toy) -> None:
    _, _, world = toy
    texts = _texts(world, 3)
    long_stream = host.generate(0, texts[0], max_tokens=200)
    first = next(long_stream)
    assert isinstance(first, Token)
    other = host.generate(0, texts[1], max_tokens=NEW_TOKENS)
    long_stream.close()  # the caller went away
    tokens, finished = _collect(other)
    assert finished.finish_reason in ("length", "eos") and len(tokens) == finished.tokens
    cancelled = threading.Event()
    stop_after_two = host.generate(0, texts[2], max_tokens=200, is_active=lambda: not cancelled.is_set())
    for count, event in enumerate(stop_after_two, start=1):
        if count == 2:
            cancelled.set()
        if isinstance(event, Finished):
            assert event.finish_reason == "cancelled" and event.tokens < 200
            break
    host.forward(lambda: None)  # a job runs between steps: by then the loop has dropped the rows
    assert host.scheduler.active_rows == 0


def test_a_bad_request_fails_alone(host, toy) -> None:
    model, tokenizer, world = toy
    text = _texts(world, 1)[0]
    good = host.generate(0, text, max_tokens=NEW_TOKENS)
    first = next(good)
    assert isinstance(first, Token)
    with pytest.raises(NotFound):
        host.generate(999, text)
    with pytest.raises(InvalidArgument, match="tokens"):
        host.generate(0, " ".join([world.symbols[0]] * (host.context_length + 5)))
    with pytest.raises(InvalidArgument, match="temperature"):
        host.generate(0, text, temperature=1e-45)
    tokens, finished = _collect(good)
    assert finished.finish_reason in ("length", "eos")
    assert [*first.token_ids, *tokens] == _solo(model, tokenizer, Surgeon(model), [], text, NEW_TOKENS)


def _let_steps_pass(host: ModelHost, steps: int) -> None:
    """Jobs run one per loop iteration, each followed by a decode step: this waits ``steps`` steps."""
    for _ in range(steps):
        host.forward(lambda: None)


def test_a_slow_reader_gets_its_tokens_coalesced_and_a_stop_string_still_ends_at_its_token(host, toy) -> None:
    _, tokenizer, world = toy
    text = _texts(world, 2)[1]
    alone, _ = _collect(host.generate(0, text, max_tokens=NEW_TOKENS))
    events = host.generate(0, text, max_tokens=NEW_TOKENS)
    first = next(events)
    _let_steps_pass(host, NEW_TOKENS + 2)  # the stream finishes while its reader sleeps
    rest = list(events)
    assert len(rest) == 2 and isinstance(rest[1], Finished)  # one chunk with every token, then the end
    assert [*first.token_ids, *rest[0].token_ids] == alone
    assert first.text + rest[0].text == tokenizer.decode(alone)
    stop = tokenizer.decode(alone[6:7]).strip()
    end = next(i for i in range(len(alone)) if stop in tokenizer.decode(alone[: i + 1]))
    events = host.generate(0, text, max_tokens=NEW_TOKENS, stop=(stop,))
    first = next(events)
    _let_steps_pass(host, NEW_TOKENS + 2)
    tokens, finished = _collect(events)
    assert [*first.token_ids, *tokens] == alone[: end + 1] and finished.finish_reason == "stop"


def test_under_a_stream_interval_tokens_leave_in_chunks_but_the_first_at_once(toy) -> None:
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "chunks", stream_interval=3, max_hold_s=3600)
    try:
        text = _texts(world, 3)[2]
        prompt = tokenizer(text, return_tensors="pt")["input_ids"][0]
        events = list(scheduler.generate(prompt, surgeon.compile([]), Sampling(max_tokens=NEW_TOKENS)))
    finally:
        scheduler.close()
    chunks = [event.token_ids for event in events if isinstance(event, Token)]
    # the first token is never held back: alone, or (a slow reader) with whole chunks behind it
    assert len(chunks[0]) % 3 == 1
    assert all(len(chunk) % 3 == 0 for chunk in chunks[1:-1])  # a slow reader may take two chunks at once
    assert len(chunks) < NEW_TOKENS  # some tokens travelled together
    assert [t for chunk in chunks for t in chunk] == _solo(model, tokenizer, surgeon, [], text, NEW_TOKENS)
    assert events[-1] == Finished("length", NEW_TOKENS)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="stream_interval"):
            Scheduler(model, surgeon, tokenizer, "bad", stream_interval=bad)


def test_check_rows_wait_behind_streams_for_a_place_in_the_batch(toy) -> None:
    """With room for one row, a check run's completion queued first is prefilled after a stream
    queued later: check rows are a lower priority than the streams being served."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "priority", max_rows=1)
    stack = surgeon.compile([])
    check_text, stream_text = _texts(world, 3)[1:]
    check_prompt, stream_prompt = (tokenizer(t, return_tensors="pt")["input_ids"][0] for t in (check_text, stream_text))
    assert len(check_prompt) != len(stream_prompt)
    prefills: list[int] = []

    def record(_: object, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            prefills.append(ids.shape[1])

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    holding, release = threading.Event(), threading.Event()
    try:
        job = threading.Thread(target=scheduler.call, args=(lambda: (holding.set(), release.wait(60)),))
        job.start()
        assert holding.wait(60)  # the scheduler is held between two steps: nothing is admitted
        check = threading.Thread(target=scheduler.complete, args=([check_prompt], stack, [Sampling(max_tokens=3)]))
        check.start()
        for _ in range(1200):  # a bounded wait for the mechanism (the check's row queued), not a latency bar
            if scheduler.waiting:
                break
            threading.Event().wait(0.05)
        stream = scheduler.generate(stream_prompt, stack, Sampling(max_tokens=3))
        assert scheduler.waiting == 2
        release.set()
        job.join()
        assert list(stream)[-1] == Finished("length", 3)
        check.join()
    finally:
        release.set()
        hook.remove()
        scheduler.close()
    assert prefills == [len(stream_prompt), len(check_prompt)]


def _long_prompt_joins_a_running_stream(
    scheduler: Scheduler, toy, module: torch.nn.Module, hook: Callable, joining: Callable[[], None] = lambda: None
) -> int:
    """A 25-token prompt joins (``joining`` is called as it is sent) while a short stream decodes,
    ``hook`` a forward pre-hook (with kwargs) on ``module`` meanwhile; both streams must produce
    exactly their solo output. Returns the long prompt's length."""
    model, tokenizer, world = toy
    stack = scheduler.surgeon.compile([])
    short, long = _texts(world, 9)[0], " ".join(world.symbols[:12] * 2)
    short_ids, long_ids = (tokenizer(t, return_tensors="pt")["input_ids"][0] for t in (short, long))
    assert len(long_ids) > 12
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        running = scheduler.generate(short_ids, stack, Sampling(max_tokens=40, ignore_eos=True))
        first = next(running)  # the short stream is decoding
        joining()
        newcomer = list(scheduler.generate(long_ids, stack, Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)))
        rest = list(running)
    finally:
        handle.remove()
        scheduler.close()
    made = [t for event in [first, *rest] if isinstance(event, Token) for t in event.token_ids]
    assert made == _greedy_past_eos(model, short_ids, 40)
    assert [t for e in newcomer if isinstance(e, Token) for t in e.token_ids] == _greedy_past_eos(
        model, long_ids, NEW_TOKENS
    )
    return len(long_ids)


@pytest.mark.parametrize("riding", [False, True], ids=["apart", "riding"])
def test_a_long_prompt_is_prefilled_in_chunks_while_the_running_rows_decode(toy, riding: bool) -> None:
    """With a prefill chunk of 4 positions, a newcomer's prompt runs 4 positions per forward and
    the running stream takes a decode step between two chunks, or (``riding``) each chunk runs in
    the running stream's decode step, one forward of 1 + 4 tokens; both streams still produce
    exactly their solo output."""
    model, tokenizer, _ = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "chunked", prefill_chunk_tokens=4, ride_prefill=riding)
    assert scheduler.ride_prefill == riding
    widths: list[int] = []  # each forward's positions per row, from the newcomer's arrival on

    def record(_: object, args: tuple, kwargs: dict) -> None:
        widths.append(kwargs["input_ids"].shape[1])

    built: list[int] = []  # the rows of each set of per-row stacks built
    rows = surgeon.rows
    surgeon.rows = lambda stacks, *args: built.append(len(stacks)) or rows(stacks, *args)  # type: ignore[method-assign]
    long_tokens = _long_prompt_joins_a_running_stream(scheduler, toy, model, record, widths.clear)
    if riding:  # every chunk rode in a decode step (one position per token), none ran alone
        assert set(widths) == {1} and scheduler.ridden == -(-long_tokens // 4)
        assert built.count(1 + 4) == 1  # the chunks of 4 beside the same running row share their token stacks
    else:
        chunks = [i for i, width in enumerate(widths) if width == 4]
        assert len(chunks) >= long_tokens // 4 - 1  # the long prompt took several forwards
        assert any(1 in widths[a + 1 : b] for a, b in itertools.pairwise(chunks))  # decode steps between
        assert scheduler.ridden == 0
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        Scheduler(model, surgeon, tokenizer, "bad", prefill_chunk_tokens=0)


@pytest.mark.parametrize("error", [RuntimeError("a fault (raised by the test)"), torch.OutOfMemoryError("CUDA oom")])
def test_a_ride_that_fails_leaves_both_sides_as_they_were_and_they_run_apart(toy, error: Exception) -> None:
    """The first forward carrying a prefill chunk fails in its second block, after the first
    wrote its keys and values to both caches: the running rows and the prefill are rewound and
    run apart (a chunk, then a decode step), later chunks ride again, and no stream fails: both
    produce exactly their solo output."""
    model, tokenizer, _ = toy
    scheduler = Scheduler(model, Surgeon(model), tokenizer, "ride-fails", prefill_chunk_tokens=4)
    failed: list[torch.Size] = []

    def fail_once(_: object, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if not failed and hidden.shape[0] > 2 and hidden.shape[1] == 1:  # a ride: 1 + 4 tokens
            failed.append(hidden.shape)
            raise error

    long_tokens = _long_prompt_joins_a_running_stream(scheduler, toy, model.transformer.h[1], fail_once)
    assert failed == [torch.Size([5, 1, model.config.n_embd])]
    assert scheduler.ridden == -(-long_tokens // 4) - 1  # the failed chunk ran apart; the others rode


def test_a_prompt_starting_like_an_earlier_one_runs_only_the_rest_and_makes_the_same_tokens(toy) -> None:
    """Two prompts share a 34-token start: the second runs its prompt from position 32 (two stored
    16-token blocks) and still produces its solo output. Under another version the same prompt
    finds nothing (keys and values depend on the edits), nor with the cache turned off."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    base, steered = (
        surgeon.compile([]),
        surgeon.compile([Steering(site="blocks.1.hook_resid_post", vector=torch.ones(128) * 0.3)]),
    )
    shared = " ".join(world.symbols[:11] * 3)
    first, second = (
        tokenizer(f"{shared} {tail}", return_tensors="pt")["input_ids"][0]
        for tail in (world.symbols[12], " ".join(world.symbols[13:15]))
    )
    common = next(i for i, (a, b) in enumerate(zip(first.tolist(), second.tolist(), strict=False)) if a != b)
    assert 32 <= common < 48 and len(second) > common
    widths: list[int] = []

    def record(_: object, args: tuple, kwargs: dict) -> None:
        widths.append(kwargs["input_ids"].shape[1])

    def run(scheduler: Scheduler, prompt: torch.Tensor, stack) -> tuple[list[int], int]:
        widths.clear()
        events = list(scheduler.generate(prompt, stack, Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)))
        return [t for e in events if isinstance(e, Token) for t in e.token_ids], widths[0]

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    caching, plain = (
        Scheduler(model, surgeon, tokenizer, "cached"),
        Scheduler(model, surgeon, tokenizer, "uncached", prefix_cache_bytes=0),
    )
    try:
        made, width = run(caching, first, base)
        assert width == len(first) and caching.prefix_cache.hit_tokens == 0  # nothing stored yet
        assert made == _greedy_past_eos(model, first, NEW_TOKENS)
        made, width = run(caching, second, base)
        assert width == len(second) - 32 and caching.prefix_cache.hit_tokens == 32
        assert made == _greedy_past_eos(model, second, NEW_TOKENS)
        with surgeon.apply(steered):
            expected = _greedy_past_eos(model, second, NEW_TOKENS)
        made, width = run(caching, second, steered)
        assert width == len(second) and made == expected  # another version: its own prefixes
        assert run(plain, first, base)[1] == len(first) and run(plain, second, base)[1] == len(second)
        assert plain.prefix_cache.hit_tokens == 0 and len(plain.prefix_cache) == 0
    finally:
        hook.remove()
        caching.close()
        plain.close()


@pytest.mark.parametrize("within", [8, 0, None])
def test_a_newcomer_waits_at_most_admit_within_steps_to_be_gathered(toy, within: int | None) -> None:
    """Four streams decode; a fifth arrives alone (fewer than half the running rows). It is left
    to gather company for ``admit_within`` decode steps, then its prefill rides in the next one;
    with 0 it rides in the very next step. By default (None) a model whose prefills ride admits at
    once (0), and one whose prefills run apart gathers for ``GATHER_STEPS``. Every stream still
    produces exactly its solo output."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "admission", admit_within=within)
    apart = Scheduler(model, surgeon, tokenizer, "apart", admit_within=within, ride_prefill=False)
    apart.close()
    assert apart.admit_within == (GATHER_STEPS if within is None else within)
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 5)]
    sampling = Sampling(max_tokens=60, ignore_eos=True)
    rows_per_forward: list[int] = []
    try:
        with scheduler_held(scheduler):
            running = [scheduler.generate(prompt, stack, sampling) for prompt in prompts[:4]]
        firsts = [next(stream) for stream in running]  # decoding, with 59 steps to go
        with ExitStack() as recording:
            with scheduler_held(scheduler):  # forwards are recorded from this point between two steps on
                newcomer = scheduler.generate(prompts[4], stack, Sampling(max_tokens=NEW_TOKENS, ignore_eos=True))
                forwards = recording.enter_context(_forward_inputs(model))
            late, _ = _collect(newcomer)
        rows_per_forward = [shape[0] for shape, _ in forwards]
        rests = [_collect(stream)[0] for stream in running]
    finally:
        scheduler.close()
    ride = next(i for i, rows in enumerate(rows_per_forward) if rows > 4)  # 4 rows + the prompt's tokens
    assert ride == (within or 0) and rows_per_forward[:ride] == [4] * ride  # decode steps alone until then
    assert late == _greedy_past_eos(model, prompts[4], NEW_TOKENS)
    for prompt, first, rest in zip(prompts[:4], firsts, rests, strict=True):
        assert [*first.token_ids, *rest] == _greedy_past_eos(model, prompt, 60)
    with pytest.raises(ValueError, match="admit_within"):
        Scheduler(model, surgeon, tokenizer, "bad", admit_within=-1)


@contextmanager
def _joins() -> Iterator[list[tuple[str, int]]]:
    """While inside, how each prefill's rows joined the batch, in order: ``("merge", cache
    buffers' rows after)`` for a copy of the whole cache, ``("place", rows written)`` in place."""
    seen: list[tuple[str, int]] = []
    merge, place = DecodeBatch.merge, DecodeBatch.place

    def merging(batch: DecodeBatch, other: DecodeBatch, spare_rows: int = 0) -> None:
        merge(batch, other, spare_rows)
        seen.append(("merge", batch.cache.layers[0].row_room))

    def placing(batch: DecodeBatch, other: DecodeBatch, rows) -> None:
        seen.append(("place", len(rows)))
        place(batch, other, rows)

    DecodeBatch.merge, DecodeBatch.place = merging, placing  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        DecodeBatch.merge, DecodeBatch.place = merge, place  # type: ignore[method-assign]


def test_newcomers_take_the_rows_of_ended_streams_and_spare_rows_in_place(toy) -> None:
    """Five streams start together; the short one ends and its row stays in the batch (a fifth of
    it, under the quarter that compacts). A newcomer is written into that row in place. The next
    has no ended row to take: the whole cache is copied once, with spare rows, and the one after
    it is written into a spare row. Every stream produces exactly its solo output."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "in-place", admit_within=0)
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 8)]
    long, late = Sampling(max_tokens=90, ignore_eos=True), Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)
    try:
        with scheduler_held(scheduler):
            running = [scheduler.generate(prompt, stack, long) for prompt in prompts[:4]]
            short = scheduler.generate(prompts[4], stack, Sampling(max_tokens=2, ignore_eos=True))
        firsts = [next(stream) for stream in running]
        ended, _ = _collect(short)
        newcomers = []
        with _joins() as joins:
            for prompt in prompts[5:]:  # each in the batch once its first token is out
                newcomers.append(scheduler.generate(prompt, stack, late))
                newcomers[-1] = (next(newcomers[-1]), newcomers[-1])
        with scheduler_held(scheduler):  # its first column is some row's: no column is left unused
            assert scheduler._batch is not None and bool(scheduler._batch.mask[:, 0].any())
        lates = [[*first.token_ids, *_collect(rest)[0]] for first, rest in newcomers]
        rests = [_collect(stream)[0] for stream in running]
    finally:
        scheduler.close()
    assert joins == [("place", 1), ("merge", 6 + MIN_SPARE_ROWS), ("place", 1)]
    assert ended == _greedy_past_eos(model, prompts[4], 2)
    for prompt, made in zip(prompts[5:], lates, strict=True):
        assert made == _greedy_past_eos(model, prompt, NEW_TOKENS)
    for prompt, first, rest in zip(prompts[:4], firsts, rests, strict=True):
        assert [*first.token_ids, *rest] == _greedy_past_eos(model, prompt, 90)


@pytest.mark.parametrize(("short", "room"), [(2, 8), (6, 2)])
def test_a_compaction_moves_rows_in_place_unless_few_are_left(toy, short: int, room: int) -> None:
    """Eight streams start together; ``short`` of them end after two tokens (a quarter or more:
    the batch compacts). With 6 rows left the last live rows move into the ended ones and the
    buffers keep their 8 rows for newcomers; with 2 left (a quarter of the rows or fewer) they are
    copied into buffers of 2 rows. Every stream produces exactly its solo output."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "compacting")
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 8)]
    long, brief = Sampling(max_tokens=60, ignore_eos=True), Sampling(max_tokens=2, ignore_eos=True)
    try:
        with scheduler_held(scheduler):
            streams = [scheduler.generate(p, stack, brief if i < short else long) for i, p in enumerate(prompts)]
        made = [_collect(stream)[0] for stream in streams[:short]]
        with scheduler_held(scheduler):
            assert scheduler._batch is not None and len(scheduler._batch) == 8 - short
            assert scheduler._batch.row_room == room
        made += [_collect(stream)[0] for stream in streams[short:]]
    finally:
        scheduler.close()
    for i, (prompt, tokens) in enumerate(zip(prompts, made, strict=True)):
        assert tokens == _greedy_past_eos(model, prompt, 2 if i < short else 60)


def _churn_prompts(world, tokenizer, rng: random.Random) -> list[torch.Tensor]:
    """Prompts of 6 to 40 tokens, some sharing a start of one or two prefix-cache blocks."""
    symbols = world.symbols
    starts = [tokenizer(" ".join(rng.choices(symbols, k=n)), return_tensors="pt")["input_ids"][0] for n in (16, 32)]
    prompts = []
    for _ in range(24):
        own = tokenizer(" ".join(rng.choices(symbols, k=rng.randint(6, 20))), return_tensors="pt")["input_ids"][0]
        shared = rng.choice([None, *starts])
        prompts.append(own if shared is None else torch.cat([shared, own[1 : 41 - len(shared)]]))  # (one BOS)
    return prompts


def _churn_edits(seed: int) -> list[list]:
    """Five versions' edits: the base, steering, head ablation, a low-rank delta, and all three."""
    generator = torch.Generator().manual_seed(seed)
    steer = Steering(site="blocks.2.hook_resid_pre", vector=torch.randn(128, generator=generator))
    heads = HeadAblation(layer=1, heads=(0, 3))
    delta = LowRank(
        site="blocks.1.mlp.W_out",
        U=torch.randn(128, 2, generator=generator) / 4,
        V=torch.randn(512, 2, generator=generator) / 4,
    )
    return [[], [steer], [heads], [delta], [steer, heads, delta]]


@pytest.mark.parametrize(("seed", "budget"), [(11, 0), (12, 0), (13, 0), (14, 160), (15, 200)])
def test_streams_arriving_ending_and_cancelled_at_random_each_make_their_solo_output(
    toy, seed: int, budget: int
) -> None:
    """A seeded random schedule: bursts of streams (some queued together while the scheduler is
    held), decode steps passing, cancellations; prompts of 6 to 40 tokens (chunked prefill at 8,
    prompts sharing prefix-cache blocks), five versions (steering, head ablation, a low-rank
    delta, a mix, the base), at most 6 rows at once, 1 to 30 new tokens. With a ``budget`` the
    KV cache holds that many row-columns (one or two full rows) and streams make up to 60
    tokens, so rows that grew past their headroom go back to be prefilled again (one or two per
    run when this was written). Whatever joins in place, merges, compacts, rides, waits or goes
    back, every stream read at the end makes exactly its solo greedy output (a cancelled one a
    start of it), and nothing is left in the batch."""
    model, tokenizer, world = toy
    rng = random.Random(seed)
    edit_lists = _churn_edits(seed)
    surgeon = Surgeon(model)
    stacks = [surgeon.compile(edits) for edits in edit_lists]
    scheduler = Scheduler(
        model,
        surgeon,
        tokenizer,
        "churn",
        max_rows=6,
        prefill_chunk_tokens=8,
        kv_cache_bytes=budget * column_bytes(model),
    )
    prompts = _churn_prompts(world, tokenizer, rng)
    started: list[tuple[int, int, threading.Event, Iterator]] = []  # version, tokens, cancel, events
    try:
        while len(started) < len(prompts):
            action = rng.random()
            if action < 0.5:  # a burst of streams, queued together or one after another
                with scheduler_held(scheduler) if rng.random() < 0.5 else nullcontext():
                    for _ in range(min(rng.randint(1, 4), len(prompts) - len(started))):
                        version, tokens = rng.randrange(len(stacks)), rng.randint(1, 60 if budget else 30)
                        cancel, sampling = threading.Event(), Sampling(max_tokens=tokens, ignore_eos=True)
                        active = lambda c=cancel: not c.is_set()  # noqa: E731
                        events = scheduler.generate(prompts[len(started)], stacks[version], sampling, active)
                        started.append((version, tokens, cancel, events))
            elif action < 0.65 and started:  # a stream's caller goes away
                rng.choice(started)[2].set()
            else:  # decode steps pass (one job runs per loop iteration, each followed by a step)
                for _ in range(rng.randint(1, 6)):
                    scheduler.call(lambda: None)
        made = [_collect(events) for *_, events in started]
        left = scheduler.call(lambda: (scheduler.active_rows, scheduler.waiting, len(scheduler._joining)))
    finally:
        scheduler.close()
    assert left == (0, 0, 0)
    for index, (prompt, (version, tokens, cancel, _), (ids, finished)) in enumerate(
        zip(prompts, started, made, strict=True)
    ):
        with surgeon.apply(edit_lists[version]):
            solo = _greedy_past_eos(model, prompt, tokens)
        if finished.finish_reason == "cancelled":
            assert cancel.is_set() and ids == solo[: len(ids)] and len(ids) < tokens, index
        else:
            assert (finished.finish_reason, ids) == ("length", solo), (index, version)


def test_a_short_prompt_admitted_during_a_long_chunked_prefill_runs_before_its_remaining_chunks(toy) -> None:
    """Four streams decode; a 48-token prompt is prefilled 8 positions at a time; a 4-token prompt
    arriving after its first chunk is admitted at once (not gathered for 8 decode steps, as
    newcomers are when a prefill would be a forward of its own) and prefilled next, not after the
    long prompt's last chunk. Every stream still produces exactly its solo output."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "two-prefills", prefill_chunk_tokens=8, ride_prefill=False)
    stack = surgeon.compile([])
    long = tokenizer(" ".join(world.symbols[:47]), return_tensors="pt")["input_ids"][0]
    short = long.new_tensor(tokenizer.convert_tokens_to_ids(world.symbols[60:64]))
    running = [
        long.new_tensor(tokenizer.convert_tokens_to_ids(world.symbols[70 + 4 * i : 74 + 4 * i])) for i in range(4)
    ]
    assert len(long) == 48 and len(short) == 4
    prefills: list[list[int]] = []  # one-row forwards of more than one position: the two prompts' chunks
    arrived: list = []

    def record(_: object, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"]
        if ids.shape[0] == 1 and ids.shape[1] > 1:
            prefills.append(ids[0].tolist())
            if prefills[0] == long[:8].tolist() and not arrived:  # the long prompt's first chunk ran
                arrived.append(scheduler.generate(short, stack, Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)))

    sampling = Sampling(max_tokens=40, ignore_eos=True)
    try:
        streams = [scheduler.generate(prompt, stack, sampling) for prompt in running]
        firsts = [next(stream) for stream in streams]  # all four are decoding
        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            long_events = list(scheduler.generate(long, stack, Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)))
            short_events = list(arrived[0])
        finally:
            hook.remove()
        rests = [list(stream) for stream in streams]
    finally:
        scheduler.close()
    assert prefills[:2] == [long[:8].tolist(), short.tolist()]  # next, not after the long prompt's sixth chunk
    assert long[-8:].tolist() in prefills[2:]
    for events, prompt, new in [
        (long_events, long, NEW_TOKENS),
        (short_events, short, NEW_TOKENS),
        *[([first, *rest], prompt, 40) for first, rest, prompt in zip(firsts, rests, running, strict=True)],
    ]:
        made = [t for e in events if isinstance(e, Token) for t in e.token_ids]
        assert made == _greedy_past_eos(model, prompt, new)


def test_a_burst_sharing_a_prompt_start_computes_it_once_and_each_stream_its_solo_output(toy) -> None:
    """Six prompts arrive together: five share a 48-token start (three stored blocks' worth), the
    sixth shares only its first 16 tokens with them. The first of the five runs with the sixth (too
    little shared to wait for); the other four wait for its blocks and run only their own 4-token
    tails, in one prefill after it. Each stream still produces exactly its solo greedy tokens."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "burst", ride_prefill=False)
    stack = surgeon.compile([])
    ids = tokenizer.convert_tokens_to_ids
    start = torch.tensor([tokenizer.bos_token_id, *ids(world.symbols[:47])])
    sharing = [torch.cat([start, torch.tensor(ids(world.symbols[60 + 4 * i : 64 + 4 * i]))]) for i in range(5)]
    partial = torch.cat([start[:16], torch.tensor(ids(world.symbols[100:140]))])
    prompts = [*sharing, partial]
    try:
        with _forward_inputs(model) as forwards:
            made = [tokens for tokens, _ in _queued_together(scheduler, prompts, stack)]
    finally:
        scheduler.close()
    # each prefill forward's rows, as their real-token counts
    prefills = [mask[:, -shape[1] :].sum(-1).tolist() for shape, mask in forwards if shape[1] > 1]
    assert prefills == [[52, 56], [4, 4, 4, 4]]
    assert scheduler.prefix_cache.hit_tokens == 4 * 48
    for tokens, prompt in zip(made, prompts, strict=True):
        assert tokens == _greedy_past_eos(model, prompt, NEW_TOKENS)


def test_short_prompts_queued_with_a_long_one_are_not_padded_to_it(toy) -> None:
    """A 100-token prompt and four short ones are queued together. Padded into one prefill, the
    short rows would each run 100 positions and wait for all the long prompt's chunks; instead the
    long one is prefilled alone, and the short ones, in a prefill of their own, run right after
    its first chunk. Every stream still produces exactly its solo greedy tokens."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "padding", prefill_chunk_tokens=32, ride_prefill=False)
    stack = surgeon.compile([])
    ids = tokenizer.convert_tokens_to_ids
    long = torch.tensor(ids(world.symbols[:100]))
    shorts = [torch.tensor(ids(world.symbols[150 + 6 * i : 156 + 6 * i])) for i in range(4)]
    prompts = [long, *shorts]
    try:
        with _forward_inputs(model) as forwards:
            made = [tokens for tokens, _ in _queued_together(scheduler, prompts, stack)]
    finally:
        scheduler.close()
    prefills = [tuple(shape) for shape, _ in forwards if shape[1] > 1]  # each prefill forward's (rows, positions)
    assert prefills[:2] == [(1, 32), (4, 6)]  # the long prompt's first chunk, then the short ones
    assert sum(columns for rows, columns in prefills if rows == 1) == 100
    for tokens, prompt in zip(made, prompts, strict=True):
        assert tokens == _greedy_past_eos(model, prompt, NEW_TOKENS)


def test_a_decode_step_out_of_memory_prefills_the_newer_rows_again_and_fails_no_stream(toy) -> None:
    """A decode step over more than four rows runs out of memory (raised in the second block,
    after the first appended the step's column to its cache). The newer half of the rows leave the
    batch and wait to be prefilled again from their prompt and tokens so far; the batch holds at
    most four rows until it empties. No stream fails, and each produces exactly its solo greedy
    tokens: the kept rows' cache lost the failed step's column, the others recomputed theirs."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "out-of-memory")
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 8)]
    try:
        with _running_out(model, 4) as steps:  # rows of each decode step the second block saw
            ends = _queued_together(scheduler, prompts, stack)
    finally:
        scheduler.close()
    assert steps[0] == 8 and max(steps[1:]) == 4 and scheduler.preempted == 4
    for (tokens, end), prompt in zip(ends, prompts, strict=True):
        assert end.finish_reason == "length"
        assert tokens == _greedy_past_eos(model, prompt, NEW_TOKENS)


def test_a_kv_budget_bounds_every_step_and_sends_rows_back_without_failing_one(toy) -> None:
    """Eight streams of 30 tokens under a KV budget of four prompts and KV_HEADROOM_STEPS columns:
    four join together (a fifth would leave no such room), and once their columns grow past it the
    newest go back to be prefilled again. No decode step holds more keys and values than the budget,
    no stream fails, and each produces exactly its solo greedy tokens."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 8)]
    new_tokens = 30
    assert max(map(len, prompts)) + new_tokens < model.config.n_positions
    column = column_bytes(model)
    budget = 4 * (max(map(len, prompts)) + KV_HEADROOM_STEPS) * column
    scheduler = Scheduler(model, surgeon, tokenizer, "kv-budget", kv_cache_bytes=budget)
    stack = surgeon.compile([])
    try:
        with _forward_inputs(model) as forwards:
            ends = _queued_together(scheduler, prompts, stack, new_tokens)
    finally:
        scheduler.close()
    # decode steps' (rows, columns)
    steps = [(mask.shape[0], mask.shape[-1]) for shape, mask in forwards if shape[1] == 1]
    assert scheduler.column_bytes == column
    assert max(rows for rows, _ in steps) == 4  # four joined together, never more
    assert all(rows * columns * column <= budget for rows, columns in steps)
    assert scheduler.preempted > 0  # the budget, not the end of the streams, sent rows back
    for (tokens, end), prompt in zip(ends, prompts, strict=True):
        assert end.finish_reason == "length"
        assert tokens == _greedy_past_eos(model, prompt, new_tokens)
    with pytest.raises(ValueError, match="kv_cache_bytes"):
        Scheduler(model, surgeon, tokenizer, "bad", kv_cache_bytes=-1)


def test_a_request_that_could_not_fit_the_kv_budget_alone_is_refused_before_joining(tmp_path, toy) -> None:
    model, tokenizer, world = toy
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade("head", url)
    column = column_bytes(model)
    host = ModelHost("toy", str(TOY_MODEL_DIR), Registry(url), kv_cache_bytes=40 * column)
    try:
        text = " ".join(world.symbols[:12])
        length = len(tokenizer(text)["input_ids"])
        with pytest.raises(InvalidArgument, match=f"{40} at most"):
            host.generate(0, text, max_tokens=41 - length)
        with pytest.raises(InvalidArgument, match=f"{40} at most"):  # a check run's completions too
            host.complete(0, [" ".join(world.symbols[:3]), text], max_tokens=41 - length)
        assert host.scheduler.waiting == 0
        made, finished = _collect(host.generate(0, text, max_tokens=40 - length))
    finally:
        host.close()
    assert finished.finish_reason in ("length", "eos") and len(made) <= 40 - length


def test_check_rows_sent_back_by_a_memory_shortage_wait_behind_streams_again(toy) -> None:
    """Four streams and four check-run rows (``complete``: background) share a batch whose decode
    steps over four rows run out of memory. The newer half, the check rows, go back to the
    background queue, not ahead of streams; every row still produces its solo greedy tokens."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "background-preempted")
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 8)]
    queues: list[tuple[int, int]] = []  # (streams waiting, check rows waiting) at each 4-row step

    def run_out(_: object, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] == 1:
            if hidden.shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")
            queues.append((len(scheduler._waiting), len(scheduler._background)))

    hook = model.transformer.h[1].register_forward_pre_hook(run_out, with_kwargs=True)
    sampling = Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)
    checks: list[list[int]] = []
    try:
        with scheduler_held(scheduler):
            streams = [scheduler.generate(prompt, stack, sampling) for prompt in prompts[:4]]
            completing = threading.Thread(
                target=lambda: checks.extend(scheduler.complete(prompts[4:], stack, [sampling] * 4))
            )
            completing.start()
            while scheduler.waiting < 8:  # the check rows are queued too
                threading.Event().wait(0.01)
        made = [_collect(stream)[0] for stream in streams]
        completing.join()
    finally:
        hook.remove()
        scheduler.close()
    assert queues[0] == (0, 4) and scheduler.preempted == 4
    for tokens, prompt in zip([*made, *checks], prompts, strict=True):
        assert tokens == _greedy_past_eos(model, prompt, NEW_TOKENS)


def test_a_prefill_out_of_memory_runs_again_in_smaller_prefills_and_fails_no_stream(toy) -> None:
    """Prefills of more than two rows run out of memory. Four prompts queued together: their
    prefill is sent back, two of them run, and the other two once the batch has room; no stream
    fails, each produces its solo greedy tokens."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "prefill-out-of-memory")
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 4)]
    try:
        with _running_out(model, 2, prefill=True) as prefills:
            ends = _queued_together(scheduler, prompts, stack)
    finally:
        scheduler.close()
    assert prefills[0] == 4 and max(prefills[1:]) <= 2 and scheduler.preempted == 4
    for (tokens, end), prompt in zip(ends, prompts, strict=True):
        assert end.finish_reason == "length" and tokens == _greedy_past_eos(model, prompt, NEW_TOKENS)


def test_a_failure_no_step_handles_fails_the_rows_in_flight_and_the_model_serves_on(toy) -> None:
    """Whatever fails between two forwards outside the steps' own handling (here, dropping the
    rows whose caller left raises once), the rows in flight end with that error instead of waiting
    forever on a dead thread, and the next request is served in full."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "safety-net")
    stack = surgeon.compile([])
    prompt = tokenizer(_texts(world, 1)[0], return_tensors="pt")["input_ids"][0]
    drop_gone, raised = scheduler._drop_gone, []

    def fails_once() -> None:
        if scheduler.steps == 3 and not raised:
            raised.append(True)
            raise RuntimeError("a scheduling fault (raised by the test)")
        drop_gone()

    scheduler._drop_gone = fails_once  # type: ignore[method-assign]
    sampling = Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            list(scheduler.generate(prompt, stack, sampling))
        except RuntimeError as error:
            outcome.append(error)

    try:
        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        reading.join(60)  # (a guard: on a dead scheduler thread the stream would wait forever)
        assert not reading.is_alive(), "the stream was left waiting on a dead scheduler thread"
        assert raised and "scheduling fault" in str(outcome[0])
        after = _collect(scheduler.generate(prompt, stack, sampling))
    finally:
        scheduler.close()
    assert after[1].finish_reason == "length" and after[0] == _greedy_past_eos(model, prompt, NEW_TOKENS)


def test_after_running_out_of_memory_the_batch_takes_rows_back_one_at_a_time(toy) -> None:
    """Decode steps over more than four rows run out of memory. After the first shortage halves
    the batch to four rows, it may hold one more per CAP_REGROWTH_STEPS steps: a preempted row
    rejoins while the first four still decode (and is sent back again: five is too many), instead
    of waiting for the batch to empty. Every stream still produces exactly its solo greedy tokens."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "regrowth", ride_prefill=False)  # (decode steps counted apart)
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 8)]
    new_tokens = CAP_REGROWTH_STEPS + 30
    assert max(len(p) for p in prompts) + new_tokens < model.config.n_positions
    try:
        with _running_out(model, 4) as steps:
            ends = _queued_together(scheduler, prompts, stack, new_tokens)
    finally:
        scheduler.close()
    first_five = steps.index(5)  # the cap grew back while the first four rows were mid-stream
    assert steps[0] == 8 and steps[1:first_five] == [4] * (first_five - 1)
    assert CAP_REGROWTH_STEPS <= first_five < new_tokens
    for (tokens, end), prompt in zip(ends, prompts, strict=True):
        assert end.finish_reason == "length"
        assert tokens == _greedy_past_eos(model, prompt, new_tokens)


def test_a_prefix_evicted_while_its_hit_is_prefilled_neither_fails_the_rows_nor_is_stored_broken(toy) -> None:
    """A store of exactly three 16-token blocks holds a 48-token prompt. A longer prompt starting
    with it takes all three and is prefilled in chunks; meanwhile a 16-token newcomer's block
    pushes the third out. The longer prompt's own blocks would hang below the evicted one: they are
    not stored, and its stream goes on with exactly its solo output."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    config = model.config
    block_bytes = 2 * config.n_layer * 16 * config.n_embd * 4  # keys and values, float32
    scheduler = Scheduler(
        model, surgeon, tokenizer, "evicted", prefill_chunk_tokens=16, prefix_cache_bytes=3 * block_bytes
    )
    stack = surgeon.compile([])
    ids = tokenizer.convert_tokens_to_ids
    first = torch.tensor([tokenizer.bos_token_id, *ids(world.symbols[:47])])
    longer = torch.cat([first, torch.tensor(ids(world.symbols[100:132]))])
    newcomer = torch.tensor(ids(world.symbols[150:166]))
    arrived: list = []

    def record(_: object, args: tuple, kwargs: dict) -> None:
        if kwargs["input_ids"][0].tolist() == longer[48:64].tolist() and not arrived:  # its first chunk
            arrived.append(scheduler.generate(newcomer, stack, Sampling(max_tokens=2, ignore_eos=True)))

    sampling = Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)
    try:
        list(scheduler.generate(first, stack, sampling))
        assert len(scheduler.prefix_cache) == 3 and scheduler.prefix_cache.nbytes == 3 * block_bytes
        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            events = list(scheduler.generate(longer, stack, sampling))
            list(arrived[0])
        finally:
            hook.remove()
    finally:
        scheduler.close()
    assert scheduler.prefix_cache.hit_tokens == 48
    assert [t for e in events if isinstance(e, Token) for t in e.token_ids] == _greedy_past_eos(
        model, longer, NEW_TOKENS
    )
    assert scheduler.prefix_cache.nbytes <= 3 * block_bytes


def test_an_ended_row_at_the_end_of_the_context_leaves_before_it_would_run_past_it(toy) -> None:
    """A stream whose prompt nearly fills the context ends after a few tokens while four others
    go on: its row, left in the batch (a fifth of it: under the quarter that compacts), would
    step past the model's positions a few steps later and fail every row's forward. It is
    dropped first, and the others end with their solo output."""
    model, tokenizer, world = toy
    context = model.config.n_positions
    surgeon = Surgeon(model)
    scheduler = Scheduler(model, surgeon, tokenizer, "edge", context)
    stack = surgeon.compile([])
    prompts = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in _texts(world, 4)]
    long = tokenizer(" ".join(world.symbols * 8), return_tensors="pt")["input_ids"][0][: context - 6]
    try:
        streams = [scheduler.generate(p, stack, Sampling(max_tokens=40, ignore_eos=True)) for p in prompts]
        firsts = [next(stream) for stream in streams]  # the four are decoding
        ended = list(scheduler.generate(long, stack, Sampling(max_tokens=4, ignore_eos=True)))
        rests = [list(stream) for stream in streams]
    finally:
        scheduler.close()
    assert ended[-1] == Finished("length", 4)
    for prompt, first, rest in zip(prompts, firsts, rests, strict=True):
        assert rest[-1] == Finished("length", 40)
        made = [t for event in [first, *rest] if isinstance(event, Token) for t in event.token_ids]
        assert made == _greedy_past_eos(model, prompt, 40)


def test_scores_and_comparisons_equal_their_values_from_every_positions_logits(host, toy) -> None:
    """Score and CompareVersions compute logits only where they are read (the continuation's
    positions; each prompt's last): their values equal those from the full logits of each
    sequence alone, for prompts and continuations of different lengths in one forward."""
    model, tokenizer, world = toy
    pairs = [(" ".join(world.symbols[:n]), " ".join(world.symbols[n : n + k])) for n, k in ((3, 1), (9, 4), (5, 7))]
    got = host.logprob_sums([0], pairs)[0]
    with torch.inference_mode():
        for (prompt, continuation), value in zip(pairs, got.tolist(), strict=True):
            prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
            extra = tokenizer(" " + continuation, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            ids = torch.cat([prompt_ids, extra])
            logprobs = model(ids.unsqueeze(0)).logits[0].log_softmax(-1)
            expected = sum(float(logprobs[i - 1, ids[i]]) for i in range(len(prompt_ids), len(ids)))
            assert value == pytest.approx(expected, abs=1e-4)
    prompts = [" ".join(world.symbols[:n]) for n in (2, 11, 6)]
    for prompt, kl, top, _ in host.compare(0, 0, prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            last = model(ids).logits[0, -1]
        assert kl == pytest.approx(0.0, abs=1e-6) and top == tokenizer.convert_ids_to_tokens(int(last.argmax()))


def test_prompt_logprobs_in_column_chunks_equal_one_forwards(host, toy) -> None:
    """A logits budget too small for a prompt's logits at once runs it in column chunks over a KV
    cache (one row, 3 columns of logits a forward here): the same log-probabilities and
    alternatives as the whole batch in one forward, and a one-token prompt has none."""
    _, tokenizer, world = toy
    prompts = [tokenizer(" ".join(world.symbols[:n]), return_tensors="pt")["input_ids"][0] for n in (9, 4, 1)]
    vocab = host.model.config.vocab_size
    whole = host.prompt_logprobs(0, prompts, 2)
    chunked = host.prompt_logprobs(0, prompts, 2, budget=3 * vocab)
    assert [len(entries) for entries in whole] == [len(ids) - 1 for ids in prompts]
    for row_whole, row_chunked in zip(whole, chunked, strict=True):
        for (chosen, top), (chosen_c, top_c) in zip(row_whole, row_chunked, strict=True):
            assert chosen == pytest.approx(chosen_c, abs=1e-4)
            assert [t for t, _ in top] == [t for t, _ in top_c]


def test_jobs_run_between_decode_steps_and_raise_in_their_caller(host) -> None:
    assert host.forward(lambda: torch.ones(2)).sum() == 2
    with pytest.raises(ZeroDivisionError):
        host.forward(lambda: 1 / 0)
    ran_on = host.forward(lambda: threading.current_thread().name)
    assert ran_on == "scheduler-toy"


def test_sixty_four_streams_over_eight_versions_through_grpc(served) -> None:  # noqa: F811
    server, admin, _, _ = served
    model, tokenizer, world = load_toy_model()
    model = model.to(TEST_DEVICE)
    surgeon = Surgeon(model)
    base_hash = server.hosts["toy"].surgeon.weights_sha256
    covariance = key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]
    rome = compute_rome(surgeon, tokenizer, edit_cases(world, 1, seed=2)[0].request, covariance, reference_corpus())
    steer = Steering(site="blocks.1.hook_resid_mid", vector=torch.ones(128) * 0.3, positions=(2, 3, 5, 8))
    heads = HeadAblation(layer=2, heads=(1,))
    edit_lists = [[], [steer], [heads], [rome.edit], [steer, heads], [rome.edit, steer], [heads, rome.edit], [heads]]
    versions = [0]
    for edits in edit_lists[1:]:
        ids = [admin.create_edit("toy", edit).id for edit in edits]
        versions.append(admin.create_version("toy", 0, append=ids).number)
    texts = _texts(world, 64)
    barrier = threading.Barrier(len(texts))
    results: dict[int, object] = {}

    def stream(i: int) -> None:
        barrier.wait()
        try:
            results[i] = admin.generate("toy", texts[i], version=versions[i % 8], max_tokens=NEW_TOKENS)
        except grpc.RpcError as error:
            results[i] = error

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, text in enumerate(texts):
        result = results[i]
        assert not isinstance(result, grpc.RpcError), result
        assert result.version == f"models/toy/versions/{versions[i % 8]}"
        assert list(result.token_ids) == _solo(model, tokenizer, surgeon, edit_lists[i % 8], text, NEW_TOKENS), i
    assert weights_sha256(server.hosts["toy"].model) == base_hash


def test_model_specs_name_a_source_and_optionally_a_device_and_a_dtype() -> None:
    assert ModelSpec.parse("m", "hub/m") == ModelSpec("hub/m")
    assert ModelSpec.parse("m", {"source": "d", "device": "cuda:1", "dtype": "bfloat16"}) == ModelSpec(
        "d", "cuda:1", "bfloat16"
    )
    for bad in ({"source": "d", "dtype": "float8"}, {"device": "cpu"}, {"source": "d", "gpu": 1}, 7):
        with pytest.raises(ValueError, match=r"models\.m"):
            ModelSpec.parse("m", bad)


def test_a_bfloat16_host_batches_streams_and_scores(tmp_path, toy) -> None:
    model, tokenizer, world = toy
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade("head", url)
    host = ModelHost("toy", str(TOY_MODEL_DIR), Registry(url), device=TEST_DEVICE, dtype="bfloat16")
    try:
        assert {p.dtype for p in host.model.parameters()} == {torch.bfloat16}
        texts = _texts(world, 6)
        streams = [host.generate(0, text, max_tokens=4) for text in texts]  # all queued: one batch
        solo = copy.deepcopy(model).to(torch.bfloat16)  # the session's toy model stays float32
        for text, stream in zip(texts, streams, strict=True):
            tokens, finished = _collect(stream)
            assert finished.tokens == len(tokens) > 0
            ids = tokenizer(text, return_tensors="pt")["input_ids"].to(TEST_DEVICE)
            with torch.inference_mode():
                assert tokens[0] == int(solo(input_ids=ids).logits[0, -1].argmax())
        fact = world.facts_for("capital")[0]
        scores = host.score(0, fact.canonical_prompt, [fact.object, "the"])
        assert scores[0] > scores[1]
    finally:
        host.close()


def test_a_closed_scheduler_answers_that_it_is_shutting_down(toy) -> None:
    model, tokenizer, _ = toy
    scheduler = Scheduler(model, Surgeon(model), tokenizer, "closing")
    scheduler.close()
    with pytest.raises(SchedulerClosed, match="shutting down"):
        scheduler.call(lambda: None)
    with pytest.raises(SchedulerClosed):
        next(scheduler.generate(torch.tensor([1, 2]), Surgeon(model).compile([]), Sampling(max_tokens=2)))


def test_the_scheduler_thread_owns_the_intra_op_threads(tmp_path) -> None:
    """`scalpel serve` keeps its main thread serial and gives the cores to each scheduler's thread
    (libgomp runs only the first thread's parallel team at full speed: see service.engine.intra_op).
    Checked in a child process, so this test process keeps its own thread settings."""
    script = """
import torch
from editors.toyworld import load_toy_model
from service.engine.intra_op import serial_thread
from service.engine.scheduler import Scheduler
from editors import Surgeon

threads = serial_thread(3)
model, tokenizer, _ = load_toy_model()
scheduler = Scheduler(model, Surgeon(model), tokenizer, intra_op_threads=threads)
print(threads, torch.get_num_threads(), scheduler.call(torch.get_num_threads))
scheduler.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == ["3", "1", "3"]  # returned, the main thread's, the scheduler thread's


def test_an_engine_process_leaves_one_core_to_the_serving_process() -> None:
    """Unconfigured, forwards get every core, or every core but one when generation runs in an
    engine process beside the serving process (never fewer than one)."""
    assert forward_threads(16, engine_process=False) == 16
    assert forward_threads(16, engine_process=True) == 15
    assert forward_threads(2, engine_process=True) == 1
    assert forward_threads(1, engine_process=True) == 1


def test_the_start_up_heap_leaves_the_collectors_walk(tmp_path) -> None:
    """After freeze_startup_heap (called by `scalpel serve` once its models are loaded, and by each
    engine process), a full collection no longer walks the imports and the model: generation 2
    holds a sliver of what it held. In a child process, so this one's heap stays as it is."""
    script = """
import gc
from editors.toyworld import load_toy_model
from service.engine.startup_heap import freeze_startup_heap

model, tokenizer, _ = load_toy_model()
gc.collect()
before = len(gc.get_objects(generation=2))
frozen = freeze_startup_heap()
print(before, frozen, len(gc.get_objects(generation=2)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    before, frozen, after = map(int, done.stdout.split())
    assert before > 100_000 and frozen >= before * 0.99 and after < before // 100  # a few may be freed between
