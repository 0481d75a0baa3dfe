"""Run a generator ahead of its consumer, in a pool thread.

A gRPC sync server waits for each streamed message to be written before it asks the handler for
the next one. Generating in the handler thread would idle the model for that wait on every
token; here the producer computes the next token while the previous one is being written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(produce: Callable[[Callable[[], bool]], Iterator[T]], pool: ThreadPoolExecutor) -> Iterator[T]:
    """The events of ``produce(keep_going)``, computed in ``pool``, in order.

    ``keep_going()`` turns false once this iterator is closed (the consumer went away), so the
    producer stops early. An exception raised by the producer is raised here, after the events
    it produced before it.
    """
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    abandoned = threading.Event()

    def run() -> None:
        try:
            for event in produce(lambda: not abandoned.is_set()):
                events.put(event)
        except BaseException as error:  # handed over: the consumer raises it in its own thread
            events.put(error)
        events.put(_END)

    pool.submit(run)
    try:
        while (item := events.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        abandoned.set()
