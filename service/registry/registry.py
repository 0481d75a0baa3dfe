"""Registry operations. Each is one transaction that also appends its audit event: a failure
anywhere leaves no rows behind. Create operations accept a ``request_id``; repeating it returns
the first result.

Rollback semantics: an alias's moves form an undo stack. ``rollback`` with no target undoes the
most recent move not already undone (so two rollbacks in a row go back two moves); with a
target (``rollback_to`` in the history) it moves the alias there, a move that can itself be undone.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from editors import Edit, InvalidEditError, artifact_blobs_by_hash, edit_from_json
from service.db.engine import make_engine, read_only
from service.db.models import (
    AliasMove,
    AliasRow,
    ApiKey,
    Artifact,
    AuditEvent,
    CheckRun,
    CheckSuite,
    CurrentSuite,
    EditArtifact,
    EditRow,
    IdempotencyRecord,
    ModelRow,
    VersionEdit,
    VersionRow,
)
from service.registry import audit
from service.registry.errors import (
    AlreadyExists,
    ArtifactIntegrityError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from service.registry.replay import replay

ROLES = ("reader", "editor", "approver", "admin")
#: PostgreSQL NOTIFY channel of alias moves (payload ``model/alias``): a wake-up, never the truth.
ALIAS_CHANNEL = "scalpel_alias"
RUN_STATES = ("running", "passed", "failed", "interrupted")
DEFAULT_MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


#: Longest audit filter value (SQLite refuses LIKE patterns beyond 50,000 bytes; none is that long).
MAX_FILTER_CHARS = 1000
#: Alias and key names: ASCII letters, digits, '.', '_' and '-', starting and ending with a letter or
#: digit, at most 63 characters. The same rule on SQLite and PostgreSQL, and safe in resource names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", re.ASCII)


def check_name(kind: str, name: object) -> str:
    """``name`` if it matches :data:`NAME_PATTERN` and has no '..'; else InvalidArgument."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        shown = repr(name)[:80]
        raise InvalidArgument(
            f"{kind} name {shown} is not allowed: use 1-63 ASCII letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def _now() -> datetime:
    return datetime.now(UTC)


def _new_etag() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str  # "" when there is no next page


def _encode_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode()


def _decode_token(token: str) -> int | None:
    if not token:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "after" or not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"page_token {token[:64]!r} is not a token this API returned") from exc


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    weights_sha256: str
    created_by: str
    created_at: datetime


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
class _MoveRequest:
    """Who asks to move an alias, how, and with what authority."""

    action: str  # promote | rollback | rollback_to
    actor: str
    actor_role: str
    expected_etag: str | None
    reason: str
    force: bool


class Registry:
    """Domain operations over one database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine | str | None = None, max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES):
        self.engine = engine if isinstance(engine, Engine) else make_engine(engine)
        self.max_artifact_bytes = max_artifact_bytes
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(read_only(self.engine), expire_on_commit=False)

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction; the audit head is locked first, serialising writers."""
        with self._sessions.begin() as session:
            audit.lock_head(session)
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._read_sessions.begin() as session:
            yield session

    def _idempotent(
        self,
        request_id: str | None,
        operation: str,
        create: Callable[[Session], int],
        load: Callable[[Session, int], T],
        actor: str = "",
        request: object = None,
    ) -> T:
        """Run ``create`` once per (``actor``, ``request_id``); a repeat of the same ``request`` (any
        JSON value describing it) returns ``load`` of the first result; a repeat with a different
        request is refused, naming the key, rather than silently dropped."""
        if request_id is not None and (not isinstance(request_id, str) or not 0 < len(request_id) <= 200):
            raise InvalidArgument("request_id must be a non-empty string of at most 200 characters")
        fingerprint = hashlib.sha256(json.dumps([operation, request], sort_keys=True, default=str).encode()).hexdigest()
        with self._write() as session:
            if request_id:
                record = session.get(IdempotencyRecord, (actor, request_id))
                if record is not None:
                    if record.operation != operation:
                        raise AlreadyExists(f"request_id {request_id!r} was already used for {record.operation}")
                    if record.request_sha256 not in (None, fingerprint):
                        raise InvalidArgument(
                            f"request_id {request_id!r} was already used for a different {operation} request; "
                            "use a new request_id for a new request"
                        )
                    return load(session, record.result_id)
            result_id = create(session)
            if request_id:
                session.add(
                    IdempotencyRecord(
                        actor=actor,
                        request_id=request_id,
                        operation=operation,
                        request_sha256=fingerprint,
                        result_id=result_id,
                        created_at=_now(),
                    )
                )
            session.flush()
            return load(session, result_id)

    # -- models ---------------------------------------------------------------------------------
    def _model(self, session: Session, name: str) -> ModelRow:
        row = session.execute(select(ModelRow).where(ModelRow.name == name)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"model {name!r} is not registered")
        return row

    @staticmethod
    def _model_info(row: ModelRow) -> ModelInfo:
        return ModelInfo(row.name, row.source, row.weights_sha256, row.created_by, row.created_at)

    def register_model(
        self, name: str, source: str, weights_sha256: str, actor: str, request_id: str | None = None
    ) -> ModelInfo:
        """Register a base model; creates its version 0 (the base) and the ``production`` alias on it."""
        if not isinstance(name, str) or not name or len(name) > 200 or "/" in name:
            raise InvalidArgument("model name must be 1-200 characters without '/'")
        if not isinstance(weights_sha256, str) or len(weights_sha256) != 64:
            raise InvalidArgument("weights_sha256 must be a 64-character hex SHA-256")

        def create(session: Session) -> int:
            if session.execute(select(ModelRow.id).where(ModelRow.name == name)).first():
                raise AlreadyExists(f"model {name!r} is already registered")
            now = _now()
            model = ModelRow(name=name, source=source, weights_sha256=weights_sha256, created_by=actor, created_at=now)
            session.add(model)
            session.flush()
            base = VersionRow(
                model_id=model.id, number=0, parent_id=None, author=actor, description="base model", created_at=now
            )
            session.add(base)
            session.flush()
            session.add(
                AliasRow(
                    model_id=model.id,
                    name="production",
                    version_id=base.id,
                    etag=_new_etag(),
                    updated_by=actor,
                    updated_at=now,
                )
            )
            audit.append(
                session,
                actor,
                "model.registered",
                f"models/{name}",
                {"source": source, "weights_sha256": weights_sha256},
            )
            return model.id

        return self._idempotent(
            request_id,
            "register_model",
            create,
            lambda s, i: self._model_info(s.get(ModelRow, i)),
            actor,
            [name, source, weights_sha256],
        )

    def get_model(self, name: str) -> ModelInfo:
        with self._read() as session:
            return self._model_info(self._model(session, name))

    def list_models(self, page_size: int = 50, page_token: str = "") -> Page:
        return self._page(select(ModelRow), ModelRow.id, page_size, page_token, lambda _, r: self._model_info(r))

    def _page(
        self, query: Any, id_column: Any, page_size: int, page_token: str, convert: Callable[[Session, Any], Any]
    ) -> Page:
        """Newest first; the token is opaque to callers (it encodes the last id returned)."""
        if not isinstance(page_size, int) or not 1 <= page_size <= 1000:
            raise InvalidArgument("page_size must be between 1 and 1000")
        after = _decode_token(page_token)
        if after is not None:
            query = query.where(id_column < after)
        with self._read() as session:
            rows = session.execute(query.order_by(id_column.desc()).limit(page_size + 1)).scalars().all()
            items = [convert(session, row) for row in rows[:page_size]]
            last_id = getattr(rows[page_size - 1], id_column.key) if len(rows) > page_size else None
        return Page(items, _encode_token(last_id) if last_id is not None else "")

    # -- artifacts ------------------------------------------------------------------------------
    def _store_artifact(self, session: Session, blob: bytes) -> str:
        if len(blob) > self.max_artifact_bytes:
            raise ResourceExhausted(
                f"artifact of {len(blob)} bytes exceeds the limit of {self.max_artifact_bytes} bytes"
            )
        digest = hashlib.sha256(blob).hexdigest()
        if session.get(Artifact, digest) is None:
            session.add(Artifact(sha256=digest, size=len(blob), data=blob, created_at=_now()))
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

    # -- edits ----------------------------------------------------------------------------------
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

    def create_edit(
        self, model: str, edit: Edit, actor: str, description: str = "", request_id: str | None = None
    ) -> EditInfo:
        """Store an edit (same content → the same edit, no second row) with its artifacts."""
        if not isinstance(edit, Edit):
            raise InvalidArgument("edit must be an editors.Edit value")
        spec_json = edit.to_json()
        names = {name: ref["sha256"] for name, ref in edit.spec()["artifacts"].items()}
        blobs = artifact_blobs_by_hash(edit)

        def create(session: Session) -> int:
            model_row = self._model(session, model)
            existing = session.execute(
                select(EditRow.id).where(EditRow.model_id == model_row.id, EditRow.spec_sha256 == edit.id)
            ).scalar_one_or_none()
            if existing is not None:
                return existing
            for blob in blobs.values():
                self._store_artifact(session, blob)
            row = EditRow(
                model_id=model_row.id,
                kind=edit.kind,
                spec_json=spec_json,
                spec_sha256=edit.id,
                author=actor,
                description=description,
                created_at=_now(),
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

        return self._idempotent(
            request_id,
            "create_edit",
            create,
            lambda s, i: self._edit_info(s, s.get(EditRow, i)),
            actor,
            [model, edit.id, description],
        )

    def get_edit(self, model: str, edit_id: int) -> EditInfo:
        with self._read() as session:
            row = session.get(EditRow, edit_id)
            if row is None or row.model_id != self._model(session, model).id:
                raise NotFound(f"edit {edit_id} of model {model!r} does not exist")
            return self._edit_info(session, row)

    def load_edit(self, model: str, edit_id: int) -> Edit:
        """The stored edit as an ``editors.Edit`` (artifacts verified on read)."""
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

    # -- versions -------------------------------------------------------------------------------
    def _version_row(self, session: Session, model_id: int, number: int) -> VersionRow:
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
        status = self._status(session, version)
        if status in ("base", "unchecked"):
            return status
        run_id = self._latest_run(session, version).id
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
        return VersionInfo(
            model.name,
            row.number,
            parent,
            self._edit_ids(session, row.id),
            self._status(session, row),
            row.author,
            row.description,
            row.created_at,
        )

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
            number = (
                session.execute(
                    select(func.max(VersionRow.number)).where(VersionRow.model_id == model_row.id)
                ).scalar_one()
                + 1
            )
            row = VersionRow(
                model_id=model_row.id,
                number=number,
                parent_id=parent_row.id,
                author=actor,
                description=description,
                created_at=_now(),
            )
            session.add(row)
            session.flush()
            session.add_all(VersionEdit(version_id=row.id, position=i, edit_id=e) for i, e in enumerate(edits))
            audit.append(
                session,
                actor,
                "version.created",
                f"models/{model}/versions/{number}",
                {"parent": parent, "edits": edits, "appended": list(append), "removed": remove},
            )
            return row.id

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

    def _logged_payload(self, action: str, subject: str) -> dict[str, Any] | None:
        """The payload of the latest ``action`` event on ``subject`` (None: there is none)."""
        with self._read() as session:
            payload_json = session.execute(
                select(AuditEvent.payload_json)
                .where(AuditEvent.action == action, AuditEvent.subject == subject)
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            ).scalar_one_or_none()
        return None if payload_json is None else json.loads(payload_json)

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

    # -- checks ---------------------------------------------------------------------------------
    def set_suite(self, model: str, spec: dict[str, Any], actor: str) -> str:
        """Make ``spec`` the model's current check suite; returns its SHA-256."""
        try:
            spec_json = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"suite is not JSON: {exc}") from exc
        digest = hashlib.sha256(spec_json.encode()).hexdigest()
        with self._write() as session:
            model_row = self._model(session, model)
            suite = session.execute(
                select(CheckSuite).where(CheckSuite.model_id == model_row.id, CheckSuite.suite_sha256 == digest)
            ).scalar_one_or_none()
            if suite is None:
                suite = CheckSuite(
                    model_id=model_row.id, suite_sha256=digest, spec_json=spec_json, author=actor, created_at=_now()
                )
                session.add(suite)
                session.flush()
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                session.add(CurrentSuite(model_id=model_row.id, suite_id=suite.id))
            else:
                current.suite_id = suite.id
            audit.append(session, actor, "suite.set", f"models/{model}", {"suite_sha256": digest})
        return digest

    def record_check_run(
        self,
        model: str,
        version: int,
        state: str,
        results: list[dict[str, Any]],
        actor: str,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
    ) -> RunInfo:
        """Record a run of the current suite on ``version`` (its status then follows this run)."""
        if state not in RUN_STATES:
            raise InvalidArgument(f"state must be one of {', '.join(RUN_STATES)}")
        with self._write() as session:
            model_row = self._model(session, model)
            version_row = self._version_row(session, model_row.id, version)
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                raise FailedPrecondition(f"model {model!r} has no check suite")
            run = CheckRun(
                version_id=version_row.id,
                suite_id=current.suite_id,
                state=state,
                results_json=json.dumps(results, sort_keys=True),
                started_at=started_at or _now(),
                finished_at=finished_at or (None if state == "running" else _now()),
            )
            session.add(run)
            session.flush()
            suite = session.get(CheckSuite, current.suite_id)
            audit.append(
                session,
                actor,
                "checks.run",
                f"models/{model}/versions/{version}",
                {"run": run.id, "state": state, "suite_sha256": suite.suite_sha256},
            )
            return RunInfo(run.id, model, version, suite.suite_sha256, state, results, run.started_at, run.finished_at)

    def get_suite(self, model: str) -> tuple[str, dict[str, Any]]:
        """The model's current suite: (SHA-256, spec)."""
        with self._read() as session:
            model_row = self._model(session, model)
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                raise NotFound(f"model {model!r} has no check suite")
            suite = session.get(CheckSuite, current.suite_id)
            return suite.suite_sha256, json.loads(suite.spec_json)

    def _run_info(self, session: Session, run: CheckRun) -> RunInfo:
        version = session.get(VersionRow, run.version_id)
        model = session.get(ModelRow, version.model_id)
        suite = session.get(CheckSuite, run.suite_id)
        return RunInfo(
            run.id,
            model.name,
            version.number,
            suite.suite_sha256,
            run.state,
            json.loads(run.results_json),
            run.started_at,
            run.finished_at,
            run.claimed_by,
        )

    def start_check_run(
        self,
        model: str,
        version: int,
        actor: str,
        claimed_by: str | None = None,
        request_id: str | None = None,
    ) -> RunInfo:
        """A ``running`` run of the current suite on ``version``, claimed by replica ``claimed_by``;
        finish it with :meth:`finish_check_run` and keep it alive with :meth:`heartbeat`. A repeated
        ``request_id`` returns the run it started (in whatever state it is now)."""

        def create(session: Session) -> int:
            model_row = self._model(session, model)
            version_row = self._version_row(session, model_row.id, version)
            current = session.get(CurrentSuite, model_row.id)
            if current is None:
                raise FailedPrecondition(f"model {model!r} has no check suite")
            now = _now()
            run = CheckRun(
                version_id=version_row.id,
                suite_id=current.suite_id,
                state="running",
                results_json="[]",
                started_at=now,
                finished_at=None,
                claimed_by=claimed_by,
                heartbeat_at=now,
            )
            session.add(run)
            session.flush()
            audit.append(session, actor, "checks.started", f"models/{model}/versions/{version}", {"run": run.id})
            return run.id

        return self._idempotent(
            request_id,
            "start_check_run",
            create,
            lambda s, i: self._run_info(s, s.get(CheckRun, i)),
            actor,
            [model, version],
        )

    def finish_check_run(self, run_id: int, state: str, results: list[dict[str, Any]], actor: str) -> RunInfo:
        if state not in ("passed", "failed", "interrupted"):
            raise InvalidArgument("a run finishes as passed, failed or interrupted")
        with self._write() as session:
            run = session.get(CheckRun, run_id)
            if run is None:
                raise NotFound(f"check run {run_id} does not exist")
            if run.state != "running":
                raise FailedPrecondition(f"check run {run_id} already finished as {run.state!r}")
            run.state, run.results_json, run.finished_at = state, json.dumps(results, sort_keys=True), _now()
            info = self._run_info(session, run)
            audit.append(
                session,
                actor,
                "checks.finished",
                f"models/{info.model}/versions/{info.version}",
                {"run": run_id, "state": state},
            )
            return info

    def get_check_run(self, run_id: int) -> RunInfo:
        with self._read() as session:
            run = session.get(CheckRun, run_id)
            if run is None:
                raise NotFound(f"check run {run_id} does not exist")
            return self._run_info(session, run)

    def heartbeat(self, run_id: int, progress: tuple[int, int, str] | None = None) -> None:
        """The executing replica is alive, and (optionally) how far the run is: (done, total, current
        check). Operational metadata, so no audit event."""
        values: dict[str, Any] = {"heartbeat_at": _now()}
        if progress is not None:
            values.update(progress_done=progress[0], progress_total=progress[1], progress_current=progress[2][:100])
        with self._sessions.begin() as session:
            session.execute(update(CheckRun).where(CheckRun.id == run_id, CheckRun.state == "running").values(**values))

    def run_progress(self, run_id: int) -> tuple[str, int, int, str]:
        """(state, done, total, current) of a run, as its executing replica last reported."""
        with self._read() as session:
            row = session.execute(
                select(
                    CheckRun.state, CheckRun.progress_done, CheckRun.progress_total, CheckRun.progress_current
                ).where(CheckRun.id == run_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"check run {run_id} does not exist")
        return row[0], row[1], row[2], row[3]

    def interrupt_stale_runs(self, actor: str, stale_after_seconds: float) -> list[int]:
        """Mark interrupted every running run whose executor has not sent a heartbeat for
        ``stale_after_seconds`` (it died); runs other replicas are executing are left alone."""
        cutoff = _now() - timedelta(seconds=stale_after_seconds)
        with self._write() as session:
            runs = (
                session.execute(
                    select(CheckRun)
                    .where(
                        CheckRun.state == "running",
                        (CheckRun.heartbeat_at.is_(None)) | (CheckRun.heartbeat_at <= cutoff),
                    )
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for run in runs:
                run.state, run.finished_at = "interrupted", _now()
                audit.append(
                    session,
                    actor,
                    "checks.interrupted",
                    f"runs/{run.id}",
                    {"run": run.id, "claimed_by": run.claimed_by},
                )
            return [run.id for run in runs]

    # -- aliases --------------------------------------------------------------------------------
    def _alias_row(self, session: Session, model_id: int, name: str) -> AliasRow | None:
        return session.execute(
            select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.name == name)
        ).scalar_one_or_none()

    def _alias_info(self, session: Session, model: str, row: AliasRow) -> AliasInfo:
        version = session.get(VersionRow, row.version_id)
        return AliasInfo(model, row.name, version.number, row.etag, row.updated_by, row.updated_at)

    def all_aliases(self) -> dict[tuple[str, str], int]:
        """Every alias's version, in one query: (model, alias) → version number."""
        with self._read() as session:
            rows = session.execute(
                select(ModelRow.name, AliasRow.name, VersionRow.number)
                .join(AliasRow, AliasRow.model_id == ModelRow.id)
                .join(VersionRow, VersionRow.id == AliasRow.version_id)
            ).all()
        return {(model, alias): number for model, alias, number in rows}

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
        row = self._alias_row(session, model_row.id, name)
        self._check_etag(name, row, move.expected_etag)
        forced = self._admit(session, model, row, target, move)
        now, etag = _now(), _new_etag()
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
        if session.get_bind().dialect.name == "postgresql":  # wake the other replicas (delivered at commit)
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": ALIAS_CHANNEL, "payload": f"{model}/{name}"}
            )
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
        elif expected_etag is None or expected_etag == "":
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

    # -- API keys -------------------------------------------------------------------------------
    @staticmethod
    def _key_info(row: ApiKey) -> KeyInfo:
        return KeyInfo(row.name, row.prefix, row.role, row.created_by, row.created_at, row.revoked_at)

    @staticmethod
    def _secret_hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def create_key(self, name: str, role: str, actor: str) -> tuple[KeyInfo, str]:
        """A new API key; the secret is returned once and stored only as a hash."""
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}")
        check_name("key", name)
        prefix = secrets.token_hex(4)
        secret = f"sk_{prefix}_{secrets.token_urlsafe(32)}"
        with self._write() as session:
            if session.execute(select(ApiKey.id).where(ApiKey.name == name)).first():
                raise AlreadyExists(f"key {name!r} already exists")
            row = ApiKey(
                name=name,
                prefix=prefix,
                secret_hash=self._secret_hash(secret),
                role=role,
                created_by=actor,
                created_at=_now(),
            )
            session.add(row)
            audit.append(session, actor, "key.created", f"keys/{name}", {"role": role, "prefix": prefix})
            session.flush()
            return self._key_info(row), secret

    def verify_key(self, secret: str) -> KeyInfo | None:
        """The key's info if ``secret`` is a live key, else None."""
        if not isinstance(secret, str) or not secret.startswith("sk_"):
            return None
        prefix = secret[3:].partition("_")[0]
        with self._read() as session:
            row = session.execute(select(ApiKey).where(ApiKey.prefix == prefix)).scalar_one_or_none()
            if row is None or row.revoked_at is not None:
                return None
            if not secrets.compare_digest(row.secret_hash, self._secret_hash(secret)):
                return None
            return self._key_info(row)

    def revoke_key(self, name: str, actor: str) -> KeyInfo:
        with self._write() as session:
            row = session.execute(select(ApiKey).where(ApiKey.name == name)).scalar_one_or_none()
            if row is None:
                raise NotFound(f"key {name!r} does not exist")
            if row.revoked_at is None:
                row.revoked_at = _now()
                audit.append(session, actor, "key.revoked", f"keys/{name}", {"prefix": row.prefix})
            return self._key_info(row)

    def list_keys(self, page_size: int = 50, page_token: str = "") -> Page:
        return self._page(select(ApiKey), ApiKey.id, page_size, page_token, lambda _, r: self._key_info(r))

    # -- audit ----------------------------------------------------------------------------------
    def list_audit(
        self,
        page_size: int = 50,
        page_token: str = "",
        action: str | None = None,
        subject_prefix: str | None = None,
        actor: str | None = None,
    ) -> Page:
        """Audit events newest first, optionally filtered by exact action, subject prefix and actor."""
        for field, value in (("action", action), ("subject", subject_prefix), ("actor", actor)):
            if value and len(value) > MAX_FILTER_CHARS:
                raise InvalidArgument(f"the {field} filter is {len(value)} characters; at most {MAX_FILTER_CHARS}")
        query = select(AuditEvent)
        if action:
            query = query.where(AuditEvent.action == action)
        if subject_prefix:
            query = query.where(AuditEvent.subject.startswith(subject_prefix, autoescape=True))
        if actor:
            query = query.where(AuditEvent.actor == actor)
        return self._page(query, AuditEvent.seq, page_size, page_token, lambda _, event: event)

    def verify_audit(self, expect_head: str = "") -> audit.VerifyResult:
        """Verify the chain; ``expect_head`` ("SEQ:HASH", pinned earlier) must still be in it."""
        try:
            pinned = audit.parse_head(expect_head) if expect_head else None
        except ValueError as exc:
            raise InvalidArgument(f"expect_head: {exc}") from None
        with self.engine.connect() as connection:
            result = audit.verify(connection, expect_head=pinned)
            if not result.ok:  # a broken chain is the finding: replaying it would prove nothing
                return result
            mismatches = tuple(replay(connection))
        if not mismatches:
            return result
        return dataclasses.replace(
            result,
            ok=False,
            mismatches=mismatches,
            problem=result.problem or f"{len(mismatches)} rows disagree with the audit log; first: {mismatches[0]}",
        )
