"""Hosting models: one copy of the base weights per model, any version per request.

A :class:`ModelHost` loads a model once (on its device, in its dtype), registers it in the
registry (version 0 = the base), and serves any version by compiling that version's edit stack
(cached per version; versions are immutable). Every forward of the model runs on its
:class:`~service.engine.scheduler.Scheduler`: generation streams share one batched forward per decode
step, each row under its own version, and Score, CompareVersions and check runs queue as jobs
between steps. Promotion and rollback are alias moves in the database: nothing here reloads or
copies weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from editors import Edit, EditStack, Surgeon
from editors.batching import last_token_index
from editors.sae import SparseAutoencoder
from editors.sae_features import FeatureIndex
from service.aliases import AliasCache
from service.checks.suite import Suite
from service.defaults import DTYPE_NAMES, LOGIT_BUDGET
from service.engine.defaults import MAX_BATCH_ROWS, PREFIX_CACHE_BYTES
from service.engine.growing_cache import GrowingCache
from service.engine.process import EngineProcess, EngineSettings, EngineStats
from service.engine.sampling import MAX_TOP_LOGPROBS, Sampling, TokenLogprob
from service.engine.scheduler import BACKGROUND, INTERACTIVE, Overloaded, Scheduler
from service.engine.stream_reading import Doorbell, Finished, Token
from service.engine.stream_timing import LatencySink, StreamClock
from service.registry import ArtifactIntegrityError, FailedPrecondition, InvalidArgument, NotFound, Registry
from service.server_config import ModelSpec

__all__ = ["DTYPES", "Finished", "ModelHost", "ModelSpec", "Token"]

_LOG = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 512
MAX_PROMPTS = 1024  # per CompareVersions or Score call
COMPARE_BATCH = 32  # rows per forward in CompareVersions and scoring
COMPLETE_CHUNK = 8  # greedy completions (checks) joining the running batch at a time
BACKGROUND_ROWS = 4  # rows per background scoring job: it holds the model between two decode steps
#: The smallest non-zero temperature: below it softmax(logits / T) overflows to NaN.
MIN_TEMPERATURE = 1e-3
MAX_REPETITION_PENALTY = 10.0
#: OpenAI's bounds: presence and frequency penalties in [-2, 2]; a bias in [-100, 100] for at most
#: 300 tokens.
MAX_PENALTY = 2.0
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_TOKENS = 300
#: A generous bound on characters per token, to refuse absurd inputs before tokenising them.
CHARS_PER_TOKEN = 64
#: Contexts kept per feature in a feature index: the most a GetFeature reply lists.
FEATURE_DEPTH = 100
#: Feature indexes (one SAE over one corpus span) a replica keeps.
MAX_FEATURE_INDEXES = 4
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass(frozen=True)
class GenerationCounts:
    """Counters of a model's generation (Prometheus counters: they only grow)."""

    forwards: int = 0  # prefills and decode steps
    steps: int = 0  # decode steps alone: tokens generated / steps is the batch's mean width
    prefix_hit_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    preempted: int = 0  # rows sent back to be prefilled again (out of memory, or at the KV budget)
    ridden: int = 0  # prefill chunks run in a decode step's forward (service.engine.ragged)

    @classmethod
    def of(cls, source: Scheduler | EngineStats) -> GenerationCounts:
        hits = source.prefix_cache.hit_tokens if isinstance(source, Scheduler) else source.prefix_hit_tokens
        return cls(source.forwards, source.steps, hits, source.preempted, source.ridden)

    def __add__(self, other: GenerationCounts) -> GenerationCounts:
        return GenerationCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class ModelHost:
    """One hosted model: weights, tokenizer, Surgeon, scheduler and the compiled stacks of its versions."""

    def __init__(
        self,
        name: str,
        source: str,
        registry: Registry,
        aliases: AliasCache | None = None,
        actor: str = "scalpel",
        device: str = "cpu",
        dtype: str = "float32",
        stream_interval: int = 0,
        intra_op_threads: int | None = None,
        local_files_only: bool = False,
        engine_process: bool = False,
        max_streams: int | None = None,
        prefill_chunk_tokens: int = 2048,
        prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
        max_batch_rows: int = MAX_BATCH_ROWS,
        kv_cache_bytes: int = 0,
        ride_prefill: bool = True,
        admit_within_steps: int | None = None,
    ) -> None:
        self.name = name
        self.aliases = aliases
        self.source = source
        self.registry = registry
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        loading = {"local_files_only": local_files_only}
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype, **loading).to(self.device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source, **loading)
        if self.tokenizer.pad_token is None:  # Llama-family tokenizers: batches need one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.surgeon = Surgeon(self.model)
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        #: Positions the model can attend over: prompt and generated tokens together.
        self.context_length: int = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", 2048
        )
        self._stacks: dict[int, EditStack] = {}
        self._edits: dict[int, Edit] = {}  # loaded (and hash-verified) once per replica; edits never change
        self._saes: dict[str, SparseAutoencoder] = {}
        self._feature_indexes: dict[tuple[str, int], FeatureIndex] = {}
        self._lock = threading.Lock()
        self._indexing = threading.Lock()  # one index built at a time: each reads the whole corpus
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
                raise FailedPrecondition(
                    f"model {name!r} is registered with weights {known.weights_sha256[:12]}… but "
                    f"{source} has {self.surgeon.weights_sha256[:12]}…: refusing to serve it"
                )
        #: The one thread that runs this model's forwards (started last: the model is ready).
        self.scheduler = Scheduler(
            self.model,
            self.surgeon,
            self.tokenizer,
            name,
            self.context_length,
            stream_interval=stream_interval,
            intra_op_threads=intra_op_threads,
            eos_ids=self.eos_ids,
            max_streams=max_streams,
            prefill_chunk_tokens=prefill_chunk_tokens,
            prefix_cache_bytes=prefix_cache_bytes,
            max_rows=max_batch_rows,
            kv_cache_bytes=kv_cache_bytes,
            ride_prefill=ride_prefill,
            admit_within=admit_within_steps,
        )
        #: Generation streams' own process over the same weights (service.engine.process), if asked.
        self.engine: EngineProcess | None = None
        self._engine_lock = threading.Lock()
        #: Called each time a dead engine process is replaced (the server counts them).
        self.on_engine_restart: Callable[[], None] = lambda: None
        #: Where the generation streams' latencies go (the server's histograms), if anywhere.
        self.latency: LatencySink | None = None
        #: Called each time a stream is refused because ``max_streams`` were in flight.
        self.on_overloaded: Callable[[], None] = lambda: None
        self._dead_engines_counts = GenerationCounts()  # those of replaced engine processes
        self._engine_settings = EngineSettings(
            name,
            self.context_length,
            stream_interval,
            intra_op_threads,
            self.eos_ids,
            max_streams,
            prefill_chunk_tokens,
            prefix_cache_bytes,
            max_batch_rows,
            kv_cache_bytes,
            ride_prefill,
            admit_within_steps,
        )
        if engine_process:
            try:
                self.engine = EngineProcess(self.model, self.tokenizer, self._engine_settings)
            except BaseException:
                self.scheduler.close()
                raise

    def revive_engine(self) -> bool:
        """Start a new engine process if the last one died (its streams ended UNAVAILABLE, which
        clients retry); return whether one was started. The server's watcher calls it every
        second, and a new stream calls it before it joins."""
        if self.engine is None or not self.engine.died:  # every stream asks: no lock on the way
            return False
        with self._engine_lock:
            if not self.engine.died:  # another thread replaced it meanwhile
                return False
            _LOG.warning("the engine process of model %r died; starting a new one", self.name)
            self._dead_engines_counts += GenerationCounts.of(self.engine.stats)
            self.engine = EngineProcess(self.model, self.tokenizer, self._engine_settings)
        self.on_engine_restart()
        return True

    @property
    def active_rows(self) -> int:
        """Rows in the generation batch (the engine process's, as of its last step)."""
        return self.engine.stats.active_rows if self.engine is not None else self.scheduler.active_rows

    @property
    def row_cap(self) -> int:
        """Rows the generation batch may hold now (fewer than ``max_batch_rows`` for a while after
        a step ran out of memory; the engine process's, as of its last step)."""
        return self.engine.stats.row_cap if self.engine is not None else self.scheduler.row_cap

    @property
    def kv_held_bytes(self) -> int:
        """Bytes of keys and values the generation batch holds (the engine process's, as of its
        last step)."""
        return self.engine.stats.kv_held_bytes if self.engine is not None else self.scheduler.kv_held_bytes

    @property
    def waiting(self) -> int:
        """Generation streams waiting to join the batch (the engine process's, as of its last step)."""
        return self.engine.stats.waiting if self.engine is not None else self.scheduler.waiting

    @property
    def generation_counts(self) -> GenerationCounts:
        """Generation forwards, decode steps and prompt tokens taken from the prefix cache, run for
        this model so far, inline or in its engine processes (dead ones included), each as of its
        last step."""
        counts = GenerationCounts.of(self.scheduler)
        if self.engine is not None:
            counts += self._dead_engines_counts + GenerationCounts.of(self.engine.stats)
        return counts

    @property
    def requests(self) -> int:
        """Requests in flight: streams (here or in the engine process) and queued jobs."""
        streams = self.engine.requests if self.engine is not None else 0
        return streams + self.scheduler.requests + self.scheduler.queued_jobs

    @property
    def dtype_name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def model_dir(self) -> Path:
        """The model's directory (for a hub id, a path that does not exist): its shipped files."""
        return Path(self.source)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.scheduler.close()

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
        target = self.registry.get_alias(self.name, alias or "production").version
        problem = self.registry.alias_problem(self.name, alias or "production", target)
        if problem:
            raise ArtifactIntegrityError(problem)
        return target

    def ready(self, alias: str | None, version: int | None) -> bool:
        """Whether a stream of that version could start without waiting: its number known without
        the database, its stack compiled, the engine process (if any) alive."""
        if version is None:
            version = self.aliases.known(self.name, alias or "production") if self.aliases is not None else None
            if version is None:
                return False
        with self._lock:
            compiled = version in self._stacks
        return compiled and (self.engine is None or not self.engine.died)

    def stack(self, version: int) -> EditStack:
        """The compiled stack of ``version`` (compiled once; versions never change)."""
        with self._lock:
            cached = self._stacks.get(version)
        if cached is not None:
            return cached
        info = self.registry.verified_version(self.name, version)  # DATA_LOSS if its rows were rewritten
        compiled = self.surgeon.compile([self.edit(edit_id) for edit_id in info.edit_ids])
        with self._lock:
            return self._stacks.setdefault(version, compiled)

    def reference_texts(self) -> list[str]:
        """Corpus for statistics (ROME key covariance, context prefixes): the model directory's
        ``reference_corpus.txt`` (the toy model ships one), else the current suite's reference texts."""
        corpus = self.model_dir / "reference_corpus.txt"
        if corpus.exists():
            return corpus.read_text().splitlines()
        try:
            _, spec = self.registry.get_suite(self.name)
        except NotFound as exc:
            raise InvalidArgument(f"model {self.name!r} has no reference corpus and no check suite") from exc
        return Suite.from_spec(spec, self.model_dir).reference_texts()

    def sae(self, name: str) -> SparseAutoencoder:
        """A stored SAE of this model, loaded and verified once per replica (SAEs never change)."""
        with self._lock:
            cached = self._saes.get(name)
        if cached is None:
            cached = self.registry.load_sae(self.name, name)
            with self._lock:
                self._saes[name] = cached
        return cached

    def feature_index(self, name: str, max_texts: int = 0) -> FeatureIndex:
        """SAE ``name``'s features over the reference corpus (its first ``max_texts`` texts; 0: all
        of it), read once per replica at background priority, between decode steps; the
        ``MAX_FEATURE_INDEXES`` most recent are kept."""
        key = (name, max_texts)
        with self._indexing:
            index = self._feature_indexes.get(key)
            if index is None:
                texts = self.reference_texts()[: max_texts or None]
                run = partial(self.forward, background=True)
                index = FeatureIndex(self.surgeon, self.tokenizer, self.sae(name), texts, depth=FEATURE_DEPTH, run=run)
            self._feature_indexes.pop(key, None)
            self._feature_indexes[key] = index  # the most recently used last
            while len(self._feature_indexes) > MAX_FEATURE_INDEXES:
                self._feature_indexes.pop(next(iter(self._feature_indexes)))
        return index

    def edit(self, edit_id: int) -> Edit:
        """A stored edit of this model, loaded and hash-verified once per replica."""
        with self._lock:
            cached = self._edits.get(edit_id)
        if cached is None:
            cached = self.registry.load_edit(self.name, edit_id)
            with self._lock:
                self._edits[edit_id] = cached
        return cached

    # -- inference ------------------------------------------------------------------------------
    def _check_length(self, field: str, text: str) -> None:
        """Refuse text far past the context before tokenising it (a 30 MB prompt would hold a worker
        for seconds only to be refused): no tokenizer packs more than ``CHARS_PER_TOKEN`` per token."""
        if len(text) > CHARS_PER_TOKEN * self.context_length:
            raise InvalidArgument(
                f"{field} is {len(text)} characters: far more than the model's {self.context_length} tokens"
            )

    def check_texts(
        self, field: str, pairs: list[tuple[str, str]], limit: int, sides: tuple[str, str] = ("positive", "negative")
    ) -> None:
        """Text pairs (DeriveSteering's contrastive pairs, DiscoverCircuit's clean and corrupted
        prompts): at most ``limit``, each text non-empty and within the context."""
        if not pairs or len(pairs) > limit:
            raise InvalidArgument(f"{field} must hold 1..{limit} pairs, got {len(pairs)}")
        for number, pair in enumerate(pairs):
            for side, text in zip(sides, pair, strict=True):
                name = f"{field}[{number}].{side}"
                if not text.strip():
                    raise InvalidArgument(f"{name} is empty")
                self._check_length(name, text)
                tokens = len(self.tokenizer(text)["input_ids"])
                if tokens > self.context_length:
                    raise InvalidArgument(f"{name} is {tokens} tokens; the model takes at most {self.context_length}")

    def _encode(self, prompt: str) -> torch.Tensor:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgument("prompt must be a non-empty string")
        self._check_length("prompt", prompt)
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] >= self.context_length:
            raise InvalidArgument(f"prompt is {ids.shape[1]} tokens; the model takes fewer than {self.context_length}")
        return ids

    def prompt_ids(self, prompt: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """A prompt's token ids ``[tokens]``: text is tokenised; ids (as the OpenAI API allows a
        prompt to be given) must be the model's and leave room in its context."""
        if isinstance(prompt, str):
            return self._encode(prompt)[0]
        vocab = self.model.config.vocab_size
        if isinstance(prompt, torch.Tensor):
            ids = prompt
        elif isinstance(prompt, Sequence) and all(type(i) is int for i in prompt):
            if any(not 0 <= i < vocab for i in prompt):  # before a tensor: a huge int would overflow it
                raise InvalidArgument(f"prompt token ids must be in [0, {vocab}): the model's vocabulary")
            ids = torch.tensor(prompt, dtype=torch.long)
        else:
            raise InvalidArgument("prompt must be a non-empty string or a list of token ids")
        if ids.ndim != 1 or not len(ids) or ids.is_floating_point():
            raise InvalidArgument("a prompt of token ids must be a non-empty list of integers")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise InvalidArgument(f"prompt token ids must be in [0, {vocab}): the model's vocabulary")
        if len(ids) >= self.context_length:
            raise InvalidArgument(f"prompt is {len(ids)} tokens; the model takes fewer than {self.context_length}")
        return ids

    def forward(self, run: Callable[[], torch.Tensor], background: bool = False) -> torch.Tensor:
        """Run a function of the model on its scheduler, between decode steps (checks: ``background``)."""
        return self.scheduler.call(run, BACKGROUND if background else INTERACTIVE)

    def generate(
        self,
        version: int,
        prompt: str | Sequence[int] | torch.Tensor,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        is_active: Callable[[], bool] = lambda: True,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        bell: Doorbell | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
    ) -> Iterator[Token | Finished] | AsyncIterator[Token | Finished]:
        """Tokens under ``version`` as the scheduler makes them, then a :class:`Finished` (with
        ``bell``: an async iterator, read on that doorbell's loop). ``prompt`` is text or token ids
        (:meth:`prompt_ids`). Greedy at
        temperature 0. Ends with "length" at ``max_tokens`` or when prompt and output fill the
        context, with "eos" at any of the model's end-of-sequence ids (its generation config's and
        its tokenizer's). The sampling options are :class:`~service.engine.sampling.Sampling`'s.

        Everything is validated before the request joins the batch, so a bad request fails alone;
        with ``max_streams`` already in flight the request is refused (:class:`Overloaded`)."""
        started = time.monotonic()
        if not 0 < max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidArgument(f"max_tokens must be 1..{MAX_TOKENS_LIMIT}")
        sampling = self.sampling(
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            top_k,
            min_p,
            repetition_penalty,
            logprobs,
            ignore_eos,
            presence_penalty,
            frequency_penalty,
            logit_bias,
        )
        ids = self.prompt_ids(prompt)
        sampling = replace(sampling, max_tokens=min(max_tokens, self.context_length - len(ids)))
        self._check_kv_budget(len(ids) + sampling.max_tokens)
        stack = self.stack(version)  # compiled here too: a bad stack fails its request before it leaves
        clock = StreamClock(self.latency, len(ids), started) if self.latency is not None else None
        try:
            if self.engine is not None:
                self.revive_engine()
                return self.engine.generate(ids, version, stack.edits, sampling, is_active, bell, clock)
            return self.scheduler.generate(ids, stack, sampling, is_active, bell, clock)
        except Overloaded:
            self.on_overloaded()
            raise

    def sampling(
        self,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
    ) -> Sampling:
        """The :class:`~service.engine.sampling.Sampling` these options make, each checked against this
        model (its vocabulary for ``top_k`` and ``logit_bias``): :meth:`generate` asks it before a
        stream joins, and a request that makes no token (echo alone) asks it too, so that it is
        refused where a stream with the same options would be. ``max_tokens`` is the caller's."""
        if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= 10) or not 0 <= top_p <= 1:
            raise InvalidArgument(f"temperature must be 0 or in [{MIN_TEMPERATURE}, 10], and top_p in [0, 1]")
        vocab = self.model.config.vocab_size
        if not 0 <= top_k <= vocab or not 0 <= min_p <= 1:
            raise InvalidArgument(f"top_k must be in [0, {vocab}] (0: off) and min_p in [0, 1] (0: off)")
        if not 0 < repetition_penalty <= MAX_REPETITION_PENALTY:
            raise InvalidArgument(f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY}] (1: off)")
        if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]: the alternatives per token")
        if not (-MAX_PENALTY <= presence_penalty <= MAX_PENALTY and -MAX_PENALTY <= frequency_penalty <= MAX_PENALTY):
            raise InvalidArgument(f"presence_penalty and frequency_penalty must be in [-{MAX_PENALTY}, {MAX_PENALTY}]")
        return Sampling(
            max_tokens,
            temperature,
            top_p,
            seed,
            tuple(s for s in stop if s),
            top_k,
            min_p,
            repetition_penalty,
            logprobs,
            ignore_eos,
            presence_penalty,
            frequency_penalty,
            _logit_bias(logit_bias or {}, vocab),
        )

    def _check_kv_budget(self, tokens: int) -> None:
        """Refuse a stream that could not fit the KV budget (``kv_cache_bytes``) alone at its
        longest: the batch would have to send it back for ever."""
        budget, column = self.scheduler.kv_cache_bytes, self.scheduler.column_bytes
        if budget and tokens * column > budget:
            raise InvalidArgument(
                f"prompt and max_tokens make {tokens} tokens, {tokens * column:,} bytes of keys and values; "
                f"model {self.name!r} may hold {budget:,} (kv_cache_mb): fewer tokens fit ({budget // column} at most)"
            )

    def compare(
        self, base: int, candidate: int, prompts: list[str], candidate_host: ModelHost | None = None
    ) -> list[tuple[str, float, str, str]]:
        """Per prompt: KL(base ‖ candidate) of the next token, and each side's top-1 token.

        ``candidate`` is a version of ``candidate_host`` (default: this model; another, a successor
        or predecessor with the same vocabulary). On one model each chunk is one forward: the base
        rows and the candidate rows side by side."""
        other = candidate_host or self
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidArgument("prompts must be non-empty strings")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} prompts per comparison, got {len(prompts)}")
        for number, prompt in enumerate(prompts):
            self._check_length(f"prompts[{number}]", prompt)
        if other is not self and other.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise InvalidArgument(f"models {self.name!r} and {other.name!r} have different vocabularies")
        base_stack, candidate_stack = self.stack(base), other.stack(candidate)
        rows = []
        for start in range(0, len(prompts), COMPARE_BATCH):
            chunk = prompts[start : start + COMPARE_BATCH]
            if other is self:
                p, q = self._next_token_logprobs(chunk, start, [base_stack, candidate_stack]).split(len(chunk))
            else:
                p = self._next_token_logprobs(chunk, start, [base_stack])
                q = other._next_token_logprobs(chunk, start, [candidate_stack]).to(p.device)
            kl = (p.exp() * (p - q)).sum(dim=-1)
            tops = [self.tokenizer.convert_ids_to_tokens(lp.argmax(dim=-1).tolist()) for lp in (p, q)]
            rows += [(chunk[i], float(kl[i]), tops[0][i], tops[1][i]) for i in range(len(chunk))]
        return rows

    def _next_token_logprobs(self, chunk: list[str], start: int, stacks: list[EditStack]) -> torch.Tensor:
        """Next-token log-probabilities after each prompt of ``chunk`` under each of ``stacks`` (rows
        stack by stack), in one forward; ``start`` numbers the prompts in errors."""
        encoded = self.tokenizer(chunk, return_tensors="pt", padding=True)
        lengths = encoded["attention_mask"].sum(dim=1)
        if int(lengths.max()) > self.context_length:
            number = start + int(lengths.argmax())
            raise InvalidArgument(
                f"prompts[{number}] is {int(lengths.max())} tokens; the model takes at most {self.context_length}"
            )
        encoded = {key: torch.cat([value] * len(stacks)).to(self.device) for key, value in encoded.items()}
        last = last_token_index(encoded["attention_mask"])
        rows = self.surgeon.rows([stack for stack in stacks for _ in chunk])
        # logits only at the positions some row ends on (not at every position of every row)
        ends, where = torch.unique(last, return_inverse=True)

        def run() -> torch.Tensor:
            with self.surgeon.apply_rows(rows):
                logits = self.model(**encoded, logits_to_keep=ends).logits
            return logits[torch.arange(len(where), device=self.device), where].float()

        return self.forward(run).log_softmax(dim=-1)

    def prompt_logprobs(
        self, version: int, prompts: list[torch.Tensor], top: int, budget: int = LOGIT_BUDGET
    ) -> list[list[TokenLogprob]]:
        """Under ``version``, for each prompt (token ids), each token's log-probability given the
        tokens before it (from the second token on: ``len(ids) - 1`` entries) and the ``top``
        likeliest tokens at its position with theirs: the completions API's ``echo`` with
        ``logprobs``. Right-padded prompts share forwards, as many rows as ``budget`` floats of
        logits allow; a prompt too long for the budget alone runs in column chunks over a KV cache
        (chunked prefill), so its logits are never all held at once. Each forward runs on the
        model's scheduler, between decode steps."""
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidArgument(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]: the alternatives per token")
        stack = self.stack(version)
        width, vocab = max(len(ids) for ids in prompts), self.model.config.vocab_size
        rows = max(1, min(COMPARE_BATCH, budget // (width * vocab)))
        columns = max(1, budget // (rows * vocab))
        scored: list[list[TokenLogprob]] = []
        for start in range(0, len(prompts), rows):
            scored += self._prompt_logprobs_chunk(stack, prompts[start : start + rows], top, columns)
        return scored

    def _prompt_logprobs_chunk(
        self, stack: EditStack, prompts: list[torch.Tensor], top: int, columns: int
    ) -> list[list[TokenLogprob]]:
        width = max(len(ids) for ids in prompts)
        if width < 2:  # one-token prompts: nothing before any token
            return [[] for _ in prompts]
        batch, mask = (t.to(self.device) for t in self._right_padded(prompts))

        def run() -> tuple[list[list[float]], list[list[list[int]]], list[list[list[float]]]]:
            cache, parts = GrowingCache(), []
            with self.surgeon.apply(stack):
                for start in range(0, width - 1, columns):  # the positions that predict a prompt token
                    end = min(start + columns, width - 1)
                    out = self.model(
                        input_ids=batch[:, start:end], attention_mask=mask[:, :end], cache=cache, use_cache=True
                    )
                    logprobs = out.logits.float().log_softmax(dim=-1)
                    chosen = logprobs.gather(2, batch[:, start + 1 : end + 1].unsqueeze(2)).squeeze(2)
                    parts.append((chosen, *logprobs.topk(top, dim=-1)))
            chosen, values, alternatives = (torch.cat(column, dim=1) for column in zip(*parts, strict=True))
            return chosen.tolist(), alternatives.tolist(), values.tolist()

        chosen, alternatives, values = self.forward(run)
        return [
            [
                (chosen[row][i], tuple(zip(alternatives[row][i], values[row][i], strict=True)))
                for i in range(len(ids) - 1)
            ]
            for row, ids in enumerate(prompts)
        ]

    def _right_padded(self, sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``sequences`` (token ids) as one right-padded batch ``[rows, longest]`` and its mask."""
        batch = torch.full((len(sequences), max(map(len, sequences))), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, ids in enumerate(sequences):
            batch[row, : len(ids)], mask[row, : len(ids)] = ids, 1
        return batch, mask

    def score(self, version: int, prompt: str, continuations: list[str]) -> list[float]:
        """log P(continuation | prompt) for each continuation, under ``version``."""
        if not continuations or not all(isinstance(c, str) and c.strip() for c in continuations):
            raise InvalidArgument("continuations must be non-empty strings")
        if len(continuations) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} continuations per call, got {len(continuations)}")
        return self.logprob_sums([version], [(prompt, c) for c in continuations])[0].tolist()

    def logprob_sums(self, versions: list[int], pairs: list[tuple[str, str]], background: bool = False) -> torch.Tensor:
        """``[len(versions), len(pairs)]``: log P(continuation | prompt) of each (prompt, continuation)
        pair under each version. A continuation is its stripped text after one space. Each chunk of
        pairs is one forward holding every version's rows (per-row stacks), so the versions are
        compared on exactly the same inputs."""
        sequences = []
        for number, (prompt, continuation) in enumerate(pairs):
            prompt_ids = self._encode(prompt)[0]
            self._check_length(f"continuations[{number}]", continuation)
            extra = self.tokenizer(" " + continuation.strip(), add_special_tokens=False, return_tensors="pt")
            ids = torch.cat([prompt_ids, extra["input_ids"][0]])
            if len(ids) > self.context_length:
                raise InvalidArgument(
                    f"continuations[{number}]: prompt and continuation are {len(ids)} tokens; "
                    f"the model takes at most {self.context_length}"
                )
            sequences.append((ids, len(prompt_ids)))
        stacks = [self.stack(version) for version in versions]
        chunk_size = max(1, (BACKGROUND_ROWS if background else COMPARE_BATCH) // len(versions))
        sums = []
        for start in range(0, len(sequences), chunk_size):
            sums.append(self._logprob_chunk(stacks, sequences[start : start + chunk_size], background))
        return torch.cat(sums, dim=1)

    def _logprob_chunk(
        self, stacks: list[EditStack], sequences: list[tuple[torch.Tensor, int]], background: bool
    ) -> torch.Tensor:
        """One forward over right-padded sequences, repeated once per stack."""
        batch, mask = self._right_padded([ids for ids, _ in sequences])
        width = batch.shape[1]
        batch, mask = batch.repeat(len(stacks), 1).to(self.device), mask.repeat(len(stacks), 1).to(self.device)
        rows = self.surgeon.rows([stack for stack in stacks for _ in sequences])
        starts = [prompt_length for _, prompt_length in sequences] * len(stacks)
        targets = [ids for ids, _ in sequences] * len(stacks)
        # only the positions that predict a continuation token get logits: [rows, span, vocab]
        # rather than [rows, width, vocab] (a long prompt's logits are never read)
        first = min(starts) - 1
        span = torch.arange(first, width - 1, device=self.device)

        def run() -> torch.Tensor:
            with self.surgeon.apply_rows(rows):
                logits = self.model(input_ids=batch, attention_mask=mask, logits_to_keep=span).logits
            sums = []
            for row, (ids, start) in enumerate(zip(targets, starts, strict=True)):
                steps = torch.arange(start - 1 - first, len(ids) - 1 - first, device=logits.device)
                picked = logits[row, steps].float().log_softmax(dim=-1)
                sums.append(picked.gather(-1, ids[start:].to(logits.device).unsqueeze(-1)).sum())
            return torch.stack(sums).cpu()

        return self.forward(run, background=background).view(len(stacks), len(sequences))

    def complete(self, version: int, prompts: list[str], max_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` under ``version``: they join the running batch as
        rows, like any stream, ``COMPLETE_CHUNK`` at a time so that serving rows keep their pace."""
        if not 0 < max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidArgument(f"max_tokens must be 1..{MAX_TOKENS_LIMIT}")
        stack = self.stack(version)
        encoded = [self._encode(prompt)[0] for prompt in prompts]
        for ids in encoded:  # (each must fit the KV budget alone, as a stream must)
            self._check_kv_budget(len(ids) + min(max_tokens, self.context_length - len(ids)))
        produced: list[list[int]] = []
        for start in range(0, len(encoded), COMPLETE_CHUNK):
            chunk = encoded[start : start + COMPLETE_CHUNK]
            samplings = [Sampling(min(max_tokens, self.context_length - len(ids))) for ids in chunk]
            produced += self.scheduler.complete([ids.to(self.device) for ids in chunk], stack, samplings)
        return [self.tokenizer.decode(ids) for ids in produced]


def _logit_bias(bias: Mapping[int, float], vocab: int) -> tuple[tuple[int, float], ...]:
    """``bias`` checked (token ids in the vocabulary, biases in OpenAI's bounds), as sorted pairs."""
    if len(bias) > MAX_LOGIT_BIAS_TOKENS:
        raise InvalidArgument(f"logit_bias holds {len(bias)} tokens; at most {MAX_LOGIT_BIAS_TOKENS}")
    for token, value in bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
            raise InvalidArgument(f"logit_bias names token {token!r}: token ids must be in [0, {vocab})")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS
        ):
            raise InvalidArgument(f"logit_bias for token {token} is {value}; biases must be in [-100, 100]")
    return tuple(sorted((token, float(value)) for token, value in bias.items()))


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every id that ends a generation: the generation config's (one or a list: Llama 3 has
    several) and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i is not None)
