"""read_ahead: a producer in a pool thread, handed over in order, stopping when abandoned."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.read_ahead import read_ahead


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def test_events_arrive_in_order_from_another_thread(pool) -> None:
    threads = set()

    def produce(keep_going: Callable[[], bool]) -> Iterator[int]:
        for i in range(100):
            threads.add(threading.get_ident())
            yield i

    assert list(read_ahead(produce, pool)) == list(range(100))
    assert threads and threading.get_ident() not in threads


def test_the_producer_runs_ahead_while_the_consumer_is_busy(pool) -> None:
    produced = []

    def produce(keep_going: Callable[[], bool]) -> Iterator[int]:
        for i in range(5):
            produced.append(i)
            yield i

    events = read_ahead(produce, pool)
    assert next(events) == 0
    time.sleep(0.2)  # the consumer is "sending" the first event
    assert produced == [0, 1, 2, 3, 4]
    assert list(events) == [1, 2, 3, 4]


def test_a_producer_error_is_raised_after_the_events_before_it(pool) -> None:
    def produce(keep_going: Callable[[], bool]) -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad request")

    events = read_ahead(produce, pool)
    assert [next(events), next(events)] == [1, 2]
    with pytest.raises(ValueError, match="bad request"):
        next(events)


def test_closing_the_consumer_stops_the_producer(pool) -> None:
    stopped = threading.Event()
    produced = []

    def produce(keep_going: Callable[[], bool]) -> Iterator[int]:
        i = 0
        while keep_going():
            produced.append(i)
            yield i
            i += 1
            time.sleep(0.01)
        stopped.set()

    events = read_ahead(produce, pool)
    assert next(events) == 0
    events.close()
    assert stopped.wait(2.0)
    count = len(produced)
    time.sleep(0.1)
    assert len(produced) == count
