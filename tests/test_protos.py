"""The committed gRPC stubs are exactly what `make protos` generates from protos/."""

from __future__ import annotations

from pathlib import Path

from service.api.generate import ROOT, generate


def test_committed_stubs_match_the_protos(tmp_path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_text() for p in generate(tmp_path)}
    committed_dir = ROOT / "service" / "api"
    assert fresh, "protoc generated nothing"
    for relative, text in fresh.items():
        committed = committed_dir / relative
        assert committed.exists(), f"{relative} is not committed: run `make protos`"
        assert committed.read_text() == text, f"{relative} drifted from protos/: run `make protos`"
    stale = {p.relative_to(committed_dir) for p in (committed_dir / "scalpel").rglob("*_pb2*.py*")} - set(fresh)
    assert not stale, f"stubs without a proto: {sorted(map(str, stale))}"
    assert Path(committed_dir / "scalpel" / "v1" / "__init__.py").exists()
