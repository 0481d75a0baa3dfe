"""Which thread gets torch's intra-op (OpenMP) threads in a serving process.

torch's CPU wheel runs its intra-op parallelism on libgomp. Measured on the 2-core box: the first
thread of a process that opens a parallel team runs at full speed, and every team opened after it
runs about 1.6–2× slower (a toy-model decode of 64 rows: 120 ms on the first team, 190–215 ms on
a later one, slower than one thread's 175 ms), whether or not the first team is still busy.
A serving process therefore gives its teams to the threads that run forwards (each model's
scheduler) and keeps every other thread that touches torch serial (:func:`serial_thread`): the
main thread, which loads the models, the gRPC handler threads and the workers computing ROME and
MEMIT edits, which would otherwise open a second team for good.
"""

from __future__ import annotations

import torch


def serial_thread(requested: int | None = None) -> int:
    """Make the calling thread run torch ops on one thread, before it opens any parallel team;
    return the intra-op thread count the schedulers should set on their own threads
    (``requested``, or torch's default for this machine)."""
    default = torch.get_num_threads()  # first: it gives this thread OpenMP settings of its own, so a
    torch.set_num_threads(1)  # scheduler's later set_num_threads leaves this thread serial
    return requested or default


def forward_threads(cores: int, engine_process: bool) -> int:
    """Each model's intra-op threads when none are configured: one per core, or, with generation in
    an engine process, one per core but one, left to the serving process (gRPC, tokenising, the
    stream handlers). On the 2-core box, with an engine process, one intra-op thread made the same
    tokens/s as two at 64 streams and more at 8 (+22 %) and 1 (+10 %), at 0.85 of a core against
    1.3-1.6: the second thread mostly waited at OpenMP barriers for a core the serving process
    held (BENCHMARKS.md)."""
    return max(1, cores - 1) if engine_process else cores
