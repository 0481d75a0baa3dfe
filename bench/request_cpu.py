"""The serving process's CPU per request, with the API-key cache on (the default) and off.

    python bench/request_cpu.py --json
    → {"cached_ms_per_request", "uncached_ms_per_request", "cached_ratio_to_uncached", …}

Two `scalpel serve` processes side by side, one with the default ``key_cache_seconds`` and one
with ``key_cache_seconds: 0`` (the database read on every call). Each gets one-token `Generate`
calls from 16 client threads for ``--seconds``, taking turns over ``--rounds``; the figure is the
server process's user + system CPU time (from /proc) over the calls it answered. One-token
requests isolate what every request pays before its first token.
"""

from __future__ import annotations

import argparse
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
THREADS = 16


def ms_per_request(served: Served, seconds: float) -> float:
    with ScalpelClient(f"127.0.0.1:{served.port}", served.secret) as client:
        client.generate("toy", PROMPT, max_tokens=1)  # warm
        counts: list[int] = []
        stop = time.monotonic() + seconds

        def worker() -> None:
            answered = 0
            while time.monotonic() < stop:
                client.generate("toy", PROMPT, max_tokens=1)
                answered += 1
            counts.append(answered)

        before = cpu_seconds(served.process.pid)
        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return 1000 * (cpu_seconds(served.process.pid) - before) / sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        uncached_config = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "uncached.yaml"
        uncached_config.write_text("key_cache_seconds: 0\n")
        sides = {
            "cached": stack.enter_context(serve_process(Path(stack.enter_context(tempfile.TemporaryDirectory())))),
            "uncached": stack.enter_context(
                serve_process(
                    Path(stack.enter_context(tempfile.TemporaryDirectory())), "--config", str(uncached_config)
                )
            ),
        }
        figures: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            for name in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
                figures[name].append(ms_per_request(sides[name], args.seconds))
    results = {f"{name}_ms_per_request": statistics.median(values) for name, values in figures.items()}
    results["cached_ratio_to_uncached"] = statistics.median(
        a / b for a, b in zip(figures["cached"], figures["uncached"], strict=True)
    )
    report(results, args.json)


if __name__ == "__main__":
    main()
