"""Edits and their content-addressed artifacts, verified on every read."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from editors.errors import InvalidEditError
from service.db.models import (
    Artifact,
    EditArtifact,
    EditRow,
    ModelRow,
)
from service.registry import audit
from service.registry.errors import (
    ArtifactIntegrityError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from service.registry.infos import (
    EditInfo,
)
from service.registry.unit_of_work import (
    Page,
    UnitOfWork,
    check_text,
    utc_now,
)

if TYPE_CHECKING:
    from editors import Edit


class EditStore(UnitOfWork):
    """Edits and their content-addressed artifacts, verified on every read."""

    def _store_artifact(self, session: Session, blob: bytes) -> str:
        if len(blob) > self.max_artifact_bytes:
            raise ResourceExhausted(
                f"artifact of {len(blob)} bytes exceeds the limit of {self.max_artifact_bytes} bytes"
            )
        digest = hashlib.sha256(blob).hexdigest()
        if session.get(Artifact, digest) is None:
            session.add(Artifact(sha256=digest, size=len(blob), data=blob, created_at=utc_now()))
        return digest

    def read_artifact(self, sha256: str) -> bytes:
        """The artifact's bytes, verified against its SHA-256."""
        with self._read() as session:
            row = session.get(Artifact, sha256)
            if row is None:
                raise NotFound(f"artifact {sha256} does not exist")
            data = bytes(row.data)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactIntegrityError(f"artifact {sha256} is corrupted: its bytes no longer match its SHA-256")
        return data

    @staticmethod
    def _edit_info(session: Session, row: EditRow) -> EditInfo:
        model = session.get(ModelRow, row.model_id)
        links = session.execute(select(EditArtifact).where(EditArtifact.edit_id == row.id)).scalars().all()
        return EditInfo(
            row.id,
            model.name,
            row.kind,
            row.spec_sha256,
            row.spec_json,
            {link.name: link.artifact_sha256 for link in links},
            row.author,
            row.description,
            row.created_at,
        )

    def _insert_edit(self, session: Session, model: str, edit: Edit, actor: str, description: str) -> int:
        """Store ``edit`` in this transaction (same content → the existing row) and audit it."""
        from editors import artifact_blobs_by_hash  # here: the registry alone needs no torch

        model_row = self._model(session, model)
        existing = session.execute(
            select(EditRow.id).where(EditRow.model_id == model_row.id, EditRow.spec_sha256 == edit.id)
        ).scalar_one_or_none()
        if existing is not None:
            return existing
        names = {name: ref["sha256"] for name, ref in edit.spec()["artifacts"].items()}
        for blob in artifact_blobs_by_hash(edit).values():
            self._store_artifact(session, blob)
        row = EditRow(
            model_id=model_row.id,
            kind=edit.kind,
            spec_json=edit.to_json(),
            spec_sha256=edit.id,
            author=actor,
            description=description,
            created_at=utc_now(),
        )
        session.add(row)
        session.flush()
        session.add_all(EditArtifact(edit_id=row.id, name=n, artifact_sha256=d) for n, d in names.items())
        audit.append(
            session,
            actor,
            "edit.created",
            f"models/{model}/edits/{row.id}",
            {"kind": edit.kind, "spec_sha256": edit.id, "artifacts": names},
        )
        return row.id

    def create_edit(
        self, model: str, edit: Edit, actor: str, description: str = "", request_id: str | None = None
    ) -> EditInfo:
        """Store an edit (same content → the same edit, no second row) with its artifacts."""
        from editors import Edit  # here: the registry alone needs no torch

        if not isinstance(edit, Edit):
            raise InvalidArgument("edit must be an editors.Edit value")
        check_text("description", description)
        return self._idempotent(
            request_id,
            "create_edit",
            lambda session: self._insert_edit(session, model, edit, actor, description),
            lambda s, i: self._edit_info(s, s.get(EditRow, i)),
            actor,
            [model, edit.id, description],
        )

    def list_edits(self, model: str, page_size: int = 50, page_token: str = "") -> Page:
        """A model's edits, newest first."""
        with self._read() as session:
            model_id = self._model(session, model).id
        return self._page(
            select(EditRow).where(EditRow.model_id == model_id), EditRow.id, page_size, page_token, self._edit_info
        )

    def get_edit(self, model: str, edit_id: int) -> EditInfo:
        with self._read() as session:
            row = session.get(EditRow, edit_id)
            if row is None or row.model_id != self._model(session, model).id:
                raise NotFound(f"edit {edit_id} of model {model!r} does not exist")
            return self._edit_info(session, row)

    def load_edit(self, model: str, edit_id: int) -> Edit:
        """The stored edit as an ``editors.Edit`` (artifacts verified on read)."""
        from editors import edit_from_json  # here: the registry alone needs no torch

        info = self.get_edit(model, edit_id)
        logged = self._logged_payload("edit.created", f"models/{model}/edits/{edit_id}") or {}
        if logged.get("spec_sha256") != info.spec_sha256:
            raise ArtifactIntegrityError(
                f"edit {edit_id}: its spec hash {info.spec_sha256[:12]}… is not the one the audit log recorded; "
                "refusing to serve it"
            )
        if hashlib.sha256(info.spec_json.encode()).hexdigest() != info.spec_sha256:
            raise ArtifactIntegrityError(
                f"edit {edit_id}: its stored spec no longer matches its SHA-256 {info.spec_sha256[:12]}… "
                "(the row was changed outside Scalpel); refusing to serve it"
            )
        blobs = {digest: self.read_artifact(digest) for digest in info.artifacts.values()}
        try:
            edit = edit_from_json(info.spec_json, blobs)
        except InvalidEditError as exc:
            raise ArtifactIntegrityError(f"edit {edit_id} no longer loads: {exc}") from exc
        if edit.id != info.spec_sha256:
            raise ArtifactIntegrityError(f"edit {edit_id}: its spec is not in canonical form; refusing to serve it")
        return edit
