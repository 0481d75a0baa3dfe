"""kill -9 at random moments of a mixed workload; after a restart the registry is consistent.

A client writes edits, versions, alias moves and check runs, each with a request_id, while the
server is killed with SIGKILL at a random point (seeded). After a restart on the same database:
every retried request_id returns exactly what had committed (or commits now, once), the audit
chain verifies and the tables replay against it, versions reference existing edits, aliases
match their history, every artifact verifies, and no check run is left "running". One trial per
database in the suite; a longer run: ``SCALPEL_KILL9_TRIALS=50 python -m pytest tests/test_kill9.py``.
"""

from __future__ import annotations

import os
import random
import signal
import threading

import grpc
import pytest
import torch

from editors import Steering
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.client import ScalpelClient
from service.registry import Registry
from tests.replicas import replicas

TRIALS = int(os.environ.get("SCALPEL_KILL9_TRIALS", "1"))


def workload(client: ScalpelClient, done: dict[str, object], stop: threading.Event, seed: int) -> None:
    """Writes until the server dies; ``done`` maps each request_id that answered to its result id."""
    rng = random.Random(seed)
    try:
        for i in range(1000):
            if stop.is_set():
                return
            vector = torch.randn(128, generator=torch.Generator().manual_seed(seed * 1000 + i))
            key = f"t{seed}-edit-{i}"
            done[key] = None  # attempted
            edit = client.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=vector), request_id=key)
            done[key] = edit.id
            key = f"t{seed}-version-{i}"
            done[key] = None
            version = client.create_version("toy", 0, append=[edit.id], request_id=key)
            done[key] = version.number
            if rng.random() < 0.3:
                key = f"t{seed}-run-{i}"
                done[key] = None
                run = client.checks.StartRun(
                    pb.StartRunRequest(version=f"models/toy/versions/{version.number}", request_id=key)
                )
                done[key] = run.id
            if rng.random() < 0.5:
                client.promote("toy", 0, alias="staging")
    except grpc.RpcError:
        return  # the server died under us


def retry(client: ScalpelClient, key: str, seed: int) -> object:
    """Repeat the request behind ``key`` exactly as the workload sent it."""
    _, kind, i = key.split("-")
    i = int(i)
    vector = torch.randn(128, generator=torch.Generator().manual_seed(seed * 1000 + i))
    if kind == "edit":
        return client.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=vector), request_id=key).id
    edit = client.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=vector)).id
    if kind == "version":
        return client.create_version("toy", 0, append=[edit], request_id=key).number
    return None  # a run's version is rebuilt above; runs are checked through the audit and states


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_9_mid_workload_leaves_a_consistent_registry(db_url, tmp_path, trial) -> None:
    registry = Registry(db_url)
    _, secret = registry.create_key("ops", "admin", "test")
    done: dict[str, object] = {}
    with replicas(db_url, tmp_path, count=1) as [(process, port)]:
        client = ScalpelClient(f"127.0.0.1:{port}", secret)
        stop = threading.Event()
        worker = threading.Thread(target=workload, args=(client, done, stop, trial))
        worker.start()
        threading.Event().wait(random.Random(trial).uniform(1.0, 4.0))  # a random moment of the workload
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        worker.join(timeout=60)
        client.close()
    assert done, "the workload never started"
    restart = tmp_path / "restart.yaml"
    restart.write_text("stale_run_seconds: 0.5\n")  # the dead server's runs are stale by the time this one starts
    with replicas(db_url, tmp_path, count=1, config=restart) as [(_, port)]:
        client = ScalpelClient(f"127.0.0.1:{port}", secret)
        for key, committed in done.items():
            again = retry(client, key, trial)
            if committed is not None and again is not None:
                assert again == committed, f"{key}: committed {committed}, a retry returned {again}"
        assert not [r for r in registry.all_aliases() if r[1] not in ("production", "staging")]
        client.close()
    check = registry.verify_audit()
    assert check.ok, (check.problem, check.mismatches[:5])
    with registry.engine.connect() as connection:
        running = connection.exec_driver_sql("SELECT count(*) FROM check_runs WHERE state = 'running'").scalar()
    assert running == 0, "a run left running by the killed server was not marked interrupted"
    for version in registry.list_versions("toy", page_size=1000).items:
        for edit_id in version.edit_ids:
            registry.load_edit("toy", edit_id)  # exists, artifacts and spec verify
    registry.engine.dispose()
