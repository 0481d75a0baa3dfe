"""Alembic migrations: real downgrades, and no drift between the models and the revisions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, make_url
from sqlalchemy.exc import ProgrammingError

from editors import SparseAutoencoder, Steering
from service.db.engine import make_engine
from service.db.migrate import downgrade, upgrade
from service.db.models import Base
from service.registry import Registry


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_to_base_and_upgrade_again(db_url) -> None:
    expected = {table.name for table in Base.metadata.sorted_tables}
    assert _tables(db_url) == expected
    downgrade("base", db_url)
    assert _tables(db_url) == set()
    upgrade("head", db_url)
    assert _tables(db_url) == expected


def test_models_and_migrations_do_not_drift(db_url) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_db_cli_wraps_alembic(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env_run = [sys.executable, "-m", "service.cli", "db"]
    subprocess.run([*env_run, "upgrade", "--url", url], check=True, capture_output=True)
    assert "audit_events" in _tables(url)
    subprocess.run([*env_run, "downgrade", "0001", "--url", url], check=True, capture_output=True)
    assert "audit_events" in _tables(url)
    subprocess.run([*env_run, "downgrade", "base", "--url", url], check=True, capture_output=True)
    assert _tables(url) == set()


def test_the_service_role_can_do_its_work_and_nothing_more(db_url, tmp_path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite has no roles")
    owner = make_engine(db_url)
    with owner.begin() as connection:
        connection.exec_driver_sql(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'scalpel_app_test') THEN "
            "CREATE ROLE scalpel_app_test LOGIN; END IF; END $$"
        )
        connection.exec_driver_sql("GRANT scalpel_service TO scalpel_app_test")
    owner.dispose()
    app_url = make_url(db_url).set(username="scalpel_app_test").render_as_string(hide_password=False)
    registry = Registry(app_url)  # everything the service does, as the service's role
    registry.register_model("m", "hub/m", "ab" * 32, "alice")
    registry.set_suite("m", {"reference_texts": ["a b"]}, "alice")
    edit = registry.create_edit("m", Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(8)), "alice")
    version = registry.create_version("m", 0, "alice", append=[edit.id], request_id="r1")
    registry.record_check_run("m", version.number, "passed", [{"name": "kl", "passed": True}], "checker")
    registry.promote("m", "production", version.number, "carol", registry.get_alias("m", "production").etag)
    registry.create_key("viewer", "reader", "alice")
    registry.revoke_key("viewer", "alice")
    registry.register_model("m2", "hub/m2", "cd" * 32, "alice")
    registry.register_successor("m2", "m", "alice")
    report = {"summary": {}, "drift": [{"originals": [0], "made": 1}]}
    rebased = registry.record_rebase("m", version.number, "m2", [registry.load_edit("m", edit.id)], report, "alice")
    assert registry.get_rebase("m2", rebased.version.number).origin == f"models/m/versions/{version.number}"
    sae = SparseAutoencoder(
        W_enc=torch.ones(8, 4),
        W_dec=torch.ones(4, 8),
        b_enc=torch.zeros(4),
        b_dec=torch.zeros(8),
        site="blocks.0.hook_resid_post",
    )
    folder = sae.save(tmp_path / "sae")
    config = json.loads((folder / "cfg.json").read_text())
    registry.create_sae("m", "s", sae, (folder / "sae_weights.safetensors").read_bytes(), config, "alice")
    assert registry.load_sae("m", "s").sha256 == sae.sha256
    assert registry.verify_audit().ok
    for forbidden in (
        "UPDATE rebases SET report_json = '{}'",
        "UPDATE saes SET site = 'x'",
        "DELETE FROM model_lineage",
        "DELETE FROM aliases",
        "UPDATE alias_history SET reason = 'x'",
        "TRUNCATE check_runs",
        "UPDATE audit_events SET actor = 'x'",
        "DROP TABLE api_keys",
    ):
        with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"), registry.engine.begin() as c:
            c.exec_driver_sql(forbidden)
    registry.engine.dispose()
