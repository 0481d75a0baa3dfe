"""Several real server processes on one database agree on aliases (PostgreSQL: NOTIFY; SQLite: polling)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from editors import Steering
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from service.db.migrate import upgrade
from service.registry import Registry
from tests.replicas import replicas, reset_postgres, served_eventually


def test_a_move_through_one_replica_is_served_by_the_other(db_url, tmp_path) -> None:
    with replicas(db_url, tmp_path, count=2) as started:
        registry = Registry(db_url)
        _, secret = registry.create_key("ops", "admin", "test")
        (_, port_a), (_, port_b) = started
        a = ScalpelClient(f"127.0.0.1:{port_a}", secret)
        b = ScalpelClient(f"127.0.0.1:{port_b}", secret)
        edit = a.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128) * 0.01))
        version = a.create_version("toy", 0, append=[edit.id])
        run = a.checks.StartRun(pb.StartRunRequest(version=f"models/toy/versions/{version.number}"))
        updates = list(b.checks.WatchRun(pb.GetRunRequest(id=run.id)))  # executed by A, streamed by B
        assert updates[-1].run.state == "passed", [(r.name, r.passed) for r in updates[-1].run.results]
        assert any(u.total > 0 and u.state == "running" for u in updates[:-1]), updates
        assert b.generate("toy", "The capital of Riia is", max_tokens=1).version == "models/toy/versions/0"
        a.promote("toy", version.number)
        assert a.generate("toy", "The capital of Riia is", max_tokens=1).version.endswith(f"/{version.number}")
        assert served_eventually(b, version.number)  # NOTIFY (PostgreSQL) or the poll (SQLite)
        b.rollback("toy")
        assert served_eventually(a, 0)
        a.close()
        b.close()
        registry.engine.dispose()


def _postgres_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.exclusive  # every other worker's connections would drop with the restart
@pytest.mark.skipif(
    not os.environ.get("SCALPEL_TEST_POSTGRES_URL") or not shutil.which("pg_ctlcluster") or os.geteuid() != 0,
    reason="needs the local PostgreSQL cluster, pg_ctlcluster and root",
)
def test_replicas_serve_through_a_postgres_restart_and_catch_up(tmp_path) -> None:
    url = os.environ["SCALPEL_TEST_POSTGRES_URL"]
    reset_postgres(url)
    upgrade("head", url)
    config = tmp_path / "serve.yaml"
    config.write_text("unhealthy_after_seconds: 2\n")
    with replicas(url, tmp_path, count=2, config=config) as started:
        registry = Registry(url)
        _, secret = registry.create_key("ops", "admin", "test")
        clients = [ScalpelClient(f"127.0.0.1:{port}", secret) for _, port in started]
        a, b = clients
        edit = a.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128) * 0.01))
        version = a.create_version("toy", 0, append=[edit.id]).number
        registry.record_check_run("toy", version, "passed", [], "test")
        registry.engine.dispose()
        for client in clients:  # both replicas have served both versions: their stacks are compiled
            client.generate("toy", "The capital of Riia is", version=version, max_tokens=1)
            client.generate("toy", "The capital of Riia is", max_tokens=1)
        try:
            _postgres_ctl("stop")
            for client in clients:  # answered from the last known alias while the database is down
                assert client.generate("toy", "The capital of Riia is", max_tokens=1).version == "models/toy/versions/0"
            health = health_pb2_grpc.HealthStub(a.channel)
            deadline = time.monotonic() + 15  # unreachable longer than unhealthy_after_seconds: NOT_SERVING
            while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health stayed SERVING without the database"
                time.sleep(0.2)
        finally:
            _postgres_ctl("start")
        deadline = time.monotonic() + 30
        while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health did not come back after PostgreSQL restarted"
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while True:  # the database accepts connections again
            try:
                a.promote("toy", version)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the service did not recover after PostgreSQL restarted"
                time.sleep(0.5)
        assert served_eventually(b, version)  # the listener reconnected and caught up
        for client in clients:
            client.close()


def test_a_replica_killed_mid_run_leaves_a_run_another_replica_interrupts_and_reruns(db_url, tmp_path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("stale_run_seconds: 5\n")  # (2 s read its own busy rerun as stale on a loaded machine)
    with replicas(db_url, tmp_path, count=2, config=config) as started:
        registry = Registry(db_url)
        _, secret = registry.create_key("ops", "admin", "test")
        (process_a, port_a), (_, port_b) = started
        a = ScalpelClient(f"127.0.0.1:{port_a}", secret)
        b = ScalpelClient(f"127.0.0.1:{port_b}", secret)
        edit = a.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128) * 0.01))
        version = a.create_version("toy", 0, append=[edit.id]).number
        run = a.checks.StartRun(pb.StartRunRequest(version=f"models/toy/versions/{version}"))
        process_a.send_signal(signal.SIGKILL)
        process_a.wait(timeout=10)
        state = registry.get_check_run(run.id).state
        if state == "running":  # killed mid-run (the usual case): another replica must notice
            deadline = time.monotonic() + 20
            while registry.get_check_run(run.id).state == "running":
                assert time.monotonic() < deadline, "no replica interrupted the dead replica's run"
                time.sleep(0.2)
            interrupted = registry.get_check_run(run.id)
            assert interrupted.state == "interrupted" and interrupted.results == []
        rerun = b.checks.StartRun(pb.StartRunRequest(version=f"models/toy/versions/{version}"))
        final = list(b.checks.WatchRun(pb.GetRunRequest(id=rerun.id)))[-1].run
        assert final.state in ("passed", "failed") and final.results
        assert registry.verify_audit().ok
        a.close()
        b.close()
        registry.engine.dispose()
