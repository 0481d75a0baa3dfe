"""Registry errors; each maps to one gRPC status code in the API layer."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class; ``code`` names the gRPC status the API layer returns."""

    code = "INTERNAL"


class InvalidArgument(RegistryError):
    code = "INVALID_ARGUMENT"


class NotFound(RegistryError):
    code = "NOT_FOUND"


class AlreadyExists(RegistryError):
    code = "ALREADY_EXISTS"


class Conflict(RegistryError):
    """An etag did not match: someone else moved the alias first."""

    code = "ABORTED"


class FailedPrecondition(RegistryError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(RegistryError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(RegistryError):
    """Over a configured size limit."""

    code = "RESOURCE_EXHAUSTED"


class ArtifactIntegrityError(RegistryError):
    """Stored artifact bytes no longer match their SHA-256."""

    code = "DATA_LOSS"


class AuditTampered(RegistryError):
    """The audit log's head is not signed by a trusted key: a write would vouch for a forgery."""

    code = "DATA_LOSS"
