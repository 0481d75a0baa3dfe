"""The registry: domain operations over the database (no gRPC here)."""

from service.registry.errors import (
    AlreadyExists,
    ArtifactIntegrityError,
    AuditTampered,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryError,
    ResourceExhausted,
)
from service.registry.registry import Registry

__all__ = [
    "AlreadyExists",
    "ArtifactIntegrityError",
    "AuditTampered",
    "Conflict",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Registry",
    "RegistryError",
    "ResourceExhausted",
]
