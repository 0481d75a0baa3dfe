"""VersionService: create, read, list and compare versions."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc

from editors.choices import EXPORT_FORMATS
from service.api.auth import current_principal
from service.api.errors import abort_on_errors, abort_on_errors_stream
from service.api.resources import parse, version_pb
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.checks import Suite
from service.db.engine import data_dir
from service.export import export_version
from service.registry import InvalidArgument

#: Most worst-affected prompts a CompareVersions reply lists.
MAX_WORST = 100

#: Bytes per ExportChunk: well under gRPC's default 4 MiB message limit.
EXPORT_CHUNK = 1 << 20


class VersionService(rpc.VersionServiceServicer, ServicerBase):
    """VersionService: create, read, list and compare versions."""

    @abort_on_errors
    def CreateVersion(self, request: pb.CreateVersionRequest, context: grpc.ServicerContext) -> pb.Version:
        model, parent = parse("version", request.parent)
        remove = request.remove_edit_id if request.HasField("remove_edit_id") else None
        info = self.registry.create_version(
            model,
            int(parent),
            current_principal().name,
            list(request.append_edit_ids),
            remove,
            request.description,
            request.request_id or None,
        )
        return version_pb(info)

    @abort_on_errors
    def GetVersion(self, request: pb.GetVersionRequest, context: grpc.ServicerContext) -> pb.Version:
        model, number = parse("version", request.name)
        return version_pb(self.registry.get_version(model, int(number)))

    @abort_on_errors
    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.ListVersionsResponse:
        (model,) = parse("model", request.parent)
        page = self.registry.list_versions(model, request.page_size or 50, request.page_token)
        return pb.ListVersionsResponse(
            versions=[version_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    @abort_on_errors
    def CompareVersions(
        self, request: pb.CompareVersionsRequest, context: grpc.ServicerContext
    ) -> pb.CompareVersionsResponse:
        model, base = parse("version", request.base)
        other_model, candidate = parse("version", request.candidate)
        if other_model != model:
            raise InvalidArgument("both versions must belong to the same model")
        host = self._host(model)
        prompts = (
            list(request.prompts)
            or Suite.from_spec(self.registry.get_suite(model)[1], host.model_dir).reference_texts()
        )
        if not 0 <= request.worst <= MAX_WORST:
            raise InvalidArgument(f"worst must be 0..{MAX_WORST} (0: the default, 5), got {request.worst}")
        rows = host.compare(int(base), int(candidate), prompts)
        worst = sorted(rows, key=lambda row: -row[1])[: request.worst or 5]
        return pb.CompareVersionsResponse(
            kl_mean=sum(r[1] for r in rows) / len(rows),
            kl_max=max(r[1] for r in rows),
            changed_top1=sum(r[2] != r[3] for r in rows) / len(rows),
            prompts=len(rows),
            worst=[pb.PromptComparison(prompt=p, kl=k, base_top1=a, candidate_top1=b) for p, k, a, b in worst],
        )

    @abort_on_errors_stream
    def ExportVersion(
        self, request: pb.ExportVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportChunk]:
        model, number = parse("version", request.name)
        if request.format not in EXPORT_FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {request.format!r}")
        scratch = data_dir() / "exports"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as directory:
            hashes = export_version(
                self.registry, model, int(number), request.format, Path(directory), current_principal().name
            )
            for name, digest in hashes.items():
                yield from _chunks(Path(directory) / name, digest)


def _chunks(path: Path, digest: str) -> Iterator[pb.ExportChunk]:
    """``path`` in EXPORT_CHUNK pieces, the last one carrying ``digest`` (checked against the bytes
    sent: a file changed on disk since it was hashed for the audit event fails the call)."""
    sent = hashlib.sha256()
    offset, size = 0, path.stat().st_size
    with path.open("rb") as stream:
        while True:
            data = stream.read(EXPORT_CHUNK)
            sent.update(data)
            last = offset + len(data) >= size
            if last and sent.hexdigest() != digest:
                raise RuntimeError(f"{path.name} changed while it was exported")
            yield pb.ExportChunk(file=path.name, offset=offset, data=data, sha256=digest if last else "")
            offset += len(data)
            if last:
                return
