"""The serving process's CPU per request: the API-key cache on (the default) against off, or this
checkout's server against another's (``--baseline``).

    python bench/request_cpu.py --json
    → {"cached_ms_per_request", "uncached_ms_per_request", "cached_ratio_to_uncached", …}
    git worktree add /tmp/base <ref> && python bench/request_cpu.py --baseline /tmp/base --tokens 32 --threads 64
    → {"ours_ms_per_request", "baseline_ms_per_request", "ours_ratio_to_baseline",
       "ours_tokens_per_s", "baseline_tokens_per_s", "ours_tokens_ratio_to_baseline",
       "ours_ttft_ms", "baseline_ttft_ms", "ours_ttft_ratio_to_baseline"}
    python bench/request_cpu.py --baseline /tmp/base --http …  # streamed completions, HTTP gateway
    python bench/request_cpu.py --baseline /tmp/base --http --whole …  # non-streamed ones

Two `scalpel serve` processes side by side, each given ``--tokens``-token `Generate` calls from
``--threads`` client threads for ``--seconds``, taking turns over ``--rounds``. The figure is the
serving process's user + system CPU time (from /proc) over the calls it answered: its gRPC,
authentication, tokenising and streaming work (the forwards run in its engine process). One-token
requests isolate what every request pays before its first token; 32-token requests at 64 threads
are the serving bench's c64 load. Over gRPC the clients' mean time to first token is reported too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from process_cpu import cpu_seconds
from report import report
from serve_process import Served, serve_process

from service.client import ScalpelClient

PROMPT = "The capital of Riia is"


def http_tokens(connection: http.client.HTTPConnection, secret: str, tokens: int, whole: bool) -> int:
    """One completion through the OpenAI-compatible gateway, streamed unless ``whole``; its
    completion tokens."""
    body = {"model": "toy", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": not whole}
    body |= {"ignore_eos": True} | ({} if whole else {"stream_options": {"include_usage": True}})
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    connection.request("POST", "/v1/completions", json.dumps(body), headers)
    response = connection.getresponse()
    if whole:
        return json.loads(response.read())["usage"]["completion_tokens"]
    produced = 0
    for line in response.read().decode().splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage")
            produced = usage["completion_tokens"] if usage else produced
    return produced


def grpc_tokens(client: ScalpelClient, tokens: int, firsts: list[float]) -> int:
    """One streamed `Generate`; its tokens. Its time to first token (s) goes to ``firsts``."""
    started, produced = time.perf_counter(), 0
    for message in client.stream("toy", PROMPT, max_tokens=tokens, ignore_eos=True):
        if message.HasField("token"):
            if not produced:
                firsts.append(time.perf_counter() - started)
            produced += len(message.token.token_ids)
    return produced


def measure(
    served: Served, seconds: float, threads: int, tokens: int, via_http: bool, whole: bool = False
) -> tuple[float, float, float]:
    """Server CPU milliseconds per request, the tokens per second the clients received, and their
    mean time to first token in milliseconds (gRPC only; 0 over HTTP)."""
    with ScalpelClient(f"127.0.0.1:{served.port}", served.secret) as client:
        client.generate("toy", PROMPT, max_tokens=tokens)  # warm
        counts: list[tuple[int, int]] = []
        firsts: list[float] = []
        stop = time.monotonic() + seconds

        def worker() -> None:
            answered = received = 0
            connection = http.client.HTTPConnection("127.0.0.1", served.http_port or 0)
            while time.monotonic() < stop:
                if via_http:
                    received += http_tokens(connection, served.secret, tokens, whole)
                else:
                    received += grpc_tokens(client, tokens, firsts)
                answered += 1
            connection.close()
            counts.append((answered, received))

        before, started = cpu_seconds(served.process.pid), time.perf_counter()
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        wall = time.perf_counter() - started
        answered = sum(a for a, _ in counts)
        ms = 1000 * (cpu_seconds(served.process.pid) - before) / answered
        return ms, sum(r for _, r in counts) / wall, 1000 * statistics.fmean(firsts) if firsts else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=16, help="client threads (concurrent calls)")
    parser.add_argument("--tokens", type=int, default=1, help="tokens per request")
    parser.add_argument("--baseline", type=Path, help="another Scalpel checkout: its server against this one's")
    parser.add_argument("--device", default="cpu", help="the servers' --device (the forwards' device)")
    parser.add_argument("--http", action="store_true", help="streamed completions through the HTTP gateway")
    parser.add_argument("--whole", action="store_true", help="with --http: whole (non-streamed) completions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.whole and not args.http:
        parser.error("--whole goes with --http")
    with ExitStack() as stack:

        def started(*options: str, root: Path | None = None) -> Served:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            http = ("--http-address", "127.0.0.1:0") if args.http else ()
            return stack.enter_context(serve_process(data, "--device", args.device, *http, *options, root=root))

        if args.baseline:
            sides = {"ours": started(), "baseline": started(root=args.baseline.resolve())}
        else:
            uncached = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "uncached.yaml"
            uncached.write_text("key_cache_seconds: 0\n")
            sides = {"cached": started(), "uncached": started("--config", str(uncached))}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        rate: dict[str, list[float]] = {name: [] for name in sides}
        ttft: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
                ms, tokens_per_s, first_ms = measure(
                    sides[name], args.seconds, args.threads, args.tokens, args.http, args.whole
                )
                cpu[name].append(ms)
                rate[name].append(tokens_per_s)
                ttft[name].append(first_ms)
    first, second = sides
    results: dict[str, float] = {}
    for key, figures in (("ms_per_request", cpu), ("tokens_per_s", rate), ("ttft_ms", ttft)):
        if key == "ttft_ms" and args.http:
            continue
        results |= {f"{name}_{key}": statistics.median(values) for name, values in figures.items()}
        ratio = {"ms_per_request": "ratio", "tokens_per_s": "tokens_ratio", "ttft_ms": "ttft_ratio"}[key]
        results[f"{first}_{ratio}_to_{second}"] = statistics.median(
            a / b for a, b in zip(figures[first], figures[second], strict=True)
        )
    report(results, args.json)


if __name__ == "__main__":
    main()
