"""InferenceService: Generate (a stream) and Score, under any version."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import grpc

from service.api.errors import abort_on_errors, abort_on_errors_async_stream
from service.api.resources import parse
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.engine.stream_reading import Doorbell, Finished, Token, doorbell
from service.hosting import ModelHost
from service.registry import InvalidArgument


class InferenceService(rpc.InferenceServiceServicer, ServicerBase):
    """InferenceService: Generate (a stream) and Score, under any version."""

    def _version(self, host: ModelHost, selector: pb.VersionSelector) -> int:
        return host.resolve(*_selected(selector))

    @abort_on_errors_async_stream
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        """On the server's event loop: the request's set-up (version, stack, tokenising) runs on a
        worker thread when it needs the database or a compilation, here otherwise; then its tokens
        arrive through the loop's doorbell (service.engine.stream_reading), with no thread held per stream."""
        (model,) = parse("model", request.model)
        host = self._host(model)
        start = functools.partial(self._start_generate, host, request, doorbell())
        if host.ready(*_selected(request.selector)):
            version, stream = start()  # tokenising and a pipe write: cheaper here than a hop to a thread
        else:  # a database read or a compilation first: off the loop that serves every stream
            version, stream = await asyncio.get_running_loop().run_in_executor(None, start)
        async with contextlib.aclosing(stream):  # a caller gone mid-stream drops its row at once
            async for event in stream:
                if isinstance(event, Finished):
                    self.metrics.tokens.labels(model, str(version)).inc(event.tokens)
                    yield pb.GenerateResponse(
                        done=pb.GenerateDone(
                            version=f"models/{model}/versions/{version}",
                            finish_reason=event.finish_reason,
                            tokens=event.tokens,
                            cached_prompt_tokens=event.cached_prompt_tokens,
                        )
                    )
                else:
                    yield _chunk(event)

    def _start_generate(
        self, host: ModelHost, request: pb.GenerateRequest, bell: Doorbell
    ) -> tuple[int, AsyncIterator[Token | Finished]]:
        if request.prompt and request.prompt_token_ids:
            raise InvalidArgument("give the prompt as text (prompt) or as token ids (prompt_token_ids), not both")
        prompt = list(request.prompt_token_ids) if request.prompt_token_ids else request.prompt
        version = self._version(host, request.selector)
        stream = host.generate(
            version,
            prompt,
            request.max_tokens or 16,
            request.temperature,
            request.top_p or 1.0,
            request.seed if request.HasField("seed") else None,
            tuple(request.stop),
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty or 1.0,
            logprobs=request.logprobs if request.HasField("logprobs") else None,
            ignore_eos=request.ignore_eos,
            bell=bell,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logit_bias=dict(request.logit_bias),
        )
        return version, stream  # type: ignore[return-value]

    @abort_on_errors
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        (model,) = parse("model", request.model)
        host = self._host(model)
        version = self._version(host, request.selector)
        return pb.ScoreResponse(
            logprobs=host.score(version, request.prompt, list(request.continuations)),
            version=f"models/{model}/versions/{version}",
        )


def _chunk(event: Token) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        token=pb.TokenChunk(
            token_id=event.token_ids[0],
            token_ids=event.token_ids,
            text=event.text,
            logprobs=[
                pb.TokenLogprob(
                    logprob=chosen,
                    top_token_ids=[token for token, _ in top],
                    top_logprobs=[logprob for _, logprob in top],
                )
                for chosen, top in event.logprobs
            ],
        )
    )


def _selected(selector: pb.VersionSelector) -> tuple[str | None, int | None]:
    """The alias or the version number a selector names (the other None)."""
    which = selector.WhichOneof("selector")
    return selector.alias if which == "alias" else None, selector.version if which == "version" else None
