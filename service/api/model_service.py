"""ModelService: list and read the hosted base models."""

from __future__ import annotations

import grpc

from service.api.errors import abort_on_errors
from service.api.resources import model_pb, parse
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase


class ModelService(rpc.ModelServiceServicer, ServicerBase):
    """ModelService: list and read the hosted base models."""

    @abort_on_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        page = self.registry.list_models(request.page_size or 50, request.page_token)
        return pb.ListModelsResponse(models=[model_pb(m) for m in page.items], next_page_token=page.next_page_token)

    @abort_on_errors
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        (model,) = parse("model", request.name)
        return model_pb(self.registry.get_model(model))
