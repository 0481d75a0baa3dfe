"""Per-model defaults for the fact editors, shipped in the model's directory.

A fact editor's best hyper-parameters depend on the model (the ROME and MEMIT papers keep one
file per model), and some name what the model knows: ``keep_prompts`` are the prompts whose
answers an edit must not move, e.g. the subject's other relations. A model directory may ship
``edit_hparams.json``: ``{"rome": {field: value}, "memit": {field: value}}``. The service, the CLI
and the benches start from these and put a request's own overrides on top; a model without the
file gets the dataclasses' defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

EDIT_HPARAMS_FILE = "edit_hparams.json"
METHODS = ("rome", "memit")

T = TypeVar("T")


def shipped_overrides(model_dir: Path | None, method: str) -> dict[str, Any]:
    """The ``method`` section of ``model_dir``'s ``edit_hparams.json`` (empty without one)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    path = Path(model_dir) / EDIT_HPARAMS_FILE if model_dir is not None else None
    if path is None or not path.is_file():
        return {}
    shipped = json.loads(path.read_text())
    section = shipped.get(method, {}) if isinstance(shipped, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"{path}: {method!r} must map hyper-parameter names to values")
    return section


def hparams_from(cls: type[T], model_dir: Path | None, method: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments for ``cls``: the model's shipped defaults, then ``overrides``; JSON
    lists become tuples. Unknown names raise ``TypeError`` as ``cls(**…)`` would."""
    merged = {**shipped_overrides(model_dir, method), **overrides}
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    return {name: tuple(value) if isinstance(value, list) else value for name, value in merged.items()}
