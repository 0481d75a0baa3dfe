"""An asyncio event loop on a thread of its own, for the ``grpc.aio`` server in a process whose
other parts (the CLI, tests, the HTTP gateway, the schedulers) are threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

from service.engine.intra_op import serial_thread

T = TypeVar("T")


class LoopThread:
    """A running loop; ``executor`` is its default (``run_in_executor(None, …)``)."""

    def __init__(self, name: str, executor: Executor) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(executor)
        self.loop.call_soon(serial_thread)  # a second OpenMP team would slow the schedulers' (service.engine.intra_op)
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Stop the loop (after the callbacks already queued) and wait for its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
