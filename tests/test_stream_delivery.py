"""Generate on the grpc.aio server: streams wait on the event loop, not on worker threads, and a
decode step wakes that loop once for all the streams it fed (service.engine.stream_reading)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from editors import HeadAblation
from editors.toyworld import load_toy_model
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import RETRY_SERVICE_CONFIG, ScalpelClient
from service.engine.sampling import Sampling
from service.engine.stream_reading import Doorbell, Finished, LoopEvents, _Made, read_on_loop
from service.hosting import ModelHost
from service.server import ScalpelServer, ServerConfig
from tests.conftest import TEST_DEVICE
from tests.scheduler_hold import scheduler_held

STREAMS = 8


def _handled(server: ScalpelServer, code: str) -> float:
    labels = {"grpc_service": "scalpel.v1.InferenceService", "grpc_method": "Generate", "grpc_code": code}
    return server.metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


def test_open_streams_hold_no_worker_threads(db_url) -> None:
    """Eight streams are in flight at once on a server with two worker threads (a thread-per-stream
    server runs two at a time); cancelling them frees their rows and counts them CANCELLED."""
    config = ServerConfig(
        address="127.0.0.1:0", database_url=db_url, metrics_address=None, device=TEST_DEVICE, workers=2
    )
    config.engine_process = False  # the forwards below are slowed in this process
    server = ScalpelServer(config)
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    host = server.hosts["toy"]
    hook = host.model.register_forward_pre_hook(lambda *_: time.sleep(0.05))  # 400 steps: 20 s a stream
    _, _, world = load_toy_model()
    try:
        with ScalpelClient(f"127.0.0.1:{server.port}", secret) as client:
            streams = [
                client.stream("toy", world.symbols[i], version=0, max_tokens=400, ignore_eos=True)
                for i in range(STREAMS)
            ]
            firsts = [next(stream) for stream in streams]  # each has its first token while all run
            assert all(first.HasField("token") for first in firsts)
            assert host.requests == STREAMS
            for stream in streams:
                stream.cancel()
            deadline = time.monotonic() + 60
            while (host.requests or _handled(server, "CANCELLED") < STREAMS) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert host.requests == 0  # every row left the batch
            assert _handled(server, "CANCELLED") == STREAMS
            for stream in streams:
                with pytest.raises(grpc.RpcError) as caught:
                    list(stream)
                assert caught.value.code() == grpc.StatusCode.CANCELLED
            assert client.generate("toy", world.symbols[0], version=0, max_tokens=2).finish_reason == "length"
    finally:
        hook.remove()
        server.stop(grace=0)


def test_a_stream_starts_on_the_loop_only_when_nothing_needs_the_database(db_url) -> None:
    """ModelHost.ready decides whether Generate's set-up may run on the event loop: only for a
    version whose number is known without the database and whose stack is compiled, while the
    engine process lives. Otherwise the set-up runs on a worker thread, and the answer is the same."""
    server = ScalpelServer(
        ServerConfig(address="127.0.0.1:0", database_url=db_url, metrics_address=None, device=TEST_DEVICE)
    )
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    host = server.hosts["toy"]
    try:
        with ScalpelClient(f"127.0.0.1:{server.port}", secret) as client:
            edit = client.create_edit("toy", HeadAblation(layer=0, heads=(1,))).id
            version = client.create_version("toy", 0, append=[edit]).number
            assert not host.ready(None, version)  # never compiled here
            first = client.generate("toy", "The capital of Riia is", version=version, max_tokens=3)
            assert host.ready(None, version)
            assert client.generate("toy", "The capital of Riia is", version=version, max_tokens=3) == first
            client.promote("toy", version, alias="canary", reason="a test of the loop path", force=True)
            assert host.ready("canary", None)  # the alias cache learnt it from this replica's write
            assert client.generate("toy", "The capital of Riia is", alias="canary", max_tokens=3).text == first.text
            assert not host.ready("nope", None)
            host.engine._process.kill()  # a dead engine is revived off the loop
            host.engine._process.join()
            deadline = time.monotonic() + 30
            while not host.engine.died and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not host.ready(None, version)
    finally:
        server.stop(grace=0)


def test_long_work_stops_when_its_callers_deadline_passes(db_url) -> None:
    """A synchronous handler runs on a worker thread, and learns there that its call ended: a
    ComputeRome of ~15 minutes stops its forwards once the client's deadline has passed."""
    server = ScalpelServer(
        ServerConfig(address="127.0.0.1:0", database_url=db_url, metrics_address=None, device=TEST_DEVICE)
    )
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    forwards: list[float] = []
    hook = server.hosts["toy"].model.register_forward_pre_hook(lambda *_: forwards.append(time.monotonic()))
    try:
        with ScalpelClient(f"127.0.0.1:{server.port}", secret) as client:
            request = pb.ComputeRomeRequest(
                parent="models/toy",
                prompt="The capital of {} is",
                subject="Riia",
                target="Muford",
                hparams_json=json.dumps({"steps": 10_000, "n_prefixes": 100, "early_stop_nll": 0}),
            )
            with pytest.raises(grpc.RpcError) as caught:
                client.edits.ComputeRome(request, timeout=3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert forwards  # the work had started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not forwards or time.monotonic() - forwards[-1] < 2):
            time.sleep(0.1)
        assert time.monotonic() - forwards[-1] >= 2  # no forward for two seconds: the work stopped
        assert server.registry.list_edits("toy", 10, "").items == []  # and created nothing
    finally:
        hook.remove()
        server.stop(grace=0)


def test_a_step_that_feeds_many_streams_wakes_the_loop_once() -> None:
    """Events put from another thread while the loop is busy reach every waiting reader, through a
    single callback on the loop."""
    _, tokenizer, _ = load_toy_model()
    loop = asyncio.new_event_loop()
    bell = Doorbell(loop)
    scheduled = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(callback, *args):  # type: ignore[no-untyped-def]
        scheduled.append(callback)
        return call_soon_threadsafe(callback, *args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    queues = [LoopEvents(bell) for _ in range(64)]
    abandoned = [threading.Event() for _ in queues]
    token = tokenizer(" capital", add_special_tokens=False)["input_ids"][0]

    async def read(events: LoopEvents, gone: threading.Event) -> list[object]:
        return [event async for event in read_on_loop(tokenizer, Sampling(max_tokens=1), events, gone)]

    async def main() -> list[list[object]]:
        readers = [asyncio.ensure_future(read(q, a)) for q, a in zip(queues, abandoned, strict=True)]
        await asyncio.sleep(0.01)  # every reader waits on its queue
        busy, fed = threading.Event(), threading.Event()

        def step() -> None:  # the engine's receiver thread: one step's events, while the loop is busy
            busy.wait()
            for events in queues:
                events.put(_Made((token,), ()))
                events.put(Finished("length", 1))
            fed.set()

        threading.Thread(target=step).start()
        busy.set()
        fed.wait()  # the loop thread blocks here: no wake can be answered before the step is done
        return await asyncio.gather(*readers)

    try:
        results = loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(scheduled) == 1
    assert all(result[-1] == Finished("length", 1) and result[0].token_ids == (token,) for result in results)
    assert all(gone.is_set() for gone in abandoned)  # a finished reader releases its row


@contextlib.contextmanager
def _generation_held(host: ModelHost) -> Iterator[None]:
    """No stream of ``host`` advances inside: its engine process is stopped (SIGSTOP), or the
    serving process's scheduler is held between two steps."""
    if host.engine is None:
        with scheduler_held(host):
            yield
        return
    os.kill(host.engine.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(host.engine.pid, signal.SIGCONT)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after 60 s"
        time.sleep(0.02)


@pytest.mark.parametrize("engine_process", [True, False], ids=["engine-process", "inline"])
def test_a_model_with_max_streams_in_flight_refuses_the_next_at_once(db_url, engine_process) -> None:
    """With ``max_streams`` streams in flight a new one is refused UNAVAILABLE over gRPC and 503
    over HTTP, naming the limit, and joins nothing; once the streams end, requests are taken again."""
    config = ServerConfig(
        address="127.0.0.1:0",
        database_url=db_url,
        metrics_address=None,
        http_address="127.0.0.1:0",
        device=TEST_DEVICE,
        engine_process=engine_process,
        max_streams=2,
    )
    server = ScalpelServer(config)
    server.load_models()
    _, secret = server.registry.create_key("admin", "admin", "bootstrap")
    host = server.hosts["toy"]
    try:
        with ScalpelClient(f"127.0.0.1:{server.port}", secret) as client:
            assert client.generate("toy", "the food was", version=0, max_tokens=2).finish_reason == "length"
            with _generation_held(host):
                streams = [
                    client.stream("toy", "the food was", version=0, max_tokens=4, ignore_eos=True) for _ in range(2)
                ]
                _until(lambda: host.requests == 2, "two streams in flight")
                with pytest.raises(grpc.RpcError) as caught:
                    client.generate("toy", "the food was", version=0, max_tokens=4)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "2 generation streams in flight" in caught.value.details()
                assert "--max-streams" in caught.value.details()
                body = {"model": "toy", "prompt": "the food was", "max_tokens": 4, "stream": True}
                request = urllib.request.Request(
                    f"http://127.0.0.1:{server.http_port}/v1/completions",
                    json.dumps(body).encode(),
                    {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
                )
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(request, timeout=30)
                assert refused.value.code == 503
                assert json.loads(refused.value.read())["error"]["code"] == "overloaded"
                assert host.requests == 2  # the refused requests joined nothing
            for stream in streams:
                assert list(stream)[-1].done.finish_reason == "length"
            _until(lambda: host.requests == 0, "every stream ended")
            assert client.generate("toy", "the food was", version=0, max_tokens=2).finish_reason == "length"
        attempts = json.loads(RETRY_SERVICE_CONFIG)["methodConfig"][0]["retryPolicy"]["maxAttempts"]
        assert _handled(server, "UNAVAILABLE") == attempts  # the client retried with backoff: refused each time
        refusals = server.metrics.registry.get_sample_value("scalpel_generation_refused_total", {"model": "toy"})
        assert refusals == attempts + 1  # and the HTTP request
    finally:
        server.stop(grace=0)
