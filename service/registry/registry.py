"""The registry: one class over every resource, each in a module of its own (models and their
lineage, edits, versions, rebases, SAEs, checks, aliases, keys, audit) over one shared unit of work."""

from __future__ import annotations

from service.registry.alias_moves import ALIAS_CHANNEL, AliasMoves
from service.registry.audit_views import AuditViews
from service.registry.check_store import CheckStore
from service.registry.edit_store import EditStore
from service.registry.infos import (
    AliasInfo,
    AliasMoveInfo,
    EditInfo,
    KeyInfo,
    ModelInfo,
    RebaseInfo,
    RunInfo,
    SaeInfo,
    VersionInfo,
)
from service.registry.key_store import KeyStore
from service.registry.model_catalog import ModelCatalog
from service.registry.rebase_store import RebaseStore
from service.registry.sae_store import SaeStore
from service.registry.unit_of_work import DEFAULT_MAX_ARTIFACT_BYTES, ROLES, RUN_STATES, Page, check_name
from service.registry.version_store import VersionStore

__all__ = [
    "ALIAS_CHANNEL",
    "DEFAULT_MAX_ARTIFACT_BYTES",
    "ROLES",
    "RUN_STATES",
    "AliasInfo",
    "AliasMoveInfo",
    "EditInfo",
    "KeyInfo",
    "ModelInfo",
    "Page",
    "RebaseInfo",
    "Registry",
    "RunInfo",
    "SaeInfo",
    "VersionInfo",
    "check_name",
]


class Registry(
    RebaseStore, SaeStore, ModelCatalog, EditStore, VersionStore, CheckStore, AliasMoves, KeyStore, AuditViews
):
    """Domain operations over one database (SQLite or PostgreSQL)."""
