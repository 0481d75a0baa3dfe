"""Versions (ordered edit lists over the base) and their check status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import (
    AuditEvent,
    CheckRun,
    CurrentSuite,
    EditRow,
    ModelRow,
    RebaseRow,
    VersionEdit,
    VersionRow,
)
from service.registry import audit
from service.registry.errors import (
    ArtifactIntegrityError,
    InvalidArgument,
    NotFound,
)
from service.registry.infos import (
    VersionInfo,
)
from service.registry.unit_of_work import (
    Page,
    UnitOfWork,
    check_text,
    utc_now,
)

#: The largest version number the database holds (a 32-bit INTEGER column).
MAX_VERSION_NUMBER = 2**31 - 1


class VersionStore(UnitOfWork):
    """Versions (ordered edit lists over the base) and their check status."""

    def record_export(self, model: str, version: int, actor: str, payload: dict[str, object]) -> None:
        """An audit event for an export of ``version`` (format, file hashes): who took what out."""
        with self._write() as session:
            self._version_row(session, self._model(session, model).id, version)
            audit.append(session, actor, "version.exported", f"models/{model}/versions/{version}", payload)

    def _version_row(self, session: Session, model_id: int, number: int) -> VersionRow:
        if not 0 <= number <= MAX_VERSION_NUMBER:  # no such row, and the drivers cannot even bind it
            raise NotFound(f"version {number} does not exist")
        row = session.execute(
            select(VersionRow).where(VersionRow.model_id == model_id, VersionRow.number == number)
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"version {number} does not exist")
        return row

    def _edit_ids(self, session: Session, version_id: int) -> list[int]:
        return list(
            session.execute(
                select(VersionEdit.edit_id).where(VersionEdit.version_id == version_id).order_by(VersionEdit.position)
            ).scalars()
        )

    def _status(self, session: Session, version: VersionRow) -> str:
        if version.number == 0:
            return "base"
        latest = self._latest_run(session, version)
        return latest.state if latest else "unchecked"

    @staticmethod
    def _latest_run(session: Session, version: VersionRow) -> Any:
        """(id, state) of the version's latest run against the model's current suite, or None."""
        current = session.get(CurrentSuite, version.model_id)
        if current is None:
            return None
        return session.execute(
            select(CheckRun.id, CheckRun.state)
            .where(CheckRun.version_id == version.id, CheckRun.suite_id == current.suite_id)
            .order_by(CheckRun.id.desc())
            .limit(1)
        ).first()

    def _verified_status(self, session: Session, model: str, version: VersionRow) -> str:
        """:meth:`_status`, after checking that the deciding run's state is the one the audit log
        recorded for it (a run flipped to "passed" in the database must not open the gate)."""
        latest = None if version.number == 0 else self._latest_run(session, version)
        if latest is None:
            return self._status(session, version)  # base or unchecked: no run decides
        status, run_id = latest.state, latest.id
        logged = self._logged_run_state(session, model, version.number, run_id)
        if logged != status:
            raise ArtifactIntegrityError(
                f"check run {run_id} of models/{model}/versions/{version.number} says {status!r} but the "
                f"audit log recorded {logged!r}: the row was changed outside Scalpel; refusing to use it"
            )
        return status

    @staticmethod
    def _logged_run_state(session: Session, model: str, number: int, run_id: int) -> str | None:
        events = session.execute(
            select(AuditEvent.action, AuditEvent.payload_json)
            .where(AuditEvent.subject.in_([f"models/{model}/versions/{number}", f"runs/{run_id}"]))
            .order_by(AuditEvent.seq)
        )
        state = None
        for action, payload_json in events:
            payload = json.loads(payload_json)
            if payload.get("run") != run_id:
                continue
            state = {"checks.started": "running", "checks.interrupted": "interrupted"}.get(
                action, payload.get("state", state)
            )
        return state

    def _failing_checks(self, session: Session, version: VersionRow) -> list[str]:
        current = session.get(CurrentSuite, version.model_id)
        if current is None:
            return []
        results = session.execute(
            select(CheckRun.results_json)
            .where(CheckRun.version_id == version.id, CheckRun.suite_id == current.suite_id)
            .order_by(CheckRun.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        return [str(r.get("name")) for r in json.loads(results or "[]") if not r.get("passed", True)]

    def _version_info(self, session: Session, row: VersionRow) -> VersionInfo:
        model = session.get(ModelRow, row.model_id)
        parent = session.get(VersionRow, row.parent_id).number if row.parent_id else None
        rebase = session.get(RebaseRow, row.id)
        origin = None
        if rebase is not None:
            origin_row = session.get(VersionRow, rebase.origin_version_id)
            origin = f"models/{session.get(ModelRow, origin_row.model_id).name}/versions/{origin_row.number}"
        return VersionInfo(
            model.name,
            row.number,
            parent,
            self._edit_ids(session, row.id),
            self._status(session, row),
            row.author,
            row.description,
            row.created_at,
            origin,
        )

    def _insert_version(
        self,
        session: Session,
        model: str,
        parent: VersionRow,
        edits: list[int],
        actor: str,
        description: str,
        logged: dict[str, Any],
    ) -> VersionRow:
        """The model's next version: ``edits`` in order over ``parent``, audited with its edit
        list (what serving checks the rows against) and ``logged``."""
        number = (
            session.execute(
                select(func.max(VersionRow.number)).where(VersionRow.model_id == parent.model_id)
            ).scalar_one()
            + 1
        )
        row = VersionRow(
            model_id=parent.model_id,
            number=number,
            parent_id=parent.id,
            author=actor,
            description=description,
            created_at=utc_now(),
        )
        session.add(row)
        session.flush()
        session.add_all(VersionEdit(version_id=row.id, position=i, edit_id=e) for i, e in enumerate(edits))
        payload = {"parent": parent.number, "edits": edits, **logged}
        audit.append(session, actor, "version.created", f"models/{model}/versions/{number}", payload)
        return row

    def create_version(
        self,
        model: str,
        parent: int,
        actor: str,
        append: Sequence[int] = (),
        remove: int | None = None,
        description: str = "",
        request_id: str | None = None,
    ) -> VersionInfo:
        """A new version from ``parent``: its edits with ``remove`` taken out, then ``append`` added."""
        if not append and remove is None:
            raise InvalidArgument("a new version must append edits or remove one")
        check_text("description", description)

        def create(session: Session) -> int:
            model_row = self._model(session, model)
            parent_row = self._version_row(session, model_row.id, parent)
            edits = self._edit_ids(session, parent_row.id)
            if remove is not None:
                if remove not in edits:
                    raise InvalidArgument(f"edit {remove} is not in version {parent}")
                edits.remove(remove)
            for edit_id in append:
                row = session.get(EditRow, edit_id)
                if row is None or row.model_id != model_row.id:
                    raise NotFound(f"edit {edit_id} of model {model!r} does not exist")
                if edit_id in edits:
                    raise InvalidArgument(f"edit {edit_id} is already in the version")
                edits.append(edit_id)
            logged = {"appended": list(append), "removed": remove}
            return self._insert_version(session, model, parent_row, edits, actor, description, logged).id

        return self._idempotent(
            request_id,
            "create_version",
            create,
            lambda s, i: self._version_info(s, s.get(VersionRow, i)),
            actor,
            [model, parent, list(append), remove, description],
        )

    def get_version(self, model: str, number: int) -> VersionInfo:
        with self._read() as session:
            return self._version_info(session, self._version_row(session, self._model(session, model).id, number))

    def verified_version(self, model: str, number: int) -> VersionInfo:
        """:meth:`get_version`, refused (DATA_LOSS) unless its ordered edit ids are the ones the
        audit log recorded when it was created: what a replica serves."""
        info = self.get_version(model, number)
        logged = [] if number == 0 else self._logged_payload("version.created", f"models/{model}/versions/{number}")
        expected = [] if number == 0 else (logged or {}).get("edits")
        if info.edit_ids != expected:
            raise ArtifactIntegrityError(
                f"models/{model}/versions/{number} lists edits {info.edit_ids[:20]} but the audit log recorded "
                f"{expected if expected is None else expected[:20]}: the rows were changed outside Scalpel; "
                "refusing to serve it"
            )
        return info

    def list_versions(self, model: str, page_size: int = 50, page_token: str = "") -> Page:
        with self._read() as session:
            model_id = self._model(session, model).id
        return self._page(
            select(VersionRow).where(VersionRow.model_id == model_id),
            VersionRow.id,
            page_size,
            page_token,
            self._version_info,
        )
