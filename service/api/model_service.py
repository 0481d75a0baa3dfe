"""ModelService: list and read the base models; load and unload them on this replica."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from editors.errors import InvalidEditError
from editors.rebase import check_successor
from service.api.auth import current_principal
from service.api.errors import abort_on_errors
from service.api.resources import model_pb, parse
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.registry import FailedPrecondition, InvalidArgument
from service.registry.infos import ModelInfo
from service.server_config import ModelSpec


class ModelService(rpc.ModelServiceServicer, ServicerBase):
    """ModelService: list and read the base models; load and unload them on this replica."""

    def _model(self, info: ModelInfo) -> pb.Model:
        message = model_pb(info)
        host = self.hosts.get(info.name)
        if host is not None:
            message.served, message.device = True, str(host.device)
            message.dtype = host.dtype_name
            message.n_layers, message.d_model = host.surgeon.dims.n_layers, host.surgeon.dims.d_model
        return message

    @abort_on_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        page = self.registry.list_models(request.page_size or 50, request.page_token)
        return pb.ListModelsResponse(models=[self._model(m) for m in page.items], next_page_token=page.next_page_token)

    @abort_on_errors
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        (model,) = parse("model", request.name)
        return self._model(self.registry.get_model(model))

    @abort_on_errors
    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext) -> pb.Model:
        if not request.source:
            raise InvalidArgument("source is required: a local model directory or a hub id")
        try:
            spec = ModelSpec.parse(
                request.name,
                {"source": request.source, "device": request.device or None, "dtype": request.dtype or None},
            )
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
        assert self.loader is not None
        self.loader.load_model(request.name, spec, current_principal().name)
        return self._model(self.registry.get_model(request.name))

    @abort_on_errors
    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        (model,) = parse("model", request.name)
        assert self.loader is not None
        self.loader.unload_model(model, current_principal().name, request.force)
        return empty_pb2.Empty()

    @abort_on_errors
    def RegisterSuccessor(self, request: pb.RegisterSuccessorRequest, context: grpc.ServicerContext) -> pb.Model:
        (model,) = parse("model", request.name)
        (predecessor,) = parse("model", request.predecessor)
        successor_host, predecessor_host = self.hosts.get(model), self.hosts.get(predecessor)
        if successor_host is None or predecessor_host is None:
            missing = " and ".join(
                repr(n) for n, h in ((model, successor_host), (predecessor, predecessor_host)) if not h
            )
            raise FailedPrecondition(
                f"model {missing} is not served by this replica: load both models here (LoadModel) so their "
                "architecture, shapes and vocabulary can be compared"
            )
        try:
            check_successor(
                predecessor_host.surgeon, successor_host.surgeon, predecessor_host.tokenizer, successor_host.tokenizer
            )
        except InvalidEditError as error:
            raise FailedPrecondition(f"model {model!r} cannot succeed {predecessor!r}: it {error.problem}") from None
        info = self.registry.register_successor(
            model, predecessor, current_principal().name, request.request_id or None
        )
        return self._model(info)
