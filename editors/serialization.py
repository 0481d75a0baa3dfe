"""Edits to JSON + safetensors and back, losslessly.

Two forms:

- **spec + blobs** (what the registry stores): :meth:`Edit.to_json` gives the canonical spec, in
  which each artifact is named by the SHA-256 of its own safetensors blob;
  :func:`artifact_blobs_by_hash` gives those blobs. :func:`edit_from_json` rebuilds the edit
  and verifies every blob against its hash.
- **one file** (for notebooks): :func:`save_edit` / :func:`load_edit` write a single
  safetensors file holding the artifacts by name and the spec in its metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from editors.blobs import blob_to_tensor, tensor_to_blob
from editors.edits import Edit, edit_from_parts
from editors.errors import InvalidEditError
from editors.validation import parse_json

_METADATA_KEY = "scalpel.edit"


def artifact_blobs_by_hash(edit: Edit) -> dict[str, bytes]:
    """SHA-256 (hex) → safetensors blob, for every artifact of ``edit``."""
    return {hashlib.sha256(blob).hexdigest(): blob for blob in edit.artifact_blobs.values()}


def _parse_spec(text: str | bytes) -> dict[str, Any]:
    spec = parse_json("spec", text, "a JSON object from Edit.to_json")
    if not isinstance(spec, dict) or not isinstance(spec.get("artifacts", {}), dict):
        raise InvalidEditError(
            "spec", "must be an object with kind, params and artifacts", "a JSON object from Edit.to_json"
        )
    return spec


def edit_from_json(text: str | bytes, blobs: Mapping[str, bytes]) -> Edit:
    """Rebuild an edit from its spec and its blobs (by SHA-256); every blob is verified."""
    spec = _parse_spec(text)
    tensors: dict[str, torch.Tensor] = {}
    for name, ref in spec.get("artifacts", {}).items():
        digest = ref.get("sha256") if isinstance(ref, dict) else None
        if not isinstance(digest, str) or digest not in blobs:
            raise InvalidEditError(
                f"artifacts.{name}", f"blob {digest!r} not provided", "a blob for every artifact hash"
            )
        blob = blobs[digest]
        if hashlib.sha256(blob).hexdigest() != digest:
            raise InvalidEditError(f"artifacts.{name}", "blob does not match its SHA-256", f"sha256 {digest}")
        tensors[name] = blob_to_tensor(f"artifacts.{name}", blob)
    return edit_from_parts(spec.get("kind"), spec.get("params", {}), tensors)


def save_edit(edit: Edit, path: str | Path) -> None:
    """Write ``edit`` to one safetensors file (artifacts by name, spec in the metadata)."""
    save_file(edit.tensors(), str(path), metadata={_METADATA_KEY: edit.to_json()})


def load_edit(path: str | Path) -> Edit:
    """Read a file written by :func:`save_edit`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InvalidEditError("path", f"cannot read {path}: {exc}", "a file written by save_edit") from None
    if _METADATA_KEY not in metadata:
        raise InvalidEditError("path", f"{path} has no {_METADATA_KEY!r} metadata", "a file written by save_edit")
    blobs = {hashlib.sha256(b).hexdigest(): b for b in map(tensor_to_blob, tensors.values())}
    return edit_from_json(metadata[_METADATA_KEY], blobs)
