"""Scalpel's surgery kit: edit kinds, the hook dispatcher and architecture adapters.

A plain PyTorch / transformers library, usable from a notebook with no server and no database::

    from editors import Surgeon, Steering
    surgeon = Surgeon(model)
    with surgeon.apply([Steering(site="blocks.2.hook_resid_pre", vector=v, scale=4.0)]):
        out = model(ids)
"""

from editors.adapters import ADAPTERS, ArchitectureAdapter, ModelDims, adapter_for, supported_model_types
from editors.edits import (
    DirectionalAblation,
    Edit,
    HeadAblation,
    LowRank,
    NeuronAblation,
    Steering,
    edit_from_parts,
    edit_kinds,
)
from editors.errors import InvalidEditError, UnsupportedArchitectureError
from editors.fingerprint import weights_sha256
from editors.serialization import artifact_blobs_by_hash, edit_from_json, load_edit, save_edit
from editors.sites import Site
from editors.stats import ActivationStats, activation_stats, head_ablation, neuron_ablation
from editors.steering import derive_steering
from editors.surgeon import EditStack, RowStacks, Surgeon

__all__ = [
    "ADAPTERS",
    "ActivationStats",
    "ArchitectureAdapter",
    "DirectionalAblation",
    "Edit",
    "EditStack",
    "HeadAblation",
    "InvalidEditError",
    "LowRank",
    "ModelDims",
    "NeuronAblation",
    "RowStacks",
    "Site",
    "Steering",
    "Surgeon",
    "UnsupportedArchitectureError",
    "activation_stats",
    "adapter_for",
    "artifact_blobs_by_hash",
    "derive_steering",
    "edit_from_json",
    "edit_from_parts",
    "edit_kinds",
    "head_ablation",
    "load_edit",
    "neuron_ablation",
    "save_edit",
    "supported_model_types",
    "weights_sha256",
]
