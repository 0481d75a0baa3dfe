"""One scheduler per hosted model: continuous batching, each row under its own version.

A single thread owns the model's forwards. Between two forwards it

1. runs at most one queued *job* (a Score, a CompareVersions chunk, a check-run batch: any
   function of the model), interactive jobs before background ones, so checks never hold the
   model for more than one batch at a time;
2. admits waiting streams (up to ``max_rows`` rows and ``prefill_tokens`` prompt tokens per
   prefill; check runs' rows after every waiting stream; prompts of very different lengths in
   separate prefills), prefills them in batched forwards of at
   most ``prefill_chunk_tokens`` positions (a long prefill takes one chunk per iteration, so the
   running rows decode between its chunks, and newcomers admitted meanwhile run their chunks first
   rather than wait for its last; a prompt's start stored in the prefix cache is not run again;
   while rows decode, a chunk runs inside their decode step's forward instead of one of its own:
   ``ride_prefill``, :mod:`service.engine.ragged`), samples their first token, and brings them into the
   running batch (in place, into the rows of ended streams and spare rows, where they fit);
3. drops rows that finished or whose caller went away, and runs **one decode forward over all
   active rows**, each row under its version's compiled stack (:meth:`Surgeon.rows`).

Tokens leave as they are made: each stream has its own queue that its reader drains
(:mod:`service.engine.stream_reading`).
A request is validated (prompt length, version, stack) before it joins, so a bad request fails
alone; an unexpected failure in a forward fails the rows of that forward and the loop goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editors import EditStack, RowStacks, Surgeon
from service.engine.decode_batch import DecodeBatch, Prefill, column_bytes
from service.engine.defaults import MAX_BATCH_ROWS, PREFIX_CACHE_BYTES
from service.engine.prefix_cache import PrefixCache, block_chain, reuse_is_exact
from service.engine.ragged import can_ride, ride
from service.engine.sampling import RowSampler, Sampling, TokenLogprob, pick_tokens
from service.engine.shared_prefixes import PendingPrefixes
from service.engine.stream_reading import (
    Doorbell,
    Finished,
    LoopEvents,
    Token,
    _drain,
    _Event,
    _Made,
    reader,
)
from service.engine.stream_timing import StreamClock

T = TypeVar("T")
_LOG = logging.getLogger(__name__)

#: A stream's tokens wait at most this long (seconds) for company before they go to its reader.
MAX_HOLD_S = 0.05
#: ``stream_interval=0`` (auto): one more token per message for every 8 rows in the batch, up to 8.
AUTO_ROWS_PER_TOKEN = 8
AUTO_INTERVAL_MAX = 8

#: After a step ran out of memory, the batch may hold one more row per this many decode steps
#: that did not (until ``max_rows``, or another shortage halves it again).
CAP_REGROWTH_STEPS = 64

#: With a KV budget, rows join only while the batch would hold this many more steps' columns
#: within it, and a step that would pass it sends newer rows back until that much room is free
#: again: a batch at its budget does not send a row back every step.
KV_HEADROOM_STEPS = 16

#: ``admit_within`` where prefills run apart: a newcomer waits up to this many decode steps to be
#: gathered with others into one prefill forward. Where they ride in the decode step (and join the
#: batch in place) it is admitted at the next step: that made as many tokens/s at 64 gRPC streams on
#: the CPU box, with 5-12 % fewer forwards and a 45 % shorter time to first token (BENCHMARKS.md).
GATHER_STEPS = 8

#: A merge that copies the whole cache leaves room for this share of its rows more (at least
#: ``MIN_SPARE_ROWS``, within the row cap and the KV budget): newcomers are then written into those
#: rows, or into the rows of streams that ended, copying only their own keys and values.
SPARE_ROWS_FRACTION = 4
MIN_SPARE_ROWS = 4
#: A compaction leaving the live rows at most this fraction of the buffers' rows copies them
#: into new buffers of their own size, rather than moving them in place (see ``_compact``).
SHRINK_BELOW = 4

#: Prefills in flight at once: a long one advancing chunk by chunk, and newcomers admitted
#: meanwhile, whose prefill (usually short) runs its chunks first instead of waiting for the long
#: one's last. Each iteration still runs one prefill chunk.
MAX_PREFILLS = 2

#: Job priorities: lower runs first.
INTERACTIVE = 0
BACKGROUND = 10


class SchedulerClosed(RuntimeError):
    """The scheduler stopped (the server is shutting down): the request may be retried elsewhere."""


class Overloaded(RuntimeError):
    """The model already has as many generation streams in flight as it takes: the request joins
    nothing, and may be retried after a backoff or on another replica."""


def overloaded(model: str, limit: int) -> Overloaded:
    return Overloaded(
        f"model {model!r} has {limit} generation streams in flight, as many as it takes (--max-streams); "
        "retry with backoff, or on another replica"
    )


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device (or host) allocation that failed."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        words in str(error) for words in ("out of memory", "can't allocate memory")
    )


@dataclass(eq=False)
class _Stream:
    """One generation request in flight: its prompt, stack, sampling state and outbox of token ids.

    Detokenising and stop strings are the consumer's work (:meth:`Scheduler.generate`, in the
    caller's thread), so the scheduler thread spends its time between forwards on scheduling."""

    prompt: torch.Tensor
    tokens: list[int]  # the prompt's ids (prefix cache keys)
    stack: EditStack
    sampling: Sampling
    is_active: Callable[[], bool]
    eos: frozenset[int]
    #: The scheduler's: events made during a step, delivered once its bookkeeping is done (readers
    #: woken one by one in the middle of it would take the GIL from it for each wake).
    outbox: list[tuple[_Stream, _Event]]
    events: queue.SimpleQueue[_Event] | LoopEvents = field(default_factory=queue.SimpleQueue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    last: int = -1
    made: list[int] = field(default_factory=list)  # every token it produced (a preempted row's prompt grows by them)
    prompt_tokens: int = field(init=False)  # its prompt as asked (``prompt`` grows when the row is preempted)
    pending: list[int] = field(default_factory=list)  # tokens made, not yet handed to the reader
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # theirs, if the stream asked
    handed_at: float = 0.0
    cached: int = 0  # prompt tokens its prefill took from the prefix cache
    chain: list[int] = field(default_factory=list)  # its prompt's block hashes (prefix_cache.block_chain)
    queued_at: int = 0  # the scheduler's decode step count when the stream joined the queue
    background: bool = False  # a check run's row: it waits behind every waiting stream
    queue_told: bool = False  # its wait in the queue was told (to its clock), once
    joined: float = 0.0  # and the time then (time.monotonic)
    clock: StreamClock | None = None  # the serving metrics' (service.engine.stream_timing)
    key: int = -1  # the stream's number in an engine process (service.engine.process)
    sampler: RowSampler = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = RowSampler(self.sampling, self.prompt)
        self.prompt_tokens = len(self.prompt)

    def gone(self) -> bool:
        return self.abandoned.is_set() or not self.is_active()

    def accept(self, token: int, logprob: TokenLogprob | None, interval: int, now: float, max_hold_s: float) -> bool:
        """Take ``token``; hand the pending tokens to the reader when the stream ends, on its first
        token, once ``interval`` are pending, or ``max_hold_s`` after the last hand-over. Return
        whether the stream goes on."""
        if token in self.eos:
            self.end(Finished("eos", self.produced))
            return False
        self.produced += 1
        self.last = token
        self.made.append(token)
        self.pending.append(token)
        if logprob is not None:
            self.pending_logprobs.append(logprob)
        if self.produced >= self.sampling.max_tokens:
            self.end(Finished("length", self.produced))
            return False
        if self.produced == 1 or len(self.pending) >= interval or now - self.handed_at >= max_hold_s:
            self._hand_over(now)
        return True

    def _hand_over(self, now: float) -> None:
        if self.pending:
            cached = self.cached if self.produced == len(self.pending) else 0  # told with the first tokens
            self.outbox.append((self, _Made(tuple(self.pending), tuple(self.pending_logprobs), cached)))
            self.pending, self.pending_logprobs = [], []
        self.handed_at = now

    def end(self, event: Finished | BaseException) -> None:
        """End the stream with ``event`` after the tokens still pending."""
        self._hand_over(0.0)
        if isinstance(event, Finished):
            event = replace(event, cached_prompt_tokens=self.cached)
        self.outbox.append((self, event))


@dataclass(eq=False)
class _Joining:
    """Streams admitted together, on their way into the batch, and their prefill once started."""

    streams: list[_Stream]
    prefill: Prefill | None = None


@dataclass(order=True)
class _Job:
    priority: int
    number: int
    run: Callable[[], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)


class Scheduler:
    """Continuous batching for one model (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        surgeon: Surgeon,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "model",
        context_length: int = 2048,
        max_rows: int = MAX_BATCH_ROWS,
        prefill_tokens: int = 8192,
        prefill_chunk_tokens: int = 2048,
        admit_within: int | None = None,
        admit_ratio: float = 0.5,
        stream_interval: int = 0,
        max_hold_s: float = MAX_HOLD_S,
        intra_op_threads: int | None = None,
        eos_ids: frozenset[int] | None = None,
        max_streams: int | None = None,
        prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
        kv_cache_bytes: int = 0,
        ride_prefill: bool = True,
    ) -> None:
        self.model = model
        self.name = name
        #: Streams (:meth:`generate`) in the batch or waiting beyond which a new one is refused.
        self.max_streams = max_streams
        self.surgeon = surgeon
        self.tokenizer = tokenizer
        self.eos = eos_ids if eos_ids is not None else frozenset({tokenizer.eos_token_id} - {None})
        self.context_length = context_length
        self.max_rows = max_rows
        #: Rows the batch may hold now: ``max_rows``, or fewer since a decode step ran out of
        #: device memory (:meth:`_preempt`); one more per ``CAP_REGROWTH_STEPS`` steps since, and
        #: all of them once the batch empties.
        self.row_cap = max_rows
        self._capped_at = 0  # the decode step count when the cap was last lowered or raised
        #: Rows taken out of the batch to be prefilled again because a step ran out of memory.
        self.preempted = 0
        self.prefill_tokens = prefill_tokens
        chunk = prefill_chunk_tokens
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"prefill_chunk_tokens must be a positive integer, got {prefill_chunk_tokens!r}")
        self.prefill_chunk_tokens = prefill_chunk_tokens
        #: Padding positions one prefill may run beside its prompts' own (rows are left-padded to
        #: its longest): a prompt that would add more waits for the next prefill, which runs side
        #: by side with this one (MAX_PREFILLS). A short prompt is not made to wait for a long one's
        #: chunks, nor a long one to carry short ones' padding; prompts of similar lengths share.
        self.max_padding = prefill_chunk_tokens // 4
        #: Prompt prefixes already prefilled, per stack (service.engine.prefix_cache): 0 bytes turns it off,
        #: and so does a sliding window (its prefills must run whole).
        if prefix_cache_bytes and not reuse_is_exact(model.config):
            _LOG.info("model %r attends over a sliding window: no prefix cache", name)
            prefix_cache_bytes = 0
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        if not isinstance(kv_cache_bytes, int) or isinstance(kv_cache_bytes, bool) or kv_cache_bytes < 0:
            raise ValueError(f"kv_cache_bytes must be 0 (no budget) or a positive integer, got {kv_cache_bytes!r}")
        #: Bytes the batch's keys and values may take (rows × columns × ``column_bytes``; 0: as many
        #: as the device holds). Rows join while they fit, with ``KV_HEADROOM_STEPS`` columns to
        #: grow; a step that would pass it sends the newest rows back (as a shortage of memory
        #: does, without lowering ``row_cap``). The cache's spare room is not counted.
        self.kv_cache_bytes = kv_cache_bytes
        self.column_bytes = column_bytes(model) if kv_cache_bytes else 0  # one row's token, every layer
        #: Whether a prefill chunk runs in the decode step's forward while rows decode
        #: (:mod:`service.engine.ragged`; models attending with SDPA over their whole context), rather
        #: than in a forward of its own between two steps.
        self.ride_prefill = bool(ride_prefill) and can_ride(model)
        if admit_within is None:  # see GATHER_STEPS
            admit_within = 0 if self.ride_prefill else GATHER_STEPS
        if not isinstance(admit_within, int) or isinstance(admit_within, bool) or admit_within < 0:
            raise ValueError(f"admit_within must be 0 (at once) or a positive integer, got {admit_within!r}")
        self.admit_within = admit_within
        self.admit_ratio = admit_ratio
        if not isinstance(stream_interval, int) or isinstance(stream_interval, bool) or stream_interval < 0:
            raise ValueError(f"stream_interval must be 0 (automatic) or a positive integer, got {stream_interval!r}")
        self.stream_interval = stream_interval
        self.max_hold_s = max_hold_s
        self.intra_op_threads = intra_op_threads
        self._outbox: list[tuple[_Stream, _Event]] = []
        self._device = next(model.parameters()).device
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._waiting: deque[_Stream] = deque()
        self._background: deque[_Stream] = deque()  # check runs' rows: admitted after every waiting stream
        self._jobs: list[_Job] = []
        self._numbers = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._rows: list[_Stream | None] = []  # None: a row whose stream ended, not yet compacted away
        #: Streams admitted from the queue, being prefilled into the batch (the group whose chunk
        #: runs next first; at most MAX_PREFILLS groups).
        self._joining: deque[_Joining] = deque()
        self._batch: DecodeBatch | None = None
        self._row_stacks: RowStacks | None = None  # the current rows' stacks; rebuilt when rows change
        self._no_edits = surgeon.compile([])  # the stack of an ended row left in the batch
        #: The decode step count at which an ended row left in the batch would run past the context.
        self._edge_step: float = math.inf
        #: Forwards run so far (decode steps and prefills), and decode steps alone.
        self.forwards = 0
        self.steps = 0
        self.ridden = 0  # decode steps that carried a prefill chunk
        #: Rows dropped because their reader went away (a client hung up, a stop string was met).
        self.cancelled = 0
        self._thread = threading.Thread(target=self._loop, name=f"scheduler-{name}", daemon=True)
        self._thread.start()

    # -- the callers' side ------------------------------------------------------------------------
    def generate(
        self,
        prompt: torch.Tensor,
        stack: EditStack,
        sampling: Sampling,
        is_active: Callable[[], bool] = lambda: True,
        bell: Doorbell | None = None,
        clock: StreamClock | None = None,
    ) -> Iterator[Token | Finished] | AsyncIterator[Token | Finished]:
        """Join the batch now and return this stream's tokens as they are made, then a
        :class:`Finished` (so several streams started one after another decode side by side,
        whichever is read first); with ``bell``, an async iterator for that doorbell's loop;
        ``clock`` is told the stream's latencies.

        Closing the iterator early (the caller went away) drops the row at the next step."""
        stream = self._stream(prompt, stack, sampling, is_active)
        stream.clock = clock
        if bell is not None:
            stream.events = LoopEvents(bell)
        self._enqueue([stream], self.max_streams)
        return reader(self.tokenizer, sampling, stream.events, stream.abandoned, clock)

    def complete(self, prompts: list[torch.Tensor], stack: EditStack, samplings: list[Sampling]) -> list[list[int]]:
        """The token ids each prompt produces under ``stack``: every prompt joins at once (one
        prefill when the batch has room), as rows beside the streams being served, at a lower
        priority (check runs): a stream waiting to join is admitted first."""
        streams = [self._stream(p, stack, s) for p, s in zip(prompts, samplings, strict=True)]
        self._enqueue(streams, background=True)
        produced = []
        for stream in streams:
            ids: list[int] = []
            end: object = None
            while end is None:
                gathered = _drain(stream.events)
                ids, end = ids + gathered.ids, gathered.end
            if isinstance(end, BaseException):
                raise end
            produced.append(ids)
        return produced

    def _stream(
        self, prompt: torch.Tensor, stack: EditStack, sampling: Sampling, is_active: Callable[[], bool] = lambda: True
    ) -> _Stream:
        eos = frozenset() if sampling.ignore_eos else self.eos
        prompt = prompt.cpu()  # a prefill moves its padded batch to the device in one copy
        tokens = prompt.tolist()
        chain = block_chain(stack, tokens, self.prefix_cache.block) if self._caching else []
        return _Stream(prompt, tokens, stack, sampling, is_active, eos, self._outbox, chain=chain)

    def _enqueue(self, streams: list[_Stream], limit: int | None = None, background: bool = False) -> None:
        """Queue ``streams`` to join the batch, unless that would put more than ``limit`` in flight."""
        with self._wake:
            if self._closed:
                raise SchedulerClosed("the model is shutting down; retry on another replica")
            if limit is not None and self.requests + len(streams) > limit:
                raise overloaded(self.name, limit)
            now = time.monotonic()
            for stream in streams:
                stream.queued_at, stream.joined, stream.background = self.steps, now, background
            (self._background if background else self._waiting).extend(streams)
            self._wake.notify()

    def call(self, run: Callable[[], T], priority: int = INTERACTIVE) -> T:
        """Run ``run()`` on the scheduler's thread between two forwards; return its result."""
        if threading.current_thread() is self._thread:
            return run()
        future: Future[T] = Future()
        with self._wake:
            if self._closed:
                raise SchedulerClosed("the model is shutting down; retry on another replica")
            heapq.heappush(self._jobs, _Job(priority, next(self._numbers), run, future))
            self._wake.notify()
        return future.result()

    @property
    def active_rows(self) -> int:
        return sum(stream is not None for stream in self._rows)

    @property
    def kv_held_bytes(self) -> int:
        """Bytes of keys and values the batch holds now (its cache's spare room included)."""
        batch = self._batch  # (read from other threads: one reference, then its own layers)
        return batch.held_bytes if batch is not None else 0

    @property
    def waiting(self) -> int:
        """Streams waiting to join the batch."""
        return len(self._waiting) + len(self._background)

    @property
    def queued_jobs(self) -> int:
        """Jobs (Score, CompareVersions chunks, check batches) waiting for the scheduler thread."""
        return len(self._jobs)

    @property
    def requests(self) -> int:
        """Streams in the batch, joining it or waiting to (one being merged may count twice
        for a moment, never zero times)."""
        joining = sum(len(group.streams) for group in list(self._joining))  # list(): one atomic copy
        return joining + self.active_rows + self.waiting

    @property
    def abandoned(self) -> int:
        """Streams in the batch or waiting whose reader went away: dropped at the next step."""
        return sum(s is not None and s.gone() for s in [*self._rows, *list(self._waiting), *list(self._background)])

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    # -- the scheduler thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        if self.intra_op_threads:  # this thread's own OpenMP team (see service.engine.intra_op)
            torch.set_num_threads(self.intra_op_threads)
        while True:
            with self._wake:
                while not (self._closed or self._jobs or self.waiting or self._joining or self._batch is not None):
                    self._wake.wait()
                if self._closed:
                    break
                job = heapq.heappop(self._jobs) if self._jobs else None
            if job is not None:  # between two steps: every stream is in the batch, joining it or waiting
                self._run_job(job)
            if len(self._joining) < MAX_PREFILLS:
                with self._wake:
                    admitted = self._admit(gather=not self._joining)
                if admitted:  # its chunks go first: a short prefill never waits for a long one
                    self._joining.appendleft(_Joining(admitted))
            with torch.inference_mode():
                try:
                    if self._joining and self._batch is not None and self.ride_prefill:
                        self._ride(self._joining[0])
                    else:
                        self._apart()
                except Exception as error:  # not one the steps handle: fail what is in flight, go on
                    self._in_flight_failed(error)
            self._deliver()
        self._shutdown()

    def _admit(self, gather: bool = True) -> list[_Stream]:
        """Waiting streams that fit this step's prefill (called under the lock).

        A prefill running apart is a forward of its own, so while rows are decoding newcomers are
        gathered (``gather``) into fewer, larger prefills: they are admitted once they are
        ``admit_ratio`` of the running rows, or once the oldest has waited ``admit_within`` decode
        steps (its extra time to first token). The defaults there (half, 8 steps) measured best on
        ``bench/serving.py``: an eighth and 4 steps made twice the prefills and ~10 % fewer
        tokens/s at concurrency 64. Where prefills ride, ``admit_within`` is 0 by default. While
        a long prefill runs chunk by chunk nothing is gathered: the newcomers' prefill takes one of
        the turns that chunks run anyway. Streams go first, check runs' rows (background) after
        them. A stream whose prompt starts like one being prefilled may wait for its stored start
        instead (:mod:`service.engine.shared_prefixes`), and one that would pad this prefill past
        ``max_padding`` waits for the next."""
        active, lines = self.active_rows, (self._waiting, self._background)
        waiting = self.waiting
        if not waiting:
            return []
        if (
            gather
            and active
            and waiting < max(1, int(active * self.admit_ratio))
            and self.steps - min(line[0].queued_at for line in lines if line) < self.admit_within
        ):
            return []
        admitted: list[_Stream] = []
        tokens, width, runs, full = 0, 0, 0, False  # prompt tokens; the prefill's width; tokens it runs
        pending, looked = self._pending_prefixes(), 0
        held_rows, held_width = self._held()
        for line in lines:
            later: list[_Stream] = []  # left for a later prefill: at the front of their line still
            while line and not full and active + len(admitted) < self.row_cap and looked < self.max_rows:
                stream, looked = line.popleft(), looked + 1
                if pending is not None and pending.should_wait(stream.stack, stream.tokens, stream.chain):
                    later.append(stream)
                    continue
                own = pending.uncached(stream.stack, stream.tokens) if pending is not None else len(stream.tokens)
                padded = max(width, own) * (len(admitted) + 1) - (runs + own)
                full = bool(admitted) and tokens + len(stream.prompt) > self.prefill_tokens
                if not full and (held_rows or admitted):  # a lone stream always fits (ModelHost checks)
                    rows, columns = held_rows + len(admitted) + 1, max(held_width, len(stream.prompt))
                    full = not self._fits(rows, columns + KV_HEADROOM_STEPS)
                if full or (admitted and padded > self.max_padding):  # see max_padding
                    later.append(stream)
                    continue
                admitted.append(stream)
                tokens, width, runs = tokens + len(stream.prompt), max(width, own), runs + own
                if pending is not None:
                    pending.add(stream.chain, own)
            line.extendleft(reversed(later))
        return admitted

    def _fits(self, rows: int, columns: int) -> bool:
        """Whether ``rows`` rows of ``columns`` columns fit the KV budget (always, without one)."""
        return not self.kv_cache_bytes or rows * columns * self.column_bytes <= self.kv_cache_bytes

    def _held(self) -> tuple[int, int]:
        """Rows the batch holds or will once the prefills in flight merge, and its columns then."""
        rows = self.active_rows + sum(len(group.streams) for group in self._joining)
        width = self._batch.length if self._batch is not None else 0
        for group in self._joining:
            for stream in group.streams:
                width = max(width, len(stream.prompt))
        return rows, width

    def _pending_prefixes(self) -> PendingPrefixes | None:
        """The prompt starts the prefills in flight will store (None: no prefix cache)."""
        if not self._caching:
            return None
        pending = PendingPrefixes(self.prefix_cache)
        for group in self._joining:
            if group.prefill is not None:
                left = group.prefill.width - group.prefill.done
                for stream in group.streams:
                    pending.add(stream.chain, left)
        return pending

    @staticmethod
    def _run_job(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            with torch.inference_mode():
                job.future.set_result(job.run())
        except BaseException as error:  # handed to the caller, who raises it in its own thread
            job.future.set_exception(error)

    def _apart(self) -> None:
        """The next prefill chunk, if any, then the decode step: a forward each."""
        if self._joining:
            self._prefill_step(self._joining[0])
        self._drop_gone()
        if self._batch is not None:
            self._decode()

    def _ride(self, group: _Joining) -> None:
        """``group``'s next prefill chunk in the decode step's forward (:mod:`service.engine.ragged`). If
        that forward fails, both are as they were and run apart, so a fault fails only the rows it
        would have failed alone."""
        if not self._prefill_ready(group):
            self._apart()
            return
        self._drop_gone()
        rows = self._ready_rows()
        if rows is None:  # (every row had ended)
            self._apart()
            return
        try:
            assert self._batch is not None and self._row_stacks is not None and group.prefill is not None
            logits, done = ride(
                self.model, self.surgeon, self._batch, self._row_stacks, self._last_tokens(rows), group.prefill
            )
        except Exception:
            _LOG.warning("a prefill chunk riding in a decode step failed: the two run apart", exc_info=True)
            self._apart()
            return
        self.forwards += 1
        self.steps += 1
        self.ridden += 1
        try:
            tokens = self._pick(logits, rows)
        except Exception as error:
            self._step_failed(rows, error)
        else:
            self._accept(rows, tokens)
        self._prefilled(group, done)

    def _prefill_ready(self, group: _Joining) -> bool:
        """Set up ``group``'s prefill if it has none; False (and it leaves) if nobody is left."""
        if group.prefill is None:
            self._start_prefill(group)
            if group.prefill is None:  # every reader went away, or the set-up failed
                self._leave(group)
                return False
        return True

    def _prefill_step(self, group: _Joining) -> None:
        """Run ``group``'s next prefill chunk (set up first if it has none)."""
        if not self._prefill_ready(group):
            return
        assert group.prefill is not None
        try:
            done = group.prefill.advance()
        except Exception as error:
            self._prefill_error(group, error)
            return
        self.forwards += 1
        self._prefilled(group, done)

    def _prefilled(self, group: _Joining, done: tuple[DecodeBatch, torch.Tensor] | None) -> None:
        """A chunk of ``group``'s prefill ran; after its last, merge its rows into the batch. A
        group with chunks left goes behind the other one, if any."""
        newcomers = group.streams
        if done is None:
            self._joining.remove(group)
            self._joining.append(group)
            return
        try:
            joined, logits = done
            if self._caching:
                assert group.prefill is not None
                self._store_prefixes(group.prefill, newcomers)
            tokens = self._pick(logits, newcomers)
            now = time.monotonic()
        except Exception as error:
            self._prefill_error(group, error)
            return
        keep = [
            row
            for row, (s, (token, logprob)) in enumerate(zip(newcomers, tokens, strict=True))
            if s.accept(token, logprob, 1, now, self.max_hold_s)
        ]
        if keep:
            joining = [newcomers[row] for row in keep]
            try:
                if len(keep) < len(newcomers):
                    joined.keep(keep)
                self._join(joined, joining)
            except Exception as error:  # the running batch may be half merged: every row starts over
                self._batch_lost([*(s for s in self._rows if s is not None), *joining], error)
            else:
                self._row_stacks = None
        self._leave(group)  # after the merge: a reader counting requests never misses them

    def _join(self, joined: DecodeBatch, streams: list[_Stream]) -> None:
        """Bring ``joined``'s rows (``streams``) into the batch: written in place into the rows of
        streams that ended and the cache's spare rows where they fit (a copy of the newcomers'
        keys and values alone), or else merged (a copy of the whole cache, ended rows left out,
        into buffers with spare rows for the next newcomers)."""
        ended = [row for row, stream in enumerate(self._rows) if stream is None]
        slots = self._batch.slots(joined, ended) if self._batch is not None else None
        if slots is not None:
            assert self._batch is not None
            self._batch.place(joined, slots)
            for row, stream in zip(slots, streams, strict=True):
                if row < len(self._rows):
                    self._rows[row] = stream
                else:
                    self._rows.append(stream)
            return
        self._compact()  # the merge copies the cache anyway: leave no finished rows in it
        if self._batch is None:
            self._batch = joined
        else:
            rows = len(self._rows) + len(streams)
            spare = max(0, min(max(MIN_SPARE_ROWS, rows // SPARE_ROWS_FRACTION), self.row_cap - rows))
            if not self._fits(rows + spare, self._batch.length + KV_HEADROOM_STEPS):
                spare = 0
            self._batch.merge(joined, spare)
        self._rows += streams

    def _prefill_error(self, group: _Joining, error: Exception) -> None:
        if not (out_of_memory(error) and self._prefill_out_of_memory(group)):
            self._prefill_failed(group, error)

    def _start_prefill(self, group: _Joining) -> None:
        """Set up the prefill of ``group``'s streams (those whose reader is still there)."""
        now, live = time.monotonic(), []
        for stream in group.streams:
            if stream.gone():  # its reader went away while it waited
                stream.end(Finished("cancelled", 0))
                self.cancelled += 1
            else:
                if not stream.queue_told:  # (a row sent back for memory told its wait the first time)
                    stream.queue_told = True
                    self._admitted(stream, now - stream.joined)
                live.append(stream)
        group.streams = live  # (each stream judged once: one that leaves now still gets its end)
        if not live:
            return
        prompts, stacks = [s.prompt for s in live], [s.stack for s in live]
        columns = max(1, self.prefill_chunk_tokens // len(prompts))
        try:
            cached = [self.prefix_cache.lookup(s.stack, s.tokens) if self._caching else None for s in live]
            for stream, prefix in zip(live, cached, strict=True):
                if not stream.produced:  # the count its first tokens told (not a preempted row's second)
                    stream.cached = prefix.length if prefix is not None else 0
            group.prefill = Prefill(self.model, self.surgeon, prompts, stacks, self._pad, columns, cached)
        except Exception as error:
            self._prefill_failed(group, error)

    def _batch_lost(self, streams: list[_Stream], error: Exception) -> None:
        """The batch's cache can no longer be trusted (a merge or compaction failed half done):
        out of memory, every row waits to be prefilled again, and the batch takes back half of
        them at first; otherwise every row fails."""
        self._drop_batch()
        if out_of_memory(error):
            _LOG.warning("the batch ran out of memory while rows joined: its %d rows start over", len(streams))
            self._lower_cap(len(streams) // 2)
            self._send_back(streams)
            return
        _LOG.exception("the batch failed while rows joined: its %d rows fail", len(streams))
        for stream in streams:
            stream.end(error)

    def _drop_batch(self) -> None:
        self._rows, self._batch, self._row_stacks, self._edge_step = [], None, None, math.inf

    def _in_flight_failed(self, error: Exception) -> None:
        """Every row in the batch or joining it fails with ``error``; the model's thread goes on
        (waiting streams, and those sent later, are served as before)."""
        _LOG.exception("the scheduler failed its rows in flight")
        streams = [s for s in self._rows if s is not None] + [s for group in self._joining for s in group.streams]
        self._drop_batch()
        self._joining.clear()
        for stream in streams:
            stream.end(error)

    def _prefill_failed(self, group: _Joining, error: Exception) -> None:
        _LOG.exception("prefill of %d rows failed", len(group.streams))
        for stream in group.streams:
            stream.end(error)
        self._leave(group)

    def _leave(self, group: _Joining) -> None:
        """``group`` is no longer joining (merged, failed, or nobody left to prefill)."""
        if group in self._joining:
            self._joining.remove(group)

    @property
    def _caching(self) -> bool:
        return self.prefix_cache.max_bytes > 0

    def _store_prefixes(self, prefill: Prefill, newcomers: list[_Stream]) -> None:
        """Keep the newcomers' prompt blocks that the prefix cache lacks. A row whose cached
        prefix was evicted while it was prefilled (another prefill stored blocks meanwhile) keeps
        nothing: its blocks would hang below one that is gone, and it did not run those tokens."""
        block, cache = self.prefix_cache.block, self.prefix_cache
        missing = [(row, cache.missing(s.stack, s.tokens)) for row, s in enumerate(newcomers)]
        missing = [(row, blocks) for row, blocks in missing if blocks and blocks.start * block >= prefill.skipped[row]]
        if not missing:
            return
        spans = [(row, blocks.start * block, blocks.stop * block) for row, blocks in missing]
        for (row, blocks), kv in zip(missing, prefill.prompt_kv(spans), strict=True):
            cache.insert(newcomers[row].stack, newcomers[row].tokens, blocks, kv)

    def _admitted(self, stream: _Stream, waited: float) -> None:
        """``stream`` leaves the queue for a prefill after ``waited`` seconds there."""
        if stream.clock is not None:
            stream.clock.queued(waited)

    def _drop_gone(self) -> None:
        gone = [row for row, stream in enumerate(self._rows) if stream is not None and stream.gone()]
        for row in gone:
            self._rows[row].end(Finished("cancelled", self._rows[row].produced))
        self.cancelled += len(gone)
        self._retire(gone)

    def _retire(self, rows: list[int]) -> None:
        """Rows whose stream ended. They stay in the batch (computed, their tokens unused) until a
        quarter of the batch has ended, newcomers merge, or one of them would step past the end of
        the context (:meth:`_decode`): compacting the KV cache copies all of it."""
        if not rows:
            return
        for row in rows:
            stream = self._rows[row]
            if stream is not None:  # its next position is at most its prompt and tokens (an EOS not counted)
                position = stream.prompt_tokens + stream.produced
                self._edge_step = min(self._edge_step, self.steps + self.context_length - position)
            self._rows[row] = None
        if 4 * (len(self._rows) - self.active_rows) >= len(self._rows):
            self._compact()

    def _compact(self, release: bool = False) -> None:
        """Drop the rows whose stream ended: in place, the last live rows moving into their rows
        (``DecodeBatch.compact``: the buffers keep their room for newcomers), or, to ``release``
        memory, into new buffers of the live rows alone (``DecodeBatch.keep``). Those are also
        taken when the live rows would fill at most ``1 / SHRINK_BELOW`` of the buffers' rows
        (a copy of few rows), so spare rows stay within a few times the rows in use."""
        alive = [row for row, stream in enumerate(self._rows) if stream is not None]
        self._edge_step = math.inf  # no ended row is left (newcomers may have taken their rows)
        if len(alive) == len(self._rows):
            return
        self._row_stacks = None
        if not alive:
            self._rows, self._batch = [], None
            self.row_cap = self.max_rows  # an empty batch holds no cache: the cap starts over
            return
        assert self._batch is not None
        if release or SHRINK_BELOW * len(alive) <= self._batch.row_room:
            self._batch.keep(alive)
            self._rows = [self._rows[row] for row in alive]
        else:
            self._rows = [self._rows[row] for row in self._batch.compact(alive)]

    def _newest_last(self) -> list[int]:
        """The live rows, the stream that joined first first (a shortage of memory sends the
        newest back: they have the least to prefill again). Newcomers may take any free row, so
        a row's place says nothing of its age."""
        live = [row for row, stream in enumerate(self._rows) if stream is not None]
        return sorted(live, key=lambda row: self._rows[row].joined)  # type: ignore[union-attr]

    def _decode(self) -> None:
        rows = self._ready_rows()
        if rows is None:
            return
        try:
            assert self._batch is not None and self._row_stacks is not None
            logits = self._batch.step(self.model, self.surgeon, self._row_stacks, self._last_tokens(rows))
            self.forwards += 1
            self.steps += 1
            tokens = self._pick(logits, rows)
        except Exception as error:
            self._step_failed(rows, error)
            return
        self._accept(rows, tokens)

    def _ready_rows(self) -> list[_Stream | None] | None:
        """The rows the next decode step feeds, their stacks built (None: no batch is left). Ended
        rows leave first if one would step past the context, and newer rows go back if the step
        would pass the KV budget."""
        if self.steps >= self._edge_step:  # an ended row would step past the context: drop ended rows first
            self._compact()
        if self._batch is None:
            return None
        if not self._fits(len(self._rows), self._batch.length + 1):
            self._make_room()
        if self._batch is None:  # (every row had ended)
            return None
        if self._row_stacks is None:  # rows that ended keep their stack until the rows change
            # (rebuilt after a compaction or a merge: rows that ended then run no edits)
            self._row_stacks = self.surgeon.rows([s.stack if s is not None else self._no_edits for s in self._rows])
        return self._rows

    def _last_tokens(self, rows: list[_Stream | None]) -> torch.Tensor:
        """Each row's latest token (the pad id for ended rows)."""
        return torch.tensor([s.last if s is not None else self._pad for s in rows], device=self._device)

    def _step_failed(self, rows: list[_Stream | None], error: Exception) -> None:
        """A decode step failed: out of memory, newer rows go back and the step runs again next
        iteration; otherwise its rows fail."""
        if out_of_memory(error):
            live = [stream for stream in rows if stream is not None]
            try:
                if self._preempt():
                    return  # the step runs again, over fewer rows
            except Exception as again:  # compacting ran out too: the cache cannot be trusted
                self._batch_lost(live, again)
                return
        _LOG.exception("decode step over %d rows failed", self.active_rows, exc_info=error)
        for stream in rows:
            if stream is not None:
                stream.end(error)
        self._retire(list(range(len(rows))))

    def _accept(self, rows: list[_Stream | None], tokens: list[tuple[int, TokenLogprob | None]]) -> None:
        """Hand each row its new token; retire the rows that ended."""
        if self.row_cap < self.max_rows and self.steps - self._capped_at >= CAP_REGROWTH_STEPS:
            self.row_cap, self._capped_at = self.row_cap + 1, self.steps
        interval, now = self._stream_interval(), time.monotonic()
        ended = [
            row
            for row, (s, (token, logprob)) in enumerate(zip(rows, tokens, strict=True))
            if s and not s.accept(token, logprob, interval, now, self.max_hold_s)
        ]
        if ended:
            self._retire(ended)

    def _preempt(self) -> bool:
        """After a decode step ran out of device memory: the newer half of the live rows leave the
        batch (freeing their cache) and wait at the front of their queue, each prompt now its prompt
        and the tokens it made, and the batch holds at most the rows left (``row_cap``).
        A preempted row is prefilled again when there is room: the same tokens give the same keys
        and values, and its sampler goes on where it was, so its stream is what it would have been.
        False (the step fails its rows) when a single live row is left."""
        live = self._newest_last()
        if len(live) < 2:
            return False
        keep = len(live) // 2
        victims = [self._rows[row] for row in live[keep:]]
        _LOG.warning(
            "a decode step over %d rows ran out of memory: %d wait to be prefilled again", len(live), len(victims)
        )
        for row in live[keep:]:
            self._rows[row] = None
        self._compact(release=True)
        self._lower_cap(keep)
        self._send_back(victims)
        return True

    def _make_room(self) -> None:
        """The next step would pass the KV budget: ended rows leave, then the newest live rows go
        back to be prefilled again until the rest fit with ``KV_HEADROOM_STEPS`` columns to grow
        (the oldest row always stays: ModelHost refused any request that could not fit alone)."""
        self._compact(release=True)
        batch = self._batch
        if batch is None:
            return
        starts = (batch.mask.cumsum(dim=1) == 0).sum(dim=1).tolist()  # each row's masked columns before its own
        order = self._newest_last()
        keep = len(order)
        while keep > 1 and not self._fits(
            keep, batch.length - min(starts[row] for row in order[:keep]) + KV_HEADROOM_STEPS
        ):
            keep -= 1
        if keep == len(order):
            return
        victims = [self._rows[row] for row in order[keep:]]
        _LOG.info(
            "the batch of %d rows reached its KV budget: %d wait to be prefilled again", len(starts), len(victims)
        )
        for row in order[keep:]:
            self._rows[row] = None
        self._compact(release=True)
        self._send_back(victims)  # type: ignore[arg-type]

    def _prefill_out_of_memory(self, group: _Joining) -> bool:
        """After a prefill (or its merge into the batch) ran out of memory: its rows wait at the
        front of their queues again, and the batch takes no newcomers beyond the rows it has (half
        the prefill's when it has none). False (the prefill fails its rows) for a lone row that
        ran out alone."""
        rows, active = group.streams, self.active_rows
        if len(rows) < 2 and not active:
            return False
        _LOG.warning("a prefill of %d rows ran out of memory beside %d rows: it waits to run again", len(rows), active)
        self._leave(group)
        self._lower_cap(active or len(rows) // 2)
        self._send_back(rows)
        return True

    def _lower_cap(self, rows: int) -> None:
        self.row_cap, self._capped_at = max(1, rows), self.steps

    def _send_back(self, streams: list[_Stream]) -> None:
        """Rows that lost their place for want of memory wait at the front of their queues, each
        prompt now its prompt and the tokens it made: a prefill recomputes their keys and values."""
        self.preempted += len(streams)
        now = time.monotonic()
        for stream in streams:
            stream._hand_over(now)  # its tokens so far leave now, not after its second prefill
            made = torch.tensor(stream.made, dtype=stream.prompt.dtype)
            stream.prompt = torch.cat([stream.prompt[: stream.prompt_tokens], made])
            stream.tokens = stream.prompt.tolist()
            stream.chain = block_chain(stream.stack, stream.tokens, self.prefix_cache.block) if self._caching else []
            stream.queued_at, stream.joined = self.steps, now
        with self._wake:
            for line, background in ((self._waiting, False), (self._background, True)):
                line.extendleft(reversed([stream for stream in streams if stream.background == background]))

    def _deliver(self) -> None:
        """Hand the streams the events this step made."""
        for stream, event in self._outbox:
            stream.events.put(event)
        self._outbox.clear()

    def _stream_interval(self) -> int:
        """Tokens a stream gathers before they are handed to its reader (see ``stream_interval``)."""
        if self.stream_interval:
            return self.stream_interval
        return max(1, min(AUTO_INTERVAL_MAX, len(self._rows) // AUTO_ROWS_PER_TOKEN))

    @staticmethod
    def _pick(logits: torch.Tensor, streams: list[_Stream | None]) -> list[tuple[int, TokenLogprob | None]]:
        """Each row's next token and, if its stream asked, its log-probabilities."""
        tokens, logprobs = pick_tokens(logits, [s.sampler if s is not None else None for s in streams])
        return list(zip(tokens, logprobs, strict=True))

    def _shutdown(self) -> None:
        closed = SchedulerClosed("the model is shutting down; retry on another replica")
        with self._wake:
            rows = [stream for stream in self._rows if stream is not None]
            joining = [stream for group in self._joining for stream in group.streams]
            pending = [*self._waiting, *self._background, *joining, *rows]
            self._waiting.clear()
            self._background.clear()
            jobs, self._jobs = self._jobs, []
        for stream in pending:
            stream.end(closed)
        self._deliver()
        for job in jobs:
            job.future.set_exception(closed)
