"""The signed audit chain (issue 37, defect 1): a database-only attacker can no longer forge,
truncate or rewrite an event undetected, and rotation keeps old heads verifying. Every case runs
on SQLite and, when configured, on PostgreSQL with its append-only triggers on."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from editors import Steering
from service.registry import Registry
from service.registry.audit import event_hash
from service.registry.audit_keys import (
    KEY_FILE_ENV,
    SignedHead,
    decode_public,
    encode_public,
    key_id,
    load_keyring,
    private_pem,
    rotate,
    signed_message,
)
from service.registry.errors import AuditTampered

SHA = "ab" * 32


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "audit_ed25519.pem"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    monkeypatch.delenv("SCALPEL_AUDIT_KEY", raising=False)
    monkeypatch.delenv("SCALPEL_AUDIT_TRUSTED_KEYS", raising=False)
    return path


@pytest.fixture
def registry(db_url, key_file) -> Registry:
    registry = Registry(db_url)
    yield registry
    registry.engine.dispose()


def _fill(registry: Registry, edits: int = 3) -> None:
    registry.register_model("m", "hub/m", SHA, "alice")
    for scale in range(1, edits + 1):
        registry.create_edit("m", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(8), scale=scale), "alice")


def _append_forged(registry: Registry, signer: Ed25519PrivateKey | None = None) -> int:
    """What a database-only attacker can do: an event with a valid hash after the head, the head
    moved to it (both accepted on PostgreSQL with the triggers on), signed with a key of their own."""
    with registry.engine.begin() as connection:
        seq, prev = connection.execute(text("SELECT seq, hash FROM audit_head")).one()
        row = {
            "seq": seq + 1,
            "created_at": "2026-12-07T00:00:00.000000Z",
            "actor": "alice",
            "action": "key.created",
            "subject": "keys/mallory",
            "payload_json": '{"prefix":"x","role":"admin"}',
            "prev_hash": prev,
        }
        row["hash"] = event_hash(*row.values())
        row["key_id"] = row["signature"] = None
        if signer is not None:
            row["key_id"] = key_id(signer.public_key())
            row["signature"] = encode_signature(signer, seq + 1, row["hash"])
        connection.execute(
            text(
                "INSERT INTO audit_events (seq, created_at, actor, action, subject, payload_json, prev_hash, hash, "
                "key_id, signature) VALUES (:seq, :created_at, :actor, :action, :subject, :payload_json, "
                ":prev_hash, :hash, :key_id, :signature)"
            ),
            row,
        )
        connection.execute(text("UPDATE audit_head SET seq = :seq, hash = :hash"), row)
    return seq + 1


def encode_signature(signer: Ed25519PrivateKey, seq: int, digest: str) -> str:
    import base64

    return base64.b64encode(signer.sign(signed_message(seq, digest))).decode()


def test_every_appended_event_is_signed_and_the_chain_verifies(registry) -> None:
    _fill(registry)
    result = registry.verify_audit()
    assert result.ok, result
    assert result.head_key_id == registry.audit_keys.key_id
    head = registry.audit_keys.signed_head(result.head_seq, result.head_hash, result.head_key_id, result.head_signature)
    assert head.problem() == ""
    with registry.engine.connect() as connection:
        unsigned = connection.execute(text("SELECT count(*) FROM audit_events WHERE signature IS NULL")).scalar_one()
    assert unsigned == 0


@pytest.mark.parametrize("attacker_key", [False, True], ids=["unsigned", "own-key"])
def test_a_forged_event_appended_at_the_end_is_named(registry, attacker_key) -> None:
    _fill(registry)
    pinned = registry.verify_audit()
    forged = _append_forged(registry, Ed25519PrivateKey.generate() if attacker_key else None)
    for result in (registry.verify_audit(), registry.verify_audit(f"{pinned.head_seq}:{pinned.head_hash}")):
        assert not result.ok and result.first_broken_seq == forged, result
        assert f"event {forged}" in result.problem
        assert ("does not trust" if attacker_key else "not signed") in result.problem


def test_a_forged_signature_under_the_servers_key_id_is_caught(registry) -> None:
    _fill(registry)
    forged = _append_forged(registry)
    with registry.engine.begin() as connection:
        if registry.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        connection.execute(
            text("UPDATE audit_events SET key_id = :k, signature = :s WHERE seq = :q"),
            {"k": registry.audit_keys.key_id, "s": "A" * 86 + "==", "q": forged},
        )
    result = registry.verify_audit()
    assert not result.ok and result.first_broken_seq == forged and "does not match" in result.problem


def test_writes_over_a_forged_head_are_refused_and_change_nothing(registry) -> None:
    """Appending would sign over the forgery and launder it: every write stops with DATA_LOSS."""
    _fill(registry)
    _append_forged(registry)
    with registry.engine.connect() as connection:
        before = connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    with pytest.raises(AuditTampered, match="not signed") as caught:
        registry.register_model("n", "hub/n", SHA, "alice")
    assert caught.value.code == "DATA_LOSS"
    with registry.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one() == before
        assert connection.execute(text("SELECT count(*) FROM models WHERE name = 'n'")).scalar_one() == 0
    assert registry.adopt_signing("ops") is False  # a chain that was signed is never re-signed over a gap


def test_a_truncated_chain_is_caught_by_the_witness(registry) -> None:
    """Cutting the tail leaves an older head that was genuinely signed: the host remembers the
    newest head it committed, outside the database."""
    _fill(registry)
    full = registry.verify_audit()
    with registry.engine.begin() as connection:
        if registry.engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        connection.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": full.head_seq - 2})
        seq, digest = connection.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")).one()
        connection.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": seq, "h": digest})
    result = registry.verify_audit()
    assert not result.ok and result.first_broken_seq == full.head_seq - 1, result
    assert f"signed event {full.head_seq}" in result.problem and "truncated" in result.problem
    # another host (no witness of this chain) sees a chain that links and is signed ...
    keys_elsewhere = load_keyring()
    keys_elsewhere.witness_file = None
    elsewhere = Registry(registry.engine.url.render_as_string(hide_password=False), audit_keys=keys_elsewhere)
    unpinned = elsewhere.verify_audit()
    assert unpinned.linked and "not in the log" not in unpinned.problem and unpinned.head_key_id
    # ... and the checkpoint an operator kept elsewhere names the cut
    caught = elsewhere.verify_audit(f"{full.head_seq}:{full.head_hash}")
    assert not caught.ok and "pinned head" in caught.problem and caught.first_broken_seq == full.head_seq - 1
    elsewhere.engine.dispose()


def test_rotation_keeps_old_heads_verifying(registry, key_file) -> None:
    _fill(registry, edits=1)
    old = registry.verify_audit()
    checkpoint = registry.audit_keys.signed_head(old.head_seq, old.head_hash, old.head_key_id, old.head_signature)
    old_id, new_id = rotate()
    assert old_id == old.head_key_id != new_id
    rotated = Registry(registry.engine.url.render_as_string(hide_password=False))
    assert rotated.audit_keys.key_id == new_id and old_id in rotated.audit_keys.trusted
    assert rotated.verify_audit().ok  # the head is still the old key's
    rotated.create_edit("m", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(8), scale=9.0), "alice")
    now = rotated.verify_audit(f"{checkpoint.seq}:{checkpoint.hash}")
    assert now.ok and now.head_key_id == new_id, now
    assert checkpoint.problem() == ""  # an old checkpoint verifies with the public key it carries
    (key_file.parent / "retired" / f"{old_id}.pub").unlink()  # forget the old key: its heads are not trusted
    rotated.engine.dispose()
    forgetful = Registry(registry.engine.url.render_as_string(hide_password=False))
    assert forgetful.verify_audit().ok  # the head is the new key's
    forgetful.engine.dispose()


def test_a_legacy_unsigned_chain_is_adopted_once(db_url, key_file) -> None:
    """A database from before signing: its first start signs the head it finds (an audited event
    naming the key); an unsigned chain fails verification until then."""
    legacy = Registry(db_url, audit_keys=load_keyring())
    legacy.audit_keys.signer = None
    _fill(legacy, edits=1)
    before = legacy.verify_audit()
    assert not before.ok and "not signed" in before.problem
    adopted = Registry(db_url)
    assert adopted.adopt_signing("ops") is True
    assert adopted.adopt_signing("ops") is False
    result = adopted.verify_audit()
    assert result.ok and result.head_key_id == adopted.audit_keys.key_id
    event = adopted.list_audit(page_size=1).items[0]
    assert event.action == "audit.signing_key" and json.loads(event.payload_json)["key_id"] == result.head_key_id
    for registry in (legacy, adopted):
        registry.engine.dispose()


def test_the_private_key_never_enters_the_database(registry, key_file) -> None:
    _fill(registry)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = private_pem(registry.audit_keys.signer)
    raw = registry.audit_keys.signer.private_bytes_raw()
    with registry.engine.connect() as connection:
        tables = (
            [row[0] for row in connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
            if (registry.engine.dialect.name == "sqlite")
            else [
                row[0]
                for row in connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            ]
        )
        dump = repr([connection.execute(text(f'SELECT * FROM "{table}"')).all() for table in tables]).encode()
    assert secret not in dump and raw not in dump and raw.hex().encode() not in dump


def test_db_upgrade_creates_the_key_beside_the_data_directory_and_pubkey_prints_it(tmp_path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALPEL_AUDIT")}
    env["SCALPEL_DATA_DIR"] = str(data)
    cli = [sys.executable, "-m", "service.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    key = tmp_path / "data.keys" / "audit_ed25519.pem"
    assert key.exists() and not str(key).startswith(str(data) + os.sep)
    shown = subprocess.run(
        [*cli, "audit", "pubkey", "--json"], env=env, check=True, capture_output=True, text=True, timeout=60
    )
    printed = json.loads(shown.stdout)
    keyring = load_keyring(key)
    assert printed["key_id"] == keyring.key_id
    assert key_id(decode_public(printed["public_key"])) == keyring.key_id
    rotated = subprocess.run(
        [*cli, "audit", "rotate-key", "--json"], env=env, check=True, capture_output=True, text=True, timeout=60
    )
    assert json.loads(rotated.stdout)["retired"] == keyring.key_id
    assert (tmp_path / "data.keys" / "retired" / f"{keyring.key_id}.pub").exists()


def test_a_checkpoint_file_verifies_and_catches_a_rewrite(tmp_path) -> None:
    head = load_keyring(tmp_path / "k.pem")
    digest = "cd" * 32
    key, signature = head.sign(7, digest)
    checkpoint = SignedHead(7, digest, key, signature, encode_public(head.signer.public_key()))
    assert checkpoint.problem() == ""
    assert "does not match" in SignedHead(7, "ce" * 32, key, signature, checkpoint.public_key).problem()
    other = encode_public(Ed25519PrivateKey.generate().public_key())
    assert "id" in SignedHead(7, digest, key, signature, other).problem()
