"""``scalpel rome eval``: ROME on random toy-world facts, single and sequential, CounterFact-judged
and with top-1 locality (the share of the facts the unedited model answered right that it still
answers right: :class:`editors.toyworld.counterfact.LocalityJudge`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editors.covariance import CovarianceCache, KeyCovariance, Progress
from editors.edit_defaults import hparams_from
from editors.edits import Edit
from editors.rome import RomeHyperParams, compute_rome
from editors.surgeon import Surgeon
from editors.toyworld import TOY_MODEL_DIR, World, reference_corpus
from editors.toyworld.counterfact import EditCase, LocalityJudge, edit_cases, edited_facts, judge, mean_metrics


def _apply_and_judge(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    edits: list[Edit],
    cases: list[EditCase],
    kept: LocalityJudge,
) -> list[dict[str, float]]:
    with surgeon.apply(edits):
        kept.judge(edited_facts(cases))
        return [judge(surgeon.model, tokenizer, case) for case in cases]


def sequential_rome(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    cases: Sequence[EditCase],
    covariance: torch.Tensor | KeyCovariance,
    corpus: Sequence[str],
    hparams: RomeHyperParams,
    on_edit: Callable[[int], None] | None = None,
) -> list[Edit]:
    """ROME edits for ``cases`` one after another, each on the model as the earlier ones left it
    and protecting their keys."""
    stack: list[Edit] = []
    keys: list[torch.Tensor] = []
    for i, case in enumerate(cases):
        protect = torch.stack(keys) if keys else None
        result = compute_rome(
            surgeon, tokenizer, case.request, covariance, corpus, hparams, stack, protect, show_progress=False
        )
        stack.append(result.edit)
        keys.append(result.key)
        if on_edit is not None:
            on_edit(i + 1)
    return stack


def run_rome_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    n_edits: int = 20,
    n_sequential: int = 10,
    seed: int = 0,
    hparams: RomeHyperParams | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    on_edit: Callable[[int, int], None] | None = None,
    model_dir: Path = TOY_MODEL_DIR,
) -> dict[str, object]:
    """Mean CounterFact metrics and top-1 locality of ``n_edits`` single edits (locality pooled
    over them) and of ``n_sequential`` stacked ones (``hparams``: ``model_dir``'s shipped defaults)."""
    surgeon = Surgeon(model)
    hparams = hparams or RomeHyperParams(**hparams_from(RomeHyperParams, model_dir, "rome"))
    hparams = hparams.validated(surgeon.dims.n_layers)  # before any work
    corpus = reference_corpus(model_dir)
    covariance = CovarianceCache(cache_dir).get_or_compute(surgeon, tokenizer, corpus, hparams.layer, progress)
    cases = edit_cases(world, max(n_edits, n_sequential), seed)
    unedited = [judge(model, tokenizer, case) for case in cases[:n_edits]]

    singles, seconds, single_kept = [], [], LocalityJudge(model, tokenizer, world)
    for i, case in enumerate(cases[:n_edits]):
        result = compute_rome(surgeon, tokenizer, case.request, covariance, corpus, hparams)
        seconds.append(result.seconds)
        singles += _apply_and_judge(surgeon, tokenizer, [result.edit], [case], single_kept)
        if on_edit is not None:
            on_edit(i + 1, n_edits + n_sequential)

    def stacked(done: int) -> None:
        if on_edit is not None:
            on_edit(n_edits + done, n_edits + n_sequential)

    stack = sequential_rome(surgeon, tokenizer, cases[:n_sequential], covariance, corpus, hparams, stacked)
    stacked_kept = LocalityJudge(model, tokenizer, world)
    after_all = _apply_and_judge(surgeon, tokenizer, stack, cases[:n_sequential], stacked_kept)

    summary: dict[str, object] = {**mean_metrics(singles), **single_kept.report(seed)}
    summary["seconds_per_edit_median"] = statistics.median(seconds)
    summary["unedited_efficacy"] = mean_metrics(unedited)["efficacy"]
    summary["sequential"] = {
        **mean_metrics(after_all),
        **stacked_kept.report(seed),
        "per_edit_efficacy": [row["efficacy"] for row in after_all],
    }
    summary["edits"] = n_edits
    summary["layer"] = hparams.layer
    return summary
