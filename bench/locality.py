"""Fact edits that keep everything else: every formulation side by side on the same facts.

    python bench/locality.py --json [--seeds 11 12 13] [--model DIR]
    → {"{method}_efficacy", "{method}_paraphrase", "{method}_same_relation_kept",
       "{method}_other_relation_kept", "{method}_edited_subject_kept", "{method}_neighbourhood",
       "key_statistics", "per_seed", "seeds"}

``method`` is one of ``rome_single`` (20 single edits of random facts, judged one at a time and
pooled), ``rome_seq10`` (10 of them stacked, judged after the tenth), ``memit20`` / ``memit60``
(20 / 60 capitals at once), all with the model's shipped defaults (:mod:`editors.edit_defaults`:
for the toy model, keep prompts for every relation's canonical prompt); ``ref_memit20`` (the
reference code's formulation, :meth:`MemitHyperParams.reference`); the null-space (AlphaEdit)
formulation's ``alpha_rome_seq10``, ``alpha_memit20`` and ``alpha_memit60``; and the defaults
without keep prompts, ``nokeep_rome_single``, ``nokeep_rome_seq10``, ``nokeep_memit20`` and
``nokeep_memit60``. Efficacy and paraphrase are top-1
(the new object is the model's answer at the edit prompt / its held-out phrasings); "kept" is the
share of the facts the unedited model answered right that it still answers right
(:mod:`editors.toyworld.counterfact`): the edited relation's other subjects, every other
relation of every subject (edited ones included), and the edited subjects' own other facts.
Figures are means over the seeds, which the tests do not use; ``per_seed`` has each.

``--sweep [--seeds 21 22]``: issue 38's trade-off instead, :data:`SWEEP`'s rows (the shipped
defaults plus overrides: keep factor, the old numerics, the key mix, the layers) on ROME-10 and
MEMIT-20, each the mean over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editors import Surgeon
from editors.covariance import CovarianceCache, KeyCovariance
from editors.edit_defaults import hparams_from
from editors.memit import MemitHyperParams, compute_memit
from editors.rome import RomeHyperParams, compute_rome
from editors.toyworld import TOY_MODEL_DIR, World, load_toy_model, reference_corpus
from editors.toyworld.counterfact import EditCase, batch_cases, edit_cases
from editors.toyworld.key_stats import key_statistics, subject_keys
from editors.toyworld.memit_eval import judged_edits
from editors.toyworld.rome_eval import sequential_rome

FIGURES = ("efficacy_top1", "paraphrase_top1", "same_relation_kept", "other_relation_kept", "edited_subject_kept")
NAMES = {"efficacy_top1": "efficacy", "paraphrase_top1": "paraphrase"}


def _figures(judged: dict[str, object]) -> dict[str, float | None]:
    out = {NAMES.get(key, key): judged[key] for key in FIGURES}
    out["neighbourhood"] = judged["neighbourhood"]
    return out


def _pooled_singles(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    cases: Sequence[EditCase],
    covariance: KeyCovariance,
    corpus: Sequence[str],
    hparams: RomeHyperParams,
    seed: int,
) -> dict[str, float | None]:
    """Single edits judged one at a time; every figure pooled over them (weighted by n)."""
    rows = []
    for case in cases:
        edit = compute_rome(surgeon, tokenizer, case.request, covariance, corpus, hparams, show_progress=False).edit
        rows.append(judged_edits(surgeon, tokenizer, world, [edit], [case], seed))
    pooled: dict[str, float | None] = {}
    for key in (*FIGURES, "neighbourhood"):
        weights = [row.get(key.replace("_kept", "_n"), 1) if key.endswith("_kept") else 1 for row in rows]
        values = [(row[key], w) for row, w in zip(rows, weights, strict=True) if row[key] is not None and w]
        total = sum(w for _, w in values)
        pooled[NAMES.get(key, key)] = round(sum(v * w for v, w in values) / total, 4) if total else None
    return pooled


#: issue 38's trade-off, on the shipped defaults plus these overrides (``bench/locality.py --sweep``)
OLD_ROME = {"steps": 40, "early_stop_nll": 0.05, "clamp_norm_factor": 0.6}
OLD_MEMIT = {"steps": 40, "early_stop_nll": 0.05, "clamp_norm_factor": 0.75, "covariance_weight": 300.0}
SWEEP: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("rome_seq10", "old numerics, no keep prompts", {**OLD_ROME, "keep_prompts": ()}),
    ("rome_seq10", "old numerics, keep factor 0.25", {**OLD_ROME, "keep_factor": 0.25}),
    ("rome_seq10", "old numerics, keep factor 1", OLD_ROME),
    ("rome_seq10", "keep factor 0.5", {"keep_factor": 0.5}),
    ("rome_seq10", "the defaults (keep factor 1)", {}),
    ("rome_seq10", "keep factor 2", {"keep_factor": 2.0}),
    ("rome_seq10", "essence weight 0.7", {"essence_weight": 0.7}),
    ("rome_seq10", "essence weight 1.0", {"essence_weight": 1.0}),
    ("rome_seq10", "layer 1", {"layer": 1}),
    ("memit20", "old defaults, no keep prompts", {**OLD_MEMIT, "keep_prompts": ()}),
    ("memit20", "old defaults, keep factor 1", OLD_MEMIT),
    ("memit20", "λ 300", {"covariance_weight": 300.0}),
    ("memit20", "the defaults (λ 100, keep factor 1)", {}),
    ("memit20", "keep factor 0.5", {"keep_factor": 0.5}),
    ("memit20", "essence KL ÷ 4, keep factor 4", {"kl_factor": 0.015625, "keep_factor": 4.0}),
    ("memit20", "old defaults, without the prompt's key", {**OLD_MEMIT, "prompt_key": False}),
    ("memit20", "old defaults, without the essence key", {**OLD_MEMIT, "essence_key": False}),
    ("memit20", "old defaults, layers (0, 1)", {**OLD_MEMIT, "layers": (0, 1)}),
    ("memit20", "old defaults, layer 1", {**OLD_MEMIT, "layers": (1,)}),
)


class Bench:
    """The model, its shipped defaults and its covariances, and one method run on one seed."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World, model_dir: Path):
        self.surgeon, self.tokenizer, self.world = Surgeon(model), tokenizer, world
        self.corpus = reference_corpus(model_dir)
        self.rome_hparams = RomeHyperParams(**hparams_from(RomeHyperParams, model_dir, "rome"))
        self.memit_hparams = MemitHyperParams(**hparams_from(MemitHyperParams, model_dir, "memit"))
        self.cache = CovarianceCache()

    def covariance(self, layer: int) -> KeyCovariance:
        return self.cache.get_or_compute(self.surgeon, self.tokenizer, self.corpus, layer)

    def rome_single(self, hparams: RomeHyperParams, seed: int) -> dict[str, float | None]:
        cases, cov = edit_cases(self.world, 20, seed), self.covariance(hparams.layer)
        return _pooled_singles(self.surgeon, self.tokenizer, self.world, cases, cov, self.corpus, hparams, seed)

    def rome_seq10(self, hparams: RomeHyperParams, seed: int) -> dict[str, float | None]:
        cases = edit_cases(self.world, 20, seed)[:10]
        stack = sequential_rome(
            self.surgeon, self.tokenizer, cases, self.covariance(hparams.layer), self.corpus, hparams
        )
        return _figures(judged_edits(self.surgeon, self.tokenizer, self.world, stack, cases, seed))

    def memit(self, n: int, hparams: MemitHyperParams, seed: int) -> dict[str, float | None]:
        cases = batch_cases(self.world, n, seed)
        covariances = {layer: self.covariance(layer) for layer in hparams.layers}
        requests = [case.request for case in cases]
        edits = compute_memit(self.surgeon, self.tokenizer, requests, covariances, self.corpus, hparams).edits
        return _figures(judged_edits(self.surgeon, self.tokenizer, self.world, list(edits), cases, seed))

    def run(self, method: str, overrides: dict[str, object], seed: int) -> dict[str, float | None]:
        if method.startswith("rome"):
            hparams = replace(self.rome_hparams, **overrides)
            return self.rome_single(hparams, seed) if method == "rome_single" else self.rome_seq10(hparams, seed)
        return self.memit(int(method.removeprefix("memit")), replace(self.memit_hparams, **overrides), seed)


def run_seed(bench: Bench, seed: int, alpha: float) -> dict[str, dict[str, float | None]]:
    """Every method's figures on one seed's facts."""
    formulations = {"": {}, "alpha_": {"null_space": alpha}, "nokeep_": {"keep_prompts": ()}}
    results = {}
    for prefix, overrides in formulations.items():
        if prefix != "alpha_":
            results[f"{prefix}rome_single"] = bench.run("rome_single", overrides, seed)
        results[f"{prefix}rome_seq10"] = bench.run("rome_seq10", overrides, seed)
    for n in (20, 60):
        for prefix, overrides in formulations.items():
            results[f"{prefix}memit{n}"] = bench.run(f"memit{n}", overrides, seed)
        if n == 20:
            results["ref_memit20"] = bench.memit(20, MemitHyperParams.reference(), seed)
    return results


def _means(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    means: dict[str, float | None] = {}
    for figure in rows[0]:
        values = [row[figure] for row in rows if row[figure] is not None]
        means[figure] = round(statistics.fmean(values), 4) if values else None
    return means


def sweep(bench: Bench, seeds: list[int]) -> list[dict[str, object]]:
    """:data:`SWEEP`'s rows, each the mean over ``seeds``."""
    return [
        {"method": method, "label": label, **_means([bench.run(method, overrides, seed) for seed in seeds])}
        for method, label, overrides in SWEEP
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--model", default=str(TOY_MODEL_DIR))
    parser.add_argument("--null-space", type=float, default=1e-4, help="the null-space threshold of alpha_*")
    parser.add_argument("--sweep", action="store_true", help="the trade-off rows (SWEEP) instead, on --seeds")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer, world = load_toy_model(Path(args.model))
    bench = Bench(model, tokenizer, world, Path(args.model))
    if args.sweep:
        rows = sweep(bench, args.seeds)
        print(json.dumps({"seeds": args.seeds, "sweep": rows}) if args.json else "\n".join(map(str, rows)))
        return
    stats = {layer: key_statistics(subject_keys(bench.surgeon, tokenizer, world, layer)) for layer in range(2)}
    per_seed = {seed: run_seed(bench, seed, args.null_space) for seed in args.seeds}
    out: dict[str, object] = {}
    for method in per_seed[args.seeds[0]]:
        means = _means([per_seed[seed][method] for seed in args.seeds])
        out.update({f"{method}_{figure}": value for figure, value in means.items()})
    out.update({"key_statistics": stats, "per_seed": per_seed, "seeds": args.seeds, "null_space": args.null_space})
    if args.json:
        print(json.dumps(out))
        return
    methods = list(per_seed[args.seeds[0]])
    columns = ("efficacy", "paraphrase", "same_relation_kept", "other_relation_kept", "edited_subject_kept")
    print(f"key statistics by layer: {stats}")
    print(f"{'method':<18}" + "".join(f"{c:>22}" for c in columns))
    for method in methods:
        cells = [out[f"{method}_{c}"] for c in columns]
        print(f"{method:<18}" + "".join(f"{'—' if v is None else f'{v:.3f}':>22}" for v in cells))


if __name__ == "__main__":
    main()
