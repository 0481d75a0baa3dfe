"""What a long prompt does to the streams already decoding, by prefill chunk size.

    python bench/chunked_prefill.py --json
    → {"chunk{C}_running_max_gap_ms", "chunk{C}_long_ttft_ms", "chunk{C}_short_ttft_ms"} for each
      --chunks C, and {"together_{padded,split}_{long,short}_ttft_ms", "together_short_ttft_ratio",
      "together_long_ttft_ratio"}

A GPT-2-small-shaped model (124M, randomly initialised: no download), float32, in this process
(``--device``).
Four streams decode (16-token prompts, greedy, past EOS); once each has 10 tokens, a request
with a ``--long``-token prompt arrives. Reported per chunk size (the scheduler's
``prefill_chunk_tokens``): the running streams' longest wait between two tokens while that
prompt is prefilled (one whole prefill forward when it fits in a chunk), the long request's
time to first token, and that of a 16-token request sent once the long prompt is admitted (its
prefill goes ahead of the long one's remaining chunks). The median over
``--rounds``; each round runs every chunk size.

**together**: the long prompt and ``--shorts`` 16-token prompts join the queue within one decode
step (queued while a job holds the scheduler, as a burst arriving during a step), with the
default chunk (2048). Side by side per round: ``padded``, every one in one prefill padded to the
long prompt (``max_padding`` unbounded, the behaviour before it), and ``split`` (the default: the
short prompts leave the long one's prefill for one of their own). Reported: the short requests'
mean time to first token and the long request's, from the release; ratios split / padded.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpt2_small import gpt2_small_shaped
from bench.report import report
from editors import Surgeon
from editors.toyworld import load_toy_model
from service.engine.scheduler import Sampling, Scheduler, Token

RUNNING = 4


def one_round(model, surgeon: Surgeon, tokenizer, chunk: int, long: int) -> tuple[float, float, float]:
    """The running streams' longest gap between tokens after the long request arrived, that
    request's time to first token and the short request's (all in ms)."""
    context = model.config.n_positions
    scheduler = Scheduler(
        model, surgeon, tokenizer, f"chunk{chunk}", context, prefill_chunk_tokens=chunk, stream_interval=1
    )
    stack = surgeon.compile([])
    generator = torch.Generator().manual_seed(chunk)
    vocab = model.config.vocab_size
    arrivals: list[list[float]] = [[] for _ in range(RUNNING)]
    started = threading.Barrier(RUNNING + 1)

    def read(row: int) -> None:
        prompt = torch.randint(1, vocab, (16,), generator=torch.Generator().manual_seed(row)).to(model.device)
        for event in scheduler.generate(prompt, stack, Sampling(max_tokens=120, ignore_eos=True)):
            if isinstance(event, Token):
                arrivals[row].extend([time.perf_counter()] * len(event.token_ids))
                if len(arrivals[row]) == 10:
                    started.wait()

    readers = [threading.Thread(target=read, args=(row,)) for row in range(RUNNING)]
    for reader in readers:
        reader.start()
    started.wait()
    arrived = time.perf_counter()
    prompt = torch.randint(1, vocab, (long,), generator=generator).to(model.device)
    events = scheduler.generate(prompt, stack, Sampling(max_tokens=4, ignore_eos=True))
    while scheduler.waiting:  # until the long prompt is admitted (its prefill under way)
        time.sleep(0.001)
    short_sent = time.perf_counter()
    short = torch.randint(1, vocab, (16,), generator=generator).to(model.device)
    short_first = next(e for e in scheduler.generate(short, stack, Sampling(max_tokens=1)) if isinstance(e, Token))
    short_ttft = time.perf_counter() - short_sent
    assert short_first.token_ids
    first = None
    for event in events:
        if isinstance(event, Token) and first is None:
            first = time.perf_counter()
    for reader in readers:
        reader.join()
    scheduler.close()
    assert first is not None
    gaps = [b - a for times in arrivals for a, b in itertools.pairwise(times) if b > arrived]
    return 1000 * max(gaps), 1000 * (first - arrived), 1000 * short_ttft


def together_round(model, surgeon: Surgeon, tokenizer, long: int, shorts: int, padded: bool) -> tuple[float, float]:
    """The short requests' mean time to first token and the long one's (ms), all queued at once
    while ``RUNNING`` streams decode."""
    scheduler = Scheduler(model, surgeon, tokenizer, "together", model.config.n_positions)
    if padded:
        scheduler.max_padding = 10**9
    stack = surgeon.compile([])
    vocab, room = model.config.vocab_size, model.config.n_positions - 17  # running streams stay in the context
    generator = torch.Generator().manual_seed(long)
    running = [
        scheduler.generate(torch.randint(1, vocab, (16,), generator=generator), stack, Sampling(max_tokens=room))
        for _ in range(RUNNING)
    ]
    for stream in running:
        next(stream)  # decoding
    holding, release = threading.Event(), threading.Event()
    held = threading.Thread(target=scheduler.call, args=(lambda: holding.set() or release.wait(600),))
    held.start()
    holding.wait()
    prompts = [torch.randint(1, vocab, (n,), generator=generator) for n in [long] + [16] * shorts]
    streams = [scheduler.generate(p, stack, Sampling(max_tokens=1, ignore_eos=True)) for p in prompts]
    firsts = [0.0] * len(streams)

    def read(i: int) -> None:
        next(e for e in streams[i] if isinstance(e, Token))
        firsts[i] = time.perf_counter()

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for reader in readers:
        reader.start()
    released = time.perf_counter()
    release.set()
    for reader in readers:
        reader.join()
    held.join()
    for stream in running:
        stream.close()
    scheduler.close()
    return 1000 * (statistics.mean(firsts[1:]) - released), 1000 * (firsts[0] - released)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[2048, 512, 256, 128])
    parser.add_argument("--long", type=int, default=960, help="tokens in the long prompt (under 1024)")
    parser.add_argument("--shorts", type=int, default=8, help="16-token prompts queued with the long one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 0 < args.long < 1024 or any(c < 1 for c in args.chunks):
        parser.error("--long must be in 1..1023 and every chunk positive")
    _, tokenizer, _ = load_toy_model()
    model = gpt2_small_shaped(tokenizer, args.device)
    surgeon = Surgeon(model)
    one_round(model, surgeon, tokenizer, args.chunks[-1], 64)  # warm
    figures: dict[int, list[tuple[float, float, float]]] = {c: [] for c in args.chunks}
    for round_ in range(args.rounds):
        for chunk in args.chunks if round_ % 2 == 0 else args.chunks[::-1]:
            figures[chunk].append(one_round(model, surgeon, tokenizer, chunk, args.long))
    results: dict[str, float] = {}
    for chunk, rounds in figures.items():
        results[f"chunk{chunk}_running_max_gap_ms"] = statistics.median(gap for gap, _, _ in rounds)
        results[f"chunk{chunk}_long_ttft_ms"] = statistics.median(ttft for _, ttft, _ in rounds)
        results[f"chunk{chunk}_short_ttft_ms"] = statistics.median(short for _, _, short in rounds)
    together: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for padded in (True, False) if round_ % 2 == 0 else (False, True):
            together[padded].append(together_round(model, surgeon, tokenizer, args.long, args.shorts, padded))
    for padded, name in ((True, "padded"), (False, "split")):
        results[f"together_{name}_short_ttft_ms"] = statistics.median(short for short, _ in together[padded])
        results[f"together_{name}_long_ttft_ms"] = statistics.median(long for _, long in together[padded])
    for index, name in ((0, "short"), (1, "long")):
        results[f"together_{name}_ttft_ratio"] = statistics.median(
            split[index] / padded[index] for split, padded in zip(together[False], together[True], strict=True)
        )
    report(results, args.json)


if __name__ == "__main__":
    main()
