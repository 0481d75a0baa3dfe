"""Long work on a worker thread, its progress streamed back to the call that asked for it."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

from service.engine.intra_op import serial_thread


def reported(compute: Callable[[Callable[[Any], None]], Any], name: str) -> Generator[Any, None, Any]:
    """Run ``compute(report)`` on a worker thread (in this call's context: its caller and deadline)
    and yield each report as it comes; ``result = yield from reported(...)`` gets its result, and
    its error is raised here, in the call's own thread."""
    outcome: dict[str, Any] = {}
    reports: queue.SimpleQueue[Any] = queue.SimpleQueue()
    finished = object()
    call = contextvars.copy_context()

    def run() -> None:
        serial_thread()  # a second OpenMP team would slow the schedulers' for good (service.engine.intra_op)
        try:
            outcome["result"] = call.run(compute, reports.put)
        except BaseException as error:  # handed to the stream, which raises it in the call's thread
            outcome["error"] = error
        reports.put(finished)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    while (report := reports.get()) is not finished:
        yield report
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
