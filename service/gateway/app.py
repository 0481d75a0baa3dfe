"""The OpenAI-compatible routes (see the package docstring), over the hosted models' schedulers.

Every choice of a request is a stream of the same engine as gRPC's ``Generate``: it joins the
running batch as a row under the version its ``model`` field resolves to. The version that served
a response is in its ``system_fingerprint`` (``models/{model}/versions/{n}``) and in the
``x-scalpel-version`` header. Errors are OpenAI's shape (``{"error": {message, type, param, code}}``)
with the matching HTTP status, so OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio import from_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.verified_keys import DatabaseUnreachable, VerifiedKeys
from service.engine.detokenizer import Detokenizer
from service.engine.scheduler import Overloaded, SchedulerClosed
from service.engine.stream_reading import Doorbell, doorbell
from service.gateway.schemas import ChatMessage, ChatRequest, CompletionRequest, SamplingFields
from service.hosting import Finished, ModelHost, Token
from service.metrics import ACCESS_LOG, Metrics
from service.registry import Registry
from service.registry.errors import InvalidArgument, NotFound, PermissionDenied

if TYPE_CHECKING:
    import torch

_LOG = logging.getLogger(__name__)

#: OpenAI's finish reasons for ours ("eos" and a stop string both read "stop").
FINISH_REASONS = {"length": "length", "stop": "stop", "eos": "stop", "cancelled": "stop"}


class GatewayError(Exception):
    """A refusal in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}


class ClientGone(Exception):
    """The client went away before its whole reply was ready (HTTP 499, as nginx logs it)."""


def _as_gateway_error(error: Exception) -> GatewayError:
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, InvalidArgument):
        return GatewayError(400, str(error))
    if isinstance(error, NotFound):
        return GatewayError(404, str(error), code="not_found")
    if isinstance(error, PermissionDenied):
        return GatewayError(403, str(error), "permission_error")
    if isinstance(error, ClientGone):
        return GatewayError(499, "the client closed the connection before the reply was ready", code="client_gone")
    if isinstance(error, Overloaded):
        return GatewayError(503, str(error), "api_error", code="overloaded")
    if isinstance(error, SchedulerClosed | DBAPIError | DatabaseUnreachable):
        return GatewayError(
            503, "the service is unavailable (shutting down, or its database is away); retry", "api_error"
        )
    incident = uuid.uuid4().hex[:12]
    _LOG.exception("gateway incident %s", incident)
    return GatewayError(500, f"internal error (incident {incident})", "api_error")


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` field resolved to."""

    host: ModelHost
    requested: str
    version: int

    @property
    def version_name(self) -> str:
        return f"models/{self.host.name}/versions/{self.version}"


def _selected(field: str) -> tuple[str, str | None, int | None]:
    """``model`` → (name, alias, version): ``model`` (production), ``model@alias``, ``model@N``
    (a version number); the one of alias and version not named is None."""
    name, _, selector = field.partition("@")
    if selector.isdigit():
        return name, None, int(selector)
    return name, selector or None, None


def resolve(hosts: Mapping[str, ModelHost], field: str) -> Target:
    """``model`` → production, ``model@alias``, ``model@N`` (a version number)."""
    name, alias, version = _selected(field)
    host = hosts.get(name)
    if host is None:
        served = ", ".join(sorted(hosts)) or "none yet"
        raise GatewayError(404, f"model {name!r} is not served here (served: {served})", code="model_not_found")
    return Target(host, field, host.resolve(alias, version))


def _bearer(request: Request) -> str | None:
    """The API key an ``Authorization: Bearer`` header carries, if any."""
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None


def chat_prompt(host: ModelHost, messages: list[ChatMessage]) -> str:
    """The model's own chat template; for a model without one (the toy model), ``role: text``
    lines and ``assistant:`` to continue."""
    tokenizer = host.tokenizer
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m.role}: {m.text}\n" for m in messages) + "assistant:"


class _Choice:
    """One choice of a request: a stream joined to the batch at once, read when its turn comes."""

    def __init__(
        self,
        target: Target,
        prompt: str | list[int] | torch.Tensor,
        sampling: SamplingFields,
        max_tokens: int,
        logprobs: int | None,
        index: int,
        gone: threading.Event,
        bell: Doorbell,
    ) -> None:
        self.index = index
        seed = None if sampling.seed is None else sampling.seed + index  # n choices, n different draws
        #: tokenised once: its length is the usage's prompt_tokens
        self.ids = ids = target.host.prompt_ids(prompt)
        self.prompt_tokens = len(ids)
        self.texts = TokenTexts(target.host)
        #: with echo, the prompt as this choice's first text (and its tokens' log-probabilities)
        self.echo: Token | None = None
        options: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
            "stop": sampling.stops,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "repetition_penalty": sampling.repetition_penalty,
            "logprobs": logprobs,
            "ignore_eos": sampling.ignore_eos,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
            "logit_bias": sampling.token_biases,
        }
        if max_tokens == 0:  # echo alone: nothing joins the batch, but its options are checked all the same
            target.host.sampling(max_tokens, **options)
            self.events = _nothing_made()
            return
        self.events = target.host.generate(
            target.version,
            ids,
            max_tokens,
            is_active=lambda: not gone.is_set(),  # the client hung up: the row leaves at the next step
            bell=bell,  # a stream's events are read on the server's event loop
            **options,
        )


async def _nothing_made() -> AsyncIterator[Token | Finished]:
    """A choice's events when it makes no token (``max_tokens`` 0, with echo)."""
    yield Finished("length", 0)


def _start(
    target: Target,
    prompts: list[str | list[int]] | list[torch.Tensor],
    sampling: SamplingFields,
    max_tokens: int,
    logprobs: int | None,
    gone: threading.Event,
    echo: bool = False,
) -> list[_Choice]:
    """One choice per prompt, each joining the batch as it is made; if one is refused (a prompt
    too long), those already joined leave at the next step instead of running unread. The
    choices are read on the event loop (one wake per decode step for all of them,
    service.engine.stream_reading), whether the reply is streamed or whole."""
    bell = _loop_doorbell()
    choices: list[_Choice] = []
    try:
        for index, prompt in enumerate(prompts):
            choices.append(_Choice(target, prompt, sampling, max_tokens, logprobs, index, gone, bell))
        if echo:  # the prompts' log-probabilities in shared forwards, once every choice's options passed
            ids = [choice.ids for choice in choices]
            host = target.host
            scored = host.prompt_logprobs(target.version, ids, logprobs) if logprobs is not None else [[]] * len(ids)
            for choice, prompt_ids, prompt_scores in zip(choices, ids, scored, strict=True):
                choice.echo = Token(tuple(prompt_ids.tolist()), "", tuple(prompt_scores))
    except Exception:
        gone.set()
        raise
    return choices


def _loop_doorbell() -> Doorbell:
    """The server loop's doorbell, asked on that loop or from one of its worker threads."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # a worker thread
        return from_thread.run_sync(doorbell)
    return doorbell()


class TokenTexts:
    """The text each token of a choice adds (its pieces join to the choice's text), and what each
    alternative would have added in its place (so " Paris" and its rival " Rome" both keep the
    leading space that the chosen token's text has)."""

    def __init__(self, host: ModelHost) -> None:
        self.pieces = Detokenizer(host.tokenizer)
        self.offset = 0  # characters of the choice's text so far

    def completion_logprobs(self, event: Token) -> dict[str, Any]:
        """OpenAI's legacy completions ``logprobs`` for the tokens of one event."""
        walked = self._walk(event.token_ids, [top for _, top in event.logprobs])
        return {
            "tokens": [piece for piece, _, _ in walked],
            "token_logprobs": [chosen for chosen, _ in event.logprobs],
            "top_logprobs": [dict(alternatives) for _, _, alternatives in walked],
            "text_offset": [offset for _, offset, _ in walked],
        }

    def echoed(self, prompt: Token, with_logprobs: bool) -> tuple[str, dict[str, Any] | None]:
        """The echoed prompt's text (its tokens' pieces, so that offsets count in it) and, if
        asked, its legacy ``logprobs``: the first token has none (nothing comes before it)."""
        scored = [(None, None), *prompt.logprobs] if with_logprobs else [(None, None)] * len(prompt.token_ids)
        walked = self._walk(prompt.token_ids, [top for _, top in scored])
        text = "".join(piece for piece, _, _ in walked)
        if not with_logprobs:
            return text, None
        return text, {
            "tokens": [piece for piece, _, _ in walked],
            "token_logprobs": [chosen for chosen, _ in scored],
            "top_logprobs": [None if top is None else dict(top) for _, _, top in walked],
            "text_offset": [offset for _, offset, _ in walked],
        }

    def chat_logprobs(self, event: Token) -> list[dict[str, Any]]:
        """OpenAI's chat ``logprobs.content`` entries for the tokens of one event."""

        def entry(text: str, logprob: float) -> dict[str, Any]:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        walked = self._walk(event.token_ids, [top for _, top in event.logprobs])
        return [
            {**entry(piece, chosen), "top_logprobs": [entry(text, lp) for text, lp in alternatives]}
            for (piece, _, alternatives), (chosen, _) in zip(walked, event.logprobs, strict=True)
        ]

    def _walk(self, ids: tuple[int, ...], tops: list[Any]) -> list[tuple[str, int, list[tuple[str, float]] | None]]:
        """For each token: its text, where it starts in the choice's text, and its alternatives'
        texts at that same place (None where it has no alternatives)."""
        walked = []
        for token, top in zip(ids, tops, strict=True):
            alternatives = None if top is None else [(self.pieces.peek(other), lp) for other, lp in top]
            piece = self.pieces.add(token)
            walked.append((piece, self.offset, alternatives))
            self.offset += len(piece)
        return walked


class BodyLimit:
    """Refuses a request body over ``limit`` bytes (413, in OpenAI's shape) before it is parsed:
    by its Content-Length at once, else as its chunks arrive."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is over {self.limit:,} bytes (the server's max_message_bytes)"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            refusal = GatewayError(413, message, code="request_too_large")
            await JSONResponse(refusal.body(), status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            arrived = await receive()
            received += len(arrived.get("body", b""))
            if received > self.limit:  # a body without a length: refused where it passes the limit
                raise HTTPException(413, message)
            return arrived

        await self.app(scope, counted, send)


def build_app(
    registry: Registry,
    hosts: Mapping[str, ModelHost],
    metrics: Metrics | None = None,
    insecure: bool = False,
    keys: VerifiedKeys | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
) -> FastAPI:
    """The gateway's ASGI app over ``hosts`` (read at each request: models loaded later appear).
    ``keys``: the server's cache of verified API keys (default: a cache of the gateway's own);
    ``max_body_bytes``: the largest request body accepted (the server passes max_message_bytes)."""
    keys = keys or VerifiedKeys(registry)
    app = FastAPI(title="Scalpel OpenAI-compatible gateway", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    def caller(request: Request) -> str:
        """The calling key's name (every role may generate: reader is the least)."""
        if insecure:
            return "local"
        secret = _bearer(request)
        if secret is None:
            raise GatewayError(
                401, "send 'Authorization: Bearer <api key>' (the keys of the gRPC API)", code="invalid_api_key"
            )
        key = keys.verify(secret)
        if key is None:
            raise GatewayError(401, "unknown or revoked API key", code="invalid_api_key")
        return key.name

    def logged(request: Request, run: Callable[[dict[str, str]], Any]) -> Any:
        """Run a route, answering errors in OpenAI's shape, with one access-log line per request (a
        stream's when it ends, a whole reply's once it is built: both on the event loop)."""
        started, record = time.perf_counter(), {"method": f"{request.method} {request.url.path}"}

        def log(status: int) -> None:
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                ms = round((time.perf_counter() - started) * 1000, 2)
                ACCESS_LOG.info(json.dumps({**record, "code": status, "ms": ms}))

        try:
            record["caller"] = caller(request)
            response = run(record)
        except Exception as error:  # every refusal, in OpenAI's shape
            refusal = _as_gateway_error(error)
            log(refusal.status)
            return JSONResponse(refusal.body(), status_code=refusal.status)
        if isinstance(response, StreamingResponse):
            inner = response.body_iterator

            async def finishing() -> Any:
                try:
                    async for chunk in inner:
                        yield chunk
                finally:
                    log(200)

            response.body_iterator = finishing()
        elif inspect.isawaitable(response):  # a whole reply, read on the event loop
            pending = response

            async def awaited() -> Any:
                try:
                    whole = await pending
                except Exception as error:
                    refusal = _as_gateway_error(error)
                    log(refusal.status)
                    return JSONResponse(refusal.body(), status_code=refusal.status)
                log(200)
                return whole

            return awaited()
        else:
            log(200)
        return response

    def in_memory(request: Request, model: str) -> bool:
        """Whether a request's set-up needs nothing but memory: its key verified recently, its
        version known and compiled (:meth:`ModelHost.ready`), or a refusal that reads nothing."""
        secret = _bearer(request)
        if not insecure and secret is not None and not keys.fresh(secret):
            return False
        name, alias, version = _selected(model)
        host = hosts.get(name)
        return host is None or host.ready(alias, version)  # (not served here: refused from memory)

    async def answered(request: Request, body: CompletionRequest | ChatRequest, run: Callable[..., Any]) -> Any:
        """A generation route's reply. Its set-up starts on uvicorn's loop when it needs only
        memory (tokenising and a pipe write), as gRPC's Generate does: a hop to a worker thread
        and back would cost more; otherwise (a database read, a compilation) on a worker thread.
        Either way its tokens are read on the loop, whole or streamed: a request waiting for its
        tokens holds no thread (the pool's 40 would otherwise cap the requests in flight)."""
        scores_prompt = isinstance(body, CompletionRequest) and body.echo and body.logprobs is not None
        if in_memory(request, body.model) and not scores_prompt:  # (a prompt's scoring is a forward)
            response = logged(request, run)
        else:
            response = await run_in_threadpool(logged, request, run)
        return await response if inspect.isawaitable(response) else response

    @app.exception_handler(RequestValidationError)
    def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            position = first.get("loc", ("body", "?"))[-1]
            detail = first.get("ctx", {}).get("error", "not JSON")
            message = f"the request body is not valid JSON ({detail} at character {position})"
        elif tuple(first.get("loc", ()))[:2] == ("body", "prompt"):  # a union: pydantic names its first branch
            message = (
                "prompt must be a string, a list of strings, a list of token ids (integers from 0 below 2**63) "
                "or a list of such lists"
            )
        else:
            where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
            message = f"{where}: {first.get('msg', 'invalid')}"
        return JSONResponse(GatewayError(400, message).body(), status_code=400)

    @app.exception_handler(HTTPException)
    def routing_error(request: Request, error: HTTPException) -> JSONResponse:
        """Unknown routes, wrong methods, bodies over the limit: OpenAI's shape, like every refusal."""
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(error.status_code)
        message = {
            404: f"no route {request.url.path} (the gateway serves /v1/models, /v1/completions, /v1/chat/completions)",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(error.status_code, str(error.detail))
        return JSONResponse(
            GatewayError(error.status_code, message, code=code).body(),
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.get("/v1/models")
    def list_models(request: Request) -> Any:
        def run(record: dict[str, str]) -> Any:
            created = int(time.time())
            names = []
            for name in sorted(hosts):
                names.append(name)
                names += [f"{name}@{alias.name}" for alias in registry.list_aliases(name, 1000).items]
            return {
                "object": "list",
                "data": [{"id": n, "object": "model", "created": created, "owned_by": "scalpel"} for n in names],
            }

        return logged(request, run)

    @app.get("/v1/models/{model:path}")
    def get_model(model: str, request: Request) -> Any:
        def run(record: dict[str, str]) -> Any:
            target = resolve(hosts, model)
            record["model"] = target.host.name
            return JSONResponse(
                {"id": model, "object": "model", "created": int(time.time()), "owned_by": "scalpel"},
                headers={"x-scalpel-version": target.version_name},
            )

        return logged(request, run)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        def run(record: dict[str, str]) -> Any:
            target = resolve(hosts, body.model)
            record["model"] = target.host.name
            gone = threading.Event()
            prompts = [p for p in body.prompts for _ in range(body.n)]
            choices = _start(target, prompts, body, body.max_tokens, body.logprobs, gone, body.echo)
            reply = _Reply(target, "cmpl", "text_completion", metrics)
            if body.stream:
                return reply.streamed(choices, body.include_usage, _completion_delta(body), gone)
            return reply.whole(choices, _completion_choice(body), gone, request.receive)

        return await answered(request, body, run)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        def run(record: dict[str, str]) -> Any:
            target = resolve(hosts, body.model)
            record["model"] = target.host.name
            prompt = chat_prompt(target.host, body.messages)
            top = (body.top_logprobs or 0) if body.logprobs else None
            gone = threading.Event()
            choices = _start(target, [prompt] * body.n, body, body.token_limit, top, gone)
            if body.stream:
                reply = _Reply(target, "chatcmpl", "chat.completion.chunk", metrics)
                return reply.streamed(choices, body.include_usage, _chat_delta(body), gone)
            reply = _Reply(target, "chatcmpl", "chat.completion", metrics)
            return reply.whole(choices, _chat_choice(body), gone, request.receive)

        return await answered(request, body, run)

    return app


#: (the choice, its next event, whether it is the first) → one streamed choice object
Delta = Callable[["_Choice", Token | Finished, bool], dict[str, Any]]
#: (the choice, its text, its token events, how it finished) → one whole choice object
Whole = Callable[["_Choice", str, list[Token], Finished], dict[str, Any]]


def _completion_delta(body: CompletionRequest) -> Delta:
    def delta(choice: _Choice, event: Token | Finished, first: bool) -> dict[str, Any]:
        echo, echo_logprobs = _echo(choice, body) if first else ("", None)
        if isinstance(event, Finished):
            reason = FINISH_REASONS[event.finish_reason]
            return {"index": choice.index, "text": echo, "logprobs": echo_logprobs, "finish_reason": reason}
        logprobs = choice.texts.completion_logprobs(event) if body.logprobs is not None else None
        text = echo + event.text
        return {
            "index": choice.index,
            "text": text,
            "logprobs": _joined(echo_logprobs, logprobs),
            "finish_reason": None,
        }

    return delta


def _completion_choice(body: CompletionRequest) -> Whole:
    def whole(choice: _Choice, text: str, events: list[Token], finished: Finished) -> dict[str, Any]:
        echo, logprobs = _echo(choice, body)
        if body.logprobs is not None:
            ids = tuple(t for e in events for t in e.token_ids)
            made = choice.texts.completion_logprobs(Token(ids, text, tuple(lp for e in events for lp in e.logprobs)))
            logprobs = _joined(logprobs, made)
        reason = FINISH_REASONS[finished.finish_reason]
        return {"index": choice.index, "text": echo + text, "logprobs": logprobs, "finish_reason": reason}

    return whole


def _echo(choice: _Choice, body: CompletionRequest) -> tuple[str, dict[str, Any] | None]:
    """The choice's echoed prompt and its ``logprobs`` (empty and None without echo)."""
    if choice.echo is None:
        return "", None
    return choice.texts.echoed(choice.echo, body.logprobs is not None)


def _joined(first: dict[str, Any] | None, then: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two legacy ``logprobs`` objects one after the other (either may be None)."""
    if first is None or then is None:
        return then if first is None else first
    return {key: first[key] + then[key] for key in first}


def _chat_delta(body: ChatRequest) -> Delta:
    def delta(choice: _Choice, event: Token | Finished, first: bool) -> dict[str, Any]:
        if isinstance(event, Finished):
            reason = FINISH_REASONS[event.finish_reason]
            return {"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": reason}
        content: dict[str, Any] = {"role": "assistant", "content": event.text} if first else {"content": event.text}
        logprobs = {"content": choice.texts.chat_logprobs(event)} if body.logprobs else None
        return {"index": choice.index, "delta": content, "logprobs": logprobs, "finish_reason": None}

    return delta


def _chat_choice(body: ChatRequest) -> Whole:
    def whole(choice: _Choice, text: str, events: list[Token], finished: Finished) -> dict[str, Any]:
        logprobs = None
        if body.logprobs:
            logprobs = {"content": [entry for e in events for entry in choice.texts.chat_logprobs(e)]}
        message = {"role": "assistant", "content": text}
        reason = FINISH_REASONS[finished.finish_reason]
        return {"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    return whole


class _Reply:
    """The response envelope OpenAI's clients expect, whole or as server-sent events."""

    def __init__(self, target: Target, prefix: str, kind: str, metrics: Metrics | None) -> None:
        self.target, self.kind, self.metrics = target, kind, metrics
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.kind,
            "created": self.created,
            "model": self.target.requested,
            "system_fingerprint": self.target.version_name,
            **fields,
        }

    def _counted(self, finished: Finished) -> None:
        if self.metrics is not None:
            self.metrics.tokens.labels(self.target.host.name, str(self.target.version)).inc(finished.tokens)

    def _usage(self, choices: list[_Choice], ends: list[Finished]) -> dict[str, Any]:
        """OpenAI's usage object; ``prompt_tokens_details.cached_tokens`` counts the prompt tokens
        the prefix cache gave (as OpenAI and vLLM report them)."""
        prompt_tokens = sum(choice.prompt_tokens for choice in choices)
        completion_tokens = sum(end.tokens for end in ends)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(end.cached_prompt_tokens for end in ends)},
        }

    async def whole(
        self, choices: list[_Choice], build: Whole, gone: threading.Event, receive: Receive
    ) -> JSONResponse:
        """One JSON reply once every choice has ended, read on the event loop; if one fails, or
        the client goes away first (``receive`` says ``http.disconnect``), every row leaves at the
        next step instead of running to its end unread."""
        built, ends = [], []

        async def read_all() -> None:
            for choice in choices:  # all joined the batch already: later ones wait in their queues
                events = [event async for event in choice.events]
                finished = events[-1]
                assert isinstance(finished, Finished)
                tokens = [e for e in events if isinstance(e, Token)]
                self._counted(finished)
                ends.append(finished)
                built.append(build(choice, "".join(t.text for t in tokens), tokens, finished))

        reading, watching = asyncio.ensure_future(read_all()), asyncio.ensure_future(_hung_up(receive))
        try:
            await asyncio.wait((reading, watching), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # the client is gone: nobody will read this reply
                raise ClientGone()
            reading.result()  # a choice's failure
        finally:
            gone.set()
            for task in (reading, watching):
                task.cancel()
            await asyncio.gather(reading, watching, return_exceptions=True)
            for choice in choices:
                await choice.events.aclose()
        body = self._envelope(choices=built, usage=self._usage(choices, ends))
        return JSONResponse(body, headers={"x-scalpel-version": self.target.version_name})

    def streamed(
        self, choices: list[_Choice], include_usage: bool, delta: Delta, gone: threading.Event
    ) -> StreamingResponse:
        """Server-sent events, read on the event loop; when the body stops early (the client hung
        up), ``gone`` and closing the readers tell the scheduler at once."""

        async def body() -> AsyncIterator[str]:
            ends: list[Finished] = []
            started: set[int] = set()
            try:
                async with contextlib.aclosing(_interleaved(choices)) as events:  # its readers stop first
                    async for choice, event in events:
                        if isinstance(event, Finished):
                            self._counted(event)
                            ends.append(event)
                        yield _sse(self._envelope(choices=[delta(choice, event, choice.index not in started)]))
                        started.add(choice.index)
                if include_usage:
                    yield _sse(self._envelope(choices=[], usage=self._usage(choices, ends)))
                yield "data: [DONE]\n\n"
            except Exception as error:  # the status line is gone: the error travels as an event
                yield _sse(_as_gateway_error(error).body())
            finally:
                gone.set()  # done, or hung up: rows still running leave at the next step
                for choice in choices:
                    await choice.events.aclose()

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"x-scalpel-version": self.target.version_name}
        )


async def _interleaved(choices: list[_Choice]) -> AsyncIterator[tuple[_Choice, Token | Finished]]:
    """The choices' events as they are made, each choice's in order: with ``n`` choices, the
    second one's first token does not wait for the first one's last (OpenAI and vLLM interleave
    them too). A choice's failure is raised here; closing this stops every choice's reading."""
    if len(choices) == 1:
        async for event in choices[0].events:
            yield choices[0], event
        return
    made: asyncio.Queue[tuple[_Choice, Token | Finished | BaseException | None]] = asyncio.Queue()

    async def read(choice: _Choice) -> None:
        try:
            async for event in choice.events:
                made.put_nowait((choice, event))
        except Exception as error:
            made.put_nowait((choice, error))
        made.put_nowait((choice, None))  # this choice is over

    readers = [asyncio.create_task(read(choice)) for choice in choices]
    try:
        running = len(readers)
        while running:
            choice, event = await made.get()
            if event is None:
                running -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield choice, event
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _hung_up(receive: Receive) -> None:
    """Returns once the client has disconnected (its body was read already: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
