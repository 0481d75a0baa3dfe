"""DiscoverCircuit (EditService, editor role): locate a mechanism by attribution, verify it by
ablation, and optionally create the edit that cuts it (editors.locate, editors.circuits)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from editors.choices import DEFAULT_NODE_KINDS
from editors.circuits import PROPOSALS, DiscoveryRequest, discover_circuit, planned_passes, propose_edit
from editors.edges import discover_edges
from editors.locate import METRICS, MetricSpec, PromptPair, check_pairs
from editors.sae import SparseAutoencoder
from service.api.auth import current_principal
from service.api.errors import abort_on_errors_stream
from service.api.resources import edit_pb, parse
from service.api.scalpel.v1 import scalpel_pb2 as pb
from service.api.service_base import ServicerBase
from service.api.worker_stream import reported
from service.hosting import ModelHost
from service.registry import InvalidArgument, ResourceExhausted

#: Most prompt pairs one DiscoverCircuit call takes.
MAX_PAIRS = 4096
#: Most prompt pairs an edge discovery takes (its graph runs every pair in one batch).
MAX_EDGE_PAIRS = 512


class LocateRpc(ServicerBase):
    """The DiscoverCircuit handler, mixed into EditService."""

    @abort_on_errors_stream
    def DiscoverCircuit(
        self, request: pb.DiscoverCircuitRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.CircuitProgress]:
        circuit = yield from reported(lambda report: self._discover(request, context, report), "discover-circuit")
        yield pb.CircuitProgress(stage="done", done=1, total=1, circuit=circuit)

    def _discover(
        self, request: pb.DiscoverCircuitRequest, context: grpc.ServicerContext, report: Callable[[Any], None]
    ) -> pb.Circuit:
        (model,) = parse("model", request.parent)
        host = self._host(model)
        if "edges" in request.kinds:
            return self._discover_edges(request, host, report)
        sae = None
        if request.sae:
            sae_model, sae_name = parse("sae", request.sae)
            if sae_model != model:
                raise InvalidArgument(f"sae {request.sae!r} is an SAE of model {sae_model!r}, not of {model!r}")
            sae = host.sae(sae_name)
        discovery = _discovery_request(request, sae)
        host.check_texts(
            "pairs", [(p.clean, p.corrupted) for p in discovery.pairs], MAX_PAIRS, sides=("clean", "corrupted")
        )
        check_pairs(host.tokenizer, discovery.pairs, discovery.metric)  # before the budget: a bad pair is the news
        n_nodes = host.surgeon.dims.n_layers * (
            ("heads" in discovery.kinds) * host.surgeon.dims.n_heads + ("mlps" in discovery.kinds)
        ) + (sae.d_sae + 1 if sae is not None else 0)
        needed = planned_passes(discovery, n_nodes)
        if needed > self.locate_max_passes:
            raise ResourceExhausted(
                f"this search may need {needed} passes ({len(discovery.pairs)} pairs, {n_nodes} nodes, "
                f"{discovery.steps} attribution steps) and this server allows {self.locate_max_passes} "
                "(locate_max_passes): send fewer pairs, fewer node kinds or fewer steps"
            )
        if request.propose and request.propose not in PROPOSALS:
            raise InvalidArgument(f"propose must be empty or one of {', '.join(PROPOSALS)}, got {request.propose!r}")
        on_version = request.on_version if request.HasField("on_version") else 0
        earlier = host.stack(on_version).edits
        gone = lambda: not context.is_active()  # noqa: E731 - the client hung up or its deadline passed
        circuit = discover_circuit(
            host.surgeon,
            host.tokenizer,
            discovery,
            earlier,
            progress=lambda stage, done, total: report(pb.CircuitProgress(stage=stage, done=done, total=total)),
            should_stop=gone,
        )
        proposed = []
        if request.propose:
            report(pb.CircuitProgress(stage="propose", done=0, total=1))
            edits = propose_edit(host.surgeon, host.tokenizer, circuit, request.propose, earlier)
            actor = current_principal().name
            proposed = [
                edit_pb(
                    self.registry.create_edit(
                        model,
                        edit,
                        actor,
                        request.description,
                        f"{request.request_id}:{i}" if request.request_id else None,
                    )
                )
                for i, edit in enumerate(edits)
            ]
        attribution = circuit.attribution
        return pb.Circuit(
            nodes=[c.name for c in circuit.nodes],
            faithfulness=circuit.faithfulness,
            completeness=circuit.completeness,
            discovery_faithfulness=circuit.discovery_faithfulness,
            metric_full=circuit.metric_full,
            metric_empty=circuit.metric_empty,
            clean_metric=attribution.clean_metric,
            corrupted_metric=attribution.corrupted_metric,
            passes=circuit.passes,
            ranked=[pb.ComponentScore(name=c.name, estimate=e) for c, e in attribution.ranked()],
            proposed=proposed,
        )

    def _discover_edges(
        self, request: pb.DiscoverCircuitRequest, host: ModelHost, report: Callable[[Any], None]
    ) -> pb.Circuit:
        refusal = _edge_request_refusal(request)
        if refusal:
            raise InvalidArgument(refusal)
        metric = MetricSpec(request.metric or "logit_diff", request.score_from or 1)
        if metric.kind not in METRICS:
            raise InvalidArgument(f"metric must be one of {', '.join(METRICS)}, got {metric.kind!r}")
        pairs = [PromptPair(p.clean, p.corrupted, p.answer, p.wrong) for p in request.pairs]
        host.check_texts("pairs", [(p.clean, p.corrupted) for p in pairs], MAX_PAIRS, sides=("clean", "corrupted"))
        check_pairs(host.tokenizer, pairs, metric)
        report(pb.CircuitProgress(stage="attribution", done=0, total=1))
        circuit = discover_edges(
            host.model,
            host.tokenizer,
            pairs,
            metric,
            target=request.target or 0.9,
            held_out=request.held_out or 4,
            steps=request.steps or 4,
        )
        report(pb.CircuitProgress(stage="held-out", done=1, total=1))
        scores = circuit.scores
        return pb.Circuit(
            nodes=[edge.name for edge in circuit.edges],
            faithfulness=circuit.faithfulness.value,
            completeness=circuit.completeness.value,
            discovery_faithfulness=circuit.discovery_faithfulness,
            metric_full=circuit.metric_full,
            metric_empty=circuit.metric_empty,
            clean_metric=scores.clean_metric,
            corrupted_metric=scores.corrupted_metric,
            passes=circuit.passes,
            ranked=[pb.ComponentScore(name=edge.name, estimate=score) for edge, score in scores.ranked()],
            faithfulness_low=circuit.faithfulness.low,
            faithfulness_high=circuit.faithfulness.high,
            completeness_low=circuit.completeness.low,
            completeness_high=circuit.completeness.high,
        )


def _edge_request_refusal(request: pb.DiscoverCircuitRequest) -> str | None:
    """Why an edge discovery request cannot run (None: it can)."""
    if list(request.kinds) != ["edges"]:
        return f"kinds {list(request.kinds)}: edges stand alone (a circuit of edges, or one of nodes)"
    if request.propose:
        return "propose: edge cuts are not built yet; discover the edges, or cut nodes"
    if request.HasField("on_version"):
        return "on_version: edges are found in the base model only (its graph runs without the edits)"
    if request.sae:
        return "sae: a circuit of edges has no SAE features"
    if len(request.pairs) > MAX_EDGE_PAIRS:
        return f"pairs: {len(request.pairs)} pairs; an edge discovery takes at most {MAX_EDGE_PAIRS} (one batch)"
    return None


def _discovery_request(request: pb.DiscoverCircuitRequest, sae: SparseAutoencoder | None) -> DiscoveryRequest:
    """The request's fields with their defaults, checked (every refusal names the field)."""
    metric = request.metric or "logit_diff"
    if metric not in METRICS:
        raise InvalidArgument(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    kinds = tuple(request.kinds) or DEFAULT_NODE_KINDS
    pairs = tuple(PromptPair(p.clean, p.corrupted, p.answer, p.wrong) for p in request.pairs)
    return DiscoveryRequest(
        pairs,
        MetricSpec(metric, request.score_from or 1),
        target=request.target or 0.9,
        held_out=request.held_out or 4,
        steps=request.steps or 1,
        kinds=kinds,
        direction=request.direction or "denoising",
        sae=sae,
    ).validated()
