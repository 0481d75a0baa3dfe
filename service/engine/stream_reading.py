"""A generation stream's events on their way to its caller: what the scheduler hands over, and
the readers that turn them into detokenised :class:`Token` s, cut at the first stop string.

Two kinds of reader over one reading logic (:class:`_Reading`):

- :class:`StreamReader`, an iterator for a thread that may block (the HTTP gateway, notebooks,
  check runs): its events arrive in a :class:`queue.SimpleQueue`.
- :func:`read_on_loop`, an async iterator for a reader on an asyncio loop (gRPC's ``Generate``):
  its events arrive in :class:`LoopEvents`, and one :class:`Doorbell` per loop wakes every
  stream a decode step fed with a single ``call_soon_threadsafe``. Sixty-four streams then cost
  the serving process one wake per step, not sixty-four threads taking the GIL in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from service.engine.detokenizer import Detokenizer
from service.engine.sampling import Sampling, TokenLogprob
from service.engine.stream_timing import StreamClock


@dataclass(frozen=True)
class Token:
    """One or more new tokens of a stream (several when its reader fell behind the scheduler), their
    text and, if the stream asked, each token's log-probability and alternatives."""

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # length | stop | eos | cancelled
    tokens: int
    cached_prompt_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache


@dataclass(frozen=True)
class _Made:
    """Tokens handed to a stream's reader at once (with their log-probabilities, if asked); the
    first also says how many prompt tokens the prefix cache gave."""

    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    cached_prompt_tokens: int = 0


#: What a stream's reader receives: new tokens, or its end.
_Event = _Made | Finished | BaseException


@dataclass
class _Gathered:
    """A stream's events read at once: the new token ids in order, their log-probabilities (if
    the stream asked), the prompt tokens the prefix cache gave (told with the first tokens), and
    the end of the stream (a :class:`Finished` or an exception) if it came."""

    ids: list[int]
    logprobs: list[TokenLogprob]
    cached_prompt_tokens: int = 0
    end: object = None


def _gather(events: Iterable[_Event]) -> _Gathered:
    """:class:`_Gathered` of ``events``: nothing follows an end."""
    gathered = _Gathered([], [])
    for event in events:
        if not isinstance(event, _Made):
            gathered.end = event
            return gathered
        gathered.ids.extend(event.token_ids)
        gathered.logprobs.extend(event.logprobs)
        gathered.cached_prompt_tokens = max(gathered.cached_prompt_tokens, event.cached_prompt_tokens)
    return gathered


def _drain(events: queue.SimpleQueue[_Event]) -> _Gathered:
    """Wait for a stream's next event, then :func:`_gather` it with every event already queued."""

    def queued() -> Iterator[_Event]:
        yield events.get()
        while True:
            try:
                yield events.get_nowait()
            except queue.Empty:
                return

    return _gather(queued())


class _Reading:
    """A stream's tokens as its caller sees them: detokenised, cut at its first stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, sampling: Sampling, clock: StreamClock | None) -> None:
        self._detokenizer = Detokenizer(tokenizer)
        self._clock = clock
        self._stop = sampling.stop
        self._longest_stop = max(map(len, sampling.stop), default=0)
        self._text = ""
        self._produced = 0
        self._cached = 0  # prompt tokens the prefix cache gave, told with the first tokens
        self.over = False
        self.failure: BaseException | None = None  # what ended the stream, to raise after its tokens

    def feed(self, gathered: _Gathered) -> list[Token | Finished]:
        """The caller's events for these tokens (and the stream's end, if it came); an exception
        that ended the stream is raised after them (``over`` is then set)."""
        ids, logprobs, end = gathered.ids, gathered.logprobs, gathered.end
        self._cached = max(self._cached, gathered.cached_prompt_tokens)
        out: list[Token | Finished] = []
        if ids and self._clock is not None:
            self._clock.tokens_read()
        if ids:
            token, stopped = self._decoded(ids, logprobs)
            if stopped:
                self.over = True
                self._finished()
                return [token, Finished("stop", self._produced, self._cached)]
            out.append(token)
        if end is not None:
            self.over = True
            if isinstance(end, BaseException):
                self.failure = end
            else:
                assert isinstance(end, Finished)
                if end.finish_reason != "cancelled":
                    self._finished()
                out.append(end)  # the scheduler's end carries the stream's cached prompt tokens
        return out

    def _decoded(self, ids: list[int], logprobs: list[TokenLogprob]) -> tuple[Token, bool]:
        """``ids`` as the caller's token event, and whether a stop string ended the stream in them
        (the event then ends at the token that completed it)."""
        if not self._stop:  # nothing to cut at: the tokens decode together, in one call
            self._produced += len(ids)
            return Token(tuple(ids), self._detokenizer.extend(ids), tuple(logprobs)), False
        pieces = []
        for i, token in enumerate(ids):  # one at a time: a stop string ends the stream at its token
            self._produced += 1
            piece = self._detokenizer.add(token)
            pieces.append(piece)
            self._text += piece
            if piece and any(s in self._text[-(len(piece) + self._longest_stop) :] for s in self._stop):
                return Token(tuple(ids[: i + 1]), "".join(pieces), tuple(logprobs[: i + 1])), True
        return Token(tuple(ids), "".join(pieces), tuple(logprobs)), False

    def _finished(self) -> None:
        if self._clock is not None:
            self._clock.finished(self._produced)


class StreamReader(Iterator[Token | Finished]):
    """A stream's events for a caller that may block, from the queue its scheduler fills. Closing
    it, even before the first read, or meeting a stop string sets ``abandoned``: the row is
    dropped at the next step."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        sampling: Sampling,
        events: queue.SimpleQueue[_Event],
        abandoned: threading.Event,
        clock: StreamClock | None = None,
    ) -> None:
        self._events = _read(_Reading(tokenizer, sampling, clock), events, abandoned)
        self._abandoned = abandoned

    def __next__(self) -> Token | Finished:
        return next(self._events)

    def close(self) -> None:
        self._abandoned.set()
        self._events.close()


def _read(
    reading: _Reading, events: queue.SimpleQueue[_Event], abandoned: threading.Event
) -> Iterator[Token | Finished]:
    try:
        while not reading.over:
            yield from reading.feed(_drain(events))
        if reading.failure is not None:
            raise reading.failure
    finally:
        abandoned.set()  # a stop string, or the caller went away: the row leaves at the next step


class Doorbell:
    """Wakes a loop's waiting stream readers from other threads. Wakes rung while one is pending
    ride along with it: a decode step that feeds 64 streams schedules one callback on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[asyncio.Future[None]] = []

    def ring(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._ready.append(waiter)
            if len(self._ready) > 1:
                return  # a callback is already on its way
        with contextlib.suppress(RuntimeError):  # the loop closed (the server stopped): nobody waits
            self.loop.call_soon_threadsafe(self._answer)

    def _answer(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for waiter in ready:
            if not waiter.done():  # a reader cancelled meanwhile
                waiter.set_result(None)


_doorbells: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Doorbell] = weakref.WeakKeyDictionary()


def doorbell() -> Doorbell:
    """The running loop's doorbell."""
    loop = asyncio.get_running_loop()
    bell = _doorbells.get(loop)
    if bell is None:
        bell = _doorbells[loop] = Doorbell(loop)
    return bell


class LoopEvents:
    """A stream's events for a reader on an asyncio loop; ``put`` from any thread."""

    def __init__(self, bell: Doorbell) -> None:
        self._bell = bell
        self._lock = threading.Lock()
        self._events: deque[_Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: _Event) -> None:
        with self._lock:
            self._events.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._bell.ring(waiter)

    async def drain(self) -> _Gathered:
        """Wait for the next event, then :func:`_gather` it with every event already queued."""
        while True:
            with self._lock:
                if self._events:
                    events, self._events = self._events, deque()
                    return _gather(events)
                self._waiter = waiter = self._bell.loop.create_future()
            await waiter


def reader(
    tokenizer: PreTrainedTokenizerBase,
    sampling: Sampling,
    events: queue.SimpleQueue[_Event] | LoopEvents,
    abandoned: threading.Event,
    clock: StreamClock | None,
) -> Iterator[Token | Finished] | AsyncIterator[Token | Finished]:
    """The reader for a stream's ``events``: on a loop (:func:`read_on_loop`) for
    :class:`LoopEvents`, else a :class:`StreamReader`."""
    if isinstance(events, LoopEvents):
        return read_on_loop(tokenizer, sampling, events, abandoned, clock)
    return StreamReader(tokenizer, sampling, events, abandoned, clock)


async def read_on_loop(
    tokenizer: PreTrainedTokenizerBase,
    sampling: Sampling,
    events: LoopEvents,
    abandoned: threading.Event,
    clock: StreamClock | None = None,
) -> AsyncIterator[Token | Finished]:
    """:class:`StreamReader` for a reader on an asyncio loop. Close it (``contextlib.aclosing``)
    when the caller goes away: that, a stop string or a cancelled read drops the row."""
    reading = _Reading(tokenizer, sampling, clock)
    try:
        while not reading.over:
            for event in reading.feed(await events.drain()):
                yield event
        if reading.failure is not None:
            raise reading.failure
    finally:
        abandoned.set()
