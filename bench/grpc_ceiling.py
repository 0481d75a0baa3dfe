"""What Python's gRPC alone moves on this machine: streamed messages/s with no model at all.

    python bench/grpc_ceiling.py            # serves from a child process, streams from this one
    python bench/grpc_ceiling.py --servers  # the sync server against a grpc.aio one: CPU per call

The server runs in its own process and streams 32 small `TokenChunk` messages per call, exactly
as `Generate` does, with no model, no auth and no database; the client reads them from N threads.
It is the ceiling for one message per token: `bench/serving.py` reports it next to its figures.
``--servers`` runs the same streams (10 messages a call, as a 32-token `Generate` sends at c64)
against `scalpel serve`'s sync server and against a `grpc.aio` server, and prints each server
process's CPU per call: what moving `Generate` to `grpc.aio` could save.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.process_cpu import cpu_seconds  # noqa: E402
from bench.report import report  # noqa: E402
from service.api.scalpel.v1 import scalpel_pb2 as pb  # noqa: E402
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc  # noqa: E402

MESSAGES = 32


def _responses(count: int) -> Iterator[pb.GenerateResponse]:
    for i in range(count):
        yield pb.GenerateResponse(token=pb.TokenChunk(token_id=i, token_ids=[i], text=" x"))
    yield pb.GenerateResponse(done=pb.GenerateDone(version="v", finish_reason="length", tokens=count))


class _NullInference(rpc.InferenceServiceServicer):
    def __init__(self, count: int) -> None:
        self.count = count

    def Generate(self, request, context):
        yield from _responses(self.count)


class _AsyncNullInference(rpc.InferenceServiceServicer):
    def __init__(self, count: int) -> None:
        self.count = count

    async def Generate(self, request, context) -> AsyncIterator[pb.GenerateResponse]:
        for response in _responses(self.count):
            yield response


def _serve(count: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    rpc.add_InferenceServiceServicer_to_server(_NullInference(count), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


async def _serve_aio(count: int) -> None:
    server = grpc.aio.server()
    rpc.add_InferenceServiceServicer_to_server(_AsyncNullInference(count), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def _stream(
    concurrency: int, calls_per_stream: int, kind: str = "sync", messages: int = MESSAGES
) -> tuple[float, float]:
    """Messages/s streamed by a model-less ``kind`` server process to ``concurrency`` reader
    threads, and that process's CPU seconds per call."""
    command = [sys.executable, __file__, "--serve", kind, str(messages)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rpc.InferenceServiceStub(channel)
            counts: list[int] = []

            def read() -> None:
                for _ in range(calls_per_stream):
                    counts.append(sum(m.HasField("token") for m in stub.Generate(pb.GenerateRequest(prompt="x"))))

            read()  # warm
            counts.clear()
            threads = [threading.Thread(target=read) for _ in range(concurrency)]
            cpu, started = cpu_seconds(child.pid), time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            return sum(counts) / wall, (cpu_seconds(child.pid) - cpu) / len(counts)
    finally:
        child.kill()
        child.wait()


def ceiling(concurrency: int, calls_per_stream: int = 4) -> float:
    """Messages/s streamed by a model-less sync server process to ``concurrency`` reader threads."""
    return _stream(concurrency, calls_per_stream)[0]


def compare_servers(rounds: int = 3, concurrency: int = 64, calls_per_stream: int = 60) -> dict[str, float]:
    """Server CPU per 10-message call, sync against grpc.aio, alternating over ``rounds``."""
    per_call: dict[str, list[float]] = {"sync": [], "aio": []}
    for round_ in range(rounds):
        for kind in ("sync", "aio") if round_ % 2 == 0 else ("aio", "sync"):
            per_call[kind].append(_stream(concurrency, calls_per_stream, kind, messages=9)[1])
    results = {f"{kind}_server_ms_per_call": 1000 * statistics.median(v) for kind, v in per_call.items()}
    pairs = zip(per_call["aio"], per_call["sync"], strict=True)
    results["aio_ratio_to_sync"] = statistics.median(a / s for a, s in pairs)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        kind, messages = sys.argv[2], int(sys.argv[3])
        _serve(messages) if kind == "sync" else asyncio.run(_serve_aio(messages))
    elif sys.argv[1:2] == ["--servers"]:
        report(compare_servers(), "--json" in sys.argv)
    else:
        for n in (1, 8, 64):
            print(f"c{n}: {ceiling(n):.0f} messages/s")
