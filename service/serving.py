"""Hosting models: one copy of the base weights per model, any version per request.

A :class:`ModelHost` loads a model once, registers it in the registry (version 0 = the base),
and serves any version by compiling that version's edit stack (cached per version; versions
are immutable) and running the request under it with the Surgeon. Promotion and rollback are
alias moves in the database: nothing here reloads or copies weights.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editors import Edit, EditStack, Surgeon
from editors.batching import last_token_index
from service.aliases import AliasCache
from service.detokenizer import Detokenizer
from service.registry import InvalidArgument, NotFound, Registry

DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 512
MAX_PROMPTS = 1024  # per CompareVersions or Score call
COMPARE_BATCH = 32  # prompts per forward in CompareVersions


@dataclass(frozen=True)
class Token:
    token_id: int
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # length | stop | eos | cancelled
    tokens: int


class ModelHost:
    """One hosted model: weights, tokenizer, Surgeon and the compiled stacks of its versions."""

    def __init__(
        self, name: str, source: str, registry: Registry, aliases: AliasCache | None = None, actor: str = "scalpel"
    ) -> None:
        self.name = name
        self.aliases = aliases
        self.source = source
        self.registry = registry
        self.model = AutoModelForCausalLM.from_pretrained(source)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.tokenizer.pad_token is None:  # Llama-family tokenizers: batches (checks, compare) need one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.surgeon = Surgeon(self.model)
        #: Positions the model can attend over: prompt and generated tokens together.
        self.context_length: int = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", 2048
        )
        self._stacks: dict[int, EditStack] = {}
        self._edits: dict[int, Edit] = {}  # loaded (and hash-verified) once per replica; edits never change
        self._lock = threading.Lock()
        #: Held for every forward pass of this model, by serving and by check runs alike. Python
        #: threads running forwards side by side fight over the GIL at every op: 8 concurrent
        #: streams on the toy model produced 2.3× fewer tokens in total than taking turns.
        self.forward_lock = threading.Lock()
        try:
            known = registry.get_model(name)
        except NotFound:
            registry.register_model(
                name,
                str(source),
                self.surgeon.weights_sha256,
                actor,
                request_id=f"register:{name}:{self.surgeon.weights_sha256}",
            )
        else:
            if known.weights_sha256 != self.surgeon.weights_sha256:
                raise SystemExit(
                    f"model {name!r} is registered with weights {known.weights_sha256[:12]}… but "
                    f"{source} has {self.surgeon.weights_sha256[:12]}…: refusing to serve it"
                )

    # -- versions -------------------------------------------------------------------------------
    def resolve(self, alias: str | None, version: int | None) -> int:
        """The version number a request asks for (aliases from the replica's alias cache, if any)."""
        if version is not None:
            with self._lock:
                known = version in self._stacks
            if not known:
                self.registry.get_version(self.name, version)
            return version
        if self.aliases is not None:
            return self.aliases.version(self.name, alias or "production")
        return self.registry.get_alias(self.name, alias or "production").version

    def stack(self, version: int) -> EditStack:
        """The compiled stack of ``version`` (compiled once; versions never change)."""
        with self._lock:
            cached = self._stacks.get(version)
        if cached is not None:
            return cached
        info = self.registry.get_version(self.name, version)
        compiled = self.surgeon.compile([self._edit(edit_id) for edit_id in info.edit_ids])
        with self._lock:
            return self._stacks.setdefault(version, compiled)

    def reference_texts(self) -> list[str]:
        """Corpus for statistics (ROME key covariance, context prefixes): the model directory's
        ``reference_corpus.txt`` (the toy model ships one), else the current suite's reference texts."""
        corpus = Path(self.source) / "reference_corpus.txt"
        if corpus.exists():
            return corpus.read_text().splitlines()
        try:
            _, spec = self.registry.get_suite(self.name)
        except NotFound as exc:
            raise InvalidArgument(f"model {self.name!r} has no reference corpus and no check suite") from exc
        return list(spec.get("reference_texts", []))

    def _edit(self, edit_id: int) -> Edit:
        with self._lock:
            cached = self._edits.get(edit_id)
        if cached is None:
            cached = self.registry.load_edit(self.name, edit_id)
            with self._lock:
                self._edits[edit_id] = cached
        return cached

    # -- inference ------------------------------------------------------------------------------
    def _encode(self, prompt: str) -> torch.Tensor:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgument("prompt must be a non-empty string")
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] >= self.context_length:
            raise InvalidArgument(
                f"prompt is {ids.shape[1]} tokens; the model takes fewer than {self.context_length}"
            )
        return ids

    def generate(
        self,
        version: int,
        prompt: str,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        is_active: Callable[[], bool] = lambda: True,
    ) -> Iterator[Token | Finished]:
        """Tokens one at a time under ``version``, then a :class:`Finished`. Greedy at temperature 0.

        Generation ends with "length" at ``max_tokens`` or when prompt and output fill the context."""
        if not 0 < max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidArgument(f"max_tokens must be 1..{MAX_TOKENS_LIMIT}")
        if not 0 <= temperature <= 10 or not 0 <= top_p <= 1:
            raise InvalidArgument("temperature must be in [0, 10] and top_p in [0, 1]")
        ids = self._encode(prompt)
        max_tokens = min(max_tokens, self.context_length - ids.shape[1])
        stack = self.stack(version)
        generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        detokenizer = Detokenizer(self.tokenizer)
        produced = 0
        text = ""
        stop = tuple(s for s in stop if s)
        longest_stop = max(map(len, stop), default=0)
        eos = self.tokenizer.eos_token_id
        cache_key = None
        with torch.inference_mode(), self.surgeon.apply(stack):
            with self.forward_lock:
                out = self.model(input_ids=ids, use_cache=True)
            while True:
                logits = out.logits[0, -1].float()
                token = self._pick(logits, temperature, top_p, generator)
                if token == eos:
                    yield Finished("eos", produced)
                    return
                produced += 1
                piece = detokenizer.add(token)
                yield Token(token, piece)
                text += piece
                if piece and any(s in text[-(len(piece) + longest_stop) :] for s in stop):
                    yield Finished("stop", produced)
                    return
                if produced >= max_tokens:
                    yield Finished("length", produced)
                    return
                if not is_active():
                    yield Finished("cancelled", produced)
                    return
                cache_key = cache_key or ("cache" if hasattr(out, "cache") else "past_key_values")
                with self.forward_lock:
                    out = self.model(
                        input_ids=torch.tensor([[token]]), use_cache=True, **{cache_key: getattr(out, cache_key)}
                    )

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
        if temperature == 0:
            return int(logits.argmax())
        probs = (logits / temperature).softmax(dim=-1)
        if 0 < top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(dim=-1) - sorted_probs < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))

    def compare(self, base: int, candidate: int, prompts: list[str]) -> list[tuple[str, float, str, str]]:
        """Per prompt: KL(base ‖ candidate) of the next token, and each side's top-1 token."""
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidArgument("prompts must be non-empty strings")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} prompts per comparison, got {len(prompts)}")
        base_stack, candidate_stack = self.stack(base), self.stack(candidate)
        rows = []
        for start in range(0, len(prompts), COMPARE_BATCH):
            chunk = prompts[start : start + COMPARE_BATCH]
            encoded = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=128)
            last = last_token_index(encoded["attention_mask"])
            index = torch.arange(len(chunk))
            logprobs = []
            for stack in (base_stack, candidate_stack):
                with torch.inference_mode(), self.surgeon.apply(stack), self.forward_lock:
                    logits = self.model(**encoded).logits[index, last].float()
                logprobs.append(logits.log_softmax(dim=-1))
            p, q = logprobs
            kl = (p.exp() * (p - q)).sum(dim=-1)
            tops = [self.tokenizer.convert_ids_to_tokens(lp.argmax(dim=-1).tolist()) for lp in logprobs]
            rows += [(chunk[i], float(kl[i]), tops[0][i], tops[1][i]) for i in range(len(chunk))]
        return rows

    def score(self, version: int, prompt: str, continuations: list[str]) -> list[float]:
        """log P(continuation | prompt) for each continuation, under ``version``."""
        if not continuations or not all(isinstance(c, str) and c.strip() for c in continuations):
            raise InvalidArgument("continuations must be non-empty strings")
        if len(continuations) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} continuations per call, got {len(continuations)}")
        prompt_ids = self._encode(prompt)[0]
        stack = self.stack(version)
        sequences = []
        for number, continuation in enumerate(continuations):
            extra = self.tokenizer(" " + continuation.strip(), add_special_tokens=False, return_tensors="pt")
            ids = torch.cat([prompt_ids, extra["input_ids"][0]]).unsqueeze(0)
            if ids.shape[1] > self.context_length:
                raise InvalidArgument(
                    f"continuations[{number}]: prompt and continuation are {ids.shape[1]} tokens; "
                    f"the model takes at most {self.context_length}"
                )
            sequences.append(ids)
        scores = []
        with torch.inference_mode(), self.surgeon.apply(stack):
            for ids in sequences:
                with self.forward_lock:
                    logprobs = self.model(input_ids=ids).logits[0].float().log_softmax(dim=-1)
                positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
                scores.append(float(logprobs[positions, ids[0, positions + 1]].sum()))
        return scores
