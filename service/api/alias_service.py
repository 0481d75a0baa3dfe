"""AliasService: read aliases, promote, roll back, delete, read their history."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from service.api.auth import current_principal
from service.api.errors import abort_on_errors
from service.api.resources import alias_pb, move_pb, parse
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.registry.registry import AliasInfo


class AliasService(rpc.AliasServiceServicer, ServicerBase):
    """AliasService: read aliases, promote, roll back, delete, read their history."""

    def _moved(self, info: AliasInfo) -> pb.Alias:
        if self.aliases is not None:  # this replica serves the move at once; others hear the NOTIFY / poll
            self.aliases.wrote(info.model, info.name, info.version)  # (and the cache sets the gauge)
        return alias_pb(info)

    @abort_on_errors
    def GetAlias(self, request: pb.GetAliasRequest, context: grpc.ServicerContext) -> pb.Alias:
        model, alias = parse("alias", request.name)
        return alias_pb(self.registry.get_alias(model, alias))

    @abort_on_errors
    def ListAliases(self, request: pb.ListAliasesRequest, context: grpc.ServicerContext) -> pb.ListAliasesResponse:
        (model,) = parse("model", request.parent)
        page = self.registry.list_aliases(model, request.page_size or 50, request.page_token)
        return pb.ListAliasesResponse(aliases=[alias_pb(a) for a in page.items], next_page_token=page.next_page_token)

    @abort_on_errors
    def Promote(self, request: pb.PromoteRequest, context: grpc.ServicerContext) -> pb.Alias:
        model, alias = parse("alias", request.name)
        principal = current_principal()
        return self._moved(
            self.registry.promote(
                model,
                alias,
                request.version,
                principal.name,
                request.etag or None,
                request.reason,
                request.force,
                principal.role,
            )
        )

    @abort_on_errors
    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> pb.Alias:
        model, alias = parse("alias", request.name)
        target = request.version if request.HasField("version") else None
        principal = current_principal()
        return self._moved(
            self.registry.rollback(
                model,
                alias,
                principal.name,
                request.etag or None,
                request.reason,
                target,
                request.force,
                principal.role,
            )
        )

    @abort_on_errors
    def DeleteAlias(self, request: pb.DeleteAliasRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        model, alias = parse("alias", request.name)
        self.registry.delete_alias(model, alias, current_principal().name, request.etag or None, request.reason)
        if self.aliases is not None:  # this replica stops serving it at once; others hear the NOTIFY / poll
            self.aliases.forget(model, alias)
        return empty_pb2.Empty()

    @abort_on_errors
    def ListAliasHistory(
        self, request: pb.ListAliasHistoryRequest, context: grpc.ServicerContext
    ) -> pb.ListAliasHistoryResponse:
        model, alias = parse("alias", request.name)
        page = self.registry.alias_history(model, alias, request.page_size or 50, request.page_token)
        return pb.ListAliasHistoryResponse(moves=[move_pb(m) for m in page.items], next_page_token=page.next_page_token)
