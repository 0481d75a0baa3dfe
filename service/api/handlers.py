"""What the server's interceptors share: one call's context as every handler sees it, and
rewrapping a method handler's behaviour, synchronous or ``async``.

The server is a ``grpc.aio`` server (service.server). ``Generate`` is ``async`` and runs on its
event loop. Every other handler is synchronous and runs on a worker thread, driven from the loop
by the outermost interceptor (:func:`run_on_worker`, :func:`iterate_on_worker`) rather than by
grpc.aio's own thread pool, whose context never learns that a call ended: a synchronous handler
here sees a cancelled call, a passed deadline or a stopping server as ``is_active() == False``.
Interceptors wrap each form with the same logic (:class:`Around`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import grpc

Behaviour = Callable[[Any, Any], Any]

#: Messages a synchronous stream's worker may run ahead of the client reading them.
STREAM_AHEAD = 8


class CallAborted(Exception):
    """A call ends with this status: a synchronous handler aborted it, or its key was refused
    (raised on a worker thread or before the handler runs; the loop ends the call)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """A call's servicer context as handlers use it. It remembers the status the call ends with,
    answers ``is_active()`` and runs ``add_callback`` callbacks once the call has ended (however
    it ended), and on a worker thread (``synchronous``) turns ``abort`` into :class:`CallAborted`."""

    def __init__(
        self,
        context: grpc.aio.ServicerContext,
        synchronous: bool,
        ending: Callable[[grpc.StatusCode], None] = lambda code: None,
    ) -> None:
        self._context = context
        self._synchronous = synchronous
        self._ending = ending  # told the status before it reaches the client (the access log)
        self.status = grpc.StatusCode.OK
        self.details = ""
        self._ended = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    def __getattr__(self, name: str) -> Any:  # invocation_metadata, time_remaining, peer, …
        return getattr(self._context, name)

    def is_active(self) -> bool:
        """Whether the client still waits for this call (it did not hang up, its deadline did not
        pass, the server is not stopping)."""
        return not self._ended.is_set()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callbacks.append(callback)
        return True

    def end(self) -> None:
        """The call is over (called on the loop)."""
        self._ended.set()
        for callback in self._callbacks:
            callback()

    def abort(self, code: grpc.StatusCode, details: str) -> Any:
        """End the call with ``code``: raises on a worker thread (the loop then ends the call,
        :func:`run_on_worker`); an ``async`` handler awaits it."""
        if self._synchronous:
            raise CallAborted(code, details)
        return self.abort_now(code, details)

    async def abort_now(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with ``code`` from the loop (raises grpc.aio's AbortError)."""
        self.status, self.details = code, details
        self._ending(code)
        await self._context.abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:  # the generated stubs' UNIMPLEMENTED
        self.status = code

    def set_details(self, details: str) -> None:
        self.details = details


async def _end_for(error: BaseException, call: CallContext) -> None:
    """Raise what a synchronous behaviour raised on its worker thread, in the call's task: its
    abort ends the call with that status, the generated stubs' NotImplementedError with the
    UNIMPLEMENTED they set."""
    if isinstance(error, CallAborted):
        await call.abort_now(error.code, error.details)
    if isinstance(error, NotImplementedError):
        await call.abort_now(call.status, call.details)
    raise error


async def run_on_worker(inner: Behaviour, request: Any, call: CallContext) -> Any:
    """A synchronous unary behaviour's reply, computed on a worker thread in this call's context."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(None, contextvars.copy_context().run, inner, request, call)
    except (CallAborted, NotImplementedError) as error:
        await _end_for(error, call)
    finally:
        call.end()


async def iterate_on_worker(inner: Behaviour, request: Any, call: CallContext) -> AsyncIterator[Any]:
    """A synchronous streaming behaviour's messages, produced on a worker thread (at most
    ``STREAM_AHEAD`` ahead of the client) in this call's context. When the call ends early the
    generator is closed on its thread at its next message."""
    loop = asyncio.get_running_loop()
    messages: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    room = threading.Semaphore(STREAM_AHEAD)
    stop = threading.Event()

    def hand(done: bool, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading
            loop.call_soon_threadsafe(messages.put_nowait, (done, value))

    def pump() -> None:
        generator: Iterator[Any] = inner(request, call)
        try:
            for message in generator:
                room.acquire()
                if stop.is_set():
                    break
                hand(False, message)
        except BaseException as error:  # raised in the call's task, below
            hand(True, error)
            return
        finally:
            generator.close()  # type: ignore[attr-defined]
        hand(True, None)

    worker = loop.run_in_executor(None, contextvars.copy_context().run, pump)
    try:
        while True:
            done, value = await messages.get()
            if done:
                if value is not None:
                    await _end_for(value, call)
                break
            room.release()
            yield value
        await worker
    finally:
        stop.set()
        room.release()  # a pump waiting for room sees the stop
        call.end()


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps a method's handler once (:meth:`wrap`) and keeps it, instead of
    building its wrappers again on every call (5 % of the serving process's py-spy samples under
    64 streams; within the noise of ``bench/request_cpu.py`` side by side)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:  # an unknown method: nothing kept for names a client makes up
            return None
        kept = self._wrapped.get(details.method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = self.wrap(handler, details.method)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler | None:
        raise NotImplementedError


class Around(Protocol):
    """An interceptor's logic around each form of behaviour it wraps."""

    def unary(self, inner: Behaviour) -> Behaviour: ...

    def stream(self, inner: Behaviour) -> Behaviour: ...

    def async_stream(self, inner: Behaviour) -> Behaviour: ...


def rewrapped(
    handler: grpc.RpcMethodHandler, around: Around, request_deserializer: Callable[[bytes], Any] | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` with its unary or server-streaming behaviour wrapped by ``around`` (and, if
    given, another request deserialiser); other kinds are returned as they are."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            around.unary(handler.unary_unary), deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner = handler.unary_stream
        wrap = around.async_stream if inspect.isasyncgenfunction(inner) else around.stream
        return grpc.unary_stream_rpc_method_handler(wrap(inner), deserializer, handler.response_serializer)
    return handler
