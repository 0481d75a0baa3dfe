"""The replica's alias cache: a re-read never moves an alias backwards past a move it made itself."""

from __future__ import annotations

import torch

from editors import Steering
from service.aliases import AliasCache
from service.db.migrate import upgrade
from service.registry import Registry

SHA = "ab" * 32


def test_a_refresh_never_undoes_a_move_this_replica_made_meanwhile(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade("head", url)
    registry = Registry(url)
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    edit = registry.create_edit("m", Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(8)), "alice")
    registry.create_version("m", 0, "alice", append=[edit.id])
    registry.record_check_run("m", 1, "passed", [{"name": "kl", "passed": True}], "checker")
    cache = AliasCache(registry, poll_seconds=3600)  # the poller stays out of the way
    read_everything = registry.all_aliases

    def snapshot_then_a_local_move() -> dict[tuple[str, str], int]:
        snapshot = read_everything()  # the re-read sees production at 0 ...
        etag = registry.get_alias("m", "production").etag
        moved = registry.promote("m", "production", 1, "carol", etag)  # ... a Promote lands meanwhile
        cache.set("m", "production", moved.version)  # as the servicer does after its own move
        return snapshot

    registry.all_aliases = snapshot_then_a_local_move
    try:
        cache.refresh()
        assert cache.version("m", "production") == 1  # the caller reads its own write
    finally:
        registry.all_aliases = read_everything
    cache.refresh()
    assert cache.version("m", "production") == 1
    cache.close()
    registry.engine.dispose()
