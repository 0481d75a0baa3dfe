"""Generation in a process of its own: the engine-core split (as vLLM's), so that the decode loop
never waits for the gRPC handlers' GIL.

In one process, every stream's handler thread (interceptors, key check, detokenising, protobuf,
gRPC's send path) takes the interpreter lock between the scheduler's ops: at 64 streams a decode
step cost ~13 ms of wall time against 3.1 ms alone. Here the model's weights are *shared* with a
child process (CPU tensors move to shared memory, CUDA tensors travel as IPC handles: one copy in
memory), which runs a :class:`~service.engine.scheduler.Scheduler` of its own over them for the
generation streams. The two talk over one pipe:

    Generate (event loop) ──generate/cancel──▶ pipe ──▶ child: command thread ─▶ scheduler thread
          ▲                                                                          │
    per-stream queues ◀── receiver thread ◀── pipe ◀── one message per step ─────────┘

Per step the child sends one message holding every stream's new tokens, so the serving process
wakes once per step, not once per token (and its event loop once per step: see
:mod:`service.engine.stream_reading`). Detokenising and stop strings stay with the readers, as in one
process. Everything else that uses the model (Score,
CompareVersions, checks, ROME, MEMIT, DiscoverCircuit) runs in the serving process as before, on
the same weights. Versions reach the child as their edits (plain pickles, compiled there once per
version); a stream whose caller goes away is cancelled at the next step, as in one process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import pickle
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editors import Edit, Surgeon
from editors.serialization import artifact_blobs_by_hash, edit_from_json
from service.engine.defaults import MAX_BATCH_ROWS, PREFIX_CACHE_BYTES
from service.engine.forkserver import forkserver_context
from service.engine.intra_op import serial_thread
from service.engine.sampling import Sampling
from service.engine.scheduler import Scheduler, SchedulerClosed, _Stream, overloaded
from service.engine.startup_heap import freeze_startup_heap
from service.engine.stream_reading import Doorbell, Finished, LoopEvents, Token, _Event, _Made, reader
from service.engine.stream_timing import StreamClock

_LOG = logging.getLogger(__name__)
#: How long the serving process waits for a new engine process to import torch and take the weights.
START_TIMEOUT_S = 600.0

#: A tensor of the model and where it lives: (module path, kind, attribute name, tensor), kind one
#: of "parameter", "buffer" or "attribute" (a plain tensor attribute, e.g. a rotary cache).
_Placed = tuple[str, str, str, torch.Tensor]


@dataclass(frozen=True)
class EngineSettings:
    """What the child's scheduler needs besides the weights."""

    name: str
    context_length: int
    stream_interval: int
    intra_op_threads: int | None
    eos_ids: frozenset[int]
    max_streams: int | None = None  # streams in flight beyond which a new one is refused (Overloaded)
    prefill_chunk_tokens: int = 2048  # positions per prefill forward (service.engine.scheduler)
    prefix_cache_bytes: int = PREFIX_CACHE_BYTES  # stored prompt prefixes (service.engine.prefix_cache)
    max_batch_rows: int = MAX_BATCH_ROWS  # rows one decode step may hold (service.engine.scheduler)
    kv_cache_bytes: int = 0  # the batch's keys and values at most (0: no budget; service.engine.scheduler)
    ride_prefill: bool = True  # prefill chunks in decode steps' forwards (service.engine.scheduler)
    admit_within_steps: int | None = None  # decode steps a newcomer may wait to be gathered (None: the scheduler's)


@dataclass
class EngineStats:
    """The child's counters, as of its last step."""

    forwards: int = 0
    steps: int = 0
    cancelled: int = 0
    active_rows: int = 0
    waiting: int = 0
    prefix_hit_tokens: int = 0
    preempted: int = 0
    row_cap: int = MAX_BATCH_ROWS
    kv_held_bytes: int = 0
    ridden: int = 0


@dataclass(eq=False)
class _Remote:
    """A stream in flight, as the serving process sees it."""

    events: queue.SimpleQueue[_Event] | LoopEvents = field(default_factory=queue.SimpleQueue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    is_active: Callable[[], bool] = lambda: True
    clock: StreamClock | None = None
    cancel_sent: bool = False

    def gone(self) -> bool:
        return self.abandoned.is_set() or not self.is_active()


class EngineProcess:
    """The serving process's side: start the child over ``model``'s weights, send it streams, hand
    each stream its tokens."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, settings: EngineSettings) -> None:
        self.tokenizer = tokenizer
        self.name, self.max_streams = settings.name, settings.max_streams
        self.stats = EngineStats(row_cap=settings.max_batch_rows)
        context = forkserver_context()
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_engine_main,
            args=(child, type(model), model.config, _placed_tensors(model), tokenizer, settings),
            name=f"engine-{settings.name}",
            daemon=True,
        )
        self._process.start()
        child.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self._process.kill()
            raise RuntimeError(f"the engine process for {settings.name!r} did not start in {START_TIMEOUT_S:.0f} s")
        try:
            ready = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the engine process for {settings.name!r} died while starting") from None
        if ready[0] != "ready":
            self._process.join(timeout=10)
            raise RuntimeError(f"the engine process for {settings.name!r} could not start: {ready[1]}")
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, _Remote] = {}
        self._versions: set[int] = set()  # versions whose edits the child has (under _send_lock)
        self._keys = itertools.count()
        self._closed: BaseException | None = None
        self._closing = False
        self._receiver = threading.Thread(target=self._receive, name=f"engine-{settings.name}-receiver", daemon=True)
        self._receiver.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def died(self) -> bool:
        """The child stopped without being asked to (killed, out of memory, a crash)."""
        return self._closed is not None and not self._closing

    @property
    def requests(self) -> int:
        """Streams in the child's batch or waiting to join it."""
        with self._lock:
            return len(self._streams)

    def generate(
        self,
        prompt: torch.Tensor,
        version: int,
        edits: Sequence[Edit],
        sampling: Sampling,
        is_active: Callable[[], bool] = lambda: True,
        bell: Doorbell | None = None,
        clock: StreamClock | None = None,
    ) -> Iterator[Token | Finished] | AsyncIterator[Token | Finished]:
        """As :meth:`Scheduler.generate`, under ``version`` (whose ``edits`` are sent to the child
        the first time a stream asks for it)."""
        remote = _Remote(is_active=is_active, clock=clock)
        if bell is not None:
            remote.events = LoopEvents(bell)
        with self._lock:
            if self._closed is not None:
                raise self._closed
            if self.max_streams is not None and len(self._streams) >= self.max_streams:
                raise overloaded(self.name, self.max_streams)
            key = next(self._keys)
            self._streams[key] = remote
        try:
            with self._send_lock:  # a version's edits reach the pipe before any stream of it
                if version not in self._versions:  # the registry's own form: lossless, verified there
                    self._write(("version", version, [(e.to_json(), artifact_blobs_by_hash(e)) for e in edits]))
                    self._versions.add(version)
                self._write(("generate", key, prompt.tolist(), version, sampling))
        except BaseException:
            with self._lock:
                self._streams.pop(key, None)
            raise
        return reader(self.tokenizer, sampling, remote.events, remote.abandoned, clock)

    def close(self) -> None:
        """Stop the child; streams still in flight end with :class:`SchedulerClosed`."""
        self._closing = True
        with contextlib.suppress(SchedulerClosed):
            self._send(("close",))
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._receiver.join(timeout=10)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._write(message)

    def _write(self, message: tuple[Any, ...]) -> None:
        """One message (``_send_lock`` held)."""
        try:
            _post(self._conn, message)
        except OSError:
            raise SchedulerClosed("the engine process is gone; retry on another replica") from None

    def _receive(self) -> None:
        """Hand each step's events to their streams (and their queue waits to their clocks); cancel
        the streams whose callers went away."""
        try:
            while True:
                events, stats, waits = pickle.loads(self._conn.recv_bytes())
                self.stats = stats
                with self._lock:
                    for key, waited in waits:
                        remote = self._streams.get(key)
                        if remote is not None and remote.clock is not None:
                            remote.clock.queued(waited)
                    for key, event in events:
                        remote = self._streams.get(key)
                        if remote is None:
                            continue
                        remote.events.put(event)
                        if not isinstance(event, _Made):
                            del self._streams[key]
                    gone = [key for key, remote in self._streams.items() if not remote.cancel_sent and remote.gone()]
                    for key in gone:
                        self._streams[key].cancel_sent = True
                if gone:
                    self._send(("cancel", gone))
        except (EOFError, OSError, SchedulerClosed):
            pass
        closed = SchedulerClosed("the model's engine process stopped; retry on another replica")
        with self._lock:
            self._closed = closed
            streams, self._streams = self._streams, {}
        for remote in streams.values():
            remote.events.put(closed)


def _placed_tensors(model: nn.Module) -> list[_Placed]:
    """Every tensor the model holds, with its place, tied weights listed under each of their
    names (the same object: pickling keeps them tied)."""
    placed: list[_Placed] = []
    for path, module in model.named_modules(remove_duplicate=False):
        placed += [(path, "parameter", name, p) for name, p in module._parameters.items() if p is not None]
        placed += [(path, "buffer", name, b) for name, b in module._buffers.items() if b is not None]
        placed += [(path, "attribute", name, t) for name, t in vars(module).items() if isinstance(t, torch.Tensor)]
    return placed


def _rebuild(model_class: type[nn.Module], config: Any, placed: list[_Placed]) -> nn.Module:
    """The model's skeleton (no memory of its own) wearing the shared tensors."""
    with torch.device("meta"):
        model = model_class(config)
    for path, kind, name, tensor in placed:
        module = model.get_submodule(path)
        if kind == "parameter":
            tensor.requires_grad_(False)
            module._parameters[name] = tensor  # type: ignore[assignment]
        elif kind == "buffer":
            module._buffers[name] = tensor
        else:
            setattr(module, name, tensor)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors not shared with the engine process: {', '.join(left[:5])}")
    return model.eval()


class _PipeScheduler(Scheduler):
    """The child's scheduler: each step's events (and the queue waits of the streams it
    admitted) leave as one message on the pipe."""

    def __init__(self, conn: Connection, send_lock: threading.Lock, *args: Any, **kwargs: Any) -> None:
        self.conn, self.send_lock = conn, send_lock
        self.cancelled_keys: set[int] = set()
        self._waits: list[tuple[int, float]] = []
        super().__init__(*args, **kwargs)

    def start(self, key: int, prompt: torch.Tensor, stack: Any, sampling: Sampling) -> None:
        stream = self._stream(prompt, stack, sampling, lambda: key not in self.cancelled_keys)
        stream.key = key
        self._enqueue([stream])

    def _admitted(self, stream: _Stream, waited: float) -> None:
        self._waits.append((stream.key, waited))

    def _deliver(self) -> None:
        if not self._outbox and not self._waits:
            return
        events = []
        for stream, event in self._outbox:
            events.append((stream.key, _portable(event)))
            if not isinstance(event, _Made):  # the stream ended: a late cancel has nothing to drop
                self.cancelled_keys.discard(stream.key)
        self._outbox.clear()
        waits, self._waits = self._waits, []
        _child_send(self.conn, self.send_lock, (events, _stats(self), waits))


def _portable(event: _Event) -> _Event:
    """An exception that cannot cross the pipe travels as a RuntimeError naming it."""
    if isinstance(event, BaseException):
        try:
            pickle.dumps(event)
        except Exception:
            return RuntimeError(f"{type(event).__name__}: {event}")
    return event


def _post(conn: Connection, message: object) -> None:
    """One message on the pipe, either way. Plain pickles: a tensor in a message is copied, never
    moved to shared memory under a reader."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _child_send(conn: Connection, lock: threading.Lock, message: object) -> None:
    """The child's sends (its scheduler and command threads both send)."""
    with lock:
        _post(conn, message)


def _engine_main(
    conn: Connection,
    model_class: type[nn.Module],
    config: Any,
    placed: list[_Placed],
    tokenizer: PreTrainedTokenizerBase,
    settings: EngineSettings,
) -> None:
    """The child: rebuild the model over the shared weights, then run commands until "close"."""
    serial_thread()  # the scheduler thread opens this process's one parallel team (service.engine.intra_op)
    lock = threading.Lock()
    try:
        model = _rebuild(model_class, config, placed)
        surgeon = Surgeon(model)
        scheduler = _PipeScheduler(
            conn,
            lock,
            model,
            surgeon,
            tokenizer,
            settings.name,
            settings.context_length,
            stream_interval=settings.stream_interval,
            intra_op_threads=settings.intra_op_threads,
            eos_ids=settings.eos_ids,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
            prefix_cache_bytes=settings.prefix_cache_bytes,
            max_rows=settings.max_batch_rows,
            kv_cache_bytes=settings.kv_cache_bytes,
            ride_prefill=settings.ride_prefill,
            admit_within=settings.admit_within_steps,
        )
    except Exception as error:  # reported to the serving process, which refuses the model
        _child_send(conn, lock, ("failed", f"{type(error).__name__}: {error}"))
        return
    freeze_startup_heap()  # a full collection would otherwise stall the decode loop (service.engine.startup_heap)
    _child_send(conn, lock, ("ready",))
    stacks: dict[int, Any] = {}
    try:
        while True:
            command = pickle.loads(conn.recv_bytes())
            if command[0] == "generate":
                _, key, ids, version, sampling = command
                try:
                    stack = stacks[version]
                    if isinstance(stack, Exception):
                        raise stack
                    scheduler.start(key, torch.tensor(ids), stack, sampling)
                except Exception as error:  # this stream fails alone
                    _child_send(conn, lock, ([(key, _portable(error))], _stats(scheduler), []))
            elif command[0] == "version":
                _, version, edits = command
                try:
                    stacks[version] = surgeon.compile([edit_from_json(*edit) for edit in edits])
                except Exception as error:  # compiled in the serving process first: not expected
                    _LOG.exception("version %d does not compile in the engine process", version)
                    stacks[version] = error
            elif command[0] == "cancel":
                scheduler.cancelled_keys.update(command[1])
            else:
                break
    except (EOFError, OSError):  # the serving process went away
        pass
    scheduler.close()


def _stats(scheduler: Scheduler) -> EngineStats:
    return EngineStats(
        scheduler.forwards,
        scheduler.steps,
        scheduler.cancelled,
        scheduler.active_rows,
        scheduler.waiting,
        scheduler.prefix_cache.hit_tokens,
        scheduler.preempted,
        scheduler.row_cap,
        scheduler.kv_held_bytes,
        scheduler.ridden,
    )
