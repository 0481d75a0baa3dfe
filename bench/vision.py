"""Neo et al. (ICLR 2025)'s three findings on LLaVA, reproduced on the toy VLM (issue 34).

    python bench/vision.py --json [--model DIR] [--scenes N]
    → {"identification_accuracy", "object_ablation_drop", "random_ablation_drop",
       "object_over_random", "logit_lens_object_top5_rate", "logit_lens_background_top5_rate",
       "logit_lens_object_top5_by_layer", "knockout_early_drop", "knockout_mid_late_drop", …}

What each key measures: ``editors.toyworld.vision.findings``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editors.toyworld.vision import TOY_VLM_DIR, load_toy_vlm  # noqa: E402
from editors.toyworld.vision.findings import image_token_findings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--model", type=Path, default=TOY_VLM_DIR)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = load_toy_vlm(args.model)
    result = image_token_findings(model, processor, args.scenes, args.seed)
    print(json.dumps(result) if args.json else "\n".join(f"{k:<34} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
