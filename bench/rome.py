"""Speed of fact surgery on the toy model: one ROME edit (key covariance cached) and one causal trace.

    python bench/rome.py --json   # {"rome_seconds_per_edit_median": …, "causal_trace_seconds_median": …, …}

Targets (issue 3): ≤ 5 s per edit, ≤ 10 s per trace, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from editors import Surgeon  # noqa: E402
from editors.covariance import CovarianceCache  # noqa: E402
from editors.patching import causal_trace  # noqa: E402
from editors.rome import RomeHyperParams, compute_rome  # noqa: E402
from editors.toyworld import load_toy_model, reference_corpus  # noqa: E402
from editors.toyworld.counterfact import edit_cases  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--traces", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    corpus = reference_corpus()
    hparams = RomeHyperParams()
    with tempfile.TemporaryDirectory() as tmp:
        cache = CovarianceCache(Path(tmp))
        started = time.perf_counter()
        covariance = cache.get_or_compute(surgeon, tokenizer, corpus, hparams.layer)
        covariance_seconds = time.perf_counter() - started
        started = time.perf_counter()
        cache.get_or_compute(surgeon, tokenizer, corpus, hparams.layer)
        cached_seconds = time.perf_counter() - started

    cases = edit_cases(world, args.edits, seed=0)
    edit_seconds = [compute_rome(surgeon, tokenizer, c.request, covariance, corpus, hparams).seconds for c in cases]
    trace_seconds = []
    for case in cases[: args.traces]:
        started = time.perf_counter()
        causal_trace(surgeon, tokenizer, case.request.text, case.request.subject)
        trace_seconds.append(time.perf_counter() - started)

    result = {
        "rome_seconds_per_edit_median": statistics.median(edit_seconds),
        "rome_seconds_per_edit_max": max(edit_seconds),
        "causal_trace_seconds_median": statistics.median(trace_seconds),
        "covariance_seconds_first": covariance_seconds,
        "covariance_seconds_cached": cached_seconds,
        "covariance_corpus_texts": len(corpus),
    }
    report(result, args.json, digits=4)


if __name__ == "__main__":
    main()
