"""The request bodies the gateway accepts, as OpenAI's API defines them (plus the sampling options
vLLM adds: ``top_k``, ``min_p``, ``repetition_penalty``), and what it refuses to pretend it does.
The bounds of the sampling options are the engine's (:meth:`service.hosting.ModelHost.generate`):
a value out of them is refused there, with the same message over HTTP and gRPC."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Most choices one request may ask for (each is a row in the batch).
MAX_CHOICES = 8
#: The integers the engine takes (a seed, a token id): 64-bit, signed.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: OpenAI's own bounds on alternatives per token.
MAX_COMPLETION_LOGPROBS = 5
MAX_CHAT_TOP_LOGPROBS = 20


class SamplingFields(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored, as OpenAI clients send some (``user``,
    ``metadata``) that change nothing here; fields that would change the output and are not
    implemented are refused rather than ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, ge=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    ignore_eos: bool = False
    stream_options: dict[str, bool] | None = None

    @model_validator(mode="after")
    def _bias_keys_are_token_ids(self) -> SamplingFields:
        for key in self.logit_bias or {}:
            if not key.isdecimal():
                raise ValueError(f'logit_bias keys are token ids (as strings, e.g. "50256"), got {key!r}')
        return self

    @property
    def token_biases(self) -> dict[int, float]:
        """``logit_bias`` keyed by token id."""
        return {int(key): value for key, value in (self.logit_bias or {}).items()}

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


#: A token id as a prompt may give it (strict: ``true`` is not token 1, nor "5" token 5).
TokenId = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]


class CompletionRequest(SamplingFields):
    #: text, texts, token ids, or lists of token ids (one prompt each), as OpenAI's API takes them
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int = Field(16, ge=0)  # 0 with echo: score the prompt only
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _one_kind_of_prompt(self) -> CompletionRequest:
        if (self.best_of or 1) > 1 or self.suffix:
            raise ValueError("best_of and suffix are not supported")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 makes nothing: it is for echo (the prompt's log-probabilities alone)")
        if isinstance(self.prompt, list) and (not self.prompt or any(p == [] for p in self.prompt)):
            raise ValueError("prompt must not be an empty list, nor hold one")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    tools: list[dict] | None = None

    @model_validator(mode="after")
    def _no_tools(self) -> ChatRequest:
        if self.tools:
            raise ValueError("tools are not supported")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 16
