"""Resource names (``models/{model}/versions/{n}`` …) and the registry's values as protobuf messages."""

from __future__ import annotations

import json
import re
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.registry import InvalidArgument
from service.registry.registry import (
    AliasInfo,
    AliasMoveInfo,
    EditInfo,
    KeyInfo,
    ModelInfo,
    RebaseInfo,
    RunInfo,
    SaeInfo,
    VersionInfo,
)


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
    "sae": "models/{model}/saes/{name}",
}


_PATTERN = {
    kind: re.compile(
        form.replace("{number}", "(0|[1-9][0-9]{0,8})")
        .replace("{model}", "([^/]+)")
        .replace("{alias}", "([^/]+)")
        .replace("{name}", "([^/]+)"),
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
        predecessor=f"models/{info.predecessor}" if info.predecessor else "",
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
        origin=info.origin or "",
    )


def rebase_pb(info: RebaseInfo) -> pb.Rebase:
    summary = info.report["summary"]
    return pb.Rebase(
        version=version_pb(info.version),
        origin=info.origin,
        summary=pb.RebaseSummary(**{key: value for key, value in summary.items() if value is not None}),
        drift=[
            pb.EditDrift(
                originals=entry["originals"],
                origin_edit_ids=entry["origin_edit_ids"],
                kind=entry["kind"],
                action=entry["action"],
                reason=entry["reason"],
                edit_ids=entry["edit_ids"],
                metrics=entry["metrics"],
            )
            for entry in info.report["drift"]
        ],
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
            kind=r.get("kind", ""),
            metric=r.get("metric", 0.0),
            ci_low=r.get("ci_low", r.get("metric", 0.0)),
            ci_high=r.get("ci_high", r.get("metric", 0.0)),
            n=r.get("n", 0),
            threshold=r.get("threshold", 0.0),
            comparison=r.get("comparison", ""),
            rule=r.get("rule", ""),
            passed=bool(r.get("passed")),
            reason=r.get("reason", r.get("error", "")),
            reference=r.get("reference", ""),
            not_applicable=not r.get("applicable", True),
            worst_json=json.dumps(r.get("worst", [])),
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


def sae_pb(info: SaeInfo) -> pb.Sae:
    return pb.Sae(
        name=f"models/{info.model}/saes/{info.name}",
        site=info.site,
        architecture=info.architecture,
        d_sae=info.d_sae,
        sae_sha256=info.sae_sha256,
        weights_sha256=info.weights_sha256,
        config_json=json.dumps(info.config, sort_keys=True),
        description=info.description,
        created_by=info.created_by,
        create_time=_ts(info.created_at),
    )
