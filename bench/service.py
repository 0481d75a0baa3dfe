"""The service against plain in-process `transformers` on the same toy model, in one run.

    python bench/service.py --json
    → {"throughput_ratio_c1", "throughput_ratio_c8", "alias_move_p50_ms", "alias_move_p99_ms",
       "ttft_p50_ms", …}

Generation is greedy, 32 new tokens, prompts that the model keeps continuing (repeated symbol
sequences). The service runs as its own process (`scalpel serve`), as callers see it; the
in-process baseline runs in this process while the server idles. Each concurrency runs
``--rounds`` rounds of one in-process pass and one service pass back to back (order alternating);
the ratio reported is the median of the per-round ratios, so machine drift cancels. Targets (issue 5): ≥ 0.95×
in-process at concurrency 1; alias move p50 ≤ 20 ms end to end.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from bench.serve_process import serve_process  # noqa: E402
from editors import Steering  # noqa: E402
from editors.toyworld import load_toy_model  # noqa: E402
from service.api.scalpel.v1 import scalpel_pb2 as pb  # noqa: E402
from service.client import ScalpelClient  # noqa: E402
from service.registry import Registry  # noqa: E402

NEW_TOKENS = 32


def prompts(world, n: int) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join((seq := rng.sample(world.symbols, 12)) + seq) for _ in range(n)]


def tokens_per_second(run_one, texts: list[str], concurrency: int) -> float:
    """Total generated tokens / wall time, ``concurrency`` threads sharing the prompts."""
    counts: list[int] = []
    lock = threading.Lock()

    def worker(chunk: list[str]) -> None:
        for text in chunk:
            produced = run_one(text)
            with lock:
                counts.append(produced)

    chunks = [texts[i::concurrency] for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="(in-process, service) rounds per concurrency")
    parser.add_argument("--torch-threads", type=int, default=None, help="intra-op threads, both sides alike")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    threads = ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model, tokenizer, world = load_toy_model()

    def in_process(text: str) -> int:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return out.shape[1] - ids.shape[1]

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, serve_process(Path(tmp), *threads) as server:
        client = ScalpelClient(f"127.0.0.1:{server.port}", server.secret)
        registry = Registry(server.database_url)

        def via_service(text: str) -> int:
            return len(client.generate("toy", text, max_tokens=NEW_TOKENS).token_ids)

        for warm in prompts(world, 4):
            in_process(warm)
            via_service(warm)
        for concurrency in (1, 8):
            # rounds of (in-process, service) back to back, order alternating, so drift hits both
            plain, served, ratios = [], [], []
            for round_ in range(args.rounds):
                sides = [(plain, in_process), (served, via_service)]
                for sink, run_one in sides if round_ % 2 == 0 else sides[::-1]:
                    sink.append(tokens_per_second(run_one, prompts(world, args.requests), concurrency))
                ratios.append(served[-1] / plain[-1])
            results[f"inprocess_tokens_per_s_c{concurrency}"] = statistics.median(plain)
            results[f"service_tokens_per_s_c{concurrency}"] = statistics.median(served)
            results[f"throughput_ratio_c{concurrency}"] = statistics.median(ratios)

        ttft = []
        for text in prompts(world, 30):
            started = time.perf_counter()
            stream = client.stream("toy", text, max_tokens=NEW_TOKENS)
            next(iter(stream))
            ttft.append((time.perf_counter() - started) * 1000)
            stream.cancel()
        results["ttft_p50_ms"] = statistics.median(ttft)

        edit = client.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128) * 0.01))
        version = client.create_version("toy", 0, append=[edit.id])
        registry.record_check_run("toy", version.number, "passed", [], "bench")
        name = "models/toy/aliases/production"
        etag = client.alias("toy").etag
        moves = []
        for i in range(args.moves):
            started = time.perf_counter()
            if i % 2 == 0:
                etag = client.aliases.Promote(pb.PromoteRequest(name=name, version=version.number, etag=etag)).etag
            else:
                etag = client.aliases.Rollback(pb.RollbackRequest(name=name, etag=etag)).etag
            moves.append((time.perf_counter() - started) * 1000)
        results["alias_move_p50_ms"] = statistics.median(moves)
        results["alias_move_p99_ms"] = statistics.quantiles(moves, n=100)[98]
        client.close()
        registry.engine.dispose()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
    report(results, args.json)


if __name__ == "__main__":
    main()
