"""gRPC servicers: translate requests to registry / host calls and errors to status codes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import DataError, InterfaceError, OperationalError

from editors import InvalidEditError, derive_steering, edit_from_json
from editors.covariance import CovarianceCache
from editors.errors import Cancelled
from editors.rome import RomeHyperParams, RomeRequest, compute_rome, validate_request
from editors.validation import parse_json
from service.aliases import AliasCache
from service.api.auth import current_principal
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.scalpel.v1 import scalpel_pb2_grpc as rpc
from service.check_runs import CheckScheduler
from service.checks import Suite
from service.db.engine import data_dir
from service.metrics import Metrics
from service.registry import InvalidArgument, NotFound, Registry, RegistryError
from service.registry.registry import AliasInfo, AliasMoveInfo, EditInfo, KeyInfo, ModelInfo, RunInfo, VersionInfo
from service.serving import Finished, ModelHost

F = TypeVar("F", bound=Callable[..., Any])
_LOG = logging.getLogger(__name__)
_CODES = {
    name: getattr(grpc.StatusCode, name)
    for name in (
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "ABORTED",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "DATA_LOSS",
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    )
}


@contextlib.contextmanager
def _errors_as_status(context: grpc.ServicerContext) -> Iterator[None]:
    """Registry and edit errors become their status codes with their message. Anything unexpected
    is logged with an incident id and becomes INTERNAL naming that id: no internals leak."""
    try:
        yield
    except RegistryError as exc:
        context.abort(_CODES.get(exc.code, grpc.StatusCode.INTERNAL), _brief(str(exc)))
    except InvalidEditError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _brief(str(exc)))
    except RecursionError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a value in the request is nested too deeply")
    except Cancelled as exc:
        context.abort(grpc.StatusCode.CANCELLED, f"stopped: the call was cancelled or its deadline passed ({exc})")
    except (OperationalError, InterfaceError) as exc:
        if not _is_connection_loss(exc):
            _abort_internal(context)
        context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unreachable; retry shortly")
    except DataError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a value is out of range for the database: {exc.orig}")
    except Exception:
        _abort_internal(context)


def _abort_internal(context: grpc.ServicerContext) -> None:
    """INTERNAL naming an incident id; the traceback of the exception being handled goes to the log."""
    incident = secrets.token_hex(4)
    _LOG.exception("incident %s", incident)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error, incident {incident} (see the server log)")


def _is_connection_loss(exc: OperationalError | InterfaceError) -> bool:
    """Whether a database error means the database is away (worth a retry), not a bad statement."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if isinstance(exc.orig, psycopg.OperationalError):
        return True
    message = str(exc.orig).lower()
    return any(sign in message for sign in ("database is locked", "unable to open", "disk i/o error"))


#: Most contrastive pairs one DeriveSteering call takes.
MAX_PAIRS = 1024
#: Most worst-affected prompts a CompareVersions reply lists.
MAX_WORST = 100


#: Status details stay far below gRPC's 8 KiB default metadata limit, whatever a message quotes.
MAX_DETAILS_CHARS = 1000


def _brief(message: str) -> str:
    return message if len(message) <= MAX_DETAILS_CHARS else message[:MAX_DETAILS_CHARS] + "…"


def _abort_on_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _errors_as_status(context):
            return method(self, request, context)

    return wrapper  # type: ignore[return-value]


def _abort_on_errors_stream(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _errors_as_status(context):
            yield from method(self, request, context)

    return wrapper  # type: ignore[return-value]


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


_NAME = {
    "model": "models/{model}",
    "version": "models/{model}/versions/{number}",
    "alias": "models/{model}/aliases/{alias}",
    "edit": "models/{model}/edits/{number}",
}
_PATTERN = {
    kind: re.compile(
        form.replace("{number}", "(0|[1-9][0-9]{0,8})").replace("{model}", "([^/]+)").replace("{alias}", "([^/]+)"),
        re.ASCII,
    )
    for kind, form in _NAME.items()
}


def parse(kind: str, name: str) -> tuple[str, ...]:
    """The parts of a resource name; numbers have at most 9 digits (database integers)."""
    match = _PATTERN[kind].fullmatch(name or "")
    if match is None:
        raise InvalidArgument(
            f"{name[:100]!r} is not a {kind} name ({_NAME[kind]}; numbers are ASCII digits, at most 9, "
            "without leading zeros)"
        )
    return match.groups()


def model_pb(info: ModelInfo) -> pb.Model:
    return pb.Model(
        name=f"models/{info.name}",
        source=info.source,
        weights_sha256=info.weights_sha256,
        created_by=info.created_by,
        create_time=_ts(info.created_at),
    )


def edit_pb(info: EditInfo) -> pb.Edit:
    return pb.Edit(
        name=f"models/{info.model}/edits/{info.id}",
        id=info.id,
        kind=info.kind,
        spec_json=info.spec_json,
        spec_sha256=info.spec_sha256,
        artifacts=info.artifacts,
        author=info.author,
        description=info.description,
        create_time=_ts(info.created_at),
    )


def version_pb(info: VersionInfo) -> pb.Version:
    return pb.Version(
        name=f"models/{info.model}/versions/{info.number}",
        number=info.number,
        parent=info.parent,
        edit_ids=info.edit_ids,
        status=info.status,
        author=info.author,
        description=info.description,
        create_time=_ts(info.created_at),
    )


def alias_pb(info: AliasInfo) -> pb.Alias:
    return pb.Alias(
        name=f"models/{info.model}/aliases/{info.name}",
        version=info.version,
        etag=info.etag,
        updated_by=info.updated_by,
        update_time=_ts(info.updated_at),
    )


def move_pb(info: AliasMoveInfo) -> pb.AliasMove:
    return pb.AliasMove(
        action=info.action,
        from_version=info.from_version,
        to_version=info.to_version,
        actor=info.actor,
        reason=info.reason,
        forced=info.forced,
        create_time=_ts(info.created_at),
    )


def key_pb(info: KeyInfo) -> pb.ApiKey:
    return pb.ApiKey(
        name=info.name,
        prefix=info.prefix,
        role=info.role,
        created_by=info.created_by,
        create_time=_ts(info.created_at),
        revoke_time=_ts(info.revoked_at),
    )


def run_pb(info: RunInfo) -> pb.CheckRun:
    results = [
        pb.CheckResult(
            name=r.get("name", ""),
            metric=r.get("metric", 0.0),
            threshold=r.get("threshold", 0.0),
            comparison=r.get("comparison", ""),
            passed=bool(r.get("passed")),
            worst_json=json.dumps(r.get("worst", r.get("error", []))),
        )
        for r in info.results
    ]
    return pb.CheckRun(
        id=info.id,
        version=f"models/{info.model}/versions/{info.version}",
        suite_sha256=info.suite_sha256,
        state=info.state,
        results=results,
        start_time=_ts(info.started_at),
        finish_time=_ts(info.finished_at),
    )


class Servicers(
    rpc.ModelServiceServicer,
    rpc.EditServiceServicer,
    rpc.VersionServiceServicer,
    rpc.AliasServiceServicer,
    rpc.InferenceServiceServicer,
    rpc.AuditServiceServicer,
    rpc.KeyServiceServicer,
):
    """All services over one registry and the hosted models."""

    def __init__(
        self,
        registry: Registry,
        hosts: dict[str, ModelHost],
        checks: CheckScheduler,
        metrics: Metrics,
    ) -> None:
        self.registry = registry
        self.hosts = hosts
        self.checks = checks
        self.metrics = metrics
        self.aliases: AliasCache | None = None

    def _moved(self, info: AliasInfo) -> pb.Alias:
        if self.aliases is not None:  # this replica serves the move at once; others hear the NOTIFY / poll
            self.aliases.set(info.model, info.name, info.version)  # (and the cache sets the gauge)
        return alias_pb(info)

    def _host(self, model: str) -> ModelHost:
        host = self.hosts.get(model)
        if host is None:
            raise NotFound(f"model {model!r} is not hosted by this server")
        return host

    # -- models ---------------------------------------------------------------------------------
    @_abort_on_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        page = self.registry.list_models(request.page_size or 50, request.page_token)
        return pb.ListModelsResponse(models=[model_pb(m) for m in page.items], next_page_token=page.next_page_token)

    @_abort_on_errors
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        (model,) = parse("model", request.name)
        return model_pb(self.registry.get_model(model))

    # -- edits ----------------------------------------------------------------------------------
    @_abort_on_errors
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

    @_abort_on_errors
    def GetEdit(self, request: pb.GetEditRequest, context: grpc.ServicerContext) -> pb.Edit:
        model, edit_id = parse("edit", request.name)
        return edit_pb(self.registry.get_edit(model, int(edit_id)))

    @_abort_on_errors
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

    @_abort_on_errors
    def ComputeRome(self, request: pb.ComputeRomeRequest, context: grpc.ServicerContext) -> pb.Edit:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        overrides = parse_json("hparams_json", request.hparams_json) if request.hparams_json else {}
        if not isinstance(overrides, dict):
            raise InvalidArgument("hparams_json must be a JSON object of RomeHyperParams fields")
        try:
            hparams = RomeHyperParams(**overrides)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"hparams_json: {exc}") from exc
        rome_request = RomeRequest(request.prompt, request.subject, request.target)
        validate_request(rome_request, host.tokenizer)
        hparams.validated(host.surgeon.dims.n_layers)
        on_version = request.on_version if request.HasField("on_version") else 0
        earlier = host.stack(on_version).edits
        texts = host.reference_texts()
        gone = lambda: not context.is_active()  # noqa: E731 - the client hung up or its deadline passed

        def progress(done: int, total: int) -> None:
            if gone():
                raise Cancelled(f"key covariance stopped after {done} of {total} texts")

        covariance = CovarianceCache(data_dir() / "cache" / "covariance").get_or_compute(
            host.surgeon, host.tokenizer, texts, hparams.layer, progress=progress
        )
        result = compute_rome(
            host.surgeon, host.tokenizer, rome_request, covariance, texts, hparams, earlier, should_stop=gone
        )
        info = self.registry.create_edit(
            model, result.edit, current_principal().name, request.description, request.request_id or None
        )
        return edit_pb(info)

    # -- versions -------------------------------------------------------------------------------
    @_abort_on_errors
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

    @_abort_on_errors
    def GetVersion(self, request: pb.GetVersionRequest, context: grpc.ServicerContext) -> pb.Version:
        model, number = parse("version", request.name)
        return version_pb(self.registry.get_version(model, int(number)))

    @_abort_on_errors
    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.ListVersionsResponse:
        (model,) = parse("model", request.parent)
        page = self.registry.list_versions(model, request.page_size or 50, request.page_token)
        return pb.ListVersionsResponse(
            versions=[version_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    @_abort_on_errors
    def CompareVersions(
        self, request: pb.CompareVersionsRequest, context: grpc.ServicerContext
    ) -> pb.CompareVersionsResponse:
        model, base = parse("version", request.base)
        other_model, candidate = parse("version", request.candidate)
        if other_model != model:
            raise InvalidArgument("both versions must belong to the same model")
        host = self._host(model)
        prompts = list(request.prompts) or list(self.registry.get_suite(model)[1].get("reference_texts", []))
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

    # -- aliases --------------------------------------------------------------------------------
    @_abort_on_errors
    def GetAlias(self, request: pb.GetAliasRequest, context: grpc.ServicerContext) -> pb.Alias:
        model, alias = parse("alias", request.name)
        return alias_pb(self.registry.get_alias(model, alias))

    @_abort_on_errors
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

    @_abort_on_errors
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

    @_abort_on_errors
    def ListAliasHistory(
        self, request: pb.ListAliasHistoryRequest, context: grpc.ServicerContext
    ) -> pb.ListAliasHistoryResponse:
        model, alias = parse("alias", request.name)
        page = self.registry.alias_history(model, alias, request.page_size or 50, request.page_token)
        return pb.ListAliasHistoryResponse(moves=[move_pb(m) for m in page.items], next_page_token=page.next_page_token)

    # -- inference ------------------------------------------------------------------------------
    def _version(self, host: ModelHost, selector: pb.VersionSelector) -> int:
        which = selector.WhichOneof("selector")
        return host.resolve(
            selector.alias if which == "alias" else None, selector.version if which == "version" else None
        )

    @_abort_on_errors_stream
    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateResponse]:
        (model,) = parse("model", request.model)
        host = self._host(model)
        version = self._version(host, request.selector)
        stream = host.generate(
            version,
            request.prompt,
            request.max_tokens or 16,
            request.temperature,
            request.top_p or 1.0,
            request.seed if request.HasField("seed") else None,
            tuple(request.stop),
            context.is_active,
        )
        for event in stream:
            if isinstance(event, Finished):
                self.metrics.tokens.labels(model, str(version)).inc(event.tokens)
                yield pb.GenerateResponse(
                    done=pb.GenerateDone(
                        version=f"models/{model}/versions/{version}",
                        finish_reason=event.finish_reason,
                        tokens=event.tokens,
                    )
                )
            else:
                yield pb.GenerateResponse(
                    token=pb.TokenChunk(token_id=event.token_ids[0], token_ids=event.token_ids, text=event.text)
                )

    @_abort_on_errors
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        (model,) = parse("model", request.model)
        host = self._host(model)
        version = self._version(host, request.selector)
        return pb.ScoreResponse(
            logprobs=host.score(version, request.prompt, list(request.continuations)),
            version=f"models/{model}/versions/{version}",
        )

    # -- audit ----------------------------------------------------------------------------------
    @_abort_on_errors
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

    @_abort_on_errors
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
        )

    # -- checks ---------------------------------------------------------------------------------
    @_abort_on_errors
    def GetSuite(self, request: pb.GetSuiteRequest, context: grpc.ServicerContext) -> pb.Suite:
        (model,) = parse("model", request.model)
        digest, spec = self.registry.get_suite(model)
        return pb.Suite(model=request.model, suite_sha256=digest, spec_json=json.dumps(spec, sort_keys=True))

    @_abort_on_errors
    def SetSuite(self, request: pb.SetSuiteRequest, context: grpc.ServicerContext) -> pb.Suite:
        (model,) = parse("model", request.model)
        self._host(model)
        spec = parse_json("spec_json", request.spec_json, "a JSON object describing the suite")
        Suite.from_spec(spec)
        digest = self.registry.set_suite(model, spec, current_principal().name)
        return pb.Suite(model=request.model, suite_sha256=digest, spec_json=json.dumps(spec, sort_keys=True))

    @_abort_on_errors
    def StartRun(self, request: pb.StartRunRequest, context: grpc.ServicerContext) -> pb.CheckRun:
        model, number = parse("version", request.version)
        self._host(model)
        return run_pb(self.checks.start(model, int(number), current_principal().name, request.request_id or None))

    @_abort_on_errors
    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.CheckRun:
        return run_pb(self.registry.get_check_run(request.id))

    @_abort_on_errors_stream
    def WatchRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> Iterator[pb.RunProgress]:
        info = self.registry.get_check_run(request.id)
        last = None
        while info.state == "running" and context.is_active():
            progress = self.checks.wait_for_change(request.id, last)
            if progress is not None and progress != last:
                last = progress
                yield pb.RunProgress(
                    run_id=request.id,
                    done=progress.done,
                    total=progress.total,
                    current=progress.current,
                    state=progress.state,
                )
            info = self.registry.get_check_run(request.id)
        yield pb.RunProgress(run_id=request.id, done=1, total=1, current="done", state=info.state, run=run_pb(info))

    # -- keys -----------------------------------------------------------------------------------
    @_abort_on_errors
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        info, secret = self.registry.create_key(request.name, request.role, current_principal().name)
        return pb.CreateKeyResponse(key=key_pb(info), secret=secret)

    @_abort_on_errors
    def ListKeys(self, request: pb.ListKeysRequest, context: grpc.ServicerContext) -> pb.ListKeysResponse:
        page = self.registry.list_keys(request.page_size or 50, request.page_token)
        return pb.ListKeysResponse(keys=[key_pb(k) for k in page.items], next_page_token=page.next_page_token)

    @_abort_on_errors
    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.ApiKey:
        return key_pb(self.registry.revoke_key(request.name, current_principal().name))


def add_to_server(servicers: Servicers, server: grpc.Server) -> list[str]:
    """Register every service; returns their full names (for reflection)."""
    rpc.add_ModelServiceServicer_to_server(servicers, server)
    rpc.add_EditServiceServicer_to_server(servicers, server)
    rpc.add_VersionServiceServicer_to_server(servicers, server)
    rpc.add_AliasServiceServicer_to_server(servicers, server)
    rpc.add_InferenceServiceServicer_to_server(servicers, server)
    rpc.add_AuditServiceServicer_to_server(servicers, server)
    rpc.add_KeyServiceServicer_to_server(servicers, server)
    rpc.add_CheckServiceServicer_to_server(servicers, server)
    return [service.full_name for service in pb.DESCRIPTOR.services_by_name.values()]
