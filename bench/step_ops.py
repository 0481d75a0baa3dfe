"""Kernels per decode step: one version against 8 versions mixed in one batch; and a prefill
riding in a decode step against the two forwards apart.

    python bench/step_ops.py --json
    → {"c{N}_same_ops", "c{N}_mixed_ops", "c{N}_mixed_ops_ratio",
       "c{N}_apart_ops", "c{N}_ride_ops", "c{N}_ride_ops_ratio"} for N in 8, 64

Counts the aten operators that launch work (views and no-op dropouts left out) in one decode step
of the serving engine's batch (``DecodeBatch.step`` under ``Surgeon.rows``), on the toy model
with ``bench/serving.py``'s 8 versions (steering, head ablation, ROME, alone and combined). On a
GPU a small batch's step is bound by kernel launches, so this count is the CPU-side measure of
what per-row stacks cost there; it is exact and does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import report
from serving import VERSIONS, edits_for_versions, prompts

from editors import Surgeon
from editors.toyworld import load_toy_model
from service.engine.decode_batch import DecodeBatch, Prefill
from service.engine.ragged import ride

#: operators that only reinterpret a tensor (no kernel), and dropout, a no-op in eval mode
NO_KERNEL = {
    "alias", "as_strided", "detach", "dropout", "expand", "permute", "reshape", "select", "slice", "split",
    "squeeze", "t", "transpose", "unbind", "unsqueeze", "view", "_unsafe_view",
}  # fmt: skip


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in NO_KERNEL:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def step_ops(model, surgeon: Surgeon, ids: list[torch.Tensor], stacks: list) -> int:
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(model, surgeon, ids, stacks, 0)
        rows = surgeon.rows(stacks)
        batch.step(model, surgeon, rows, logits.argmax(-1))  # a first step, uncounted
        with _Count() as count:
            batch.step(model, surgeon, rows, logits.argmax(-1))
    return count.ops


def ride_ops(model, surgeon: Surgeon, ids: list[torch.Tensor], stacks: list, joining: int) -> tuple[int, int]:
    """Ops of the last ``joining`` prompts' prefill and the other rows' decode step: run apart (a
    step, then the prefill), and riding in one forward (``service.engine.ragged``)."""
    counts = []
    for riding in (False, True):
        with torch.inference_mode():
            batch, logits = DecodeBatch.prefill(model, surgeon, ids[:-joining], stacks[:-joining], 0)
            rows = surgeon.rows(stacks[:-joining])
            logits = batch.step(model, surgeon, rows, logits.argmax(-1))
            with _Count() as count:  # (the prefill's set-up counts: alone, it builds its rows' stacks)
                prefill = Prefill(model, surgeon, ids[-joining:], stacks[-joining:], 0)
                if riding:
                    ride(model, surgeon, batch, rows, logits.argmax(-1), prefill)
                else:
                    batch.step(model, surgeon, rows, logits.argmax(-1))
                    prefill.advance()
        counts.append(count.ops)
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model, tokenizer, world = load_toy_model()
    surgeon = Surgeon(model)
    stacks = [surgeon.compile(edits) for edits in edits_for_versions(model, tokenizer, world)]
    results: dict[str, float] = {}
    for n in (8, 64):
        ids = [tokenizer(text, return_tensors="pt")["input_ids"][0] for text in prompts(world, n)]
        same = step_ops(model, surgeon, ids, [stacks[0]] * n)
        mixed = step_ops(model, surgeon, ids, [stacks[i % VERSIONS] for i in range(n)])
        results |= {f"c{n}_same_ops": same, f"c{n}_mixed_ops": mixed, f"c{n}_mixed_ops_ratio": mixed / same}
        apart, riding = ride_ops(model, surgeon, ids, [stacks[i % VERSIONS] for i in range(n)], max(1, n // 4))
        results |= {f"c{n}_apart_ops": apart, f"c{n}_ride_ops": riding, f"c{n}_ride_ops_ratio": riding / apart}
    report(results, args.json)


if __name__ == "__main__":
    main()
