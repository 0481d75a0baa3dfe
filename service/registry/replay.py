"""Replay the audit log against the state tables: every row must be what its events say it is.

The hash chain proves the log was not rewritten; it says nothing about the tables next to it. Each
event already carries the state it created (an edit's spec hash, a version's ordered edit ids, an
alias's target, a run's state, a key's role), so replaying the log in order gives the state the
tables must hold. :func:`replay` names every row that disagrees, or that no event accounts for.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, select

from service.db.models import (
    AliasRow,
    ApiKey,
    AuditEvent,
    CheckRun,
    CheckSuite,
    CurrentSuite,
    EditRow,
    ModelRow,
    VersionEdit,
    VersionRow,
)


def expected_state(connection: Connection) -> tuple[dict[str, Any], list[str]]:
    """The state the audit log describes, keyed by resource name, and the events whose payload
    does not hold what their action records (a forged or damaged event: named, never a crash)."""
    state: dict[str, Any] = {}
    malformed: list[str] = []
    events = connection.execute(
        select(AuditEvent.seq, AuditEvent.action, AuditEvent.subject, AuditEvent.payload_json).order_by(AuditEvent.seq)
    )
    for seq, action, subject, payload_json in events:
        try:
            _apply(state, action, subject, json.loads(payload_json))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            malformed.append(f"audit event {seq} ({action}): its payload lacks what the action records ({exc!r})")
    return state, malformed


def _apply(state: dict[str, Any], action: str, subject: str, payload: dict[str, Any]) -> None:
    """One event's effect on the described state."""
    if action == "model.registered":
        state[subject] = payload["weights_sha256"]
        state[f"{subject}/versions/0"] = []
        state[f"{subject}/aliases/production"] = 0
    elif action == "edit.created":
        state[subject] = payload["spec_sha256"]
    elif action == "version.created":
        state[subject] = list(payload["edits"])
    elif action == "alias.deleted":
        state.pop(subject, None)
    elif action.startswith("alias."):
        state[subject] = payload["to"]
    elif action == "suite.set":
        state[f"{subject}/suite"] = payload["suite_sha256"]
    elif action == "checks.started":
        state[f"runs/{payload['run']}"] = "running"
    elif action in ("checks.finished", "checks.run"):
        state[f"runs/{payload['run']}"] = payload["state"]
    elif action == "checks.interrupted":
        state[f"runs/{payload['run']}"] = "interrupted"
    elif action == "key.created":
        state[subject] = (payload["role"], payload["prefix"], False)
    elif action == "key.revoked":
        role, prefix, _ = state.get(subject, ("?", payload["prefix"], True))
        state[subject] = (role, prefix, True)


def actual_state(connection: Connection) -> dict[str, Any]:
    """The same keys, read from the tables (an edit whose spec no longer hashes to its recorded
    SHA-256 reports the hash of what is stored)."""
    state: dict[str, Any] = {}
    models = dict(connection.execute(select(ModelRow.id, ModelRow.name)).all())
    for name, weights in connection.execute(select(ModelRow.name, ModelRow.weights_sha256)):
        state[f"models/{name}"] = weights
    for edit_id, model_id, spec_json, spec_sha256 in connection.execute(
        select(EditRow.id, EditRow.model_id, EditRow.spec_json, EditRow.spec_sha256)
    ):
        stored = hashlib.sha256(spec_json.encode()).hexdigest()
        state[f"models/{models[model_id]}/edits/{edit_id}"] = spec_sha256 if stored == spec_sha256 else stored
    numbers: dict[int, int] = {}  # version id → number
    names: dict[int, str] = {}  # version id → resource name
    for version_id, model_id, number in connection.execute(
        select(VersionRow.id, VersionRow.model_id, VersionRow.number)
    ):
        numbers[version_id] = number
        names[version_id] = f"models/{models[model_id]}/versions/{number}"
        state[names[version_id]] = []
    for version_id, edit_id in connection.execute(
        select(VersionEdit.version_id, VersionEdit.edit_id).order_by(VersionEdit.version_id, VersionEdit.position)
    ):
        state[names[version_id]].append(edit_id)
    for model_id, name, version_id in connection.execute(
        select(AliasRow.model_id, AliasRow.name, AliasRow.version_id).where(AliasRow.deleted_at.is_(None))
    ):
        state[f"models/{models[model_id]}/aliases/{name}"] = numbers[version_id]
    for model_id, digest in connection.execute(
        select(CurrentSuite.model_id, CheckSuite.suite_sha256).join(CheckSuite, CheckSuite.id == CurrentSuite.suite_id)
    ):
        state[f"models/{models[model_id]}/suite"] = digest
    for run_id, run_state in connection.execute(select(CheckRun.id, CheckRun.state)):
        state[f"runs/{run_id}"] = run_state
    for name, role, prefix, revoked_at in connection.execute(
        select(ApiKey.name, ApiKey.role, ApiKey.prefix, ApiKey.revoked_at)
    ):
        state[f"keys/{name}"] = (role, prefix, revoked_at is not None)
    return state


def replay(connection: Connection) -> list[str]:
    """Every resource whose row disagrees with the audit log, one line each, by name."""
    (expected, problems), actual = expected_state(connection), actual_state(connection)
    for name in sorted(expected.keys() | actual.keys()):
        if name not in actual:
            problems.append(f"{name}: the audit log records it but its row is missing")
        elif name not in expected:
            problems.append(f"{name}: its row has no audit event (inserted outside Scalpel?)")
        elif _normal(expected[name]) != _normal(actual[name]):
            problems.append(
                f"{name}: the row holds {_shown(actual[name])}, the audit log says {_shown(expected[name])}"
            )
    return problems


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _shown(value: Any) -> str:
    text = json.dumps(_normal(value))
    return text if len(text) <= 80 else text[:80] + "…"
