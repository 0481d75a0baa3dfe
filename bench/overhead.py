"""Per-call overhead of Scalpel's dispatcher, side by side with the plain model and peer libraries.

Two regimes:

- ``prefill``: one forward of 64 tokens through a randomly initialised GPT-2-small-shaped model
  (124M parameters);
- ``decode``: one new token with a KV cache on the toy model (per-call overhead dominates);
- ``batched``: one decode step of 64 rows on the toy model, as the serving engine runs it
  (per-row stacks through ``Surgeon.rows``): ``<edit>`` has every row under the edit, and
  ``<edit>_half_rows`` half the rows under it and half on the base (the gathered path).

Cases (each reported as median time / median time of the plain model, measured interleaved in
one process so machine drift cancels): ``empty_stack`` (Surgeon attached, empty stack),
``empty_stack_hooks_live`` (empty stack while another live stack keeps hooks installed at the
edited points, the serving situation), ``steering`` (resid_post of one layer), ``head_ablation``
(zero, one head), ``low_rank`` (rank one on one MLP output projection); then the same
interventions through nnsight (``peer_nnsight_*``) and steering-vectors
(``peer_steering_vectors_steering``). steering-vectors needs transformers<5, so it runs in its
own environment (``bench/.peers/venv``, created on first use from ``bench/peers-constraints.txt``)
next to a plain model and our steering case measured in that same process
(``ours_tf4_steering``).

    python bench/overhead.py --json     # one JSON object of ratios, keys <regime>_<case>
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors import HeadAblation, LowRank, Steering, Surgeon  # noqa: E402
from editors.toyworld import TOY_MODEL_DIR  # noqa: E402

PEER_VENV = ROOT / "bench" / ".peers" / "venv"
LAYER = 1
BATCHED_ROWS = 64
CACHE_ARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


@dataclass
class Case:
    """A timed call; ``setup``/``teardown`` (untimed) bracket a block of calls, ``after`` (untimed) each call."""

    run: Callable[[], object]
    after: Callable[[], None]
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None


def measure(cases: dict[str, Case], blocks: int, calls: int = 10) -> dict[str, float]:
    """Median seconds per call of each case.

    Cases run in blocks of ``calls`` consecutive calls (after one untimed warm-up call), one block
    of every case per round with the order rotated, so drift of the machine cancels and every
    timed call is in the same situation: preceded by a call of its own case.
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(blocks):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            case = cases[name]
            case.setup()
            for i in range(calls + 1):
                start = time.perf_counter()
                case.run()
                elapsed = time.perf_counter() - start
                case.after()
                if i:
                    times[name].append(elapsed)
            case.teardown()
    return {name: statistics.median(values) for name, values in times.items()}


class Regime:
    """A model, an input and one call of it, with the KV cache reset after every call.

    Our cases and the plain case share one model: hooks a case needs are installed in its
    untimed set-up and removed in its tear-down, so no case pays for another's hooks. Peers
    that rewrite the model (nnsight patches every module) get a copy; ``plain_copy`` measures
    what running on a copy alone does to the ratio (the noise floor of those comparisons).
    """

    def __init__(self, name: str) -> None:
        torch.manual_seed(0)
        self.name = name
        if name == "prefill":
            self.model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
            self.ids = torch.randint(0, 50257, (1, 64))
            self.cache = None
        else:
            rows = BATCHED_ROWS if name == "batched" else 1
            self.model = transformers.AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR).eval()
            prompt = torch.randint(4, 300, (rows, 32))
            with torch.inference_mode():
                self.cache = getattr(self.model(input_ids=prompt, use_cache=True), CACHE_ARG)
            self.ids = torch.randint(4, 300, (rows, 1))
        self.prompt_len = 32
        d = self.model.config.n_embd
        generator = torch.Generator().manual_seed(1)
        self.vector = torch.randn(d, generator=generator)
        self.U = torch.randn(d, 1, generator=generator) * 0.1
        self.V = torch.randn(4 * d, 1, generator=generator) * 0.1
        self.d_head = d // self.model.config.n_head

    def kwargs(self) -> dict[str, object]:
        if self.cache is None:
            return {"input_ids": self.ids}
        return {"input_ids": self.ids, "use_cache": True, CACHE_ARG: self.cache}

    def call(self, model: torch.nn.Module | None = None) -> object:
        with torch.inference_mode():
            return (model or self.model)(**self.kwargs())

    def reset(self) -> None:
        """Drop the token a decode call appended (a negative crop means "remove" in transformers 4 and 5)."""
        extra = self.cache.get_seq_length() - self.prompt_len if self.cache is not None else 0
        if extra:
            self.cache.crop(-extra)

    def plain(self, model: torch.nn.Module | None = None) -> Case:
        return Case(lambda: self.call(model), self.reset)

    def edits(self) -> dict[str, list]:
        return {
            "steering": [Steering(site=f"blocks.{LAYER}.hook_resid_post", vector=self.vector)],
            "head_ablation": [HeadAblation(layer=LAYER, heads=(0,))],
            "low_rank": [LowRank(site=f"blocks.{LAYER}.mlp.W_out", U=self.U, V=self.V)],
        }

    def under(self, surgeon: Surgeon, edits: list, live: list | None = None) -> Case:
        """A call under ``edits``; ``live`` is another stack kept alive meanwhile (its hooks stay installed)."""
        state: dict[str, object] = {}

        def setup() -> None:
            state["stack"] = surgeon.compile(edits)
            if live:
                state["live"] = surgeon.compile(live)

        def run() -> None:
            with surgeon.apply(state["stack"]):
                self.call()

        return Case(run, self.reset, setup, state.clear)

    def under_rows(self, surgeon: Surgeon, edits: list, share: float = 1.0) -> Case:
        """A batched call with the first ``share`` of the rows under ``edits``, the rest on the base."""
        state: dict[str, object] = {}

        def setup() -> None:
            edited, base = surgeon.compile(edits), surgeon.compile([])
            rows = self.ids.shape[0]
            state["rows"] = surgeon.rows([edited if i < rows * share else base for i in range(rows)])

        def run() -> None:
            with surgeon.apply_rows(state["rows"]):
                self.call()

        return Case(run, self.reset, setup, state.clear)


def our_cases(regime: Regime, names: tuple[str, ...]) -> dict[str, Case]:
    surgeon = Surgeon(regime.model)
    edits = regime.edits()
    if regime.name == "batched":
        cases = {name: regime.under_rows(surgeon, edits[name]) for name in names}
        cases["empty_stack"] = regime.under_rows(surgeon, [])
        return cases | {f"{name}_half_rows": regime.under_rows(surgeon, edits[name], 0.5) for name in names}
    cases = {name: regime.under(surgeon, edits[name]) for name in names}
    if "steering" in names and len(names) > 1:
        cases["empty_stack"] = regime.under(surgeon, [])
        cases["empty_stack_hooks_live"] = regime.under(surgeon, [], live=[e for s in edits.values() for e in s])
    return cases


def nnsight_cases(regime: Regime) -> dict[str, Case]:
    from nnsight import NNsight

    wrapped = NNsight(copy.deepcopy(regime.model))
    block = wrapped.transformer.h[LAYER]
    vector, U, V, d_head = regime.vector, regime.U, regime.V, regime.d_head

    def steering() -> None:
        with torch.inference_mode(), wrapped.trace(**regime.kwargs()):
            block.output[:] += vector

    def head_ablation() -> None:
        with torch.inference_mode(), wrapped.trace(**regime.kwargs()):
            block.attn.c_proj.input[..., :d_head] = 0

    def low_rank() -> None:
        with torch.inference_mode(), wrapped.trace(**regime.kwargs()):
            x = block.mlp.c_proj.input
            block.mlp.c_proj.output = block.mlp.c_proj.output + (x @ V) @ U.T

    return {
        f"peer_nnsight_{name}": Case(fn, regime.reset)
        for name, fn in (("steering", steering), ("head_ablation", head_ablation), ("low_rank", low_rank))
    }


def steering_vectors_case(regime: Regime) -> Case:
    """steering-vectors' steering, patched in the untimed set-up (its most favourable use)."""
    from steering_vectors import SteeringVector

    vector = SteeringVector(layer_activations={LAYER: regime.vector}, layer_type="decoder_block")
    state: dict[str, object] = {}

    def setup() -> None:
        state["handle"] = vector.patch_activations(regime.model)

    def teardown() -> None:
        state.pop("handle").remove()

    return Case(regime.call, regime.reset, setup, teardown)


def run_regime(name: str, rounds: int, with_peers: bool, worker: bool) -> dict[str, float]:
    regime = Regime(name)
    cases: dict[str, Case] = {"plain": regime.plain()}
    if worker:  # inside the transformers<5 environment: steering-vectors next to our steering
        cases["ours_tf4_steering"] = our_cases(regime, ("steering",))["steering"]
        cases["peer_steering_vectors_steering"] = steering_vectors_case(regime)
    else:
        cases |= our_cases(regime, ("steering", "head_ablation", "low_rank"))
        if with_peers:
            cases["plain_copy"] = regime.plain(copy.deepcopy(regime.model))
            cases |= nnsight_cases(regime)
    medians = measure(cases, rounds)
    results = {f"{name}_{case}": seconds / medians["plain"] for case, seconds in medians.items() if case != "plain"}
    results[f"{name}_plain_ms"] = medians["plain"] * 1000
    return results


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        constraints = ROOT / "bench" / "peers-constraints.txt"
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        torch_pin = next(line for line in constraints.read_text().splitlines() if line.startswith("torch=="))
        subprocess.run([*pip, torch_pin], check=True)
        subprocess.run(
            [*pip, "-c", str(constraints), "steering-vectors", "transformers", "safetensors", "tqdm"], check=True
        )
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-peers", action="store_true", help="skip nnsight and steering-vectors")
    parser.add_argument("--decode-rounds", type=int, default=200, help="blocks of 10 calls per case")
    parser.add_argument("--prefill-rounds", type=int, default=8, help="blocks of 10 calls per case")
    parser.add_argument("--batched-rounds", type=int, default=60, help="blocks of 10 calls per case")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("SCALPEL_BENCH_THREADS", "2")))

    results: dict[str, float] = {}
    results.update(run_regime("decode", args.decode_rounds, not args.no_peers, args.worker))
    if not args.worker:
        results.update(run_regime("batched", args.batched_rounds, False, False))
    results.update(run_regime("prefill", args.prefill_rounds, not args.no_peers, args.worker))
    if not args.worker and not args.no_peers:
        python = ensure_peer_venv()
        worker = subprocess.run(
            [
                str(python),
                __file__,
                "--worker",
                "--json",
                f"--decode-rounds={args.decode_rounds}",
                f"--prefill-rounds={args.prefill_rounds}",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        results.update({k: v for k, v in json.loads(worker.stdout).items() if "plain_ms" not in k})
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in sorted(results.items())}))
    else:
        for key, value in sorted(results.items()):
            print(f"{key:<45} {value:8.4f}")


if __name__ == "__main__":
    main()
