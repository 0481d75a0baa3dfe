"""The batch's rows changing in place against copying the whole KV cache, side by side in one
process: newcomers joining (a merge copies the cache twice where a row has ended, compacted then
merged; ``DecodeBatch.place`` writes them into the row of the stream that ended and spare rows),
and a quarter of the rows ending (``DecodeBatch.keep`` copies the live rows into new buffers;
``DecodeBatch.compact`` moves the last live rows into the ended ones).

    python bench/joining.py --json
    → {"<case>_join_ratio", "<case>_join_copy_ms", "<case>_join_in_place_ms",
       "<case>_compact_ratio", "<case>_compact_copy_ms", "<case>_compact_in_place_ms"}

A join brings ``newcomers`` rows of a prompt's length into a batch of ``rows`` rows of
``columns`` columns, one of whose rows has ended; a compaction drops every fourth row of such a
batch. Shapes are a model's layers (layers, heads, head dim). Each operation starts from a fresh
batch (made untimed, with spare rows for the newcomers); the two ways take turns over
``--rounds`` of ``--joins`` operations each, and a ratio is the median over rounds of the
in-place time over the copy's. Both must leave every live row with the same keys, values, mask
and position (the script fails otherwise). Cases: the toy model at the serving bench's c64 load
(64 rows × 40 columns, 4 newcomers of 25 tokens), and a GPT-2-small-shaped model at 32 rows ×
200 columns (4 newcomers of 100 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import report

from service.engine.decode_batch import DecodeBatch
from service.engine.growing_cache import GrowingCache

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


def join(running: DecodeBatch, newcomers: DecodeBatch, in_place: bool) -> list[int | None]:
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


def compacting(running: DecodeBatch, in_place: bool) -> list[int | None]:
    """Drop every fourth row of ``running`` (a quarter ended, when the scheduler compacts); each
    row's new index (None for the dropped ones)."""
    rows = len(running)
    alive = [row for row in range(rows) if row % 4 != 1]
    if in_place:
        now = {old: new for new, old in enumerate(running.compact(alive))}
    else:
        running.keep(alive)
        now = {old: new for new, old in enumerate(alive)}
    return [now.get(row) for row in range(rows)]


def rows_of(batch: DecodeBatch, index: list[int | None]) -> list[tuple[torch.Tensor, ...]]:
    """Each live row's keys, values, mask and position, its real columns only."""
    rows = []
    for row in index:
        if row is not None:
            real = int(batch.mask[row].sum())
            kv = [t[row, :, -real:] for layer in batch.cache.layers for t in (layer.keys, layer.values)]
            rows.append((*kv, batch.mask[row, -real:], batch.positions[row]))
    return rows


def side_by_side(
    label: str, make: Callable[[], DecodeBatch], run: Callable[[DecodeBatch, bool], list[int | None]], args
) -> dict[str, float]:
    """``run`` by copy and in place on fresh batches from ``make``: the same rows after, then
    times over ``args.rounds`` of ``args.joins`` each."""
    after = {}
    for in_place in (False, True):
        running = make()
        after[in_place] = rows_of(running, run(running, in_place))
    same = len(after[False]) == len(after[True]) and all(
        torch.equal(a, b)
        for copied, placed in zip(after[False], after[True], strict=True)
        for a, b in zip(copied, placed, strict=True)
    )
    if not same:
        raise SystemExit(f"{label}: the rows differ between the copy and the in-place way")
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for in_place in (False, True):
            spent = 0.0
            for _ in range(args.joins):
                running = make()
                if args.device != "cpu":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run(running, in_place)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                spent += time.perf_counter() - started
            times[in_place].append(spent / args.joins)
    ratios = [fast / slow for fast, slow in zip(times[True], times[False], strict=True)]
    return {
        f"{label}_ratio": statistics.median(ratios),
        f"{label}_copy_ms": statistics.median(times[False]) * 1e3,
        f"{label}_in_place_ms": statistics.median(times[True]) * 1e3,
    }


def case(name: str, args) -> dict[str, float]:
    layers, heads, head_dim, rows, columns, count, their_columns = CASES[name]
    shape = (layers, heads, head_dim)
    newcomers = random_batch(shape, count, their_columns, args.device, seed=3)
    return {
        **side_by_side(
            f"{name}_join",
            lambda: running_batch(shape, rows, columns, count, args.device),
            lambda running, in_place: join(running, newcomers, in_place),
            args,
        ),
        **side_by_side(
            f"{name}_compact", lambda: random_batch(shape, rows, columns, args.device, seed=4), compacting, args
        ),
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
            results.update(case(name, args))
    report(results, args.json)


if __name__ == "__main__":
    main()
