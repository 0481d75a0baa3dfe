"""Generate the gRPC stubs from protos/ into service/api/ (``make protos``).

protoc writes absolute imports (``from scalpel.v1 import …``); they are rewritten to the
package path so the committed stubs import from ``service.api.scalpel.v1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent.parent
PROTOS = ROOT / "protos"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every .proto under protos/ into ``out_dir``; return the files written."""
    include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *sources,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    written = sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED))
    for path in written:
        path.write_text(path.read_text().replace("from scalpel.v1 import", "from service.api.scalpel.v1 import"))
    for package in {p.parent for p in written} | {p.parent.parent for p in written}:
        (package / "__init__.py").touch()
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "service" / "api"
    for path in generate(out):
        print(path.relative_to(out))
