"""Locate before you cut: attribution patching over a model's components, a circuit found by
verified ablation, and the edit that cuts it.

**Attribution** (:func:`attribute`; attribution patching, Nanda 2023; Kramár et al. 2024): for
prompt pairs (a *clean* prompt showing the behaviour, a *corrupted* one of the same length that
does not), one forward of the *source* run and one forward and backward of the *base* run give,
for every component ``c``, the linear estimate of what patching its source activation into the
base run does to the metric: ``(a_source(c) − a_base(c)) · ∂metric/∂a(c)``, summed over
positions and averaged over pairs. ``denoising`` (the default) patches clean into corrupted;
``noising`` corrupted into clean. Denoising linearises where attention is not yet saturated:
on the toy's induction it tracks brute-force patching (Spearman 0.99) where noising, the
saturated case AtP* describes, does not (0.53). Components: attention heads (``attn.hook_z``,
one head's slice), MLP neurons (``mlp.hook_post``) and whole MLPs (``hook_mlp_out``). AtP*'s
QK fix is for nodes that are attention *patterns*; these are head *outputs*. GradDrop is not
built: every estimate a circuit rests on is checked by a real ablation (:func:`discover_circuit`),
and :func:`patching_effects` measures the estimates against brute-force patching.

**Discovery** (:func:`discover_circuit`): rank heads and MLPs by estimated importance, then with
real forwards find the smallest top-``k`` set whose *faithfulness* reaches the target (everything
outside it mean-ablated with the existing ablation edits, means over the corrupted prompts) and
prune members it does not need. Faithfulness = ``(m(C) − m(∅)) / (m(M) − m(∅))`` and
completeness = ``(m(M) − m(M∖C)) / (m(M) − m(∅))``, both on held-out pairs, where ``m(S)`` is
the metric with every node outside ``S`` ablated (``M``: all nodes). Node-level; edge-level
discovery (EAP, ACDC) is not built.

**Proposal** (:func:`propose_edit`): the circuit as a candidate edit (mean ablation of its heads
and MLPs, or a directional ablation of the direction its clean and corrupted runs differ by),
with the discovery request and scores as provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editors.choices import COMPONENT_KINDS, DIRECTIONS, METRICS
from editors.edits import Edit, Op
from editors.errors import Cancelled, InvalidEditError
from editors.sae import SparseAutoencoder
from editors.surgeon import Surgeon
from editors.validation import check_choice, check_int


@dataclass(frozen=True, order=True)
class Component:
    """A head (``L1.H0``), a whole MLP (``L2.MLP``), one MLP neuron (``L2.N37``), one feature of
    an SAE on the residual stream entering block ``layer`` (``L1.F447``) or that SAE's error term
    (``L1.SAE_ERR``)."""

    layer: int
    kind: str  # "head" | "mlp" | "neuron" | "feature" | "sae_error"
    index: int = -1  # the head, neuron or feature; -1 for a whole MLP and the error term

    @property
    def name(self) -> str:
        unit = {"head": f"H{self.index}", "mlp": "MLP", "neuron": f"N{self.index}", "feature": f"F{self.index}",
                "sae_error": "SAE_ERR"}[self.kind]  # fmt: skip
        return f"L{self.layer}.{unit}"

    @classmethod
    def parse(cls, name: str) -> Component:
        """The component a :attr:`name` names."""
        layer, _, unit = name.partition(".")
        if not layer.startswith("L") or not layer[1:].isdigit() or not unit:
            raise ValueError(f"{name!r} is not a component name (L1.H0, L2.MLP, L2.N37, L1.F447, L1.SAE_ERR)")
        if unit in ("MLP", "SAE_ERR"):
            return cls(int(layer[1:]), "mlp" if unit == "MLP" else "sae_error")
        kind = {"H": "head", "N": "neuron", "F": "feature"}.get(unit[0])
        if kind is None or not unit[1:].isdigit():
            raise ValueError(f"{name!r} is not a component name (L1.H0, L2.MLP, L2.N37, L1.F447, L1.SAE_ERR)")
        return cls(int(layer[1:]), kind, int(unit[1:]))


@dataclass(frozen=True)
class PromptPair:
    """A clean prompt and a corrupted one that tokenises to as many tokens (patching is by position).

    ``answer`` (the clean prompt's next token) is scored by ``logit_diff`` and ``answer_logprob``;
    ``wrong`` (the corrupted prompt's) by ``logit_diff``. ``tokens_logprob`` scores the clean
    prompt's own tokens from ``score_from`` on and needs neither."""

    clean: str
    corrupted: str
    answer: str = ""
    wrong: str = ""


@dataclass(frozen=True)
class MetricSpec:
    """What "the behaviour" is: ``logit_diff`` = logit(answer) − logit(wrong) at the last token;
    ``answer_logprob`` = log p(answer) there; ``tokens_logprob`` = the mean log-probability of the
    clean prompt's own tokens from index ``score_from`` on (induction: the repeated half)."""

    kind: str = "logit_diff"
    score_from: int = 1


class Pairs:
    """Pairs tokenised, right-padded (padding after the last scored token changes no score) and
    checked, with the metric as a function of a forward's logits."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[PromptPair], metric: MetricSpec, device: torch.device
    ) -> None:
        check_choice("metric.kind", metric.kind, METRICS)
        if not pairs:
            raise InvalidEditError("pairs", "is empty", "at least one (clean, corrupted) prompt pair")
        clean, corrupted, answers, wrong = [], [], [], []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, PromptPair):
                raise InvalidEditError(f"pairs[{i}]", f"expected a PromptPair, got {type(pair).__name__}", "PromptPair")
            a = tokenizer(pair.clean, add_special_tokens=True)["input_ids"] if pair.clean.strip() else []
            b = tokenizer(pair.corrupted, add_special_tokens=True)["input_ids"] if pair.corrupted.strip() else []
            if not a or not b:
                raise InvalidEditError(f"pairs[{i}]", "has an empty prompt", "two non-empty prompts")
            if len(a) != len(b):
                raise InvalidEditError(
                    f"pairs[{i}].corrupted",
                    f"is {len(b)} tokens but the clean prompt is {len(a)}",
                    "a corrupted prompt of the same token length (patching is by position)",
                )
            clean.append(a)
            corrupted.append(b)
            if metric.kind in ("logit_diff", "answer_logprob"):
                answers.append(_one_token(tokenizer, pair.answer, f"pairs[{i}].answer"))
            if metric.kind == "logit_diff":
                wrong.append(_one_token(tokenizer, pair.wrong, f"pairs[{i}].wrong"))
            if metric.kind == "tokens_logprob":
                check_int("metric.score_from", metric.score_from, 1, len(a) - 1)
        width = max(len(row) for row in clean)
        self.clean = _padded(clean, width, device)
        self.corrupted = _padded(corrupted, width, device)
        self.mask = _padded([[1] * len(row) for row in clean], width, device)
        self.last = torch.tensor([len(row) - 1 for row in clean], device=device)
        self.answers = torch.tensor(answers, device=device) if answers else None
        self.wrong = torch.tensor(wrong, device=device) if wrong else None
        self.metric = metric
        self.n = len(clean)

    def slice(self, rows: slice) -> Pairs:
        part = object.__new__(Pairs)
        for name, value in vars(self).items():
            setattr(part, name, value[rows] if isinstance(value, torch.Tensor) else value)
        part.n = int(part.clean.shape[0])
        return part

    def scored_positions(self) -> torch.Tensor:
        """``[rows, pos]``, 1 where a position's logits enter the metric."""
        positions = torch.arange(self.clean.shape[1], device=self.clean.device)[None]
        if self.metric.kind == "tokens_logprob":
            return ((positions >= self.metric.score_from - 1) & (positions < self.last[:, None])).float()
        return (positions == self.last[:, None]).float()

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """``[rows]``: the metric of each pair's run with these logits (targets from the clean prompt)."""
        logits = logits.float()
        rows = torch.arange(self.n, device=logits.device)
        if self.metric.kind == "tokens_logprob":
            logp = logits[:, :-1].log_softmax(dim=-1).gather(-1, self.clean[:, 1:, None]).squeeze(-1)
            scored = self.scored_positions()[:, :-1]
            return (logp * scored).sum(dim=1) / scored.sum(dim=1)
        last = logits[rows, self.last]
        if self.metric.kind == "answer_logprob":
            return last.log_softmax(dim=-1)[rows, self.answers]
        return last[rows, self.answers] - last[rows, self.wrong]


def check_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[PromptPair], metric: MetricSpec) -> None:
    """Every check :func:`attribute` makes of its pairs and metric, without running the model."""
    Pairs(tokenizer, pairs, metric, torch.device("cpu"))


def _one_token(tokenizer: PreTrainedTokenizerBase, text: str, name: str) -> int:
    ids = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"] if text.strip() else []
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise InvalidEditError(name, f"{text!r} is {len(ids)} known tokens", "one token of the model's vocabulary")
    return ids[0]


def _padded(rows: list[list[int]], width: int, device: torch.device) -> torch.Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out.to(device)


def _sites(surgeon: Surgeon, kinds: Sequence[str], sae: SparseAutoencoder | None) -> dict[str, str]:
    """Site name → the kind of components read off it (``features``: the SAE's residual site)."""
    points = {"heads": "attn.hook_z", "neurons": "mlp.hook_post", "mlps": "hook_mlp_out"}
    sites = {
        f"blocks.{layer}.{points[kind]}": kind
        for kind in kinds
        if kind != "features"
        for layer in range(surgeon.dims.n_layers)
    }
    if "features" in kinds:
        if sae is None:
            raise InvalidEditError("sae", "is missing", "the SAE whose features are nodes (kinds has features)")
        surgeon.site(sae.site, "sae.site")
        if sae.d_in != surgeon.dims.d_model:
            d_model = surgeon.dims.d_model
            raise InvalidEditError("sae", f"reads {sae.d_in} dimensions", f"an SAE of this model (d_model {d_model})")
        sites[sae.site] = "features"
    return sites


def sae_layer(sae: SparseAutoencoder) -> int:
    """The block whose input stream the SAE's site is (``blocks.L.hook_resid_post`` is block L+1's)."""
    _, layer, point = sae.site.split(".")
    return int(layer) + (point == "hook_resid_post")


def _feature_estimates(
    sae: SparseAutoencoder, source: torch.Tensor, base: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``[d_sae + 1]``: each feature's, then the error term's, attribution at the SAE's site. The
    SAE spliced in with its error term (the model unchanged) makes the features and the error
    independent inputs of what follows: d metric / d feature = grad · its decoder row, d metric /
    d error = grad; so the estimates sum to the site's own ``(source − base) · grad``."""
    source, base = source.float(), base.float()
    features_s, features_b = sae.encode(source), sae.encode(base)
    error_delta = (source - sae.decode(features_s)) - (base - sae.decode(features_b))
    weights = mask.view(*mask.shape, 1)
    per_feature = ((features_s - features_b) * (grad @ sae.W_dec.to(grad).T) * weights).sum(dim=(0, 1))
    error = (error_delta * grad * weights).sum()
    return torch.cat([per_feature, error.reshape(1)])


def _grad_recorder(cache: dict[str, torch.Tensor], name: str) -> Op:
    """Keep the activation in the autograd graph (a leaf where nothing upstream needs gradients)."""

    def record(x: torch.Tensor, _: object) -> torch.Tensor:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        cache[name] = x
        return x

    return Op(record)


@dataclass(frozen=True)
class Attribution:
    """Every component's estimated change of the metric when patched (``direction``: its corrupted
    activation into the clean run, or its clean activation into the corrupted run), averaged over
    the pairs."""

    components: tuple[Component, ...]
    estimates: torch.Tensor  # [len(components)], float64
    clean_metric: float
    corrupted_metric: float
    passes: int  # forwards and backwards run, each over one batch of pairs
    direction: str = "denoising"

    def importance(self, estimate: float) -> float:
        """How much of the behaviour a component carries, whichever the direction: the metric lost
        when noising it, gained when denoising it."""
        return -estimate if self.direction == "noising" else estimate

    def ranked(
        self, kinds: Sequence[str] | None = None, top: int | None = None, absolute: bool = False
    ) -> list[tuple[Component, float]]:
        """(component, estimate) by importance, most important first, optionally of some kinds only
        (``absolute``: by the estimate's size, whichever its sign)."""
        wanted = {k.rstrip("s") for k in kinds} | ({"sae_error"} if "features" in kinds else set()) if kinds else None
        rows = [(c, float(e)) for c, e in zip(self.components, self.estimates, strict=True)]
        rows = [row for row in rows if wanted is None or row[0].kind in wanted]
        return sorted(rows, key=lambda row: -abs(row[1]) if absolute else -self.importance(row[1]))[:top]

    def heads_grid(self, n_layers: int, n_heads: int) -> torch.Tensor:
        """``[n_layers, n_heads]`` of the heads' estimates (NaN where a head was not scored)."""
        grid = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        for component, estimate in zip(self.components, self.estimates, strict=True):
            if component.kind == "head":
                grid[component.layer, component.index] = estimate
        return grid


def attribute(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    metric: MetricSpec = MetricSpec(),
    kinds: Sequence[str] = ("heads", "mlps", "neurons"),
    edits: Sequence[Edit] = (),
    batch_size: int = 16,
    steps: int = 1,
    should_stop: Callable[[], bool] = lambda: False,
    direction: str = "denoising",
    sae: SparseAutoencoder | None = None,
) -> Attribution:
    """Attribution patching (see the module docstring) on the model under ``edits``. ``noising``
    linearises at the clean run, ``denoising`` at the corrupted one (:data:`DIRECTIONS`).
    ``features`` among ``kinds`` scores ``sae``'s features and its error term (Marks et al. 2024's
    sparse feature circuits: the error term is a node, so nothing the SAE misses goes unscored)."""
    for i, kind in enumerate(kinds):
        check_choice(f"kinds[{i}]", kind, COMPONENT_KINDS)
    check_int("batch_size", batch_size, 1, 4096)
    check_int("steps", steps, 1, 64)
    check_choice("direction", direction, DIRECTIONS)
    surgeon.validate(list(edits))
    data = Pairs(tokenizer, pairs, metric, surgeon.device_dtype[0])
    sites = _sites(surgeon, kinds, sae)
    totals: dict[str, torch.Tensor] = {}
    clean_sum = corrupted_sum = 0.0
    passes = 0
    for start in range(0, data.n, batch_size):
        if should_stop():
            raise Cancelled(f"attribution stopped after {start} of {data.n} pairs")
        batch = data.slice(slice(start, start + batch_size))
        noising = direction == "noising"
        base_ids, source_ids = (batch.clean, batch.corrupted) if noising else (batch.corrupted, batch.clean)
        with torch.inference_mode(), surgeon.trace(list(sites), edits) as source:  # the activations patched in
            logits = surgeon.model(input_ids=source_ids, attention_mask=batch.mask).logits
            source_score = float(batch.score(logits).sum())
        passes += 1
        alphas = [0.0] if steps == 1 else [(k + 0.5) / steps for k in range(steps)]
        base_acts: dict[str, torch.Tensor] = {}
        base_score = 0.0
        if steps > 1:  # with one step the gradient pass below is the base run itself
            with torch.inference_mode(), surgeon.trace(list(sites), edits) as traced:
                logits = surgeon.model(input_ids=base_ids, attention_mask=batch.mask).logits
                base_score = float(batch.score(logits).sum())
            base_acts, passes = dict(traced), passes + 1
        embed = surgeon.model.get_input_embeddings()
        with torch.no_grad():
            base_embeds, source_embeds = embed(base_ids), embed(source_ids)
        grads: list[torch.Tensor] = []
        for alpha in alphas:  # along the path from the base input to the source input
            cache: dict[str, torch.Tensor] = {}
            recorders = [(site, _grad_recorder(cache, site)) for site in sites]
            embeds = torch.lerp(base_embeds, source_embeds, alpha)
            with torch.enable_grad(), surgeon.apply(surgeon.compile(edits, extra_ops=recorders)):
                scores = batch.score(surgeon.model(inputs_embeds=embeds, attention_mask=batch.mask).logits)
                step_grads = torch.autograd.grad(scores.sum(), [cache[site] for site in sites])
            grads = [g.float() / len(alphas) + (grads[i] if grads else 0) for i, g in enumerate(step_grads)]
            if alpha == 0.0:
                base_acts = {site: cache[site].detach() for site in sites}
                base_score = float(scores.detach().sum())
            passes += 2
        clean_sum += base_score if noising else source_score
        corrupted_sum += source_score if noising else base_score
        mask = batch.mask.to(grads[0].dtype)
        for (site, kind), grad in zip(sites.items(), grads, strict=True):
            if kind == "features":
                assert sae is not None  # _sites refused features without one
                estimates = _feature_estimates(sae, source[site], base_acts[site], grad, mask)
                totals[site] = estimates.double().cpu() + totals.get(site, 0)
                continue
            product = (source[site].float() - base_acts[site].float()) * grad  # [b, pos, ...]
            product = product * mask.view(*mask.shape, *([1] * (product.dim() - 2)))
            per_unit = product.sum(dim=(0, 1))
            if kind == "heads":
                per_unit = per_unit.sum(dim=-1)  # [n_heads]
            elif kind == "mlps":
                per_unit = per_unit.sum().reshape(1)
            totals[site] = per_unit.double().cpu() + totals.get(site, 0)
    components: list[Component] = []
    estimates: list[torch.Tensor] = []
    for site, kind in sites.items():
        values = totals[site] / data.n
        estimates.append(values)
        if kind == "features":
            layer = sae_layer(sae)
            components += [Component(layer, "feature", i) for i in range(len(values) - 1)]
            components.append(Component(layer, "sae_error"))
            continue
        layer = int(site.split(".")[1])
        unit = {"heads": "head", "neurons": "neuron", "mlps": "mlp"}[kind]
        components += [Component(layer, unit, i if unit != "mlp" else -1) for i in range(len(values))]
    return Attribution(
        tuple(components), torch.cat(estimates), clean_sum / data.n, corrupted_sum / data.n, passes, direction
    )


def patching_effects(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    components: Sequence[Component],
    metric: MetricSpec = MetricSpec(),
    edits: Sequence[Edit] = (),
    direction: str = "denoising",
) -> tuple[torch.Tensor, int]:
    """Brute force, the ground truth attribution estimates: each component's corrupted activation
    patched into the clean run (``denoising``: its clean activation into the corrupted run), at
    every position, one forward per component; returns the mean change of the metric per
    component and the forwards run."""
    check_choice("direction", direction, DIRECTIONS)
    data = Pairs(tokenizer, pairs, metric, surgeon.device_dtype[0])
    points = {"head": "attn.hook_z", "neuron": "mlp.hook_post", "mlp": "hook_mlp_out"}
    sites = sorted({f"blocks.{c.layer}.{points[c.kind]}" for c in components})
    base_ids, source_ids = (data.clean, data.corrupted) if direction == "noising" else (data.corrupted, data.clean)
    with torch.inference_mode():
        with surgeon.trace(sites, edits) as patched_in:
            surgeon.model(input_ids=source_ids, attention_mask=data.mask)
        with surgeon.apply(edits):
            base = data.score(surgeon.model(input_ids=base_ids, attention_mask=data.mask).logits)
        effects = []
        for component in components:
            site = f"blocks.{component.layer}.{points[component.kind]}"
            source = patched_in[site]

            def patch(
                x: torch.Tensor, _: object, source: torch.Tensor = source, c: Component = component
            ) -> torch.Tensor:
                x = x.clone()
                if c.kind == "mlp":
                    return source.to(x.dtype)
                x[:, :, c.index] = source[:, :, c.index].to(x.dtype)
                return x

            with surgeon.apply(surgeon.compile(edits, extra_ops=[(site, Op(patch))])):
                patched = data.score(surgeon.model(input_ids=base_ids, attention_mask=data.mask).logits)
            effects.append(float((patched - base).mean()))
    return torch.tensor(effects, dtype=torch.float64), 2 + len(components)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        order = x.argsort()
        r = torch.empty_like(x, dtype=torch.float64)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in x.unique():  # ties share their mean rank
            same = x == value
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))
