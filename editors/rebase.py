"""Rebase a version's edits onto a successor checkpoint, edit by edit, from their provenance.

An edit that records how it was made is made again on the successor: a derived steering vector
from its stored pairs, a ROME edit or a MEMIT batch from its stored requests and
hyper-parameters (key covariances from the successor), a located cut by locating the circuit
again on its stored pairs and proposing the cut again. An edit without such a record is carried
as it is: a zero ablation means the same on any checkpoint of the architecture (a successor must
have the base's family, shapes and vocabulary); mean and resample ablations, directions and
low-rank deltas are carried and flagged, since their numbers were read off the old base. Each
entry of the drift report says which, why, and what moved: the cosine between the old and new
steering vectors, the Jaccard overlap of the old and new circuits, and the top-1 efficacy of a
fact edit's requests before (old base, old edit), carried (successor, old edit: would it still
work without a rebase?) and after (successor, new edit).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from editors.batching import encode_batch, last_token_index
from editors.circuits import DiscoveryRequest, discover_circuit, propose_edit
from editors.covariance import KeyCovariance
from editors.edit_defaults import hparams_from
from editors.edits import DirectionalAblation, Edit, HeadAblation, LowRank, NeuronAblation, Steering
from editors.errors import InvalidEditError
from editors.locate import MetricSpec, PromptPair
from editors.memit import MemitHyperParams, compute_memit
from editors.rome import RomeHyperParams, RomeRequest, compute_rome
from editors.steering import derive_steering
from editors.surgeon import Surgeon
from editors.validation import thaw_json

#: what became of an edit: made again from its provenance, carried as it is, or carried but to be
#: looked at (its numbers come from the old base)
ACTIONS = ("recomputed", "carried", "flagged")

#: ``covariance(layer)``: the successor's key covariance at ``layer`` (e.g. a CovarianceCache's)
Covariances = Callable[[int], torch.Tensor | KeyCovariance]


@dataclass(frozen=True)
class EditDrift:
    """One entry of the drift report: the version's edits at ``originals`` became ``made`` edits."""

    originals: tuple[int, ...]
    kind: str
    action: str
    reason: str
    made: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Rebase:
    """The successor version's edits, in the original order, and the drift report."""

    edits: list[Edit]
    drift: list[EditDrift]

    def summary(self) -> dict[str, Any]:
        counts = {action: sum(d.action == action for d in self.drift) for action in ACTIONS}
        cosines = [d.metrics["steering_cosine"] for d in self.drift if "steering_cosine" in d.metrics]
        jaccards = [d.metrics["circuit_jaccard"] for d in self.drift if "circuit_jaccard" in d.metrics]
        held = [
            d.metrics["efficacy_after"] >= d.metrics["efficacy_before"]
            for d in self.drift
            if "efficacy_after" in d.metrics
        ]
        return {
            **counts,
            "steering_cosine_min": min(cosines, default=None),
            "circuit_jaccard_min": min(jaccards, default=None),
            "fact_edits_held": sum(held),
            "fact_edits": len(held),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "drift": [asdict(d) for d in self.drift]}


class ReplayError(InvalidEditError):
    """The edits at ``indices`` (made together) could not be made again on the successor from their
    stored provenance (a hand-written or damaged record): the rebase stops there."""

    def __init__(self, indices: tuple[int, ...], error: Exception) -> None:
        self.indices = indices
        super().__init__(
            f"edits{list(indices)}", f"its stored provenance could not be replayed on the successor: {error}"
        )


def check_successor(base: Surgeon, successor: Surgeon, base_tokenizer: Any, successor_tokenizer: Any) -> None:
    """Refuse a successor whose edits could not mean the same: another architecture family, other
    shapes, or another vocabulary (naming what differs)."""
    differences = []
    if base.adapter.family != successor.adapter.family:
        differences.append(f"family {base.adapter.family!r} → {successor.adapter.family!r}")
    if base.dims != successor.dims:
        differences.append(f"shapes {base.dims} → {successor.dims}")
    if base_tokenizer.get_vocab() != successor_tokenizer.get_vocab():
        differences.append("the tokenizer's vocabulary")
    if differences:
        raise InvalidEditError("successor", "differs from the base in " + "; ".join(differences), "a checkpoint of it")


def _provenance(edit: Edit) -> dict[str, Any]:
    """``edit``'s provenance as plain JSON (empty if it has none or it is not an object)."""
    plain = thaw_json(getattr(edit, "provenance", None))
    return plain if isinstance(plain, dict) else {}


def _groups(edits: Sequence[Edit]) -> list[tuple[int, ...]]:
    """Indices of the edits that were made together (a MEMIT batch's layers, a cut's layers share
    one provenance), in the order of their first edit."""
    groups: dict[str, list[int]] = {}
    for i, edit in enumerate(edits):
        provenance = _provenance(edit)
        together = provenance.get("method") in ("memit", "locate")
        groups.setdefault(json.dumps(provenance, sort_keys=True) if together else f"#{i}", []).append(i)
    return [tuple(indices) for indices in groups.values()]


@torch.inference_mode()
def efficacy(
    surgeon: Surgeon, tokenizer: PreTrainedTokenizerBase, edits: Sequence[Edit], requests: Sequence[RomeRequest]
) -> float:
    """Share of ``requests`` whose target's first token is the model's top-1 answer under ``edits``."""
    encoded = encode_batch(tokenizer, [r.text for r in requests], surgeon.device_dtype[0])
    with surgeon.apply(list(edits)):
        logits = surgeon.model(**encoded).logits
    last = logits[torch.arange(len(requests)), last_token_index(encoded["attention_mask"])]
    targets = [tokenizer(" " + r.target.strip(), add_special_tokens=False)["input_ids"][0] for r in requests]
    return float((last.argmax(dim=-1).cpu() == torch.tensor(targets)).float().mean())


def _hparams(cls: type, stored: Any) -> Any:
    """The stored hyper-parameters (fields this version no longer has are left out)."""
    known = {f.name for f in fields(cls)}
    kept = {name: value for name, value in (stored or {}).items() if name in known}
    return cls(**hparams_from(cls, None, "rome" if cls is RomeHyperParams else "memit", **kept))


class _Rebaser:
    def __init__(
        self,
        base: Surgeon,
        successor: Surgeon,
        tokenizer: PreTrainedTokenizerBase,
        corpus: Sequence[str],
        covariances: Covariances,
    ) -> None:
        self.base, self.successor, self.tokenizer = base, successor, tokenizer
        self.corpus, self.covariances = corpus, covariances

    def fact_edits(self, originals: list[Edit], made: list[Edit]) -> tuple[list[Edit], str, dict[str, float]]:
        provenance = _provenance(originals[0])
        if provenance["method"] == "rome":
            request = RomeRequest(**provenance["request"])
            hparams = _hparams(RomeHyperParams, provenance.get("hparams"))
            covariance = self.covariances(hparams.layer)
            new = [
                compute_rome(
                    self.successor, self.tokenizer, request, covariance, self.corpus, hparams, made, show_progress=False
                ).edit
            ]
            requests = [request]
        else:
            requests = [RomeRequest(**r) for r in provenance["requests"]]
            hparams = _hparams(MemitHyperParams, provenance.get("hparams"))
            covariances = {layer: self.covariances(layer) for layer in hparams.layers}
            new = list(
                compute_memit(self.successor, self.tokenizer, requests, covariances, self.corpus, hparams, made).edits
            )
        metrics = {
            "efficacy_before": efficacy(self.base, self.tokenizer, originals, requests),
            "efficacy_carried": efficacy(self.successor, self.tokenizer, [*made, *originals], requests),
            "efficacy_after": efficacy(self.successor, self.tokenizer, [*made, *new], requests),
        }
        return new, f"{provenance['method']} recomputed from its {len(requests)} stored request(s)", metrics

    def steering(self, edit: Steering) -> tuple[list[Edit], str, dict[str, float]]:
        stored = _provenance(edit)
        new = derive_steering(
            self.successor,
            self.tokenizer,
            [tuple(pair) for pair in stored["pairs"]],
            stored["layer"],
            stored.get("point", "hook_resid_pre"),
            stored["method"],
            edit.scale,
        )
        reason = f"re-derived from its {len(stored['pairs'])} stored pairs"
        old_norm, new_norm = float(edit.vector.norm()), float(new.vector.norm())
        if not old_norm or not new_norm:  # no direction to compare: say so instead of a NaN
            return [new], f"{reason}; the {'old' if not old_norm else 'new'} vector is zero", {}
        cosine = torch.nn.functional.cosine_similarity(edit.vector.double(), new.vector.double(), dim=0)
        return [new], reason, {"steering_cosine": float(cosine), "norm_ratio": new_norm / old_norm}

    def located(self, originals: list[Edit], made: list[Edit]) -> tuple[list[Edit], str, dict[str, float]]:
        stored = _provenance(originals[0])
        discovery = stored["discovery"]
        request = DiscoveryRequest(
            pairs=tuple(PromptPair(**p) for p in discovery["pairs"]),
            metric=MetricSpec(**discovery["metric"]),
            **{
                k: (tuple(v) if isinstance(v, list) else v)
                for k, v in discovery.items()
                if k not in ("pairs", "metric")
            },
        )
        circuit = discover_circuit(self.successor, self.tokenizer, request, made)
        new = propose_edit(self.successor, self.tokenizer, circuit, stored.get("proposal", "ablation"), made)
        old_nodes, new_nodes = set(stored["scores"].get("circuit", [])), {node.name for node in circuit.nodes}
        jaccard = len(old_nodes & new_nodes) / len(old_nodes | new_nodes) if old_nodes | new_nodes else 1.0
        return new, "located again on its stored pairs and its cut proposed again", {"circuit_jaccard": jaccard}


def _carried(edit: Edit) -> tuple[str, str]:
    """(action, reason) for an edit without a provenance the rebase can use."""
    if isinstance(edit, HeadAblation | NeuronAblation) and edit.mode == "zero":
        return "carried", "a zero ablation by site means the same on the successor"
    if isinstance(edit, HeadAblation | NeuronAblation):
        return "flagged", f"carried with the {edit.mode} values read off the old base"
    if isinstance(edit, DirectionalAblation | Steering):
        return "flagged", "carried: its direction was read off the old base and has no stored derivation"
    if isinstance(edit, LowRank):
        return "flagged", "a low-rank delta without a stored request: carried as it is"
    if edit.kind.startswith("feature_"):
        return "flagged", "carried: its SAE was trained on the old base's activations (train one on the successor)"
    return "flagged", "carried as it is"


def rebase_edits(
    base: Surgeon,
    successor: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    edits: Sequence[Edit],
    corpus: Sequence[str],
    covariances: Covariances,
    progress: Callable[[int, int], None] | None = None,
    successor_tokenizer: PreTrainedTokenizerBase | None = None,
) -> Rebase:
    """The equivalent of ``edits`` (a version's stack on ``base``) on ``successor``, each made on the
    successor as the earlier ones left it, and the drift of each (see the module docstring).
    Refuses a successor :func:`check_successor` refuses, before any work."""
    check_successor(base, successor, tokenizer, successor_tokenizer or tokenizer)
    base.validate(list(edits))
    rebaser = _Rebaser(base, successor, tokenizer, corpus, covariances)
    made: list[Edit] = []
    drift: list[EditDrift] = []
    groups = _groups(edits)
    for done, indices in enumerate(groups):
        originals = [edits[i] for i in indices]
        first = originals[0]
        provenance = _provenance(first)
        method = provenance.get("method")
        metrics: dict[str, float] = {}
        action = "recomputed"
        try:
            if isinstance(first, LowRank) and method in ("rome", "memit"):
                new, reason, metrics = rebaser.fact_edits(originals, made)
            elif isinstance(first, Steering) and "pairs" in provenance:
                new, reason, metrics = rebaser.steering(first)
            elif method == "locate" and "discovery" in provenance:
                new, reason, metrics = rebaser.located(originals, made)
            else:
                (action, reason), new = _carried(first), list(originals)
        except (InvalidEditError, KeyError, TypeError, ValueError) as error:
            raise ReplayError(indices, error) from error
        made += new
        drift.append(
            EditDrift(indices, first.kind, action, reason, len(new), {k: round(v, 4) for k, v in metrics.items()})
        )
        if progress is not None:
            progress(done + 1, len(groups))
    return Rebase(made, drift)
