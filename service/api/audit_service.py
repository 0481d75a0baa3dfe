"""AuditService: list the audit log and verify it."""

from __future__ import annotations

import grpc

from service.api.errors import abort_on_errors
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase


class AuditService(rpc.AuditServiceServicer, ServicerBase):
    """AuditService: list the audit log and verify it."""

    @abort_on_errors
    def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        page = self.registry.list_audit(
            request.page_size or 50,
            request.page_token,
            request.action or None,
            request.subject or None,
            request.actor or None,
        )
        return pb.ListAuditEventsResponse(
            events=[
                pb.AuditEvent(
                    seq=e.seq,
                    time=e.created_at,
                    actor=e.actor,
                    action=e.action,
                    subject=e.subject,
                    payload_json=e.payload_json,
                    prev_hash=e.prev_hash,
                    hash=e.hash,
                )
                for e in page.items
            ],
            next_page_token=page.next_page_token,
        )

    @abort_on_errors
    def VerifyAudit(self, request: pb.VerifyAuditRequest, context: grpc.ServicerContext) -> pb.VerifyAuditResponse:
        result = self.registry.verify_audit(request.expect_head)
        return pb.VerifyAuditResponse(
            ok=result.ok,
            events_checked=result.events_checked,
            first_broken_seq=result.first_broken_seq,
            problem=result.problem,
            head_seq=result.head_seq,
            head_hash=result.head_hash,
            mismatches=list(result.mismatches),
            head_key_id=result.head_key_id,
            head_signature=result.head_signature,
            head_public_key=self.registry.audit_keys.public_key_of(result.head_key_id),
        )
