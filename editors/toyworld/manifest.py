"""SHA-256 manifest of the committed toy-model directory, and its verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "MANIFEST.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}


def write_manifest(directory: Path) -> None:
    directory = Path(directory)
    (directory / MANIFEST_FILE).write_text(json.dumps({"sha256": _hashes(directory)}, indent=1, sort_keys=True) + "\n")


def verify_manifest(directory: Path) -> list[str]:
    """Return the problems found (missing, extra or changed files); empty means intact."""
    directory = Path(directory)
    expected: dict[str, str] = json.loads((directory / MANIFEST_FILE).read_text())["sha256"]
    actual = _hashes(directory)
    problems = [f"missing file {name}" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected file {name}" for name in sorted(actual.keys() - expected.keys())]
    problems += [
        f"{name}: sha256 {actual[name]} != manifest {expected[name]}"
        for name in sorted(expected.keys() & actual.keys())
        if expected[name] != actual[name]
    ]
    return problems
