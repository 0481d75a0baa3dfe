"""How each row of a batch picks its next token: greedy or sampled, with the usual filters, and
the log-probabilities a caller asked for.

One decode step picks for every row at once: the rows that need nothing but an argmax (greedy,
no penalty, no log-probabilities: the common case) cost one ``argmax`` over the batch; the others
are handled row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Most alternatives a caller may ask for per token (OpenAI's completions allow 5, chat 20).
MAX_TOP_LOGPROBS = 20

#: One token's log-probability and the ``logprobs`` most likely alternatives with theirs.
TokenLogprob = tuple[float, tuple[tuple[int, float], ...]]


@dataclass(frozen=True)
class Sampling:
    """How one stream picks its tokens (greedy at temperature 0).

    ``top_k`` (0: off), ``min_p`` (0: off) and ``top_p`` (1: off) narrow what a sampled token may
    be. The adjustments below apply to greedy rows too, in this order:

    - ``repetition_penalty`` (1: off) divides the logits of every token already in the prompt or
      the output (multiplies them where negative), as in CTRL and ``transformers``;
    - ``presence_penalty`` and ``frequency_penalty`` (0: off) subtract, as OpenAI's API defines
      them, ``presence_penalty`` from the logit of every token the output holds and
      ``frequency_penalty`` times the number of times it holds it (the output only, as OpenAI and
      vLLM count; negative values favour repeats);
    - ``logit_bias`` (``(token id, bias)`` pairs) adds each bias to its token's logit (-100 bans a
      token in practice, 100 all but forces it).

    ``logprobs`` (None: off) asks for each token's log-probability and that many alternatives,
    from the model's distribution after those adjustments and before temperature."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    ignore_eos: bool = False  # run to max_tokens through end-of-sequence tokens (benchmarks, tests)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def plain(self) -> bool:
        """Greedy with nothing else to compute: an argmax is the whole pick."""
        return (
            self.temperature == 0
            and self.repetition_penalty == 1.0
            and not self.counts_output
            and not self.logit_bias
            and self.logprobs is None
        )

    @property
    def counts_output(self) -> bool:
        """Whether the presence or frequency penalty is on (the row counts its output tokens)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0


class RowSampler:
    """One row's sampling state: its random generator and the token ids it has seen."""

    def __init__(self, sampling: Sampling, prompt: torch.Tensor) -> None:
        self.sampling = sampling
        self.generator: torch.Generator | None = None
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else torch.seed()
            self.generator = torch.Generator().manual_seed(seed)
        self.seen: set[int] = set(prompt.tolist()) if sampling.repetition_penalty != 1.0 else set()
        self.output_counts: dict[int, int] = {}  # with the presence or frequency penalty on
        bias = sampling.logit_bias
        self.bias_ids = torch.tensor([token for token, _ in bias], dtype=torch.long)
        self.biases = torch.tensor([value for _, value in bias], dtype=torch.float32)

    def pick(self, logits: torch.Tensor, greedy: int) -> tuple[int, TokenLogprob | None]:
        """The next token from this row's ``logits`` (``[vocab]``, float32 on the CPU) and its
        log-probabilities if asked; ``greedy`` is the batch's argmax for the row."""
        sampling = self.sampling
        adjusted = self._adjusted(logits)
        if adjusted is not logits:
            logits, greedy = adjusted, int(adjusted.argmax())
        token = greedy if self.generator is None else sample(logits, sampling, self.generator)
        if sampling.repetition_penalty != 1.0:
            self.seen.add(token)
        if sampling.counts_output:
            self.output_counts[token] = self.output_counts.get(token, 0) + 1
        if sampling.logprobs is None:
            return token, None
        logprobs = logits.log_softmax(dim=-1)
        top = logprobs.topk(sampling.logprobs) if sampling.logprobs else None
        alternatives = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
        return token, (float(logprobs[token]), alternatives)

    def _adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` after the penalties and the bias (``logits`` itself when none applies)."""
        sampling = self.sampling
        if sampling.repetition_penalty != 1.0 and self.seen:
            logits = penalise(logits, list(self.seen), sampling.repetition_penalty)
        if self.output_counts:
            ids = torch.tensor(list(self.output_counts), dtype=torch.long)
            counts = torch.tensor(list(self.output_counts.values()), dtype=logits.dtype)
            penalties = counts * sampling.frequency_penalty + sampling.presence_penalty
            logits = logits.index_add(0, ids, -penalties)
        if len(self.bias_ids):
            logits = logits.index_add(0, self.bias_ids, self.biases.to(logits.dtype))
        return logits


def penalise(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """``logits`` with each seen token's logit divided by ``penalty`` (multiplied where negative)."""
    logits = logits.clone()
    ids = torch.tensor(seen, dtype=torch.long)
    scores = logits[ids]
    logits[ids] = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token from ``softmax(logits / temperature)`` kept to the ``top_k`` most likely, the
    smallest set holding ``top_p`` of the mass, and those at least ``min_p`` × the likeliest."""
    scaled = logits / sampling.temperature
    if 0 < sampling.top_k < len(scaled):
        kth = scaled.topk(sampling.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(dim=-1)
    if 0 < sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    if sampling.min_p > 0:
        probs = probs.masked_fill(probs < sampling.min_p * probs.max(), 0.0)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def pick_tokens(logits: torch.Tensor, rows: list[RowSampler | None]) -> tuple[list[int], list[TokenLogprob | None]]:
    """Each row's next token (``logits`` ``[rows, vocab]``; a row of ``None`` is padding) and, for
    rows that asked, its log-probabilities."""
    logits = logits.float()
    tokens = logits.argmax(dim=-1).tolist()
    logprobs: list[TokenLogprob | None] = [None] * len(tokens)
    special = [row for row, sampler in enumerate(rows) if sampler is not None and not sampler.sampling.plain]
    if special:
        on_cpu = logits.cpu()
        for row in special:
            tokens[row], logprobs[row] = rows[row].pick(on_cpu[row], tokens[row])  # type: ignore[union-attr]
    return tokens, logprobs
