"""How each row of a batch picks its next token: greedy or sampled, with the usual filters, and
the log-probabilities a caller asked for.

One decode step picks for every row at once, on the logits' device: the rows that need nothing but
an argmax (greedy, no penalty, no log-probabilities: the common case) cost one ``argmax`` over the
batch; the others are taken together (:func:`pick_tokens`): their penalties and biases applied by
flat index over all of them, their log-probabilities from one ``log_softmax``, and their draws from
one softmax, the filters as masks over each row's likeliest tokens (``topk``, widened until every
row's nucleus fits) and one inverse-CDF lookup per row. Each row's draw takes one number from the
row's own generator, so a seeded stream makes the same tokens whatever rows share its batch.
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
        #: ``seen`` as a tensor of ids (kept as tokens come: a long prompt is not listed every step)
        self.seen_ids = torch.tensor(sorted(self.seen), dtype=torch.long)
        self.output_counts: dict[int, int] = {}  # with the presence or frequency penalty on

    def took(self, token: int) -> None:
        """Remember ``token`` for the penalties."""
        if self.sampling.repetition_penalty != 1.0 and token not in self.seen:
            self.seen.add(token)
            self.seen_ids = torch.cat([self.seen_ids, torch.tensor([token])])
        if self.sampling.counts_output:
            self.output_counts[token] = self.output_counts.get(token, 0) + 1


def pick_tokens(logits: torch.Tensor, rows: list[RowSampler | None]) -> tuple[list[int], list[TokenLogprob | None]]:
    """Each row's next token (``logits`` ``[rows, vocab]``; a row of ``None`` is padding) and, for
    rows that asked, its log-probabilities."""
    logits = logits.float()
    logprobs: list[TokenLogprob | None] = [None] * len(rows)
    special = [row for row, sampler in enumerate(rows) if sampler is not None and not sampler.sampling.plain]
    if not special:
        return _argmax(logits).tolist(), logprobs
    samplers: list[RowSampler] = [rows[row] for row in special]  # type: ignore[misc]
    adjusted = _adjusted(_rows(logits, special), samplers)
    hot = [i for i, sampler in enumerate(samplers) if sampler.generator is not None]
    cold = [i for i, sampler in enumerate(samplers) if sampler.generator is None]
    picked = torch.empty(len(special), dtype=torch.long, device=logits.device)
    if hot:
        picked[_index(hot, logits.device)] = _draw(_rows(adjusted, hot), [samplers[i] for i in hot])
    if cold:
        picked[_index(cold, logits.device)] = _argmax(_rows(adjusted, cold))
    if len(special) == len(rows):
        tokens = picked
    else:
        tokens = _argmax(logits)
        tokens[_index(special, logits.device)] = picked
    chosen = tokens.tolist()
    asked = [i for i, sampler in enumerate(samplers) if sampler.sampling.logprobs is not None]
    if asked:
        for i, entry in zip(asked, _logprobs(adjusted, asked, samplers, picked), strict=True):
            logprobs[special[i]] = entry
    for row, sampler in zip(special, samplers, strict=True):
        sampler.took(chosen[row])
    return chosen, logprobs


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _rows(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``tensor``'s ``rows`` (itself when they are all of them, in order: no copy)."""
    if rows == list(range(tensor.shape[0])):
        return tensor
    return tensor.index_select(0, _index(rows, tensor.device))


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """Each row's first likeliest token: ``max``'s indices, which on the CPU take a third of
    ``argmax``'s time over a 50k vocabulary (the same first index on ties)."""
    return logits.max(dim=-1).indices


def _adjusted(logits: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """``logits`` (``[rows, vocab]``, row ``i`` ``samplers[i]``'s) after each row's repetition
    penalty, presence and frequency penalties and logit bias, each applied to all rows at once by
    flat index (on a copy; ``logits`` itself when none applies)."""
    vocab = logits.shape[1]
    repeat: list[torch.Tensor] = []  # flat indices of seen tokens
    penalties: list[torch.Tensor] = []
    lowered: list[tuple[int, int, float]] = []
    biased: list[tuple[int, int, float]] = []
    for i, sampler in enumerate(samplers):
        sampling = sampler.sampling
        if sampling.repetition_penalty != 1.0 and len(sampler.seen_ids):
            repeat.append(sampler.seen_ids + i * vocab)
            penalties.append(torch.full((len(sampler.seen_ids),), sampling.repetition_penalty))
        for token, count in sampler.output_counts.items():
            lowered.append((i, token, count * sampling.frequency_penalty + sampling.presence_penalty))
        biased += [(i, token, bias) for token, bias in sampling.logit_bias]
    if not (repeat or lowered or biased):
        return logits
    logits = logits.clone()  # (the model's output, or the rows taken from it)
    flat = logits.view(-1)
    if repeat:
        index, penalty = torch.cat(repeat).to(logits.device), torch.cat(penalties).to(logits.device)
        scores = flat[index]
        flat[index] = torch.where(scores < 0, scores * penalty, scores / penalty)
    if lowered:
        index, amount = _flat(lowered, vocab, logits.device)
        flat.index_add_(0, index, -amount)
    if biased:
        index, amount = _flat(biased, vocab, logits.device)
        flat.index_add_(0, index, amount)
    return logits


def _flat(entries: list[tuple[int, int, float]], vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, token, value)`` entries as flat indices into ``[rows, vocab]`` and their values."""
    rows, tokens, values = zip(*entries, strict=True)
    index = torch.tensor(rows, dtype=torch.long) * vocab + torch.tensor(tokens, dtype=torch.long)
    return index.to(device), torch.tensor(values, dtype=torch.float32, device=device)


#: The likeliest tokens a nucleus (``top_p``) is first looked for among; widened 4× at a time
#: until every row's nucleus ends inside them.
NUCLEUS_START = 64


def _draw(logits: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """One token per row (``[rows]``) from ``softmax(logits / temperature)`` kept to the ``top_k``
    likeliest, the smallest set holding ``top_p`` of that mass, and those at least ``min_p`` × the
    likeliest's probability (each row its own options), drawn by inverse CDF with one uniform
    number from each row's generator."""
    device, vocab = logits.device, logits.shape[1]
    settings = [sampler.sampling for sampler in samplers]
    temperature = torch.tensor([s.temperature for s in settings], device=device).unsqueeze(1)
    probs = (logits / temperature).softmax(dim=-1)
    uniform = torch.cat([torch.rand(1, generator=sampler.generator) for sampler in samplers]).to(device)
    min_p = torch.tensor([s.min_p for s in settings], device=device).unsqueeze(1)
    cut = [0 < s.top_k < vocab or 0 < s.top_p < 1 for s in settings]
    drawn = torch.empty(len(samplers), dtype=torch.long, device=device)
    whole = [i for i, c in enumerate(cut) if not c]
    if whole:  # no top_k or top_p: the whole vocabulary, min_p aside
        at = _index(whole, device)
        kept, floor = _rows(probs, whole), min_p[at]
        if bool((floor > 0).any()):
            kept = kept.masked_fill(kept < floor * kept.max(dim=-1, keepdim=True).values, 0.0)
        drawn[at] = _inverse_cdf(kept, uniform[at])
    narrowed = [i for i, c in enumerate(cut) if c]
    if narrowed:
        at = _index(narrowed, device)
        chosen = [settings[i] for i in narrowed]
        drawn[at] = _draw_among_likeliest(_rows(probs, narrowed), chosen, min_p[at], uniform[at])
    return drawn


def _draw_among_likeliest(
    probs: torch.Tensor, settings: list[Sampling], min_p: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """:func:`_draw` for rows with a ``top_k`` or ``top_p`` cut: among each row's likeliest tokens."""
    device, vocab = probs.device, probs.shape[1]
    top_k = torch.tensor([s.top_k if 0 < s.top_k < vocab else vocab for s in settings], device=device)
    top_p = torch.tensor([s.top_p if 0 < s.top_p < 1 else 1.0 for s in settings], device=device).unsqueeze(1)
    width = min(vocab, max([s.top_k for s in settings if 0 < s.top_k < vocab] + [NUCLEUS_START]))
    while True:
        values, order = probs.topk(width, dim=-1)  # [rows, width], likeliest first
        in_k = torch.arange(width, device=device).unsqueeze(0) < top_k.unsqueeze(1)
        values = values * in_k
        # a top_k row's nucleus is of its k tokens' mass; another's, of the whole vocabulary's (1)
        mass = torch.where(top_k.unsqueeze(1) < vocab, values.sum(dim=-1, keepdim=True), torch.ones_like(top_p))
        before = (values.cumsum(dim=-1) - values) / mass  # the mass of the likelier tokens
        in_p = before < top_p
        open_ended = in_p[:, -1] & (top_k > width) & (top_p.squeeze(1) < 1)  # its nucleus may go on past width
        if width == vocab or not bool(open_ended.any()):
            break
        width = min(vocab, width * 4)
    kept = values * in_p
    if bool((min_p > 0).any()):
        kept = kept.masked_fill(kept < min_p * values[:, :1], 0.0)
    return order.gather(1, _inverse_cdf(kept, uniform).unsqueeze(1)).squeeze(1)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row, the first index whose cumulative weight passes ``uniform`` × the row's total (a
    zero weight is never drawn)."""
    cdf = weights.cumsum(dim=-1)
    target = (uniform * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=weights.shape[1] - 1)


def _logprobs(
    adjusted: torch.Tensor, asked: list[int], samplers: list[RowSampler], picked: torch.Tensor
) -> list[TokenLogprob]:
    """For rows ``asked`` (indices into ``adjusted``), the chosen token's log-probability and each
    row's likeliest alternatives with theirs, from ``log_softmax(adjusted)``."""
    at = _index(asked, adjusted.device)
    logprobs = adjusted.index_select(0, at).log_softmax(dim=-1)
    chosen = logprobs.gather(1, picked[at].unsqueeze(1)).squeeze(1).tolist()
    most = max(samplers[i].sampling.logprobs or 0 for i in asked)
    top_values, top_ids = logprobs.topk(most, dim=-1) if most else (logprobs[:, :0], logprobs[:, :0].long())
    values, ids = top_values.tolist(), top_ids.tolist()
    entries = []
    for row, i in enumerate(asked):
        k = samplers[i].sampling.logprobs or 0
        entries.append((chosen[row], tuple(zip(ids[row][:k], values[row][:k], strict=True))))
    return entries
