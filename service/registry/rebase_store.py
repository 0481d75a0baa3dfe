"""Versions rebased onto a successor model: the new version, its edits and its drift report,
written in one transaction (a rebase that fails leaves nothing) and checked on every read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from service.db.models import ModelLineage, RebaseRow, VersionRow
from service.registry import audit
from service.registry.edit_store import EditStore
from service.registry.errors import ArtifactIntegrityError, FailedPrecondition, InvalidArgument, NotFound
from service.registry.infos import RebaseInfo
from service.registry.model_catalog import ModelCatalog
from service.registry.unit_of_work import check_text, utc_now
from service.registry.version_store import VersionStore

if TYPE_CHECKING:
    from editors import Edit


def _report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, separators=(",", ":"))


class RebaseStore(ModelCatalog, EditStore, VersionStore):
    """Versions rebased onto a successor model, with their origin and drift report."""

    def _rebase_info(self, session: Session, version_id: int) -> RebaseInfo:
        row = session.get(RebaseRow, version_id)
        info = self._version_info(session, session.get(VersionRow, version_id))
        assert info.origin is not None and row is not None
        return RebaseInfo(info, info.origin, json.loads(row.report_json))

    @staticmethod
    def _rebase_request(origin_model: str, origin_number: int, onto: str, description: str) -> list[object]:
        return [origin_model, origin_number, onto, description]

    def replayed_rebase(
        self, origin_model: str, origin_number: int, onto: str, description: str, actor: str, request_id: str | None
    ) -> RebaseInfo | None:
        """The rebase an earlier identical request with ``request_id`` made (None: none yet), so a
        retry returns it without recomputing a single edit."""
        request = self._rebase_request(origin_model, origin_number, onto, description)
        return self._replayed(request_id, "rebase_version", self._rebase_info, actor, request)

    def record_rebase(
        self,
        origin_model: str,
        origin_number: int,
        onto: str,
        edits: Sequence[Edit],
        report: dict[str, Any],
        actor: str,
        description: str = "",
        request_id: str | None = None,
    ) -> RebaseInfo:
        """Write ``edits`` (the origin's equivalent on ``onto``) as a new unchecked version of
        ``onto`` over its base, with ``report`` (``{"summary", "drift"}``, each drift entry's
        ``made`` counting its edits in order: each gets the ids of the edits it made) — all in one
        transaction, every row audited."""
        check_text("description", description)
        if sum(entry["made"] for entry in report["drift"]) != len(edits):
            raise InvalidArgument("the drift report does not account for every rebased edit")

        def create(session: Session) -> int:
            origin_row = self._model(session, origin_model)
            onto_row = self._model(session, onto)
            lineage = session.get(ModelLineage, onto_row.id)
            if lineage is None or lineage.predecessor_id != origin_row.id:
                raise FailedPrecondition(f"model {onto!r} is not registered as a successor of {origin_model!r}")
            origin_version = self._version_row(session, origin_row.id, origin_number)
            edit_ids = [self._insert_edit(session, onto, edit, actor, description) for edit in edits]
            start, drift = 0, []
            for entry in report["drift"]:
                drift.append({**entry, "edit_ids": edit_ids[start : start + entry["made"]]})
                start += entry["made"]
            stored = _report_json({**report, "drift": drift})
            origin = f"models/{origin_model}/versions/{origin_number}"
            base = self._version_row(session, onto_row.id, 0)
            row = self._insert_version(session, onto, base, edit_ids, actor, description, {"origin": origin})
            session.add(
                RebaseRow(
                    version_id=row.id, origin_version_id=origin_version.id, report_json=stored, created_at=utc_now()
                )
            )
            audit.append(
                session,
                actor,
                "version.rebased",
                f"models/{onto}/versions/{row.number}",
                {
                    "origin": origin,
                    "report_sha256": hashlib.sha256(stored.encode()).hexdigest(),
                    "summary": report["summary"],
                },
            )
            return row.id

        request = self._rebase_request(origin_model, origin_number, onto, description)
        return self._idempotent(request_id, "rebase_version", create, self._rebase_info, actor, request)

    def get_rebase(self, model: str, number: int) -> RebaseInfo:
        """The rebase that made ``models/{model}/versions/{number}``, its report checked against the
        audit log (DATA_LOSS where the row was changed outside Scalpel)."""
        with self._read() as session:
            row = self._version_row(session, self._model(session, model).id, number)
            stored = session.get(RebaseRow, row.id)
            if stored is None:
                raise NotFound(f"models/{model}/versions/{number} was not made by a rebase")
            info, report_json = self._rebase_info(session, row.id), stored.report_json
        logged = self._logged_payload("version.rebased", f"models/{model}/versions/{number}") or {}
        if logged.get("report_sha256") != hashlib.sha256(report_json.encode()).hexdigest() or logged.get("origin") != (
            info.origin
        ):
            raise ArtifactIntegrityError(
                f"models/{model}/versions/{number}'s rebase report or origin is not the one the audit log "
                "recorded: the row was changed outside Scalpel; refusing to use it"
            )
        return info
