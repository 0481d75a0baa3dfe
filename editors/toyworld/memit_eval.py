"""``scalpel memit eval``: N toy-world facts changed at once by MEMIT, side by side with the same
N facts edited by sequential ROME, CounterFact-judged after all N are in, with top-1 locality
(:class:`editors.toyworld.counterfact.LocalityJudge`)."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editors.covariance import CovarianceCache
from editors.edit_defaults import hparams_from
from editors.edits import Edit
from editors.memit import MemitHyperParams, compute_memit
from editors.rome import RomeHyperParams
from editors.surgeon import Surgeon
from editors.toyworld import TOY_MODEL_DIR, World, reference_corpus
from editors.toyworld.counterfact import LocalityJudge, batch_cases, edited_facts, judge, mean_metrics
from editors.toyworld.rome_eval import sequential_rome

KEYS = ("efficacy", "paraphrase", "neighbourhood", "efficacy_top1", "paraphrase_top1")


def judged_edits(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, world: World, edits: list[Edit], cases: list, seed: int
) -> dict[str, object]:
    """CounterFact's and the top-1 metrics of ``cases`` and the top-1 locality with ``edits`` in."""
    kept = LocalityJudge(surgeon.model, tokenizer, world)
    with surgeon.apply(edits):
        means = mean_metrics([judge(surgeon.model, tokenizer, case) for case in cases])
        kept.judge(edited_facts(cases))
    return {**{key: round(means[key], 4) for key in KEYS}, **kept.report(seed)}


def run_memit_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    n_edits: int,
    seed: int = 0,
    hparams: MemitHyperParams | None = None,
    cache_dir: Path | None = None,
    model_dir: Path = TOY_MODEL_DIR,
) -> dict[str, object]:
    """MEMIT's and sequential ROME's metrics after ``n_edits`` facts, and the seconds each took;
    both editors start from ``model_dir``'s shipped defaults (:mod:`editors.edit_defaults`)."""
    surgeon = Surgeon(model)
    hparams = hparams or MemitHyperParams(**hparams_from(MemitHyperParams, model_dir, "memit"))
    hparams = hparams.validated(surgeon.dims.n_layers)  # before any work
    corpus = reference_corpus(model_dir)
    cache = CovarianceCache(cache_dir)
    rome_hparams = RomeHyperParams(**hparams_from(RomeHyperParams, model_dir, "rome"))
    layers = sorted({*hparams.layers, rome_hparams.layer})
    covariances = {layer: cache.get_or_compute(surgeon, tokenizer, corpus, layer) for layer in layers}
    cases = batch_cases(world, n_edits, seed)

    memit = compute_memit(surgeon, tokenizer, [case.request for case in cases], covariances, corpus, hparams)
    result: dict[str, object] = {**judged_edits(surgeon, tokenizer, world, list(memit.edits), cases, seed)}
    result["seconds"] = round(memit.seconds, 2)

    started = time.perf_counter()
    stack = sequential_rome(surgeon, tokenizer, cases, covariances[rome_hparams.layer], corpus, rome_hparams)
    seconds = time.perf_counter() - started
    result["sequential_rome"] = {
        **judged_edits(surgeon, tokenizer, world, stack, cases, seed),
        "seconds": round(seconds, 2),
    }
    result["edits"] = n_edits
    result["layers"] = list(hparams.layers)
    return result
