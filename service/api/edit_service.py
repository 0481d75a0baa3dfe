"""EditService: create edits, derive steering vectors, compute ROME and MEMIT edits."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from editors import derive_steering, edit_from_json
from editors.covariance import CovarianceCache
from editors.edit_defaults import hparams_from
from editors.errors import Cancelled
from editors.memit import MemitHyperParams, compute_memit, validate_batch
from editors.rome import RomeHyperParams, RomeRequest, compute_rome, validate_request
from editors.validation import parse_json
from service.api.auth import current_principal
from service.api.errors import abort_on_errors, abort_on_errors_stream
from service.api.locate_service import LocateRpc
from service.api.resources import edit_pb, parse
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.api.service_base import ServicerBase
from service.api.worker_stream import reported
from service.db.engine import data_dir
from service.registry import InvalidArgument
from service.registry.infos import EditInfo

#: Most contrastive pairs one DeriveSteering call takes.
MAX_PAIRS = 1024
#: Most facts one ComputeMemit call takes.
MAX_FACTS = 10_000


class EditService(LocateRpc, rpc.EditServiceServicer, ServicerBase):
    """EditService: create edits, derive steering vectors, compute ROME and MEMIT edits."""

    @abort_on_errors
    def CreateEdit(self, request: pb.CreateEditRequest, context: grpc.ServicerContext) -> pb.Edit:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        blobs = {hashlib.sha256(blob).hexdigest(): blob for blob in request.artifacts}
        edit = edit_from_json(request.spec_json, blobs)
        host.surgeon.validate([edit])
        info = self.registry.create_edit(
            model, edit, current_principal().name, request.description, request.request_id or None
        )
        return edit_pb(info)

    @abort_on_errors
    def GetEdit(self, request: pb.GetEditRequest, context: grpc.ServicerContext) -> pb.Edit:
        model, edit_id = parse("edit", request.name)
        return edit_pb(self.registry.get_edit(model, int(edit_id)))

    @abort_on_errors
    def ListEdits(self, request: pb.ListEditsRequest, context: grpc.ServicerContext) -> pb.ListEditsResponse:
        (model,) = parse("model", request.parent)
        page = self.registry.list_edits(model, request.page_size or 50, request.page_token)
        return pb.ListEditsResponse(edits=[edit_pb(e) for e in page.items], next_page_token=page.next_page_token)

    @abort_on_errors
    def DeriveSteering(self, request: pb.DeriveSteeringRequest, context: grpc.ServicerContext) -> pb.Edit:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        pairs = [(p.positive, p.negative) for p in request.pairs]
        host.check_texts("pairs", pairs, MAX_PAIRS)
        edit = derive_steering(
            host.surgeon,
            host.tokenizer,
            pairs,
            request.layer,
            request.point or "hook_resid_pre",
            request.method or "mean_diff",
            request.scale or 1.0,
        )
        info = self.registry.create_edit(
            model, edit, current_principal().name, request.description, request.request_id or None
        )
        return edit_pb(info)

    @abort_on_errors
    def ComputeRome(self, request: pb.ComputeRomeRequest, context: grpc.ServicerContext) -> pb.Edit:
        return edit_pb(self._compute_rome(request, context, lambda progress: None)[0])

    @abort_on_errors_stream
    def ComputeRomeStream(
        self, request: pb.ComputeRomeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RomeProgress]:
        info, converged = yield from reported(
            lambda report: self._compute_rome(request, context, report), "compute-rome"
        )
        yield pb.RomeProgress(stage="done", done=1, total=1, edit=edit_pb(info), converged=converged)

    @abort_on_errors_stream
    def ComputeMemit(
        self, request: pb.ComputeMemitRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.MemitProgress]:
        infos = yield from reported(lambda report: self._compute_memit(request, context, report), "compute-memit")
        yield pb.MemitProgress(stage="done", done=len(infos), total=len(infos), edits=[edit_pb(i) for i in infos])

    def _compute_memit(
        self, request: pb.ComputeMemitRequest, context: grpc.ServicerContext, report: Callable[[Any], None]
    ) -> list[EditInfo]:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        overrides = parse_json("hparams_json", request.hparams_json) if request.hparams_json else {}
        if not isinstance(overrides, dict):
            raise InvalidArgument("hparams_json must be a JSON object of MemitHyperParams fields")
        try:
            shipped = hparams_from(MemitHyperParams, host.model_dir, "memit", **overrides)
            hparams = MemitHyperParams(**shipped).validated(host.surgeon.dims.n_layers)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"hparams_json: {exc}") from exc
        if len(request.facts) > MAX_FACTS:
            raise InvalidArgument(f"at most {MAX_FACTS} facts per ComputeMemit call, got {len(request.facts)}")
        facts = [RomeRequest(f.prompt, f.subject, f.target) for f in request.facts]
        validate_batch(facts, host.tokenizer)  # every fact checked before any computation
        on_version = request.on_version if request.HasField("on_version") else 0
        earlier = host.stack(on_version).edits
        texts = host.reference_texts()
        gone = lambda: not context.is_active()  # noqa: E731 - the client hung up or its deadline passed
        cache = CovarianceCache(data_dir() / "cache" / "covariance")

        def covariance_progress(done: int, total: int) -> None:
            if gone():
                raise Cancelled(f"key covariance stopped after {done} of {total} texts")
            report(pb.MemitProgress(stage="covariance", done=done, total=total))

        covariances = {
            layer: cache.get_or_compute(host.surgeon, host.tokenizer, texts, layer, covariance_progress)
            for layer in hparams.layers
        }
        result = compute_memit(
            host.surgeon,
            host.tokenizer,
            facts,
            covariances,
            texts,
            hparams,
            earlier,
            should_stop=gone,
            progress=lambda stage, done, total: report(pb.MemitProgress(stage=stage, done=done, total=total)),
        )
        actor = current_principal().name
        return [
            self.registry.create_edit(
                model,
                edit,
                actor,
                request.description,
                f"{request.request_id}:{edit.site}" if request.request_id else None,
            )
            for edit in result.edits
        ]

    def _compute_rome(
        self,
        request: pb.ComputeRomeRequest,
        context: grpc.ServicerContext,
        report: Callable[[pb.RomeProgress], None],
    ) -> tuple[EditInfo, bool]:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        overrides = parse_json("hparams_json", request.hparams_json) if request.hparams_json else {}
        if not isinstance(overrides, dict):
            raise InvalidArgument("hparams_json must be a JSON object of RomeHyperParams fields")
        try:
            shipped = hparams_from(RomeHyperParams, host.model_dir, "rome", **overrides)
            hparams = RomeHyperParams.for_model(host.surgeon, **shipped)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"hparams_json: {exc}") from exc
        rome_request = RomeRequest(request.prompt, request.subject, request.target)
        validate_request(rome_request, host.tokenizer)
        hparams.validated(host.surgeon.dims.n_layers)
        on_version = request.on_version if request.HasField("on_version") else 0
        earlier = host.stack(on_version).edits
        texts = host.reference_texts()
        gone = lambda: not context.is_active()  # noqa: E731 - the client hung up or its deadline passed

        def covariance_progress(done: int, total: int) -> None:
            if gone():
                raise Cancelled(f"key covariance stopped after {done} of {total} texts")
            report(pb.RomeProgress(stage="covariance", done=done, total=total))

        def optimisation_progress(step: int, steps: int, nll: float) -> None:
            report(pb.RomeProgress(stage="optimisation", done=step, total=steps, target_nll=nll))

        covariance = CovarianceCache(data_dir() / "cache" / "covariance").get_or_compute(
            host.surgeon, host.tokenizer, texts, hparams.layer, progress=covariance_progress
        )
        result = compute_rome(
            host.surgeon,
            host.tokenizer,
            rome_request,
            covariance,
            texts,
            hparams,
            earlier,
            should_stop=gone,
            show_progress=False,
            progress=optimisation_progress,
        )
        info = self.registry.create_edit(
            model, result.edit, current_principal().name, request.description, request.request_id or None
        )
        return info, result.converged
