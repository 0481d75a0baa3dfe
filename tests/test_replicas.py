"""Several real server processes on one database agree on aliases (PostgreSQL: NOTIFY; SQLite: polling)."""

from __future__ import annotations

import torch

from editors import Steering
from service.client import ScalpelClient
from service.registry import Registry
from tests.replicas import replicas, seconds_until_served


def test_a_move_through_one_replica_is_served_by_the_other_within_a_second(db_url, tmp_path) -> None:
    with replicas(db_url, tmp_path, count=2) as started:
        registry = Registry(db_url)
        _, secret = registry.create_key("ops", "admin", "test")
        (_, port_a), (_, port_b) = started
        a = ScalpelClient(f"127.0.0.1:{port_a}", secret)
        b = ScalpelClient(f"127.0.0.1:{port_b}", secret)
        edit = a.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(128) * 0.01))
        version = a.create_version("toy", 0, append=[edit.id])
        registry.record_check_run("toy", version.number, "passed", [], "test")
        assert b.generate("toy", "The capital of Riia is", max_tokens=1).version == "models/toy/versions/0"
        a.promote("toy", version.number)
        assert a.generate("toy", "The capital of Riia is", max_tokens=1).version.endswith(f"/{version.number}")
        assert seconds_until_served(b, version.number) < 1.0
        b.rollback("toy")
        assert seconds_until_served(a, 0) < 1.0
        a.close()
        b.close()
        registry.engine.dispose()
