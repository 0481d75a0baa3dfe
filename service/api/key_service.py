"""KeyService: create, list and revoke API keys."""

from __future__ import annotations

import grpc

from service.api.auth import current_principal
from service.api.errors import abort_on_errors
from service.api.resources import key_pb
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase


class KeyService(rpc.KeyServiceServicer, ServicerBase):
    """KeyService: create, list and revoke API keys."""

    @abort_on_errors
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        info, secret = self.registry.create_key(request.name, request.role, current_principal().name)
        return pb.CreateKeyResponse(key=key_pb(info), secret=secret)

    @abort_on_errors
    def ListKeys(self, request: pb.ListKeysRequest, context: grpc.ServicerContext) -> pb.ListKeysResponse:
        page = self.registry.list_keys(request.page_size or 50, request.page_token)
        return pb.ListKeysResponse(keys=[key_pb(k) for k in page.items], next_page_token=page.next_page_token)

    @abort_on_errors
    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.ApiKey:
        return key_pb(self.registry.revoke_key(request.name, current_principal().name))
