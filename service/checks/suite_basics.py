"""The suite-wide settings every check's params are read against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SuiteBasics:
    corpora: dict[str, list[str]]
    reference: str = "base"  # "base" or an alias: what comparing checks compare against by default
    model_dir: Path | None = None  # where task files shipped with the model live (``shipped:``)
    seed: int = 0
    resamples: int = 1000
    #: What the suite knows of the model's world, for checks derived from fact edits: groups of
    #: templates (``{}`` for the subject) that say the same relation, canonical first; and subjects.
    relations: tuple[tuple[str, ...], ...] = ()
    subjects: tuple[str, ...] = ()
