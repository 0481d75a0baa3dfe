"""VersionService: create, read, list and compare versions."""

from __future__ import annotations

import grpc

from service.api.auth import current_principal
from service.api.errors import abort_on_errors
from service.api.resources import parse, version_pb
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.checks import Suite
from service.registry import InvalidArgument

#: Most worst-affected prompts a CompareVersions reply lists.
MAX_WORST = 100


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
