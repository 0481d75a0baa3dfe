"""The registry on SQLite and PostgreSQL: versions, aliases, checks, keys, audit chain, integrity."""

from __future__ import annotations

import base64
import json
import threading

import pytest
import torch
from sqlalchemy import event, func, select, text

from editors import HeadAblation, Steering
from service.db.models import Base
from service.registry import (
    AlreadyExists,
    ArtifactIntegrityError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Registry,
    ResourceExhausted,
)

SHA = "ab" * 32
PASS = [{"check": "kl", "passed": True}]


@pytest.fixture
def registry(db_url) -> Registry:
    registry = Registry(db_url)
    yield registry
    registry.engine.dispose()


def steering(scale: float) -> Steering:
    return Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128), scale=scale)


def snapshot(registry: Registry) -> dict[str, object]:
    """Row count of every table plus the audit head: what "nothing changed" means."""
    with registry.engine.connect() as connection:
        counts = {
            t.name: connection.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }
        counts["head"] = tuple(connection.execute(text("SELECT seq, hash FROM audit_head")).one())
    return counts


def test_models_register_list_and_paginate(registry) -> None:
    for i in range(5):
        registry.register_model(f"m{i}", f"hub/m{i}", SHA, "alice")
    with pytest.raises(AlreadyExists):
        registry.register_model("m1", "hub/m1", SHA, "alice")
    names, token = [], ""
    while True:
        page = registry.list_models(page_size=2, page_token=token)
        names += [m.name for m in page.items]
        token = page.next_page_token
        if not token:
            break
    assert names == ["m4", "m3", "m2", "m1", "m0"]
    assert registry.get_alias("m0", "production").version == 0
    assert registry.get_version("m0", 0).status == "base"
    with pytest.raises(InvalidArgument, match="page_token"):
        registry.list_models(page_token="garbage")


def test_request_ids_make_creates_idempotent(registry) -> None:
    first = registry.register_model("m", "hub/m", SHA, "alice", request_id="r1")
    assert registry.register_model("m", "hub/m", SHA, "alice", request_id="r1") == first
    e1 = registry.create_edit("m", steering(2.0), "alice", request_id="r2")
    assert registry.create_edit("m", steering(2.0), "alice", request_id="r2").id == e1.id
    assert registry.create_edit("m", steering(2.0), "bob").id == e1.id  # same content, same edit
    v1 = registry.create_version("m", 0, "alice", append=[e1.id], request_id="r3")
    before = snapshot(registry)
    assert registry.create_version("m", 0, "alice", append=[e1.id], request_id="r3").number == v1.number
    assert snapshot(registry) == before
    with pytest.raises(AlreadyExists, match="already used for create_version"):
        registry.create_edit("m", steering(3.0), "alice", request_id="r3")
    # the same key with a different request is refused, naming the key, and writes nothing
    e2 = registry.create_edit("m", steering(4.0), "alice")
    before = snapshot(registry)
    with pytest.raises(InvalidArgument, match="'r3' was already used for a different create_version"):
        registry.create_version("m", 0, "alice", append=[e2.id], request_id="r3")
    assert snapshot(registry) == before
    # keys are the caller's own: bob's "r3" is a new request, not alice's version
    bobs = registry.create_version("m", 0, "bob", append=[e2.id], request_id="r3")
    assert bobs.number == v1.number + 1 and bobs.edit_ids == [e2.id]


def test_versions_append_revert_and_load_edits(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    edits = [registry.create_edit("m", steering(s), "alice").id for s in (1.0, 2.0, 3.0)]
    v1 = registry.create_version("m", 0, "alice", append=edits)
    v2 = registry.create_version("m", v1.number, "bob", remove=edits[1], description="revert the middle one")
    assert (v1.number, v2.number, v2.parent) == (1, 2, 1)
    assert v2.edit_ids == [edits[0], edits[2]] and registry.get_version("m", 1).edit_ids == edits
    assert [v.number for v in registry.list_versions("m").items] == [2, 1, 0]
    loaded = registry.load_edit("m", edits[2])
    assert loaded == steering(3.0)
    with pytest.raises(NotFound):
        registry.create_version("m", 0, "alice", append=[999])
    with pytest.raises(InvalidArgument):
        registry.create_version("m", 0, "alice", remove=edits[0])


def test_status_follows_the_latest_run_of_the_current_suite_and_gates_promotion(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    edit = registry.create_edit("m", HeadAblation(layer=1, heads=(0,)), "alice")
    v1 = registry.create_version("m", 0, "alice", append=[edit.id])
    etag = registry.get_alias("m", "production").etag
    assert v1.status == "unchecked"
    with pytest.raises(FailedPrecondition, match="unchecked"):
        registry.promote("m", "production", 1, "carol", etag)
    registry.set_suite("m", {"kl_max": 0.5}, "alice")
    registry.record_check_run("m", 1, "failed", [{"check": "kl", "passed": False}], "checker")
    assert registry.get_version("m", 1).status == "failed"
    with pytest.raises(FailedPrecondition, match="failed"):
        registry.promote("m", "production", 1, "carol", etag)
    registry.record_check_run("m", 1, "passed", PASS, "checker")
    assert registry.get_version("m", 1).status == "passed"
    registry.set_suite("m", {"kl_max": 0.1}, "alice")  # a new suite: the old run no longer counts
    assert registry.get_version("m", 1).status == "unchecked"
    with pytest.raises(PermissionDenied):
        registry.promote("m", "production", 1, "carol", etag, reason="hotfix", force=True, actor_role="approver")
    with pytest.raises(InvalidArgument, match="reason"):
        registry.promote("m", "production", 1, "root", etag, force=True, actor_role="admin")
    moved = registry.promote("m", "production", 1, "root", etag, reason="incident 42", force=True, actor_role="admin")
    assert moved.version == 1 and moved.etag != etag
    move = registry.alias_history("m", "production").items[0]
    assert (move.actor, move.reason, move.forced, move.to_version) == ("root", "incident 42", True, 1)


def test_rollback_is_an_undo_stack(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    for scale in (1.0, 2.0):
        edit = registry.create_edit("m", steering(scale), "alice")
        version = registry.create_version("m", 0, "alice", append=[edit.id])
        registry.record_check_run("m", version.number, "passed", PASS, "checker")
    etag = registry.get_alias("m", "production").etag
    etag = registry.promote("m", "production", 1, "carol", etag).etag
    etag = registry.promote("m", "production", 2, "carol", etag).etag
    back = registry.rollback("m", "production", "dave", etag, reason="bad answers")
    assert back.version == 1
    back = registry.rollback("m", "production", "dave", back.etag)
    assert back.version == 0
    with pytest.raises(FailedPrecondition, match="no earlier move"):
        registry.rollback("m", "production", "dave", back.etag)
    named = registry.rollback("m", "production", "dave", back.etag, to_version=2)
    assert named.version == 2
    history = [(m.action, m.from_version, m.to_version) for m in registry.alias_history("m", "production").items]
    assert history == [
        ("rollback_to", 0, 2),
        ("rollback", 1, 0),
        ("rollback", 2, 1),
        ("promote", 1, 2),
        ("promote", 0, 1),
    ]
    with pytest.raises(Conflict):
        registry.rollback("m", "production", "dave", etag)  # stale etag


def _gate_fixture(registry: Registry) -> str:
    """v1 passed its checks, v2 failed them, v3 was never checked; production serves v1."""
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    for scale in (1.0, 2.0, 5000.0):
        registry.create_version("m", 0, "alice", append=[registry.create_edit("m", steering(scale), "alice").id])
    registry.record_check_run("m", 1, "passed", PASS, "checker")
    registry.record_check_run("m", 2, "failed", [{"name": "kl", "passed": False}], "checker")
    return registry.promote("m", "production", 1, "carol", registry.get_alias("m", "production").etag).etag


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("path", ["promote", "rollback_to", "promote_new_alias"])
def test_no_alias_move_reaches_a_version_that_did_not_pass(registry, path, version) -> None:
    etag = _gate_fixture(registry)
    before = snapshot(registry)
    with pytest.raises(FailedPrecondition, match=f"version {version} has status"):
        if path == "promote":
            registry.promote("m", "production", version, "carol", etag, actor_role="approver")
        elif path == "rollback_to":
            registry.rollback("m", "production", "carol", etag, "revert", to_version=version, actor_role="approver")
        else:
            registry.promote("m", "staging", version, "carol", None, actor_role="approver")
    assert snapshot(registry) == before
    assert registry.get_alias("m", "production").version == 1


def test_forcing_any_alias_move_needs_an_admin_and_a_reason(registry) -> None:
    etag = _gate_fixture(registry)
    with pytest.raises(PermissionDenied):
        registry.rollback("m", "production", "carol", etag, "x", to_version=3, force=True, actor_role="approver")
    with pytest.raises(InvalidArgument, match="reason"):
        registry.rollback("m", "production", "root", etag, "", to_version=3, force=True, actor_role="admin")
    moved = registry.rollback(
        "m", "production", "root", etag, "incident 7", to_version=3, force=True, actor_role="admin"
    )
    assert moved.version == 3
    move = registry.alias_history("m", "production").items[0]
    assert (move.action, move.forced, move.reason) == ("rollback_to", True, "incident 7")


def test_undo_and_named_rollback_to_a_version_the_alias_served_are_admitted(registry) -> None:
    etag = _gate_fixture(registry)
    etag = registry.promote("m", "production", 3, "root", etag, "hotfix", force=True, actor_role="admin").etag
    etag = registry.promote("m", "production", 1, "carol", etag).etag
    # v3 never passed, but production served it: the plain undo and a named rollback may return to it
    undone = registry.rollback("m", "production", "dave", etag, "undo")
    assert undone.version == 3
    etag = registry.rollback("m", "production", "dave", undone.etag, to_version=1).etag
    named = registry.rollback("m", "production", "dave", etag, "back to the hotfix", to_version=3)
    assert named.version == 3 and not registry.alias_history("m", "production").items[0].forced
    # another alias never served v3: the same target is refused there
    registry.promote("m", "canary", 1, "carol", None)
    with pytest.raises(FailedPrecondition):
        registry.rollback("m", "canary", "dave", registry.get_alias("m", "canary").etag, to_version=3)


def test_a_stale_etag_is_a_conflict_before_anything_else_is_judged(registry) -> None:
    etag = _gate_fixture(registry)
    fresh = registry.rollback("m", "production", "dave", etag).etag  # undo stack now empty
    with pytest.raises(Conflict):
        registry.rollback("m", "production", "dave", etag)  # retried with the stale etag
    with pytest.raises(Conflict):
        registry.promote("m", "production", 2, "carol", etag)  # would also fail the gate
    with pytest.raises(FailedPrecondition, match="no earlier move"):
        registry.rollback("m", "production", "dave", fresh)


def test_two_concurrent_moves_with_one_etag_exactly_one_wins(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    for scale in (1.0, 2.0):
        version = registry.create_version(
            "m", 0, "alice", append=[registry.create_edit("m", steering(scale), "alice").id]
        )
        registry.record_check_run("m", version.number, "passed", PASS, "checker")
    etag = registry.get_alias("m", "production").etag
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def move(version: int) -> None:
        barrier.wait()
        try:
            registry.promote("m", "production", version, f"user{version}", etag)
            outcomes.append("won")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=move, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "won"]
    assert len(registry.alias_history("m", "production").items) == 1
    assert registry.verify_audit().ok


WRITES = {
    "register_model": lambda r: r.register_model("new", "hub/new", SHA, "alice", request_id="x1"),
    "create_edit": lambda r: r.create_edit("m", steering(9.0), "alice", request_id="x2"),
    "create_version": lambda r: r.create_version("m", 0, "alice", append=[1], request_id="x3"),
    "set_suite": lambda r: r.set_suite("m", {"new": True}, "alice"),
    "record_check_run": lambda r: r.record_check_run("m", 1, "passed", PASS, "checker"),
    "promote": lambda r: r.promote("m", "production", 1, "carol", r.get_alias("m", "production").etag),
    "rollback": lambda r: r.rollback("m", "production", "carol", r.get_alias("m", "production").etag, to_version=0),
    "create_key": lambda r: r.create_key("ops", "admin", "alice"),
    "revoke_key": lambda r: r.revoke_key("ci", "alice"),
}


@pytest.mark.parametrize("statement", ["INSERT INTO audit_events", "first write"])
@pytest.mark.parametrize("operation", sorted(WRITES))
def test_a_failure_mid_write_leaves_the_database_as_it_was(registry, operation, statement) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    version = registry.create_version("m", 0, "alice", append=[registry.create_edit("m", steering(1.0), "a").id])
    registry.set_suite("m", {}, "alice")
    registry.record_check_run("m", version.number, "passed", PASS, "checker")
    etag = registry.promote("m", "production", 1, "carol", registry.get_alias("m", "production").etag).etag
    registry.rollback("m", "production", "carol", etag, to_version=1)
    registry.create_key("ci", "editor", "alice")
    before = snapshot(registry)

    def fail(conn, cursor, sql: str, *args) -> None:
        writes = sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
        is_head_lock = "audit_head" in sql and sql.lstrip().upper().startswith("UPDATE")
        if statement == "first write" and writes and not is_head_lock:
            raise RuntimeError("injected failure")
        if statement != "first write" and sql.lstrip().startswith(statement):
            raise RuntimeError("injected failure")

    event.listen(registry.engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            WRITES[operation](registry)
    finally:
        event.remove(registry.engine, "before_cursor_execute", fail)
    assert snapshot(registry) == before
    assert registry.verify_audit().ok


AUDIT_COLUMNS = ["created_at", "actor", "action", "subject", "payload_json", "prev_hash", "hash"]


def _fill(registry: Registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    for scale in (1.0, 2.0, 3.0):
        registry.create_edit("m", steering(scale), "alice")
    registry.create_key("ci", "reader", "alice")


@pytest.mark.parametrize("column", AUDIT_COLUMNS)
def test_editing_any_audit_field_is_detected_and_named(registry, column) -> None:
    _fill(registry)
    assert registry.verify_audit() == registry.verify_audit() and registry.verify_audit().ok
    new_value = (
        "ff" * 32
        if column.endswith("hash")
        else ("2020-01-01T00:00:00.000000Z" if column == "created_at" else "tampered")
    )
    with registry.engine.begin() as connection:
        if registry.engine.dialect.name == "postgresql":
            with pytest.raises(Exception, match="append-only"), connection.begin_nested():
                connection.execute(text(f"UPDATE audit_events SET {column} = :v WHERE seq = 3"), {"v": new_value})
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        connection.execute(text(f"UPDATE audit_events SET {column} = :v WHERE seq = 3"), {"v": new_value})
    result = registry.verify_audit()
    assert not result.ok and result.first_broken_seq == 3, result


def test_deleting_audit_rows_is_detected(registry) -> None:
    _fill(registry)
    with registry.engine.begin() as connection:
        if registry.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        last = connection.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
        connection.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": last})
    result = registry.verify_audit()
    assert not result.ok and result.first_broken_seq == last


def test_a_tampered_artifact_is_refused_on_read(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    edit = registry.create_edit("m", steering(1.0), "alice")
    digest = next(iter(edit.artifacts.values()))
    assert registry.read_artifact(digest)
    with registry.engine.begin() as connection:
        data = connection.execute(text("SELECT data FROM artifacts WHERE sha256 = :d"), {"d": digest}).scalar_one()
        tampered = bytearray(data)
        tampered[-1] ^= 0xFF
        connection.execute(
            text("UPDATE artifacts SET data = :b WHERE sha256 = :d"), {"b": bytes(tampered), "d": digest}
        )
    with pytest.raises(ArtifactIntegrityError, match="corrupted"):
        registry.read_artifact(digest)
    with pytest.raises(ArtifactIntegrityError):
        registry.load_edit("m", edit.id)


def test_a_pinned_head_catches_a_truncated_tail_and_truncate_is_refused(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.create_edit("m", steering(0.5), "alice")
    pinned = registry.verify_audit()
    assert pinned.ok and pinned.head_seq == pinned.events_checked and len(pinned.head_hash) == 64
    pin = f"{pinned.head_seq}:{pinned.head_hash}"
    for scale in (1.0, 2.0):
        registry.create_edit("m", steering(scale), "alice")
    assert registry.verify_audit(pin).ok  # the chain grew past the pin: still fine
    with pytest.raises(InvalidArgument, match="SEQ:HASH"):
        registry.verify_audit("7:nothex")
    if registry.engine.dialect.name == "postgresql":
        with pytest.raises(Exception, match="append-only"), registry.engine.begin() as connection:
            connection.execute(text("TRUNCATE audit_events"))
        return
    # SQLite has no trigger: cut the log back before the pin and re-point the head so it links up
    with registry.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq >= :s"), {"s": pinned.head_seq})
        seq, digest = connection.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")).one()
        connection.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": seq, "h": digest})
    # the shortened chain links up again; replaying it finds the edits no event accounts for ...
    assert any("has no audit event" in line for line in registry.verify_audit().mismatches)
    caught = registry.verify_audit(pin)
    assert not caught.ok and "pinned head" in caught.problem  # ... and the pin names the cut itself


TAMPERS = {
    "version edit list": (
        "UPDATE version_edits SET edit_id = (SELECT MIN(id) FROM edits) WHERE version_id = "
        "(SELECT id FROM versions WHERE number = 2)",
        "models/m/versions/2",
    ),
    "alias target": (
        "UPDATE aliases SET version_id = (SELECT id FROM versions WHERE number = 2) WHERE name = 'production'",
        "models/m/aliases/production",
    ),
    "edit spec": ("UPDATE edits SET spec_json = replace(spec_json, '\"scale\":2.0', '\"scale\":40.0')", "edits/"),
    "check run flipped": ("UPDATE check_runs SET state = 'passed' WHERE state = 'failed'", "runs/"),
    "key role": ("UPDATE api_keys SET role = 'admin' WHERE name = 'viewer'", "keys/viewer"),
    "inserted version": (
        "INSERT INTO versions (model_id, number, parent_id, author, description, created_at) "
        "SELECT model_id, 9, NULL, 'mallory', '', created_at FROM versions WHERE number = 0",
        "models/m/versions/9",
    ),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_verify_replays_the_log_against_every_state_table(registry, tamper) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    edits = [registry.create_edit("m", steering(s), "alice").id for s in (1.0, 2.0)]
    for edit in edits:
        registry.create_version("m", 0, "alice", append=[edit])
    registry.record_check_run("m", 1, "passed", PASS, "checker")
    registry.record_check_run("m", 2, "failed", [{"name": "kl", "passed": False}], "checker")
    registry.promote("m", "production", 1, "carol", registry.get_alias("m", "production").etag)
    registry.create_key("viewer", "reader", "alice")
    clean = registry.verify_audit()
    assert clean.ok and clean.mismatches == ()
    statement, named = TAMPERS[tamper]
    with registry.engine.begin() as connection:
        connection.exec_driver_sql(statement)
    result = registry.verify_audit()
    assert not result.ok and result.mismatches, tamper
    assert any(named in line for line in result.mismatches), result.mismatches


def test_an_edit_spec_changed_in_the_database_is_refused_on_load(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    edit = registry.create_edit("m", steering(0.5), "alice")
    assert registry.load_edit("m", edit.id) == steering(0.5)
    with registry.engine.begin() as connection:
        connection.execute(
            text("UPDATE edits SET spec_json = :s WHERE id = :i"),
            {"s": edit.spec_json.replace('"scale":0.5', '"scale":40.0'), "i": edit.id},
        )
    with pytest.raises(ArtifactIntegrityError, match="no longer matches"):
        registry.load_edit("m", edit.id)


def test_api_keys_are_shown_once_stored_hashed_and_revocable(registry) -> None:
    info, secret = registry.create_key("deploy-bot", "approver", "alice")
    assert info.role == "approver" and secret.startswith(f"sk_{info.prefix}_")
    with registry.engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_hash FROM api_keys")).scalar_one()
    assert secret not in stored and len(stored) == 64
    assert registry.verify_key(secret).name == "deploy-bot"
    assert registry.verify_key(secret + "x") is None and registry.verify_key("nonsense") is None
    registry.revoke_key("deploy-bot", "alice")
    assert registry.verify_key(secret) is None
    with pytest.raises(InvalidArgument, match="role"):
        registry.create_key("x", "superuser", "alice")
    assert [k.name for k in registry.list_keys().items] == ["deploy-bot"]


def test_bad_input_is_rejected_and_changes_nothing(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    before = snapshot(registry)
    for call in (
        lambda: registry.register_model("", "x", SHA, "a"),
        lambda: registry.register_model("a/b", "x", SHA, "a"),
        lambda: registry.register_model("ok", "x", "short", "a"),
        lambda: registry.create_edit("m", {"kind": "steering"}, "a"),
        lambda: registry.create_version("m", 0, "a"),
        lambda: registry.set_suite("m", {"x": float("nan")}, "a"),
        lambda: registry.record_check_run("m", 0, "great", [], "a"),
        lambda: registry.list_versions("m", page_size=0),
        lambda: registry.register_model("z", "x", SHA, "a", request_id=""),
        *(
            lambda bad=bad: registry.promote("m", bad, 0, "a", None)
            for bad in ("with space", "tab\there", "100%", "a..b", "nul\x00", "new\nline", "-x", "é", "x" * 64)
        ),
        *(lambda bad=bad: registry.create_key(bad, "reader", "a") for bad in ("", "a b", "../etc", "k\x00")),
        lambda: registry.list_versions("m", page_token=base64.urlsafe_b64encode(b"after:" + b"9" * 40).decode()),
    ):
        with pytest.raises(InvalidArgument):
            call()
    with pytest.raises(NotFound):
        registry.create_edit("nope", steering(1.0), "a")
    assert snapshot(registry) == before


def test_artifact_size_limit(db_url) -> None:
    registry = Registry(db_url, max_artifact_bytes=100)
    registry.register_model("m", "hub/m", SHA, "alice")
    before = snapshot(registry)
    with pytest.raises(ResourceExhausted, match="exceeds the limit of 100 bytes"):
        registry.create_edit("m", steering(1.0), "alice")
    assert snapshot(registry) == before
    registry.engine.dispose()


def test_a_deleted_alias_is_gone_its_name_free_and_its_history_audited(registry) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    edit = registry.create_edit("m", steering(1.0), "alice")
    checked = registry.create_version("m", 0, "alice", append=[edit.id]).number
    registry.record_check_run("m", checked, "passed", PASS, "checker")
    unchecked = registry.create_version("m", 0, "alice", append=[registry.create_edit("m", steering(2.0), "a").id])
    staging = registry.promote("m", "staging", checked, "carol", None)
    registry.promote("m", "staging", unchecked.number, "admin", staging.etag, "trial", force=True, actor_role="admin")
    before = snapshot(registry)
    with pytest.raises(Conflict):
        registry.delete_alias("m", "staging", "carol", "stale-etag")
    with pytest.raises(FailedPrecondition, match="production"):
        registry.delete_alias("m", "production", "carol", None)
    with pytest.raises(NotFound):
        registry.delete_alias("m", "nosuch", "carol", None)
    assert snapshot(registry) == before  # refusals change nothing

    registry.delete_alias("m", "staging", "carol", None, "retired")
    with pytest.raises(NotFound):
        registry.get_alias("m", "staging")
    with pytest.raises(NotFound):
        registry.alias_history("m", "staging")
    assert [a.name for a in registry.list_aliases("m").items] == ["production"]
    assert ("m", "staging") not in registry.all_aliases()
    with pytest.raises(NotFound):
        registry.delete_alias("m", "staging", "carol", None)  # deleting twice: already gone
    event = registry.list_audit(page_size=1).items[0]
    assert (event.action, event.subject, event.actor) == ("alias.deleted", "models/m/aliases/staging", "carol")
    assert json.loads(event.payload_json) == {"from": unchecked.number, "reason": "retired"}
    result = registry.verify_audit()
    assert result.ok and not result.mismatches  # the replay knows a deleted alias is gone

    # The name is free; the new alias's history starts empty: what the deleted one served (the
    # forced, unchecked version) does not let the new one move there without checks.
    with pytest.raises(FailedPrecondition):
        registry.promote("m", "staging", unchecked.number, "carol", None)
    again = registry.promote("m", "staging", checked, "carol", None)
    assert again.version == checked
    assert [move.action for move in registry.alias_history("m", "staging").items] == ["promote"]
    with pytest.raises(FailedPrecondition):
        registry.rollback("m", "staging", "carol", again.etag)  # nothing before the new alias to undo
    assert registry.verify_audit().ok and not registry.verify_audit().mismatches


def test_free_text_is_bounded_and_a_refused_text_writes_nothing(registry) -> None:
    """Issue 37, defect 7: descriptions and reasons have a documented size; past it, INVALID_ARGUMENT
    naming the field, and nothing changes."""
    from service.registry.unit_of_work import MAX_TEXT_CHARS

    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    edit = registry.create_edit("m", steering(1.0), "alice", description="d" * MAX_TEXT_CHARS)
    before = snapshot(registry)
    long = "x" * (MAX_TEXT_CHARS + 1)
    refusals = {
        "edit description": lambda: registry.create_edit("m", steering(2.0), "alice", description=long),
        "version description": lambda: registry.create_version("m", 0, "alice", append=[edit.id], description=long),
        "promote reason": lambda: registry.promote(
            "m", "canary", 0, "carol", None, reason=long, actor_role="admin", force=True
        ),
        "delete reason": lambda: registry.delete_alias("m", "canary", "carol", None, reason=long),
    }
    for what, call in refusals.items():
        with pytest.raises(InvalidArgument, match=f"{MAX_TEXT_CHARS:,}"):
            call()
        assert snapshot(registry) == before, what


def test_a_page_of_large_rows_ends_early_and_the_pages_still_cover_everything(db_url) -> None:
    """Every List page fits its message limit: rows are counted as they are stored, and a page
    that would pass half the limit ends with a token for the rest."""
    small = Registry(db_url, max_artifact_bytes=40_000)
    small.register_model("m", "hub/m", SHA, "alice")
    made = [small.create_edit("m", steering(float(s)), "alice", description=f"{s:02}" * 2000).id for s in range(1, 13)]
    seen, token, pages = [], "", 0
    while True:
        page = small.list_edits("m", page_size=1000, page_token=token)
        assert sum(len(e.description) + len(e.spec_json) for e in page.items) <= 20_000 or len(page.items) == 1
        seen += [e.id for e in page.items]
        pages, token = pages + 1, page.next_page_token
        if not token:
            break
    assert seen == made[::-1] and pages > 1
    small.engine.dispose()
