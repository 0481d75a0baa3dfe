"""What a check can ask of the model under test: paired measurements of a candidate version
against a reference version, computed in batched background jobs of the model's scheduler (so
serving goes on between them) and reduced to small per-example tensors at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from editors import Edit
from service.checks.edit_facts import fact_edits
from service.defaults import LOGIT_BUDGET
from service.registry import InvalidArgument, NotFound, Registry

if TYPE_CHECKING:
    from service.hosting import ModelHost

MAX_TEXT_TOKENS = 256
#: Texts per background job: each job holds the model between two decode steps of the served
#: streams, so it must stay short (bench/checks.py measures the streams' p99 gap during a run: on
#: 2 CPU cores, 4 texts made 22-25 ms gaps against 7 ms idle, 2 texts 16.5-17.5 ms).
TEXTS_PER_JOB = 2


@dataclass(frozen=True)
class TokenStats:
    """Per text of a corpus, candidate against reference, over the positions that predict a token."""

    texts: list[str]
    tokens: torch.Tensor  # positions per text
    kl_sum: torch.Tensor  # sum over positions of KL(reference ‖ candidate)
    kl_max: torch.Tensor
    agree: torch.Tensor  # positions whose top-1 token is the same
    nll_increase: torch.Tensor  # sum over positions of NLL(candidate) − NLL(reference) of the actual next token


class CheckContext:
    """One run's view of the model: the candidate version, its edits, and reference versions."""

    def __init__(self, host: ModelHost, registry: Registry, version: int, seed: int, resamples: int) -> None:
        self.host = host
        self.registry = registry
        self.version = version
        self.edits: list[Edit] = list(host.stack(version).edits)
        self.seed = seed
        self.resamples = resamples
        self._stats: dict[tuple[int, tuple[str, ...]], TokenStats] = {}
        self._references: dict[str, tuple[int, str]] = {}

    def reference(self, against: str) -> tuple[int, str]:
        """The version a comparison runs against and how to say so: ``base`` (version 0) or an
        alias's version. An alias serving a version that never passed its checks is not a yardstick:
        the last version it served that did pass is used instead (the base if none), and said."""
        if against in self._references:
            return self._references[against]
        if against == "base":
            found = (0, "base (version 0)")
        else:
            model = self.host.name
            try:
                served = self.registry.get_alias(model, against).version
            except NotFound as exc:
                raise InvalidArgument(f"reference alias {against!r} of model {model!r} does not exist") from exc
            if self.registry.ever_passed(model, served):
                found = (served, f"{against} (version {served})")
            else:
                fallback = self._last_passed(against, served)
                found = (
                    fallback,
                    f"{against} serves version {served}, which never passed its checks: compared against "
                    f"version {fallback}, the last version it served that passed"
                    + (" (none did: the base)" if fallback == 0 else ""),
                )
        self._references[against] = found
        return found

    def _last_passed(self, alias: str, served: int) -> int:
        moves = self.registry.alias_history(self.host.name, alias, page_size=1000).items
        for move in moves:  # newest first
            for version in (move.to_version, move.from_version):
                if version is not None and version != served and self.registry.ever_passed(self.host.name, version):
                    return version
        return 0

    # -- measurements -----------------------------------------------------------------------------
    def token_stats(self, reference: int, texts: list[str]) -> TokenStats:
        """Per-text statistics of the candidate against ``reference`` on ``texts`` (cached per run)."""
        key = (reference, tuple(texts))
        if key not in self._stats:
            self._stats[key] = self._measure_texts(reference, texts)
        return self._stats[key]

    def _measure_texts(self, reference: int, texts: list[str]) -> TokenStats:
        host = self.host
        encoded = host.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=min(MAX_TEXT_TOKENS, host.context_length),
        )
        width, vocab = encoded["input_ids"].shape[1], host.model.config.vocab_size
        chunk = max(1, min(TEXTS_PER_JOB, LOGIT_BUDGET // (2 * width * vocab)))
        stacks = (host.stack(self.version), host.stack(reference))
        parts: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(texts), chunk):
            ids = encoded["input_ids"][start : start + chunk]
            mask = encoded["attention_mask"][start : start + chunk]
            rows = host.surgeon.rows([stacks[0]] * len(ids) + [stacks[1]] * len(ids))

            def run(ids: torch.Tensor = ids, mask: torch.Tensor = mask, rows: Any = rows) -> tuple[torch.Tensor, ...]:
                both_ids, both_mask = ids.repeat(2, 1).to(host.device), mask.repeat(2, 1).to(host.device)
                with host.surgeon.apply_rows(rows):
                    logits = host.model(input_ids=both_ids, attention_mask=both_mask).logits[:, :-1].float()
                candidate, ref = logits.log_softmax(dim=-1).split(len(ids))
                valid = (mask[:, 1:] * mask[:, :-1]).bool().to(host.device)
                target = both_ids[: len(ids), 1:].unsqueeze(-1)
                kl = (ref.exp() * (ref - candidate)).sum(-1).masked_fill(~valid, 0)
                agree = (candidate.argmax(-1) == ref.argmax(-1)) & valid
                increase = (ref.gather(-1, target) - candidate.gather(-1, target)).squeeze(-1).masked_fill(~valid, 0)
                return tuple(
                    t.cpu() for t in (valid.sum(1), kl.sum(1), kl.max(1).values, agree.sum(1), increase.sum(1))
                )

            parts.append(host.forward(run, background=True))
        columns = [torch.cat(column) for column in zip(*parts, strict=True)]
        return TokenStats(texts, *columns)

    def logprob_sums(self, versions: list[int], pairs: list[tuple[str, str]]) -> torch.Tensor:
        """``[len(versions), len(pairs)]`` log-likelihoods of continuations (see ModelHost.logprob_sums)."""
        return self.host.logprob_sums(versions, pairs, background=True)

    def complete(self, version: int, prompts: list[str], max_tokens: int) -> list[str]:
        """Greedy continuations, batched as rows of the running batch."""
        return self.host.complete(version, prompts, max_tokens)

    def targeted_subjects(self) -> set[str]:
        """Subjects the candidate's fact edits (ROME or MEMIT) rewrite: texts about them are meant to change."""
        return {fact.subject for fact in fact_edits(self.edits)}
