"""The toy model's shipped editor defaults (``edit_hparams.json``, :mod:`editors.edit_defaults`):
every relation's canonical prompt as ``keep_prompts``, so a fact edit holds the subject's other
facts (the prompt it asks, and any phrasing of it, are skipped: see ``RomeHyperParams.keep_prompts``).
The numeric defaults are the hyper-parameter classes' own, tuned on this model (issue 38)."""

from __future__ import annotations

import json
from pathlib import Path

from editors.edit_defaults import EDIT_HPARAMS_FILE, METHODS
from editors.toyworld.counterfact import relation_prompts
from editors.toyworld.world import World


def write_edit_hparams(world: World, directory: Path) -> None:
    keep = list(relation_prompts(world))
    text = json.dumps({method: {"keep_prompts": keep} for method in METHODS}, indent=1, sort_keys=True)
    (Path(directory) / EDIT_HPARAMS_FILE).write_text(text + "\n")
