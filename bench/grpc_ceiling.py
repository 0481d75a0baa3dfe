"""What Python's sync gRPC alone moves on this machine: streamed messages/s with no model at all.

    python bench/grpc_ceiling.py            # serves from a child process, streams from this one

The server runs in its own process and streams 32 small `TokenChunk` messages per call, exactly
as `Generate` does, with no model, no auth and no database; the client reads them from N threads.
It is the ceiling for one message per token: `bench/serving.py` reports it next to its figures.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.api.scalpel.v1 import scalpel_pb2 as pb  # noqa: E402
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc  # noqa: E402

MESSAGES = 32


class _NullInference(rpc.InferenceServiceServicer):
    def Generate(self, request, context):
        for i in range(MESSAGES):
            yield pb.GenerateResponse(token=pb.TokenChunk(token_id=i, token_ids=[i], text=" x"))
        yield pb.GenerateResponse(done=pb.GenerateDone(version="v", finish_reason="length", tokens=MESSAGES))


def _serve() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    rpc.add_InferenceServiceServicer_to_server(_NullInference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def ceiling(concurrency: int, calls_per_stream: int = 4) -> float:
    """Messages/s streamed by a model-less server process to ``concurrency`` reader threads."""
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rpc.InferenceServiceStub(channel)
            counts: list[int] = []

            def read() -> None:
                for _ in range(calls_per_stream):
                    counts.append(sum(m.HasField("token") for m in stub.Generate(pb.GenerateRequest(prompt="x"))))

            threads = [threading.Thread(target=read) for _ in range(concurrency)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return sum(counts) / (time.perf_counter() - started)
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        for n in (1, 8, 64):
            print(f"c{n}: {ceiling(n):.0f} messages/s")
