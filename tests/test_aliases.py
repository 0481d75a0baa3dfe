"""The replica's alias cache: a re-read never moves an alias backwards past a newer entry (a move it
made itself, or a re-read that started later)."""

from __future__ import annotations

import torch

from editors import Steering
from service.aliases import AliasCache
from service.db.migrate import upgrade
from service.registry import Registry

SHA = "ab" * 32


def _registry(tmp_path) -> Registry:
    """Model ``m`` with a version 1 that passed its checks; production at 0."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade("head", url)
    registry = Registry(url)
    registry.register_model("m", "hub/m", SHA, "alice")
    registry.set_suite("m", {}, "alice")
    edit = registry.create_edit("m", Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(8)), "alice")
    registry.create_version("m", 0, "alice", append=[edit.id])
    registry.record_check_run("m", 1, "passed", [{"name": "kl", "passed": True}], "checker")
    return registry


def test_a_refresh_never_undoes_a_move_this_replica_made_meanwhile(tmp_path) -> None:
    registry = _registry(tmp_path)
    cache = AliasCache(registry, poll_seconds=3600)  # the poller stays out of the way
    read_everything = registry.all_aliases

    def snapshot_then_a_local_move() -> dict[tuple[str, str], int]:
        snapshot = read_everything()  # the re-read sees production at 0 ...
        etag = registry.get_alias("m", "production").etag
        moved = registry.promote("m", "production", 1, "carol", etag)  # ... a Promote lands meanwhile
        cache.wrote("m", "production", moved.version)  # as the servicer does after its own move
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


def test_a_slow_notify_re_read_never_undoes_a_newer_move(tmp_path) -> None:
    """Issue 37, defect 3: a NOTIFY re-read that read the row before this replica's own move, and
    returned after it, must not put the older target back (the caller reads its own write)."""
    registry = _registry(tmp_path)
    cache = AliasCache(registry, poll_seconds=3600)
    read_one = registry.get_alias

    def read_then_a_local_move(model: str, alias: str):
        seen = read_one(model, alias)  # the re-read sees production at 0 ...
        moved = registry.promote("m", "production", 1, "carol", seen.etag)  # ... a Promote lands meanwhile
        cache.wrote("m", "production", moved.version)  # as the servicer does after its own move
        return seen

    registry.get_alias = read_then_a_local_move
    try:
        cache._read_one("m", "production")  # what the listener does for each NOTIFY
        assert cache.version("m", "production") == 1
    finally:
        registry.get_alias = read_one
    cache._read_one("m", "production")  # a later re-read sees the move
    assert cache.version("m", "production") == 1
    cache.close()
    registry.engine.dispose()


def test_a_refresh_that_started_before_a_notify_re_read_never_undoes_it(tmp_path) -> None:
    """Two moves through another replica: the full re-read that saw the first must not replace the
    NOTIFY re-read of the second that finished while it ran."""
    registry = _registry(tmp_path)
    cache = AliasCache(registry, poll_seconds=3600)
    read_everything = registry.all_aliases

    def snapshot_then_a_move_elsewhere_and_its_notify() -> dict[tuple[str, str], int]:
        snapshot = read_everything()  # production at 0 ...
        registry.promote("m", "production", 1, "bob", registry.get_alias("m", "production").etag)
        cache._read_one("m", "production")  # ... the NOTIFY of bob's move, read meanwhile
        return snapshot

    registry.all_aliases = snapshot_then_a_move_elsewhere_and_its_notify
    try:
        cache.refresh()
        assert cache.version("m", "production") == 1
    finally:
        registry.all_aliases = read_everything
    cache.close()
    registry.engine.dispose()
