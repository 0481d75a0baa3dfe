"""gRPC servicers: one module per service (``*_service.py``) over the shared error mapping
(``errors.py``), resource names and conversions (``resources.py``) and state (``service_base.py``)."""

from __future__ import annotations

import grpc

from service.api.alias_service import AliasService
from service.api.audit_service import AuditService
from service.api.check_service import CheckService
from service.api.edit_service import EditService
from service.api.feature_service import FeatureService
from service.api.inference_service import InferenceService
from service.api.key_service import KeyService
from service.api.model_service import ModelService
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.version_service import VersionService


class Servicers(
    ModelService,
    EditService,
    FeatureService,
    VersionService,
    AliasService,
    InferenceService,
    AuditService,
    CheckService,
    KeyService,
):
    """All services over one registry and the hosted models."""


def add_to_server(servicers: Servicers, server: grpc.Server) -> list[str]:
    """Register every service; returns their full names (for reflection)."""
    rpc.add_ModelServiceServicer_to_server(servicers, server)
    rpc.add_EditServiceServicer_to_server(servicers, server)
    rpc.add_FeatureServiceServicer_to_server(servicers, server)
    rpc.add_VersionServiceServicer_to_server(servicers, server)
    rpc.add_AliasServiceServicer_to_server(servicers, server)
    rpc.add_InferenceServiceServicer_to_server(servicers, server)
    rpc.add_AuditServiceServicer_to_server(servicers, server)
    rpc.add_KeyServiceServicer_to_server(servicers, server)
    rpc.add_CheckServiceServicer_to_server(servicers, server)
    return [service.full_name for service in pb.DESCRIPTOR.services_by_name.values()]
