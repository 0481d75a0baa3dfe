"""Per-call overhead of Scalpel's dispatcher, side by side with the plain model and peer libraries.

Two regimes:

- ``prefill``: one forward of 64 tokens through a randomly initialised GPT-2-small-shaped model
  (124M parameters);
- ``decode``: one new token with a KV cache on the toy model (per-call overhead dominates).

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
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors import HeadAblation, LowRank, Steering, Surgeon  # noqa: E402
from editors.toyworld import TOY_MODEL_DIR  # noqa: E402

PEER_VENV = ROOT / "bench" / ".peers" / "venv"
LAYER = 1
CACHE_ARG = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"

Case = tuple[Callable[[], object], Callable[[], None] | None]


def measure(cases: dict[str, Case], rounds: int, warmup: int = 20) -> dict[str, float]:
    """Median seconds per call of each case; one call of every case per round, order rotated."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, after = cases[name]
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if after is not None:
                after()
            if r >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


class Regime:
    """A model, an input and one call of it (state reset between calls); each case runs on its own copy."""

    def __init__(self, name: str) -> None:
        torch.manual_seed(0)
        self.name = name
        if name == "prefill":
            self.base = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
            self.ids = torch.randint(0, 50257, (1, 64))
            self.cache = None
        else:
            self.base = transformers.AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR).eval()
            prompt = torch.randint(4, 300, (1, 32))
            with torch.inference_mode():
                self.cache = getattr(self.base(input_ids=prompt, use_cache=True), CACHE_ARG)
            self.ids = torch.randint(4, 300, (1, 1))
        self.prompt_len = 32
        d = self.base.config.n_embd
        generator = torch.Generator().manual_seed(1)
        self.vector = torch.randn(d, generator=generator)
        self.U = torch.randn(d, 1, generator=generator) * 0.1
        self.V = torch.randn(4 * d, 1, generator=generator) * 0.1
        self.d_head = d // self.base.config.n_head

    def copy(self) -> torch.nn.Module:
        """A private copy, so hooks one case installs never run in another case's calls."""
        return copy.deepcopy(self.base)

    def kwargs(self) -> dict[str, object]:
        if self.cache is None:
            return {"input_ids": self.ids}
        return {"input_ids": self.ids, "use_cache": True, CACHE_ARG: self.cache}

    def caller(self, model: torch.nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return model(**self.kwargs())

        return call

    def case(self, fn: Callable[[], object]) -> Case:
        return fn, (lambda: self.cache.crop(self.prompt_len)) if self.cache is not None else None

    def edits(self) -> dict[str, list]:
        return {
            "steering": [Steering(site=f"blocks.{LAYER}.hook_resid_post", vector=self.vector)],
            "head_ablation": [HeadAblation(layer=LAYER, heads=(0,))],
            "low_rank": [LowRank(site=f"blocks.{LAYER}.mlp.W_out", U=self.U, V=self.V)],
        }


def ours(regime: Regime, names: tuple[str, ...]) -> tuple[dict[str, Case], list[object]]:
    """Our cases, and the live objects (stacks) that must outlive the measurement."""
    edits = regime.edits()
    keep: list[object] = []

    def under(edit_list: list) -> Case:
        model = regime.copy()
        surgeon = Surgeon(model)
        stack = surgeon.compile(edit_list)
        keep.append(stack)
        call = regime.caller(model)

        def run() -> None:
            with surgeon.apply(stack):
                call()

        return regime.case(run)

    return {name: under(edits[name]) for name in names}, keep


def our_cases(regime: Regime) -> tuple[dict[str, Case], list[object]]:
    edits = regime.edits()
    cases, keep = ours(regime, ("steering", "head_ablation", "low_rank"))
    empty, keep_empty = ours_empty(regime, [e for stack in edits.values() for e in stack])
    return {**empty, **cases}, keep + keep_empty


def ours_empty(regime: Regime, live: list) -> tuple[dict[str, Case], list[object]]:
    """Empty stack on a model without other hooks, and on one where ``live`` keeps hooks installed."""
    cases: dict[str, Case] = {}
    keep: list[object] = []
    for name, live_edits in (("empty_stack", []), ("empty_stack_hooks_live", live)):
        model = regime.copy()
        surgeon = Surgeon(model)
        stack = surgeon.compile([])
        keep += [stack, surgeon.compile(live_edits)]
        call = regime.caller(model)

        def run(surgeon: Surgeon = surgeon, stack=stack, call=call) -> None:
            with surgeon.apply(stack):
                call()

        cases[name] = regime.case(run)
    return cases, keep


def nnsight_cases(regime: Regime) -> dict[str, Case]:
    from nnsight import NNsight

    wrapped = NNsight(regime.copy())
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
        f"peer_nnsight_{name}": regime.case(fn)
        for name, fn in (("steering", steering), ("head_ablation", head_ablation), ("low_rank", low_rank))
    }


def steering_vectors_cases(regime: Regime) -> tuple[dict[str, Case], object]:
    """steering-vectors' steering, patched once outside the timed calls (its most favourable use)."""
    from steering_vectors import SteeringVector

    model = regime.copy()
    handle = SteeringVector(layer_activations={LAYER: regime.vector}, layer_type="decoder_block").patch_activations(
        model
    )
    return {"peer_steering_vectors_steering": regime.case(regime.caller(model))}, handle


def run_regime(name: str, rounds: int, with_peers: bool, worker: bool) -> dict[str, float]:
    regime = Regime(name)
    cases: dict[str, Case] = {"plain": regime.case(regime.caller(regime.copy()))}
    if worker:  # inside the transformers<5 environment: steering-vectors next to our steering
        ours_steering, keep = ours(regime, ("steering",))
        peer, keep_handle = steering_vectors_cases(regime)
        cases |= {"ours_tf4_steering": ours_steering["steering"], **peer}
        keep.append(keep_handle)
    else:
        our, keep = our_cases(regime)
        cases |= our
        if with_peers:
            cases |= nnsight_cases(regime)
    medians = measure(cases, rounds)
    del keep
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
    parser.add_argument("--decode-rounds", type=int, default=1500)
    parser.add_argument("--prefill-rounds", type=int, default=60)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("SCALPEL_BENCH_THREADS", "2")))

    results: dict[str, float] = {}
    results.update(run_regime("decode", args.decode_rounds, not args.no_peers, args.worker))
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
