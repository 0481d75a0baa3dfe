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


def run_seed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    world: World,
    model_dir: Path,
    seed: int,
    alpha: float,
) -> dict[str, dict[str, float | None]]:
    """Every method's figures on one seed's facts."""
    surgeon = Surgeon(model)
    corpus = reference_corpus(model_dir)
    rome = RomeHyperParams(**hparams_from(RomeHyperParams, model_dir, "rome"))
    memit = MemitHyperParams(**hparams_from(MemitHyperParams, model_dir, "memit"))
    cache = CovarianceCache()
    layers = sorted({rome.layer, *memit.layers})
    covariances = {layer: cache.get_or_compute(surgeon, tokenizer, corpus, layer) for layer in layers}
    formulations = {  # prefix: (ROME, MEMIT) hyper-parameters
        "": (rome, memit),
        "alpha_": (replace(rome, null_space=alpha), replace(memit, null_space=alpha)),
        "nokeep_": (replace(rome, keep_prompts=()), replace(memit, keep_prompts=())),
    }
    singles = edit_cases(world, 20, seed)
    results = {}
    for prefix, (rome_hparams, _) in formulations.items():
        if prefix != "alpha_":
            cov = covariances[rome.layer]
            pooled = _pooled_singles(surgeon, tokenizer, world, singles, cov, corpus, rome_hparams, seed)
            results[f"{prefix}rome_single"] = pooled
        cases = singles[:10]
        stack = sequential_rome(surgeon, tokenizer, cases, covariances[rome.layer], corpus, rome_hparams)
        results[f"{prefix}rome_seq10"] = _figures(judged_edits(surgeon, tokenizer, world, stack, cases, seed))
    for n in (20, 60):
        cases = batch_cases(world, n, seed)
        requests = [case.request for case in cases]
        variants = [(prefix, pair[1]) for prefix, pair in formulations.items()]
        variants += [("ref_", MemitHyperParams.reference())] if n == 20 else []
        for prefix, hparams in variants:
            edits = compute_memit(surgeon, tokenizer, requests, covariances, corpus, hparams).edits
            results[f"{prefix}memit{n}"] = _figures(judged_edits(surgeon, tokenizer, world, list(edits), cases, seed))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--model", default=str(TOY_MODEL_DIR))
    parser.add_argument("--null-space", type=float, default=1e-4, help="the null-space threshold of alpha_*")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer, world = load_toy_model(Path(args.model))
    surgeon = Surgeon(model)
    stats = {layer: key_statistics(subject_keys(surgeon, tokenizer, world, layer)) for layer in range(2)}
    model_dir = Path(args.model)
    per_seed = {seed: run_seed(model, tokenizer, world, model_dir, seed, args.null_space) for seed in args.seeds}
    out: dict[str, object] = {}
    for method in per_seed[args.seeds[0]]:
        for figure in per_seed[args.seeds[0]][method]:
            values = [per_seed[s][method][figure] for s in args.seeds if per_seed[s][method][figure] is not None]
            out[f"{method}_{figure}"] = round(statistics.fmean(values), 4) if values else None
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
