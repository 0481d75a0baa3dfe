"""Generation streams in an engine process of their own, over the serving process's shared weights."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from editors import HeadAblation, Steering, Surgeon, weights_sha256
from editors.covariance import key_covariance
from editors.rome import compute_rome
from editors.toyworld import TOY_MODEL_DIR, reference_corpus
from editors.toyworld.counterfact import edit_cases
from service.client import ScalpelClient
from service.db.migrate import upgrade
from service.engine.decode_batch import column_bytes
from service.engine.scheduler import KV_HEADROOM_STEPS, SchedulerClosed
from service.hosting import ModelHost
from service.registry import InvalidArgument, NotFound, Registry
from service.server import ScalpelServer, ServerConfig
from tests.conftest import TEST_DEVICE, tiny_model, word_tokenizer
from tests.test_scheduler import (
    NEW_TOKENS,
    _churn_edits,
    _churn_prompts,
    _collect,
    _greedy_past_eos,
    _solo,
    _texts,
    concurrently,
)


def _registry(directory) -> Registry:
    url = f"sqlite:///{directory / 'registry.db'}"
    upgrade("head", url)
    return Registry(url)


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> ModelHost:
    host = ModelHost(
        "toy", str(TOY_MODEL_DIR), _registry(tmp_path_factory.mktemp("engine")), device=TEST_DEVICE, engine_process=True
    )
    yield host
    host.close()


def _versions(host: ModelHost, toy) -> tuple[list[int], list[list]]:
    """The base and three versions: steering, head ablation, and a ROME edit (a ``low_rank`` edit)."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    covariance = key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]
    rome = compute_rome(surgeon, tokenizer, edit_cases(world, 1, seed=2)[0].request, covariance, reference_corpus())
    steer = Steering(site="blocks.1.hook_resid_mid", vector=torch.ones(128) * 0.3, positions=(2, 3, 5, 8))
    edit_lists = [[], [steer], [HeadAblation(layer=2, heads=(1,))], [rome.edit, steer]]
    versions = [0]
    for edits in edit_lists[1:]:
        ids = [host.registry.create_edit("toy", edit, "test").id for edit in edits]
        versions.append(host.registry.create_version("toy", 0, "test", append=ids).number)
    return versions, edit_lists


def test_streams_run_in_the_engine_process_and_each_gets_its_solo_output(host, toy) -> None:
    model, tokenizer, world = toy
    versions, edit_lists = _versions(host, toy)
    texts = _texts(world, 16)
    parent_forwards, engine_pid = host.scheduler.forwards, host.engine.pid
    results = concurrently(lambda i: _collect(host.generate(versions[i % 4], texts[i], max_tokens=NEW_TOKENS)), 16)
    surgeon = Surgeon(model)
    produced = 0
    for i, text in enumerate(texts):
        tokens, finished = results[i]
        assert tokens == _solo(model, tokenizer, surgeon, edit_lists[i % 4], text, NEW_TOKENS), i
        assert finished.tokens == len(tokens)
        produced += len(tokens)
    assert engine_pid != os.getpid() and host.engine.stats.forwards <= produced // 3  # batched, over there
    assert host.scheduler.forwards == parent_forwards  # no generation forward ran in this process
    assert weights_sha256(host.model) == host.surgeon.weights_sha256  # the shared weights are untouched
    assert host.requests == 0


def test_a_cancelled_stream_is_dropped_in_the_engine_process(host, toy) -> None:
    _, _, world = toy
    texts = _texts(world, 3)
    cancelled_before = host.engine.stats.cancelled
    os.kill(host.engine.pid, signal.SIGSTOP)  # both streams join before any of their tokens is made
    try:
        closed = host.generate(0, texts[0], max_tokens=200, ignore_eos=True)
        closed.close()  # the caller went away before reading
        hung_up = host.generate(0, texts[1], max_tokens=200, ignore_eos=True, is_active=lambda: False)
    finally:
        os.kill(host.engine.pid, signal.SIGCONT)
    _, finished = _collect(hung_up)  # as when a gRPC client hangs up: dropped at the next step
    assert finished.finish_reason == "cancelled" and finished.tokens < 100
    # a stream that runs its course while the engine drops the others
    other, done = _collect(host.generate(0, texts[2], max_tokens=NEW_TOKENS, ignore_eos=True))
    assert done.finish_reason == "length" and len(other) == NEW_TOKENS
    assert host.engine.stats.cancelled == cancelled_before + 2
    assert host.requests == 0


def test_streams_arriving_ending_and_cancelled_at_random_in_the_engine_process_each_make_their_solo_output(
    host, toy
) -> None:
    """The scheduler's random churn test (``tests/test_scheduler.py``) through the engine process:
    seeded bursts of streams, some queued together while the engine is stopped (SIGSTOP), short
    pauses, callers going away (one of a burst at once, or one of the latest streams later);
    five versions from the registry (steering, head ablation, a low-rank delta, a mix, the base),
    prompts of 6 to 40 tokens, some sharing prefix-cache blocks. Every stream makes exactly its
    solo greedy output (a cancelled one a start of it), the engine counts the cancellations, and
    nothing is left in flight."""
    model, tokenizer, world = toy
    rng = random.Random(21)
    edit_lists = _churn_edits(21)
    versions = [0]
    for edits in edit_lists[1:]:
        ids = [host.registry.create_edit("toy", edit, "test").id for edit in edits]
        versions.append(host.registry.create_version("toy", 0, "test", append=ids).number)
    prompts = _churn_prompts(world, tokenizer, rng)
    cancelled_before = host.engine.stats.cancelled
    started: list[tuple[int, int, threading.Event, Iterator]] = []  # version, tokens, cancel, events
    while len(started) < len(prompts):
        action = rng.random()
        if action < 0.5:  # a burst of streams, queued together or one after another
            together = rng.random() < 0.5
            if together:
                os.kill(host.engine.pid, signal.SIGSTOP)
            try:
                burst = min(rng.randint(1, 4), len(prompts) - len(started))
                for _ in range(burst):
                    version, tokens, cancel = rng.randrange(len(versions)), rng.randint(1, 30), threading.Event()
                    active = lambda c=cancel: not c.is_set()  # noqa: E731
                    prompt = prompts[len(started)]
                    events = host.generate(
                        versions[version], prompt, max_tokens=tokens, ignore_eos=True, is_active=active
                    )
                    started.append((version, tokens, cancel, events))
                if rng.random() < 0.4:  # one of them is given up at once (before it runs, if queued together)
                    rng.choice(started[-burst:])[2].set()
            finally:
                if together:
                    os.kill(host.engine.pid, signal.SIGCONT)
        elif action < 0.65 and started:  # a stream's caller goes away
            rng.choice(started[-4:])[2].set()  # one of the latest: likely still in flight
        else:
            time.sleep(rng.uniform(0.001, 0.03))
    made = [_collect(events) for *_, events in started]
    surgeon, cancelled = Surgeon(model), 0
    for prompt, (version, tokens, cancel, _), (ids, finished) in zip(prompts, started, made, strict=True):
        with surgeon.apply(edit_lists[version]):
            solo = _greedy_past_eos(model, prompt, tokens)
        if finished.finish_reason == "cancelled":
            assert cancel.is_set() and ids == solo[: len(ids)] and len(ids) < tokens
            cancelled += 1
        else:
            assert (finished.finish_reason, ids) == ("length", solo), version
    _until(lambda: host.engine.stats.cancelled == cancelled_before + cancelled)  # (told with a later step)
    assert host.engine.stats.cancelled == cancelled_before + cancelled and host.requests == 0


def test_a_bad_request_fails_alone_with_an_engine_process(host, toy) -> None:
    model, tokenizer, world = toy
    text = _texts(world, 1)[0]
    good = host.generate(0, text, max_tokens=NEW_TOKENS)
    first = next(good)
    with pytest.raises(NotFound):
        host.generate(999, text)
    with pytest.raises(InvalidArgument, match="tokens"):
        host.generate(0, " ".join([world.symbols[0]] * (host.context_length + 5)))
    tokens, finished = _collect(good)
    assert finished.finish_reason in ("length", "eos")
    assert [*first.token_ids, *tokens] == _solo(model, tokenizer, Surgeon(model), [], text, NEW_TOKENS)


def test_a_dead_engine_process_ends_its_streams_as_unavailable_and_a_new_one_takes_over(tmp_path, toy) -> None:
    model, tokenizer, world = toy
    host = ModelHost("toy", str(TOY_MODEL_DIR), _registry(tmp_path), device=TEST_DEVICE, engine_process=True)
    try:
        text = _texts(world, 1)[0]
        assert not host.revive_engine()  # alive: nothing to do
        first, _ = _collect(host.generate(0, text, max_tokens=NEW_TOKENS))
        counted = host.generation_counts  # the first engine's forwards, which its death must not undo
        assert counted.steps >= len(first) - 1 > 0
        dead = host.engine
        os.kill(dead.pid, signal.SIGSTOP)  # frozen: the stream below is in flight when it dies
        stream = host.generate(0, text, max_tokens=NEW_TOKENS)
        os.kill(dead.pid, signal.SIGKILL)
        with pytest.raises(SchedulerClosed):
            _collect(stream)
        _until(lambda: dead.died)
        assert len(host.score(0, text, ["a", "b"])) == 2  # the serving process's own forwards go on
        tokens, _ = _collect(host.generate(0, text, max_tokens=NEW_TOKENS))  # a new engine takes it
        assert tokens == _solo(model, tokenizer, Surgeon(model), [], text, NEW_TOKENS)
        assert host.engine is not dead and host.engine.pid != dead.pid and not host.revive_engine()
        now = host.generation_counts  # the dead engine's counts kept, the new one's added
        assert now.steps >= counted.steps + len(tokens) - 1 and now.forwards >= counted.forwards + len(tokens)
    finally:
        host.close()


@pytest.mark.parametrize(("family", "dtype"), [("llama", "float32"), ("gpt_neox", "float32"), ("llama", "bfloat16")])
def test_other_families_and_dtypes_share_their_weights_rotary_caches_included(tmp_path, family, dtype) -> None:
    directory = tmp_path / family
    word_tokenizer().save_pretrained(directory)
    tiny_model(family).save_pretrained(directory)
    registry = _registry(tmp_path)
    inline = ModelHost(family, str(directory), registry, device=TEST_DEVICE, dtype=dtype)
    split = ModelHost(family, str(directory), registry, device=TEST_DEVICE, dtype=dtype, engine_process=True)
    try:
        steer = Steering(site="blocks.1.hook_resid_post", vector=torch.ones(32) * 2.0)
        edit = registry.create_edit(family, steer, "test").id
        version = registry.create_version(family, 0, "test", append=[edit]).number
        prompts = ("a b c d e a b c", "c d a b c d")
        for number in (0, version):

            def run(i: int, number: int = number) -> tuple[list[int], object]:
                return _collect(split.generate(number, prompts[i], max_tokens=8, ignore_eos=True))

            # float32: side by side in the engine's batch; bfloat16 one at a time, as inline (batch
            # shapes change bfloat16's accumulation order: tests/test_scheduler.py bounds that)
            there = concurrently(run, len(prompts)) if dtype == "float32" else dict(enumerate(map(run, (0, 1))))
            for i, prompt in enumerate(prompts):
                alone, _ = _collect(inline.generate(number, prompt, max_tokens=8, ignore_eos=True))
                assert there[i][0] == alone and len(alone) == 8, (family, dtype, number, prompt)
    finally:
        split.close()
        inline.close()


def _until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a mechanism, checked every 50 ms; 30 s only guards against a hang)."""
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)


def restarts(server: ScalpelServer) -> float | None:
    return server.metrics.registry.get_sample_value("scalpel_engine_restarts_total", {"model": "toy"})


def test_a_server_with_engine_processes_serves_generate_through_grpc(db_url, toy) -> None:
    model, tokenizer, world = toy
    config = ServerConfig(
        address="127.0.0.1:0", database_url=db_url, metrics_address=None, device=TEST_DEVICE, engine_process=True
    )
    server = ScalpelServer(config)
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    client = ScalpelClient(f"127.0.0.1:{server.port}", secret)
    try:
        steer = Steering(site="blocks.2.hook_resid_pre", vector=torch.ones(128) * 0.5)
        version = client.create_version("toy", 0, append=[client.create_edit("toy", steer).id]).number
        text = _texts(world, 2)[1]
        result = client.generate("toy", text, version=version, max_tokens=NEW_TOKENS)
        assert result.version == f"models/toy/versions/{version}"
        assert list(result.token_ids) == _solo(model, tokenizer, Surgeon(model), [steer], text, NEW_TOKENS)
        host = server.hosts["toy"]
        dead = host.engine
        os.kill(dead.pid, signal.SIGSTOP)  # frozen: the next stream stays in flight until the kill
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(client.generate, "toy", text, version=version, max_tokens=NEW_TOKENS)
            _until(lambda: dead.requests == 1)
            os.kill(dead.pid, signal.SIGKILL)
            # the server ends the stream UNAVAILABLE; the client retries it (its service config),
            # and the engine the watcher started answers it
            again = reading.result()
        assert list(again.token_ids) == list(result.token_ids) and host.engine is not dead
        unavailable = {"grpc_service": "scalpel.v1.InferenceService", "grpc_method": "Generate"}
        assert (
            server.metrics.registry.get_sample_value(
                "grpc_server_handled_total", {**unavailable, "grpc_code": "UNAVAILABLE"}
            )
            >= 1
        )
        assert restarts(server) == 1
    finally:
        client.close()
        server.stop(grace=0)


def test_the_engine_process_prefills_in_the_chunks_it_is_given(tmp_path, toy) -> None:
    """``prefill_chunk_tokens`` reaches the engine process's scheduler: a 24-token prompt takes a
    prefill forward per 3 positions there, and its stream still produces its solo output."""
    model, tokenizer, world = toy
    host = ModelHost(
        "toy", str(TOY_MODEL_DIR), _registry(tmp_path), device=TEST_DEVICE, engine_process=True, prefill_chunk_tokens=3
    )
    try:
        text = " ".join(world.symbols[:12] * 2)
        positions = len(tokenizer(text)["input_ids"])
        made, finished = _collect(host.generate(0, text, max_tokens=NEW_TOKENS))
        counts = host.generation_counts
    finally:
        host.close()
    assert made == _solo(model, tokenizer, Surgeon(model), [], text, NEW_TOKENS)
    assert counts.forwards - counts.steps == -(-positions // 3)  # the prefill's forwards: one per chunk of 3
    assert finished.finish_reason in ("length", "eos")


@pytest.mark.parametrize("riding", [True, False], ids=["riding", "apart"])
def test_the_engine_process_rides_prefill_chunks_in_decode_steps_as_it_is_told(tmp_path, toy, riding) -> None:
    """``ride_prefill`` reaches the engine process's scheduler: a 24-token prompt sent (the engine
    stopped meanwhile) while another stream decodes runs its chunks of 3 positions inside that
    stream's decode steps, every one of them (or none, told not to), and both streams produce
    their solo output."""
    model, tokenizer, world = toy
    host = ModelHost(
        "toy",
        str(TOY_MODEL_DIR),
        _registry(tmp_path),
        device=TEST_DEVICE,
        engine_process=True,
        prefill_chunk_tokens=3,
        ride_prefill=riding,
    )
    short, long = _texts(world, 1)[0], " ".join(world.symbols[:12] * 2)
    try:
        running = host.generate(0, short, max_tokens=80, ignore_eos=True)
        first = next(running)  # decoding, with 79 steps to go
        os.kill(host.engine.pid, signal.SIGSTOP)
        try:
            joining = host.generate(0, long, max_tokens=NEW_TOKENS, ignore_eos=True)
        finally:
            os.kill(host.engine.pid, signal.SIGCONT)
        (made, _), (rest, _) = _collect(joining), _collect(running)
        counts = host.generation_counts
    finally:
        host.close()
    chunks = -(-len(tokenizer(long)["input_ids"]) // 3)
    assert counts.ridden == (chunks if riding else 0)
    ids = {text: tokenizer(text, return_tensors="pt")["input_ids"][0] for text in (short, long)}
    assert made == _greedy_past_eos(model, ids[long], NEW_TOKENS)
    assert [*first.token_ids, *rest] == _greedy_past_eos(model, ids[short], 80)


def test_the_engine_process_keeps_to_the_kv_budget_it_is_given(tmp_path, toy) -> None:
    """``kv_cache_bytes`` reaches the engine process's scheduler: under a budget of one and a half
    24-token prompts (and KV_HEADROOM_STEPS columns each), two streams sent together never share a
    decode step (19 steps each, 38 in all), and both produce their solo output."""
    model, tokenizer, world = toy
    texts = [" ".join(symbols * 2) for symbols in (world.symbols[:12], world.symbols[12:24])]
    length = max(len(tokenizer(text)["input_ids"]) for text in texts)
    budget = 3 * (length + KV_HEADROOM_STEPS) * column_bytes(model) // 2
    host = ModelHost(
        "toy", str(TOY_MODEL_DIR), _registry(tmp_path), device=TEST_DEVICE, engine_process=True, kv_cache_bytes=budget
    )
    try:
        made = concurrently(lambda i: _collect(host.generate(0, texts[i], max_tokens=20, ignore_eos=True)), 2)
        counts = host.generation_counts
    finally:
        host.close()
    for i, text in enumerate(texts):
        tokens, finished = made[i]
        assert finished.finish_reason == "length" and tokens == _greedy_past_eos(
            model, tokenizer(text, return_tensors="pt")["input_ids"][0], 20
        )
    assert counts.steps == 2 * 19 and counts.forwards == counts.steps + 2
