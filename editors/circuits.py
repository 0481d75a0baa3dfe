"""A circuit found by attribution and verified by ablation, and the edit that cuts it (see
:mod:`editors.locate` for the method and the definitions of faithfulness and completeness)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from editors.choices import DEFAULT_NODE_KINDS, NODE_KINDS, PROPOSALS
from editors.edits import DirectionalAblation, Edit, HeadAblation, NeuronAblation, Op
from editors.errors import Cancelled, InvalidEditError
from editors.locate import DIRECTIONS, Attribution, Component, MetricSpec, Pairs, PromptPair, attribute
from editors.sae import SparseAutoencoder
from editors.surgeon import Surgeon
from editors.validation import check_choice, check_int, check_scale

#: ``progress(stage, done, total)``: stages "attribution", "means", "grow", "prune", "held-out".
Progress = Callable[[str, int, int], None]
#: Most circuit members the prune step tries to drop (the least important ones): with an SAE's
#: thousands of features as nodes, pruning every member would cost a pass each.
PRUNE_LIMIT = 64


@dataclass(frozen=True)
class DiscoveryRequest:
    """What to look for, and how hard. ``held_out``: every ``held_out``-th pair is kept for the
    final scores and never used to choose the circuit. ``steps``: attribution's interpolation
    steps (1: plain attribution patching; more: integrated gradients along the path from the
    clean to the corrupted input, which sees past saturated attention; see BENCHMARKS.md).
    ``features`` among ``kinds`` makes ``sae``'s features and its error term nodes."""

    pairs: tuple[PromptPair, ...]
    metric: MetricSpec = field(default_factory=MetricSpec)
    target: float = 0.9
    held_out: int = 4
    steps: int = 1
    batch_size: int = 16
    kinds: tuple[str, ...] = DEFAULT_NODE_KINDS
    direction: str = "denoising"
    sae: SparseAutoencoder | None = None

    def validated(self) -> DiscoveryRequest:
        target = check_scale("target", self.target)
        if not 0 < target <= 1:
            raise InvalidEditError("target", f"{target} is outside (0, 1]", "a share of the behaviour, e.g. 0.9")
        check_int("held_out", self.held_out, 2, 1000)
        check_int("steps", self.steps, 1, 64)
        check_int("batch_size", self.batch_size, 1, 4096)
        check_choice("direction", self.direction, DIRECTIONS)
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise InvalidEditError("kinds", f"{list(self.kinds)} is empty or repeats", "heads and/or mlps")
        for i, kind in enumerate(self.kinds):
            check_choice(f"kinds[{i}]", kind, NODE_KINDS)
        if ("features" in self.kinds) != (self.sae is not None):
            raise InvalidEditError(
                "sae", "is missing" if self.sae is None else "is given without features among kinds",
                "an SAE exactly when kinds has features",
            )  # fmt: skip
        if len(self.pairs) < self.held_out:
            raise InvalidEditError(
                "pairs", f"has {len(self.pairs)} pairs", f"at least held_out = {self.held_out} (one held out)"
            )
        return self

    def split(self) -> tuple[list[PromptPair], list[PromptPair]]:
        """(discovery pairs, held-out pairs)."""
        held = [p for i, p in enumerate(self.pairs) if i % self.held_out == self.held_out - 1]
        return [p for i, p in enumerate(self.pairs) if i % self.held_out != self.held_out - 1], held

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": [vars(p) for p in self.pairs],
            "metric": vars(self.metric),
            "target": self.target,
            "held_out": self.held_out,
            "steps": self.steps,
            "kinds": list(self.kinds),
            "direction": self.direction,
            **({"sae": {"sha256": self.sae.sha256, "site": self.sae.site}} if self.sae is not None else {}),
        }


def planned_passes(request: DiscoveryRequest, n_nodes: int) -> int:
    """The most forwards and backwards :func:`discover_circuit` runs for ``request`` (each over one
    batch of pairs): the bound a service checks before it starts."""
    discovery, held = request.split()
    batches = math.ceil(len(discovery) / request.batch_size)
    held_batches = math.ceil(len(held) / request.batch_size)
    searches = 3 + math.ceil(math.log2(n_nodes + 1)) + min(n_nodes, PRUNE_LIMIT)  # full, empty, grow, prune
    corrupted_features = batches + held_batches if request.sae is not None else 0  # the ablators' corrupted runs
    return batches * (2 + 2 * request.steps + 1 + searches) + held_batches * 5 + corrupted_features


@dataclass(frozen=True)
class Circuit:
    """A verified circuit and its scores (held-out unless named ``discovery_*``)."""

    nodes: tuple[Component, ...]
    faithfulness: float
    completeness: float
    discovery_faithfulness: float
    metric_full: float  # held-out metric, nothing ablated
    metric_empty: float  # held-out metric, every node ablated
    attribution: Attribution
    passes: int  # forwards and backwards run, each over one batch of pairs
    request: DiscoveryRequest
    means: dict[str, torch.Tensor]  # site → mean activation over the corrupted prompts (the ablation values)

    @property
    def features(self) -> list[int]:
        """The SAE features among the nodes, most important first."""
        return [c.index for c, _ in self.attribution.ranked() if c.kind == "feature" and c in self.nodes]

    def scores(self) -> dict[str, Any]:
        return {
            "circuit": [c.name for c in self.nodes],
            "faithfulness": round(self.faithfulness, 4),
            "completeness": round(self.completeness, 4),
            "discovery_faithfulness": round(self.discovery_faithfulness, 4),
            "metric_full": round(self.metric_full, 4),
            "metric_empty": round(self.metric_empty, 4),
            "passes": self.passes,
        }


class _Ablator:
    """The metric of a pair set with every node outside a kept set ablated (one forward per
    batch): heads and MLPs mean-ablated through the ordinary head and neuron ablation edits; an
    SAE's features and error term patched from the pair's corrupted run at each position (as
    Marks et al. 2024 do: a feature's mean over every token would also erase what the clean and
    corrupted prompts share, the words around the one that differs)."""

    def __init__(
        self,
        surgeon: Surgeon,
        data: Pairs,
        means: dict[str, torch.Tensor],
        edits: Sequence[Edit],
        batch: int,
        sae: SparseAutoencoder | None = None,
    ):
        self.surgeon, self.data, self.means, self.edits, self.batch = surgeon, data, means, list(edits), batch
        self.sae = sae
        self.passes = 0
        self._corrupted: list[tuple[torch.Tensor, torch.Tensor]] = []  # each batch's (features, error)
        self._part = 0  # the batch running now
        if sae is not None:
            points = [f"{sae.site}.sae.acts", f"{sae.site}.sae.error"]
            with torch.inference_mode(), surgeon.trace(points, self.edits, saes=[sae]) as seen:
                for part in self._parts():
                    surgeon.model(input_ids=part.corrupted, attention_mask=part.mask)
                    self._corrupted.append((seen[points[0]], seen[points[1]]))
                    self.passes += 1

    def _parts(self) -> Iterator[Pairs]:
        for start in range(0, self.data.n, self.batch):
            yield self.data.slice(slice(start, start + self.batch))

    def _feature_ops(self, ablated: Sequence[Component]) -> list[tuple[str, Op]]:
        """The SAE spliced in with the ablated features, and its error term if ablated, taken from
        the corrupted run (nothing when no feature node is ablated: the model as it is)."""
        features = [n.index for n in ablated if n.kind == "feature"]
        error = any(n.kind == "sae_error" for n in ablated)
        sae = self.sae
        if sae is None or not (features or error):
            return []
        index = torch.tensor(features, dtype=torch.long)

        def ablate(x: torch.Tensor, _: object) -> torch.Tensor:
            corrupted_features, corrupted_error = self._corrupted[self._part]
            acts = sae.encode(x)
            kept_error = x - sae.decode(acts)
            acts[..., index.to(x.device)] = corrupted_features[..., index.to(x.device)].to(acts)
            return sae.decode(acts) + (corrupted_error.to(x) if error else kept_error)

        return [(sae.site, Op(ablate))]

    def metric(self, nodes: Sequence[Component], kept: frozenset[Component]) -> float:
        ablated = [n for n in nodes if n not in kept]
        stack = [*self.edits, *ablation_edits(ablated, self.means)]
        return self.metric_under(self.surgeon.compile(stack, self._feature_ops(ablated)))

    def metric_under(self, stack: Any) -> float:
        """The metric with ``stack`` (edits, or a compiled stack) applied."""
        total = 0.0
        with torch.inference_mode(), self.surgeon.apply(stack):
            for index, part in enumerate(self._parts()):
                self._part = index
                logits = self.surgeon.model(input_ids=part.clean, attention_mask=part.mask).logits
                total += float(part.score(logits).sum())
                self.passes += 1
        return total / self.data.n


def ablation_edits(nodes: Sequence[Component], means: dict[str, torch.Tensor], provenance: Any = None) -> list[Edit]:
    """Mean ablation of ``nodes`` (heads and whole MLPs) with the existing edit kinds: one head
    ablation per layer, and a whole MLP as the ablation of all its neurons."""
    edits: list[Edit] = []
    for layer in sorted({n.layer for n in nodes}):
        heads = sorted(n.index for n in nodes if n.layer == layer and n.kind == "head")
        if heads:
            z = means[f"blocks.{layer}.attn.hook_z"]
            edits.append(
                HeadAblation(layer=layer, heads=tuple(heads), mode="mean", means=z[heads], provenance=provenance)
            )
        if any(n.layer == layer and n.kind == "mlp" for n in nodes):
            post = means[f"blocks.{layer}.mlp.hook_post"]
            neurons = tuple(range(post.shape[0]))
            edits.append(NeuronAblation(layer=layer, neurons=neurons, mode="mean", means=post, provenance=provenance))
    return edits


def _corrupted_means(
    surgeon: Surgeon, data: Pairs, edits: Sequence[Edit], batch: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Each head's ``attn.hook_z`` and each MLP's ``mlp.hook_post`` averaged over the corrupted
    prompts' tokens: the values an ablated node takes."""
    n_layers = surgeon.dims.n_layers
    sites = [f"blocks.{i}.{point}" for i in range(n_layers) for point in ("attn.hook_z", "mlp.hook_post")]
    sums: dict[str, torch.Tensor] = {}
    tokens, passes = 0, 0
    with torch.inference_mode(), surgeon.trace(sites, edits) as seen:
        for start in range(0, data.n, batch):
            part = data.slice(slice(start, start + batch))
            surgeon.model(input_ids=part.corrupted, attention_mask=part.mask)
            real = part.mask.bool()
            for site in sites:
                sums[site] = seen[site][real].double().sum(dim=0).cpu() + sums.get(site, 0)
            tokens += int(real.sum())
            passes += 1
    return {site: (total / tokens).float() for site, total in sums.items()}, passes


def discover_circuit(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    request: DiscoveryRequest,
    edits: Sequence[Edit] = (),
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Circuit:
    """The smallest set of heads and MLPs, grown in attribution order and pruned, that alone keeps
    ``request.target`` of the behaviour on the discovery pairs; scored on the held-out pairs."""
    request = request.validated()
    surgeon.validate(list(edits))
    report = progress or (lambda *_: None)
    discovery, held = request.split()
    device = surgeon.device_dtype[0]
    data, held_data = (
        Pairs(tokenizer, discovery, request.metric, device),
        Pairs(tokenizer, held, request.metric, device),
    )
    report("attribution", 0, 1)
    attribution = attribute(
        surgeon,
        tokenizer,
        discovery,
        request.metric,
        request.kinds,
        edits,
        request.batch_size,
        request.steps,
        should_stop,
        request.direction,
        request.sae,
    )
    report("attribution", 1, 1)
    if abs(attribution.clean_metric - attribution.corrupted_metric) < 1e-4:
        raise InvalidEditError(
            "pairs",
            f"show no behaviour to locate: the metric is {attribution.clean_metric:.4g} on the clean and the "
            "corrupted prompts alike",
            "pairs whose clean prompts show the behaviour and whose corrupted prompts do not",
        )
    # most important first; with SAE features, by the estimate's size: a feature that works against
    # the behaviour (the other polarity's) matters as much to a faithful circuit as one for it
    nodes = [c for c, _ in attribution.ranked(absolute=request.sae is not None)]
    means, passes = _corrupted_means(surgeon, data, edits, request.batch_size)
    report("means", 1, 1)
    ablator = _Ablator(surgeon, data, means, edits, request.batch_size, request.sae)

    full, empty = ablator.metric(nodes, frozenset(nodes)), ablator.metric(nodes, frozenset())
    span = full - empty
    if not abs(span) > 1e-9:
        raise InvalidEditError(
            "pairs",
            f"show nothing the nodes carry: the metric is {full:.4g} with every node ablated and without",
            "pairs whose clean and corrupted runs differ",
        )

    def faithfulness(kept: Sequence[Component]) -> float:
        if should_stop():
            raise Cancelled(f"circuit discovery stopped after {ablator.passes + passes} passes")
        return (ablator.metric(nodes, frozenset(kept)) - empty) / span

    low, high = 0, len(nodes)  # the smallest k whose top-k reaches the target (top-N is 1 by definition)
    while low < high:
        k = (low + high) // 2
        report("grow", k, len(nodes))
        if faithfulness(nodes[:k]) >= request.target:
            high = k
        else:
            low = k + 1
    kept = list(nodes[:low])
    for node in list(reversed(kept))[:PRUNE_LIMIT]:  # least important first
        report("prune", len(nodes) - len(kept), len(nodes))
        trial = [n for n in kept if n != node]
        if faithfulness(trial) >= request.target:
            kept = trial
    found = faithfulness(kept)

    report("held-out", 0, 1)
    held_ablator = _Ablator(surgeon, held_data, means, edits, request.batch_size, request.sae)
    held_full = held_ablator.metric(nodes, frozenset(nodes))
    held_empty = held_ablator.metric(nodes, frozenset())
    held_span = held_full - held_empty
    inside = held_ablator.metric(nodes, frozenset(kept))
    outside = held_ablator.metric(nodes, frozenset(nodes) - frozenset(kept))
    report("held-out", 1, 1)
    return Circuit(
        nodes=tuple(sorted(kept)),
        faithfulness=(inside - held_empty) / held_span if held_span else float("nan"),
        completeness=(held_full - outside) / held_span if held_span else float("nan"),
        discovery_faithfulness=found,
        metric_full=held_full,
        metric_empty=held_empty,
        attribution=attribution,
        passes=attribution.passes + passes + ablator.passes + held_ablator.passes,
        request=request,
        means=means,
    )


def minimal_cut(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    circuit: Circuit,
    edits: Sequence[Edit] = (),
    cut_edits: Callable[[list[Component]], Sequence[Edit]] | None = None,
) -> tuple[list[Component], float]:
    """The fewest circuit nodes whose ablation alone removes ``circuit.request.target`` of the
    behaviour on the discovery pairs (grown in attribution order, then pruned), and that share:
    the most targeted cut, so the fewest other behaviours go with it. ``cut_edits(nodes)``: the
    edits that cut those nodes, then judged by those edits themselves and chosen among the nodes
    they can cut (default: the nodes mean-ablated, as discovery verified them)."""
    discovery, _ = circuit.request.split()
    data = Pairs(tokenizer, discovery, circuit.request.metric, surgeon.device_dtype[0])
    ablator = _Ablator(surgeon, data, circuit.means, edits, circuit.request.batch_size, circuit.request.sae)
    nodes = [c for c, _ in circuit.attribution.ranked()]  # every node, most important first
    full, empty = ablator.metric(nodes, frozenset(nodes)), ablator.metric(nodes, frozenset())
    if cut_edits is None:
        order = [c for c in nodes if c in circuit.nodes]
        metric = lambda cut: ablator.metric(nodes, frozenset(nodes) - frozenset(cut))  # noqa: E731
    else:
        ranked = circuit.attribution.ranked(["features"])
        carries = {c for c, e in ranked if c.kind == "feature" and circuit.attribution.importance(e) > 0}
        order = [c for c in nodes if c in circuit.nodes and c in carries]  # a cut of what works against it adds
        metric = lambda cut: ablator.metric_under([*edits, *cut_edits(cut)])  # noqa: E731
    if not order:
        raise InvalidEditError("circuit", "has no node this edit can cut", "SAE features among its nodes")

    def removed(cut: Sequence[Component]) -> float:
        return (full - metric(cut)) / (full - empty)

    cut: list[Component] = []
    for node in order:
        cut.append(node)
        if removed(cut) >= circuit.request.target:
            break
    for node in list(reversed(cut))[:PRUNE_LIMIT]:
        trial = [n for n in cut if n != node]
        if trial and removed(trial) >= circuit.request.target:
            cut = trial
    return sorted(cut), removed(cut)


def propose_edit(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    circuit: Circuit,
    kind: str = "ablation",
    edits: Sequence[Edit] = (),
) -> list[Edit]:
    """The circuit as a candidate edit that removes the behaviour, ready for a version and its
    checks. ``ablation`` mean-ablates the :func:`minimal_cut` of the circuit (the values
    :func:`discover_circuit` verified with); ``feature_ablation`` zero-ablates the fewest of the
    circuit's SAE features that carry the behaviour whose ablation edit itself removes the target
    share, or all of them where none does (the error term is not a feature, and a zeroed feature
    leaves the behaviour neutral, not reversed: the share reached is in the provenance);
    ``directional`` projects out, from the circuit's last layer on, the direction the clean and
    corrupted runs' residual streams differ by at the scored positions (suits a behaviour with one
    answer direction, not induction's many). The provenance records the discovery request and its scores."""
    check_choice("kind", kind, PROPOSALS)
    if not circuit.nodes:
        raise InvalidEditError("circuit", "is empty", "a circuit with at least one node")
    provenance: dict[str, Any] = {
        "method": "locate",
        "proposal": kind,
        "discovery": circuit.request.as_dict(),
        "scores": circuit.scores(),
    }
    if kind == "ablation":
        cut, share = minimal_cut(surgeon, tokenizer, circuit, edits)
        provenance["cut"] = {"nodes": [c.name for c in cut], "removed_share": round(share, 4)}
        return ablation_edits(cut, circuit.means, provenance)
    if kind == "feature_ablation":
        sae = circuit.request.sae
        if sae is None:
            raise InvalidEditError("kind", "feature_ablation needs a circuit of SAE features", "ablation, directional")
        cut, share = minimal_cut(
            surgeon, tokenizer, circuit, edits, lambda nodes: [sae.ablation([n.index for n in nodes])]
        )
        provenance["cut"] = {"nodes": [c.name for c in cut], "removed_share": round(share, 4)}
        return [replace(sae.ablation([c.index for c in cut]), provenance=provenance)]
    layer = max(n.layer for n in circuit.nodes)
    site = f"blocks.{layer}.hook_resid_post"
    discovery, _ = circuit.request.split()
    data = Pairs(tokenizer, discovery, circuit.request.metric, surgeon.device_dtype[0])
    with torch.inference_mode(), surgeon.trace([site], edits) as seen:
        surgeon.model(input_ids=data.clean, attention_mask=data.mask)
        clean = seen[site]
        surgeon.model(input_ids=data.corrupted, attention_mask=data.mask)
        corrupted = seen[site]
    scored = data.scored_positions().unsqueeze(-1).cpu()
    direction = ((clean - corrupted).double().cpu() * scored).sum(dim=(0, 1)) / scored.sum()
    return [
        DirectionalAblation(
            direction=direction.float(),
            layers=tuple(range(layer, surgeon.dims.n_layers)),
            points=("hook_resid_post",),
            provenance=provenance,
        )
    ]
