"""Aliases and their history: the one rule for moving an alias lives here (``_admit``).

Rollback semantics: an alias's moves form an undo stack. ``rollback`` with no target undoes the
most recent move not already undone (so two rollbacks in a row go back two moves); with a
target (``rollback_to`` in the history) it moves the alias there, a move that can itself be undone."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from service.db.models import (
    AliasMove,
    AliasRow,
    AuditEvent,
    ModelRow,
    VersionRow,
)
from service.registry import audit
from service.registry.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from service.registry.infos import (
    AliasInfo,
    AliasMoveInfo,
)
from service.registry.unit_of_work import (
    Page,
    UnitOfWork,
    check_name,
    check_text,
    new_etag,
    utc_now,
)

#: PostgreSQL NOTIFY channel of alias moves (payload ``model/alias``): a wake-up, never the truth.
ALIAS_CHANNEL = "scalpel_alias"


@dataclass(frozen=True)
class _MoveRequest:
    """Who asks to move an alias, how, and with what authority."""

    action: str  # promote | rollback | rollback_to
    actor: str
    actor_role: str
    expected_etag: str | None
    reason: str
    force: bool


class AliasMoves(UnitOfWork):
    """Aliases and their history: the one rule for moving an alias lives here (``_admit``)."""

    def _alias_row(self, session: Session, model_id: int, name: str) -> AliasRow | None:
        """The live alias of that name (deleted ones keep their rows, out of every read)."""
        return session.execute(
            select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.name == name, AliasRow.deleted_at.is_(None))
        ).scalar_one_or_none()

    def _alias_info(self, session: Session, model: str, row: AliasRow) -> AliasInfo:
        version = session.get(VersionRow, row.version_id)
        return AliasInfo(model, row.name, version.number, row.etag, row.updated_by, row.updated_at)

    def list_aliases(self, model: str, page_size: int = 50, page_token: str = "") -> Page:
        """A model's aliases and where each points now."""
        with self._read() as session:
            model_id = self._model(session, model).id
        return self._page(
            select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.deleted_at.is_(None)),
            AliasRow.id,
            page_size,
            page_token,
            lambda session, row: self._alias_info(session, model, row),
        )

    def all_aliases(self) -> dict[tuple[str, str], int]:
        """Every alias's version, in one query: (model, alias) → version number."""
        with self._read() as session:
            rows = session.execute(
                select(ModelRow.name, AliasRow.name, VersionRow.number)
                .join(AliasRow, AliasRow.model_id == ModelRow.id)
                .join(VersionRow, VersionRow.id == AliasRow.version_id)
                .where(AliasRow.deleted_at.is_(None))
            ).all()
        return {(model, alias): number for model, alias, number in rows}

    def alias_problem(self, model: str, alias: str, version: int) -> str:
        """ "" when the audit log's latest move of the alias is to ``version`` (its row's target);
        else why no replica may serve through it (the row was changed outside Scalpel)."""
        subject = f"models/{model}/aliases/{alias}"
        with self._read() as session:
            latest = session.execute(
                select(AuditEvent.action, AuditEvent.payload_json)
                .where(AuditEvent.subject == subject, AuditEvent.action.startswith("alias."))
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            ).one_or_none()
        try:
            if latest is None:
                logged = 0 if alias == "production" else None  # registering a model points production at 0
            else:
                logged = None if latest.action == "alias.deleted" else json.loads(latest.payload_json)["to"]
        except (ValueError, KeyError, TypeError):
            logged = "an unreadable event"
        if logged == version:
            return ""
        return (
            f"alias {alias!r} of model {model!r} points at version {version}, but the audit log last moved it to "
            f"{'no version' if logged is None else logged}: the row was changed outside Scalpel, so no request is "
            "served through it (VerifyAudit lists the row; move the alias again to restore it)"
        )

    def get_alias(self, model: str, name: str) -> AliasInfo:
        with self._read() as session:
            row = self._alias_row(session, self._model(session, model).id, name)
            if row is None:
                raise NotFound(f"alias {name!r} of model {model!r} does not exist")
            return self._alias_info(session, model, row)

    def _move(
        self,
        session: Session,
        model: str,
        model_row: ModelRow,
        name: str,
        target: VersionRow,
        move: _MoveRequest,
    ) -> AliasInfo:
        """Every alias move goes through here: etag first, then :meth:`_admit`, then the write."""
        check_name("alias", name)  # before any query: PostgreSQL cannot even compare a NUL byte
        check_text("reason", move.reason)
        row = self._alias_row(session, model_row.id, name)
        self._check_etag(name, row, move.expected_etag)
        forced = self._admit(session, model, row, target, move)
        now, etag = utc_now(), new_etag()
        if row is None:
            row = AliasRow(
                model_id=model_row.id, name=name, version_id=target.id, etag=etag, updated_by=move.actor, updated_at=now
            )
            session.add(row)
            session.flush()
            from_id = None
        else:
            from_id = row.version_id
            moved = session.execute(
                update(AliasRow)
                .where(AliasRow.id == row.id, AliasRow.etag == move.expected_etag)
                .values(version_id=target.id, etag=etag, updated_by=move.actor, updated_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if moved != 1:
                raise Conflict(f"alias {name!r} was moved by someone else (etag {move.expected_etag!r} is stale)")
            session.refresh(row)
        session.add(
            AliasMove(
                alias_id=row.id,
                action=move.action,
                from_version_id=from_id,
                to_version_id=target.id,
                actor=move.actor,
                reason=move.reason,
                forced=forced,
                created_at=now,
            )
        )
        from_number = session.get(VersionRow, from_id).number if from_id else None
        self._notify(session, model, name)
        audit.append(
            session,
            move.actor,
            f"alias.{move.action}",
            f"models/{model}/aliases/{name}",
            {"from": from_number, "to": target.number, "forced": forced, "reason": move.reason},
        )
        return self._alias_info(session, model, row)

    @staticmethod
    def _check_etag(name: str, row: AliasRow | None, expected_etag: str | None) -> None:
        """A stale etag is ABORTED before anything else is judged, so a retried move reads as a conflict."""
        if row is None:
            if expected_etag:
                raise Conflict(f"alias {name!r} does not exist, but etag {expected_etag!r} was expected")
        elif not expected_etag:
            raise InvalidArgument(f"moving alias {name!r} needs its current etag")
        elif row.etag != expected_etag:
            raise Conflict(f"alias {name!r} was moved by someone else (etag {expected_etag!r} is stale)")

    def _admit(
        self, session: Session, model: str, row: AliasRow | None, target: VersionRow, move: _MoveRequest
    ) -> bool:
        """The one rule for moving an alias, whatever the call (promote, rollback, rollback_to).

        The target is admitted if its latest run against the model's current suite passed (or it
        is the base), or if the alias pointed at it before (an undo, or a named rollback to a
        version recorded in this alias's history), or if an admin forces it with a reason.
        Returns whether the move was forced past the checks.
        """
        if move.force and move.actor_role != "admin":
            raise PermissionDenied("only an admin may force an alias move")
        if move.force and not move.reason.strip():
            raise InvalidArgument("a forced alias move needs a reason")
        status = self._verified_status(session, model, target)
        if status in ("base", "passed"):
            return False
        if row is not None and self._served_before(session, row, target):
            return False
        if move.force:
            return True
        failing = self._failing_checks(session, target)
        detail = f" (failing: {', '.join(failing)})" if failing else ""
        raise FailedPrecondition(
            f"version {target.number} has status {status!r}{detail} and alias {row.name if row else ''!r} never "
            "pointed at it; only a version whose checks passed, or one the alias served before, can be moved to "
            "(an admin may force it with a reason)"
        )

    @staticmethod
    def _served_before(session: Session, row: AliasRow, target: VersionRow) -> bool:
        """Whether the alias's recorded history shows it pointing at ``target``."""
        return (
            session.execute(
                select(AliasMove.id)
                .where(
                    AliasMove.alias_id == row.id,
                    or_(AliasMove.to_version_id == target.id, AliasMove.from_version_id == target.id),
                )
                .limit(1)
            ).first()
            is not None
        )

    def promote(
        self,
        model: str,
        alias: str,
        version: int,
        actor: str,
        expected_etag: str | None,
        reason: str = "",
        force: bool = False,
        actor_role: str = "approver",
    ) -> AliasInfo:
        """Point ``alias`` at ``version``; refused unless :meth:`_admit` admits it."""
        move = _MoveRequest("promote", actor, actor_role, expected_etag, reason, force)
        with self._write() as session:
            model_row = self._model(session, model)
            target = self._version_row(session, model_row.id, version)
            return self._move(session, model, model_row, alias, target, move)

    def rollback(
        self,
        model: str,
        alias: str,
        actor: str,
        expected_etag: str,
        reason: str = "",
        to_version: int | None = None,
        force: bool = False,
        actor_role: str = "approver",
    ) -> AliasInfo:
        """Undo the alias's latest move not already undone, or move it to ``to_version``; the same
        rule as a promotion decides whether the target may serve (:meth:`_admit`)."""
        action = "rollback" if to_version is None else "rollback_to"
        move = _MoveRequest(action, actor, actor_role, expected_etag, reason, force)
        with self._write() as session:
            model_row = self._model(session, model)
            row = self._alias_row(session, model_row.id, alias)
            if row is None:
                raise NotFound(f"alias {alias!r} of model {model!r} does not exist")
            self._check_etag(alias, row, expected_etag)
            if to_version is not None:
                target = self._version_row(session, model_row.id, to_version)
            else:
                target_id = self._undo_target(session, row.id)
                if target_id is None:
                    raise FailedPrecondition(f"alias {alias!r} has no earlier move to roll back")
                target = session.get(VersionRow, target_id)
            return self._move(session, model, model_row, alias, target, move)

    def delete_alias(self, model: str, alias: str, actor: str, expected_etag: str | None, reason: str = "") -> None:
        """Delete ``alias``: requests naming it fail NOT_FOUND from then on, its name is free for a
        new alias (whose history starts empty), and its row and history stay for the audit.
        ``production`` is every request's default and cannot be deleted, only moved."""
        check_text("reason", reason)
        with self._write() as session:
            model_row = self._model(session, model)
            check_name("alias", alias)
            if alias == "production":
                raise FailedPrecondition("alias 'production' is every request's default: move it, do not delete it")
            row = self._alias_row(session, model_row.id, alias)
            if row is None:
                raise NotFound(f"alias {alias!r} of model {model!r} does not exist")
            if expected_etag and row.etag != expected_etag:
                raise Conflict(f"alias {alias!r} was moved by someone else (etag {expected_etag!r} is stale)")
            now = utc_now()
            row.deleted_at, row.updated_at, row.updated_by, row.etag = now, now, actor, new_etag()
            self._notify(session, model, alias)
            audit.append(
                session,
                actor,
                "alias.deleted",
                f"models/{model}/aliases/{alias}",
                {"from": session.get(VersionRow, row.version_id).number, "reason": reason},
            )

    @staticmethod
    def _notify(session: Session, model: str, alias: str) -> None:
        """Wake the other replicas (PostgreSQL delivers it at commit)."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": ALIAS_CHANNEL, "payload": f"{model}/{alias}"}
            )

    @staticmethod
    def _undo_target(session: Session, alias_id: int) -> int | None:
        pending_undos = 0
        moves = session.execute(
            select(AliasMove).where(AliasMove.alias_id == alias_id).order_by(AliasMove.id.desc())
        ).scalars()
        for move in moves:
            if move.action == "rollback":
                pending_undos += 1
            elif pending_undos:
                pending_undos -= 1
            else:
                return move.from_version_id
        return None

    def alias_history(self, model: str, alias: str, page_size: int = 50, page_token: str = "") -> Page:
        with self._read() as session:
            row = self._alias_row(session, self._model(session, model).id, alias)
            if row is None:
                raise NotFound(f"alias {alias!r} of model {model!r} does not exist")
            alias_id = row.id

        def convert(session: Session, move: AliasMove) -> AliasMoveInfo:
            from_number = session.get(VersionRow, move.from_version_id).number if move.from_version_id else None
            return AliasMoveInfo(
                move.action,
                from_number,
                session.get(VersionRow, move.to_version_id).number,
                move.actor,
                move.reason,
                move.forced,
                move.created_at,
            )

        return self._page(
            select(AliasMove).where(AliasMove.alias_id == alias_id), AliasMove.id, page_size, page_token, convert
        )
