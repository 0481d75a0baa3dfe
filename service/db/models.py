"""The registry's tables (SQLAlchemy 2.0 typed models). Alembic revisions in migrations/ create them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SHA = String(64)
NAME = String(200)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelRow(Base):
    """A hosted base model."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    source: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(SHA)
    created_by: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelLineage(Base):
    """A model's predecessor: the checkpoint it succeeds (insert-only, audited)."""

    __tablename__ = "model_lineage"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    predecessor_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    created_by: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Artifact(Base):
    """A tensor blob (safetensors), content-addressed; its bytes live here so every replica sees them."""

    __tablename__ = "artifacts"
    sha256: Mapped[str] = mapped_column(SHA, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UploadChunkRow(Base):
    """One chunk of an upload too large for one message, at its byte offset; deleted when the
    resource that uses the upload is created."""

    __tablename__ = "upload_chunks"
    upload_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EditRow(Base):
    """One immutable edit: canonical spec and its hash (the edit's identity within a model)."""

    __tablename__ = "edits"
    __table_args__ = (UniqueConstraint("model_id", "spec_sha256", name="uq_edits_model_spec"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    spec_sha256: Mapped[str] = mapped_column(SHA)
    author: Mapped[str] = mapped_column(NAME)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EditArtifact(Base):
    """Which artifact blob holds which named tensor of an edit."""

    __tablename__ = "edit_artifacts"
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)


class VersionRow(Base):
    """Immutable: an ordered list of edits over the base model (number 0 is the base)."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_versions_model_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    author: Mapped[str] = mapped_column(NAME)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VersionEdit(Base):
    __tablename__ = "version_edits"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id"), index=True)


class RebaseRow(Base):
    """A version made by rebasing another onto its model's predecessor's successor: the origin and
    the drift report (insert-only; the report's SHA-256 is in the version's audit event)."""

    __tablename__ = "rebases"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    origin_version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    report_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SaeRow(Base):
    """A sparse autoencoder of a model, by name: its site, shape, identity and weights (an
    artifact), insert-only and audited; feature edits and feature inspection read it."""

    __tablename__ = "saes"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_saes_model_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    site: Mapped[str] = mapped_column(String(100))
    architecture: Mapped[str] = mapped_column(String(16))
    d_sae: Mapped[int] = mapped_column(Integer)
    sae_sha256: Mapped[str] = mapped_column(SHA)
    weights_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)
    config_json: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasRow(Base):
    """A movable name on a version; ``etag`` changes on every move (optimistic concurrency)."""

    __tablename__ = "aliases"
    #: One live alias per name and model; deleted ones keep their rows (and history) beside it.
    __table_args__ = (
        Index(
            "uq_live_aliases_model_name",
            "model_id",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    etag: Mapped[str] = mapped_column(String(64))
    updated_by: Mapped[str] = mapped_column(NAME)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AliasMove(Base):
    """Every alias move: from, to, who, why, whether forced, and whether it was a rollback."""

    __tablename__ = "alias_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias_id: Mapped[int] = mapped_column(ForeignKey("aliases.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    to_version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    actor: Mapped[str] = mapped_column(NAME)
    reason: Mapped[str] = mapped_column(Text, default="")
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CheckSuite(Base):
    __tablename__ = "check_suites"
    __table_args__ = (UniqueConstraint("model_id", "suite_sha256", name="uq_check_suites_model_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    suite_sha256: Mapped[str] = mapped_column(SHA)
    spec_json: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CurrentSuite(Base):
    """The suite a model's versions are currently judged by (one row per model)."""

    __tablename__ = "current_suites"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("check_suites.id"))


class CheckRun(Base):
    __tablename__ = "check_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("check_suites.id"))
    state: Mapped[str] = mapped_column(String(32))
    results_json: Mapped[str] = mapped_column(Text, default="[]")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(100))  # the replica executing the run
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress_done: Mapped[int] = mapped_column(Integer, default=0)  # so any replica can stream it
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_current: Mapped[str] = mapped_column(String(100), default="")


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(NAME)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyRecord(Base):
    """A caller's create request id, a hash of the request, and what it produced: the same caller
    repeating the id with the same request gets the same result (AIP-155)."""

    __tablename__ = "idempotency_keys"
    actor: Mapped[str] = mapped_column(NAME, primary_key=True)
    request_id: Mapped[str] = mapped_column(NAME, primary_key=True)
    operation: Mapped[str] = mapped_column(String(64))
    request_sha256: Mapped[str | None] = mapped_column(SHA, nullable=True)
    result_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditHead(Base):
    """One row: the chain's last sequence number and hash. Every mutation locks it first, which
    serialises writers (a consistent lock order, so no deadlocks) and keeps the chain linear."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(SHA)


class AuditEvent(Base):
    """Append-only, hash-chained: ``hash = sha256(canonical(seq, time, actor, action, subject, payload, prev))``."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[str] = mapped_column(String(32))  # ISO-8601 UTC text: hashed exactly as stored
    actor: Mapped[str] = mapped_column(NAME)
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    payload_json: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(SHA)
    hash: Mapped[str] = mapped_column(SHA)
    # Ed25519 over "seq:hash" by the key outside the database (service.registry.audit_keys); NULL
    # only for events from before signing.
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(88), nullable=True)

    # A resource's latest event (the alias's last move, a version's edit list) without a scan of the log.
    __table_args__ = (Index("ix_audit_events_subject_seq", "subject", "seq"),)
