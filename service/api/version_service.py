"""VersionService: create, read, list and compare versions."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from editors.choices import EXPORT_FORMATS
from service.api.auth import current_principal
from service.api.errors import abort_on_errors, abort_on_errors_stream
from service.api.resources import parse, rebase_pb, version_pb
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.api.worker_stream import reported
from service.checks import Suite
from service.db.engine import data_dir
from service.export import export_version
from service.rebasing import rebase_version
from service.registry import InvalidArgument
from service.registry.infos import RebaseInfo

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
        related = model == other_model or model == self.registry.predecessor(other_model)
        if not related and other_model != self.registry.predecessor(model):
            raise InvalidArgument(
                f"models {model!r} and {other_model!r} are unrelated: compare versions of one model, or of a model "
                "and its successor (RegisterSuccessor)"
            )
        host, other = self._host(model), self._host(other_model)
        prompts = (
            list(request.prompts)
            or Suite.from_spec(self.registry.get_suite(model)[1], host.model_dir).reference_texts()
        )
        if not 0 <= request.worst <= MAX_WORST:
            raise InvalidArgument(f"worst must be 0..{MAX_WORST} (0: the default, 5), got {request.worst}")
        rows = host.compare(int(base), int(candidate), prompts, other)
        worst = sorted(rows, key=lambda row: -row[1])[: request.worst or 5]
        return pb.CompareVersionsResponse(
            kl_mean=sum(r[1] for r in rows) / len(rows),
            kl_max=max(r[1] for r in rows),
            changed_top1=sum(r[2] != r[3] for r in rows) / len(rows),
            prompts=len(rows),
            worst=[pb.PromptComparison(prompt=p, kl=k, base_top1=a, candidate_top1=b) for p, k, a, b in worst],
        )

    @abort_on_errors_stream
    def RebaseVersion(
        self, request: pb.RebaseVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RebaseProgress]:
        model, number = parse("version", request.name)
        (onto,) = parse("model", request.onto)
        if onto == model:
            raise InvalidArgument(f"onto names the version's own model {model!r}: name a successor of it")
        origin, successor = self._host(model), self._host(onto)

        def rebase(report: Callable[[pb.RebaseProgress], None]) -> RebaseInfo:
            return rebase_version(
                self.registry,
                origin,
                successor,
                int(number),
                current_principal().name,
                request.description,
                request.request_id or None,
                lambda done, total: report(pb.RebaseProgress(done=done, total=total)),
                lambda: not context.is_active(),  # the client hung up or its deadline passed
            )

        info = yield from reported(rebase, "rebase-version")
        drift = len(info.report["drift"])
        yield pb.RebaseProgress(done=drift, total=drift, rebase=rebase_pb(info))

    @abort_on_errors
    def GetRebase(self, request: pb.GetRebaseRequest, context: grpc.ServicerContext) -> pb.Rebase:
        model, number = parse("version", request.name)
        return rebase_pb(self.registry.get_rebase(model, int(number)))

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
