"""Sparse autoencoders on the toy model (issue 33): training, the splice, a clamp in the batched
decode step, and the sentiment feature, in one run.

    python bench/features.py --json
    → {"explained_variance", "l0", "ce_loss_recovered", "dead_fraction", "train_tokens_per_s",
       "peak_rss_mib_small_budget", "peak_rss_mib", "splice_max_abs_diff",
       "feature_clamp_decode_overhead", "sentiment_feature_found", "ours_over_saelens_ce_recovered",
       "train_tokens_per_s_over_saelens", …}

Training: a TopK SAE (1024 features, k = 16) at ``blocks.1.hook_resid_pre`` on the toy model's
reference corpus, ``--tokens`` of activations streamed through the shuffle buffer, metrics on the
held-out tenth. Memory: the process's peak resident size after training on a budget of an eighth
of ``--tokens`` and then on all of it (training happens in children, one per budget, so each peak
is its own): equal peaks mean memory is bounded by the buffer, not the budget. The splice: the
largest logit difference with the SAE spliced in with its error term, over the toy's reference
texts. The clamp: one 64-row decode step on the toy model (one new token over a 32-token KV
cache) with a different feature clamp on every row, over the plain step (medians, interleaved):
``feature_clamp_decode_overhead`` for a JumpReLU SAE (the toy SAE's weights with thresholds of
0), whose rows fuse into one op; ``_topk`` for the toy SAE itself, whose rows run one by one.
SAELens side by side (:func:`side_by_side`; needs the ``saelens`` extra, ``pip install -e
'.[saelens]'``, else ``saelens`` says it did not run): half of ``--tokens`` of activations cached
once, then fitted by ours and by SAELens's ``SAETrainer`` (its TopK SAE, default options), timed
over the fit alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors import SparseAutoencoder, Surgeon, load_sae  # noqa: E402
from editors.sae_features import contrast_features  # noqa: E402
from editors.sae_training import SaeTrainConfig, activation_batches, fit_sae, sae_metrics, train_sae  # noqa: E402
from editors.toyworld import TOY_SAE_DIR, TOY_SAE_SITE, load_toy_model, reference_corpus  # noqa: E402
from editors.toyworld.evaluate import sentiment_pairs  # noqa: E402

ROWS, CONTEXT, REPEATS = 64, 32, 200


def train(tokens: int) -> dict[str, float]:
    """Train once (in this process) and report its metrics, speed and peak memory."""
    model, tokenizer, _ = load_toy_model()
    config = SaeTrainConfig(site=TOY_SAE_SITE, d_sae=1024, k=16, tokens=tokens)
    started = time.perf_counter()
    trained = train_sae(Surgeon(model), tokenizer, reference_corpus(), config)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**trained.metrics, "train_tokens_per_s": round(tokens / seconds), "peak_rss_mib": round(peak)}


def side_by_side(tokens: int, lrs: tuple[float, ...] = (1e-3,), seeds: tuple[int, ...] = (0,)) -> dict[str, float]:
    """Ours and SAELens's trainer on the same cached activations (the toy's site, 1,024 TopK
    features, k = 16 for both: L0 matched), the same batches in the same order, the same Adam
    learning rate; both scored by :func:`sae_metrics` on the held-out tenth of the corpus. The
    headline keys are the first learning rate and seed; every other pair adds ``…_lr{lr}_seed{seed}``
    keys (the ``--sweep`` table in BENCHMARKS.md)."""

    model, tokenizer, _ = load_toy_model()
    surgeon, texts = Surgeon(model), reference_corpus()
    train_texts, eval_texts = texts[: -len(texts) // 10], texts[-len(texts) // 10 :]
    base = SaeTrainConfig(site=TOY_SAE_SITE, d_sae=1024, k=16, tokens=tokens)
    torch.manual_seed(base.seed)
    stream = activation_batches(surgeon, tokenizer, train_texts, base)
    cached = [next(stream) for _ in range(base.steps)]
    result: dict[str, float] = {"side_by_side_tokens": base.steps * base.batch_tokens}
    for lr in lrs:
        for seed in seeds:
            config = dataclasses.replace(base, lr=lr, seed=seed)
            pair = _fit_both(surgeon, tokenizer, cached, eval_texts, config)
            headline = lr == lrs[0] and seed == seeds[0]
            result |= pair if headline else {f"{key}_lr{lr:g}_seed{seed}": value for key, value in pair.items()}
    return result


def _fit_both(surgeon: Surgeon, tokenizer, cached: list[torch.Tensor], eval_texts, config: SaeTrainConfig):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(config.seed)
    started = time.perf_counter()
    ours = fit_sae(iter(cached), config, TOY_SAE_SITE)
    ours_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)
    theirs = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=cached[0].shape[1], d_sae=config.d_sae, k=config.k))
    trainer = SAETrainer(
        SAETrainerConfig(
            total_training_samples=config.steps * config.batch_tokens,
            train_batch_size_samples=config.batch_tokens,
            lr=config.lr,
            lr_end=config.lr,  # constant, as ours
        ),
        theirs,
        iter(cached),
    )
    started = time.perf_counter()
    trainer.fit()
    theirs_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        theirs.save_inference_model(folder)
        config_file = Path(folder) / "cfg.json"
        written = json.loads(config_file.read_text())
        config_file.write_text(json.dumps(written | {"metadata": {"hook_name": TOY_SAE_SITE}}))
        loaded = load_sae(folder)
    ours_metrics = sae_metrics(surgeon, tokenizer, ours, eval_texts)
    theirs_metrics = sae_metrics(surgeon, tokenizer, loaded, eval_texts)
    return {
        "ours_ce_loss_recovered": ours_metrics["ce_loss_recovered"],
        "saelens_ce_loss_recovered": theirs_metrics["ce_loss_recovered"],
        "ours_explained_variance": ours_metrics["explained_variance"],
        "saelens_explained_variance": theirs_metrics["explained_variance"],
        "ours_l0": ours_metrics["l0"],
        "saelens_l0": theirs_metrics["l0"],
        "ours_dead_fraction": ours_metrics["dead_fraction"],
        "saelens_dead_fraction": theirs_metrics["dead_fraction"],
        "ours_over_saelens_ce_recovered": round(
            ours_metrics["ce_loss_recovered"] / theirs_metrics["ce_loss_recovered"], 3
        ),
        "train_tokens_per_s_over_saelens": round(theirs_seconds / ours_seconds, 3),
    }


def in_child(tokens: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--train-only", str(tokens)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@torch.inference_mode()
def splice_max_abs_diff(surgeon: Surgeon, tokenizer, sae) -> float:
    texts = reference_corpus()[:64]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    plain = surgeon.model(**encoded).logits
    spliced = surgeon.run_with_hooks(**encoded, fwd_hooks=[(sae.site, sae.splice)]).logits
    mask = encoded["attention_mask"].bool()
    return float((plain - spliced).abs()[mask].max())


@torch.inference_mode()
def clamp_decode_overheads(surgeon: Surgeon, tokenizer, saes: dict[str, SparseAutoencoder]) -> dict[str, float]:
    """Per SAE: the median 64-row decode step with a different clamp per row over the plain step
    (one new token over a ``CONTEXT``-token KV cache, cropped back after each step)."""
    model = surgeon.model
    ids = torch.randint(5, tokenizer.vocab_size, (ROWS, CONTEXT), generator=torch.Generator().manual_seed(0))
    cache = model(input_ids=ids, use_cache=True).cache
    step = ids[:, -1:]
    cases = {"plain": None} | {
        name: surgeon.rows([surgeon.compile([sae.clamp([row % sae.d_sae], 3.0)]) for row in range(ROWS)])
        for name, sae in saes.items()
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(REPEATS):
        for name, rows in cases.items():
            started = time.perf_counter()
            if rows is None:
                model(input_ids=step, cache=cache, use_cache=True)
            else:
                with surgeon.apply_rows(rows):
                    model(input_ids=step, cache=cache, use_cache=True)
            times[name].append(time.perf_counter() - started)
            cache.crop(-1)
    plain = statistics.median(times["plain"])
    return {name: round(statistics.median(times[name]) / plain, 3) for name in saes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--train-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--sweep", action="store_true", help="SAELens side by side at lr 1e-3, 5e-3, 1e-2 and seeds 0-2 as well"
    )
    args = parser.parse_args()
    if args.train_only:
        print(json.dumps(train(args.train_only)))
        return
    torch.manual_seed(0)
    small, full = in_child(args.tokens // 8), in_child(args.tokens)
    model, tokenizer, world = load_toy_model()
    surgeon, sae = Surgeon(model), load_sae(TOY_SAE_DIR)
    ranked = contrast_features(surgeon, tokenizer, sae, sentiment_pairs(world))
    # the toy SAE is TopK (its clamp needs the whole encoder); read as JumpReLU with thresholds of
    # 0 its weights make an SAE whose clamp reads only the clamped feature's encoder column
    as_jumprelu = dataclasses.replace(sae, architecture="jumprelu", k=None, threshold=torch.zeros(sae.d_sae))
    saes = {"feature_clamp_decode_overhead": as_jumprelu, "feature_clamp_decode_overhead_topk": sae}
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        saelens: dict[str, float | str] = {"saelens": "not run: pip install -e '.[saelens]' (sae-lens)"}
    else:
        sweep = {"lrs": (1e-3, 5e-3, 1e-2), "seeds": (0, 1, 2)} if args.sweep else {}
        saelens = side_by_side(args.tokens // 2, **sweep)
    result = {
        **{k: full[k] for k in ("explained_variance", "l0", "ce_loss_recovered", "dead_fraction")},
        "train_tokens": args.tokens,
        "train_tokens_per_s": full["train_tokens_per_s"],
        "peak_rss_mib_small_budget": small["peak_rss_mib"],
        "peak_rss_mib": full["peak_rss_mib"],
        "splice_max_abs_diff": splice_max_abs_diff(surgeon, tokenizer, sae),
        **clamp_decode_overheads(surgeon, tokenizer, saes),
        "sentiment_feature_found": int(ranked[0].difference > 1.0 and ranked[0].negative_mean == 0.0),
        **saelens,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k:<30} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
