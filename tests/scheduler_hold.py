"""Holding a model's scheduler between two decode steps, so that a test can act on rows in flight
without a race against them finishing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from service.engine.scheduler import Scheduler
from service.hosting import ModelHost


@contextmanager
def scheduler_held(host: ModelHost | Scheduler, timeout: float = 60.0) -> Iterator[None]:
    """While inside, a job occupies the scheduler thread of ``host`` (a model's, or a scheduler
    itself): no row advances, and whatever joins the queue meanwhile is admitted together. On exit
    the job returns (the scheduler goes on) once whatever the body started has been given the chance."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(timeout)

    job = threading.Thread(target=host.call if isinstance(host, Scheduler) else host.forward, args=(hold,))
    job.start()
    assert holding.wait(timeout), "the scheduler never ran the holding job"
    try:
        yield
    finally:
        release.set()
        job.join()
