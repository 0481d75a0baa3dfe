"""What registry reads return: plain frozen values, no database session attached."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    weights_sha256: str
    created_by: str
    created_at: datetime
    predecessor: str | None = None  # the model this one succeeds (a newer checkpoint of it)


@dataclass(frozen=True)
class EditInfo:
    id: int
    model: str
    kind: str
    spec_sha256: str
    spec_json: str
    artifacts: dict[str, str]  # name → sha256
    author: str
    description: str
    created_at: datetime


@dataclass(frozen=True)
class VersionInfo:
    model: str
    number: int
    parent: int | None
    edit_ids: list[int]
    status: str  # base | unchecked | running | passed | failed | interrupted
    author: str
    description: str
    created_at: datetime
    origin: str | None = None  # models/{model}/versions/{n}: the version this one was rebased from


@dataclass(frozen=True)
class AliasInfo:
    model: str
    name: str
    version: int
    etag: str
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True)
class AliasMoveInfo:
    action: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    forced: bool
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    name: str
    prefix: str
    role: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class RunInfo:
    id: int
    model: str
    version: int
    suite_sha256: str
    state: str
    results: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime | None
    claimed_by: str | None = None  # the replica executing it


@dataclass(frozen=True)
class RebaseInfo:
    """A version rebased onto a successor: the new version, its origin, and the drift report."""

    version: VersionInfo
    origin: str  # models/{model}/versions/{n}
    report: dict[str, Any]  # {"summary": {...}, "drift": [...]} (editors.rebase.Rebase.as_dict, with edit ids)


@dataclass(frozen=True)
class SaeInfo:
    """A model's sparse autoencoder, as the registry holds it."""

    model: str
    name: str
    site: str
    architecture: str
    d_sae: int
    sae_sha256: str  # the SAE's identity (editors.sae.SparseAutoencoder.sha256)
    weights_sha256: str  # the artifact holding sae_weights.safetensors
    config: dict[str, Any]  # SAELens's cfg.json
    description: str
    created_by: str
    created_at: datetime
