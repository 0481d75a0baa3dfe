"""The gate on the toy model: one instance of every check kind against a good ROME edit, an
induction-head ablation and a steering vector at an absurd scale, while 8 greedy streams are served.

    python bench/checks.py --json
    → {"kinds", "good_edit_passed", "bad_edits_failed", "ci_coverage",
       "inter_token_p99_ms_idle", "inter_token_p99_ms_during_run", "inter_token_p99_ratio_during_run",
       "inline_inter_token_p99_ms_idle", …, "inline_inter_token_p99_ratio_during_run",
       "run_seconds": {...}, "inline_run_seconds": {...}}

The streams run on an in-process ModelHost (each stream: 32 greedy tokens, then the next prompt)
and the checks on the same host, in the two ways a server runs them, one after the other:

- the default (unprefixed keys), as `scalpel serve` runs: the streams' scheduler in the model's
  engine process, the checks on the serving process's own scheduler over the same weights, and
  the forwards' intra-op threads as the server sets them (one per core but one);
- ``inline_``: `--no-engine-process`, streams and checks on one scheduler, whose background jobs
  then sit between two of the streams' decode steps.

The inter-token figure is the p99 gap between consecutive tokens of a stream (`--stream-interval`
is automatic: one token per message at 8 rows), first while nothing else runs, then while the
three check runs execute one after another. ``ci_coverage`` is the share of 1,000 simulated
samples (Bernoulli p = 0.3, n = 150) whose 95% interval holds the true value.
Target (issue 9): ``inter_token_p99_ratio_during_run`` ≤ 2.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors import HeadAblation, Steering, Surgeon  # noqa: E402
from editors.covariance import key_covariance  # noqa: E402
from editors.rome import compute_rome  # noqa: E402
from editors.steering import derive_steering  # noqa: E402
from editors.toyworld import TOY_MODEL_DIR, World, load_toy_model, reference_corpus  # noqa: E402
from editors.toyworld.counterfact import edit_cases  # noqa: E402
from editors.toyworld.evaluate import induction_sequences, sentiment_pairs  # noqa: E402
from service.checks import KINDS, CheckRunner, Suite, default_toy_suite  # noqa: E402
from service.checks.stats import mean  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.engine.intra_op import forward_threads  # noqa: E402
from service.engine.scheduler import Token  # noqa: E402
from service.hosting import ModelHost  # noqa: E402
from service.registry import Registry  # noqa: E402

STREAMS = 8


def every_kind_suite(world) -> dict:
    """The toy default suite plus one instance of each kind it lacks."""
    suite = default_toy_suite(world, reference_corpus())
    rng = random.Random(1)
    items = []
    for sequence in induction_sequences(world, n=48, length=8, seed=777):
        k = rng.randrange(2, 8)
        wrong = rng.sample([s for s in world.symbols if s not in sequence], 3)
        items.append({"prompt": " ".join(sequence + sequence[:k]), "choices": [sequence[k], *wrong], "answer": 0})
    symbols = world.symbols
    suite["checks"] += [
        {"kind": "choice_task", "name": "induction_choice", "params": {"items": items, "max_drop": 0.1}},
        {
            "kind": "behaviour",
            "name": "copying_mft",
            "params": {
                "test": "mft",
                "template": "{a} {b} {c} {d} {a} {b} {c}",
                "slots": {"a": symbols[:2], "b": symbols[2:4], "c": symbols[4:6], "d": symbols[6:8]},
                "expect": {"starts_with": "{d}"},
                "max_tokens": 1,
            },
        },
    ]
    return suite


def coverage(trials: int = 1000) -> float:
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for trial in range(trials):
        estimate = mean((torch.rand(150, generator=generator) < 0.3).double(), 1000, seed=trial)
        covered += estimate.low <= 0.3 <= estimate.high
    return covered / trials


class Streams:
    """``STREAMS`` threads generating greedily on the host; records the gaps between tokens."""

    def __init__(self, host: ModelHost, prompts: list[str]) -> None:
        self.host, self.prompts = host, prompts
        self.gaps: list[float] = []
        self.recording = False
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._stream, args=(i,)) for i in range(STREAMS)]
        for thread in self.threads:
            thread.start()

    def _stream(self, number: int) -> None:
        turn = 0
        while not self.stop.is_set():
            last = None
            prompt = self.prompts[(number + turn * STREAMS) % len(self.prompts)]
            for event in self.host.generate(0, prompt, max_tokens=32):
                if isinstance(event, Token):
                    now = time.perf_counter()
                    if last is not None and self.recording:
                        self.gaps.extend([(now - last) / len(event.token_ids)] * len(event.token_ids))
                    last = now
            turn += 1

    def p99_ms(self) -> float:
        ordered = sorted(self.gaps)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def measure(
    world: World, candidates: dict[str, list], engine_process: bool, idle_seconds: float
) -> tuple[float, float, dict[str, float], dict[str, bool]]:
    """(idle p99 ms, p99 ms during the runs, each run's seconds, each run's verdict) on a fresh host."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'registry.db'}"
        upgrade("head", url)
        threads = forward_threads(torch.get_num_threads(), engine_process)  # as the server sets them
        host = ModelHost(
            "toy", str(TOY_MODEL_DIR), Registry(url), engine_process=engine_process, intra_op_threads=threads
        )
        spec = every_kind_suite(world)
        host.registry.set_suite("toy", spec, "bench")
        suite = Suite.from_spec(spec, host.model_dir)
        versions = {}
        for label, edits in candidates.items():
            ids = [host.registry.create_edit("toy", edit, "bench").id for edit in edits]
            versions[label] = host.registry.create_version("toy", 0, "bench", append=ids).number
        rng = random.Random(0)
        prompts = [" ".join((s := rng.sample(world.symbols, 12)) + s) for _ in range(64)]
        streams = Streams(host, prompts)
        time.sleep(1.0)  # warm
        streams.recording = True
        time.sleep(idle_seconds)
        streams.recording = False
        idle = streams.p99_ms()
        streams.gaps.clear()
        streams.recording = True
        outcomes, seconds = {}, {}
        for label, number in versions.items():
            started = time.perf_counter()
            run = CheckRunner(host, host.registry).run(suite, number)
            seconds[label] = round(time.perf_counter() - started, 2)
            outcomes[label] = all(result.passed for result in run)
            failed = [r.name for r in run if not r.passed]
            print(f"{label}: {'passed' if outcomes[label] else 'failed'} {failed}", file=sys.stderr)
        streams.recording = False
        during = streams.p99_ms()
        streams.close()
        host.close()
    return idle, during, seconds, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    case = edit_cases(world, 1, seed=4)[0]
    covariance = key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]
    rome = compute_rome(surgeon, tokenizer, case.request, covariance, reference_corpus()).edit
    steer = derive_steering(surgeon, tokenizer, sentiment_pairs(world), layer=1)
    candidates = {
        "good_rome": [rome],
        "induction_ablation": [HeadAblation(layer=1, heads=(0,))],
        "absurd_steering": [Steering(site=steer.site, vector=steer.vector, scale=1000.0)],
    }
    results: dict = {"kinds": len(KINDS)}
    verdicts: dict[str, bool] = {}
    for prefix, engine_process in (("", True), ("inline_", False)):
        idle, during, seconds, outcomes = measure(world, candidates, engine_process, args.idle_seconds)
        verdicts = verdicts or outcomes  # (the same checks on the same versions: the same verdicts)
        results[f"{prefix}inter_token_p99_ms_idle"] = round(idle, 2)
        results[f"{prefix}inter_token_p99_ms_during_run"] = round(during, 2)
        results[f"{prefix}inter_token_p99_ratio_during_run"] = round(during / idle, 3)
        results[f"{prefix}run_seconds"] = seconds
    results["good_edit_passed"] = int(verdicts["good_rome"])
    results["bad_edits_failed"] = int(not verdicts["induction_ablation"]) + int(not verdicts["absurd_steering"])
    results["ci_coverage"] = coverage()
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:<34} {value}")


if __name__ == "__main__":
    main()
