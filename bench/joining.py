"""Newcomers joining a running batch: a merge (the whole KV cache copied, twice where a row has
ended: compacted, then merged) against writing them in place (``DecodeBatch.place``: into the row
of the stream that ended and the spare rows), side by side in one process.

    python bench/joining.py --json
    → {"<case>_place_ratio_to_merge", "<case>_merge_ms", "<case>_place_ms"}

Each case brings ``newcomers`` rows of a prompt's length into a batch of ``rows`` rows of
``columns`` columns, one of whose rows has ended, in the layer shapes of a model (layers, heads,
head dim). Each join starts from a fresh batch (made untimed, with spare rows for the newcomers);
the two ways take turns over ``--rounds`` of ``--joins`` joins each, and the ratio is the median
over rounds of the in-place time over the merge's. Both must leave every live row with the same
keys, values, mask and position (the script fails otherwise). Cases: the toy model at the serving
bench's c64 load (64 rows × 40 columns, 4 newcomers of 25 tokens), and a GPT-2-small-shaped
model at 32 rows × 200 columns (4 newcomers of 100 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import report

from editors.decode_batch import DecodeBatch
from editors.growing_cache import GrowingCache

#: name: (layers, heads, head dim, rows, columns, newcomers, their columns)
CASES = {"toy": (4, 4, 32, 64, 40, 4, 25), "gpt2_small": (12, 12, 64, 32, 200, 4, 100)}
ENDED_ROW = 5  # the running row whose stream ended


def random_batch(shape: tuple[int, int, int], rows: int, columns: int, device: str, seed: int) -> DecodeBatch:
    """Random keys and values in ``shape`` (layers, heads, head dim); each row's first 3 columns are padding."""
    layers, heads, head_dim = shape
    generator = torch.Generator(device).manual_seed(seed)
    kv = [
        tuple(torch.randn(rows, heads, columns, head_dim, device=device, generator=generator) for _ in range(2))
        for _ in range(layers)
    ]
    mask = torch.ones((rows, columns), dtype=torch.long, device=device)
    mask[:, :3] = 0
    return DecodeBatch(GrowingCache(kv), mask, mask.sum(-1))


def running_batch(shape: tuple[int, int, int], rows: int, columns: int, spare: int, device: str) -> DecodeBatch:
    """``rows`` rows (the last merged in, as the engine's batches are) with room for ``spare`` more."""
    running = random_batch(shape, rows - 1, columns, device, seed=1)
    running.merge(random_batch(shape, 1, columns, device, seed=2), spare)
    return running


def join(running: DecodeBatch, newcomers: DecodeBatch, in_place: bool) -> list[int]:
    """Bring ``newcomers`` into ``running`` (whose row ``ENDED_ROW`` ended); each running row's
    new index (None for the ended one), then each newcomer's."""
    if in_place:
        slots = running.slots(newcomers, [ENDED_ROW])
        assert slots is not None
        running.place(newcomers, slots)
        return [row if row != ENDED_ROW else None for row in range(len(running) - len(slots) + 1)] + slots
    kept = [row for row in range(len(running)) if row != ENDED_ROW]
    running.keep(kept)
    running.merge(newcomers)
    placed = {row: index for index, row in enumerate(kept)}
    return [placed.get(row) for row in range(len(kept) + 1)] + [*range(len(kept), len(running))]


def rows_of(batch: DecodeBatch, index: list[int | None]) -> list[tuple[torch.Tensor, ...]]:
    """Each live row's keys, values, mask and position, its real columns only."""
    rows = []
    for row in index:
        if row is not None:
            real = int(batch.mask[row].sum())
            kv = [t[row, :, -real:] for layer in batch.cache.layers for t in (layer.keys, layer.values)]
            rows.append((*kv, batch.mask[row, -real:], batch.positions[row]))
    return rows


def case(name: str, rounds: int, joins: int, device: str) -> dict[str, float]:
    layers, heads, head_dim, rows, columns, count, their_columns = CASES[name]
    shape = (layers, heads, head_dim)
    newcomers = random_batch(shape, count, their_columns, device, seed=3)
    results = {}
    for in_place in (False, True):  # both leave the same rows
        running = running_batch(shape, rows, columns, count, device)
        results[in_place] = rows_of(running, join(running, newcomers, in_place))
    for merged, placed in zip(results[False], results[True], strict=True):
        if not all(torch.equal(a, b) for a, b in zip(merged, placed, strict=True)):
            raise SystemExit(f"{name}: a row differs between the merge and the in-place join")
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for in_place in (False, True):
            spent = 0.0
            for _ in range(joins):
                running = running_batch(shape, rows, columns, count, device)
                if device != "cpu":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                join(running, newcomers, in_place)
                if device != "cpu":
                    torch.cuda.synchronize()
                spent += time.perf_counter() - started
            times[in_place].append(spent / joins)
    ratios = [placed / merged for placed, merged in zip(times[True], times[False], strict=True)]
    return {
        f"{name}_place_ratio_to_merge": statistics.median(ratios),
        f"{name}_merge_ms": statistics.median(times[False]) * 1e3,
        f"{name}_place_ms": statistics.median(times[True]) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--joins", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the engine's on 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, float] = {}
    with torch.inference_mode():
        for name in CASES:
            results.update(case(name, args.rounds, args.joins, args.device))
    report(results, args.json)


if __name__ == "__main__":
    main()
