"""Circuits as graphs: the residual-stream graph of a model, every edge scored at once (EAP and
EAP-IG), and edge patching, by which a set of edges is measured as a circuit.

**The graph.** Writers put their output into the residual stream: the embeddings, each attention
head (its ``z`` through its rows of the output projection) and each MLP. Readers take an input from
it: each head's query, key and value inputs (three readers: which one an earlier head feeds is
what tells K-composition from Q- or V-composition), each MLP, and the logits. Every writer feeds
every later reader; an edge is one such pair (``L0.H1->L1.H3.k``). A reader's input is the sum of
its writers' outputs (plus biases, the same in every run).

**Edge patching** (:meth:`ResidualGraph.run`): the model run with each reader's input rebuilt
from its writers, an edge left out of a circuit taking its writer's output from the *corrupted*
run: ``in_r = resid − Σ_{u→r ∉ C} (out_u − out_u(corrupted))``. With every edge in, this is the
plain forward (the graph adds up to the model); with none, every reader sees the corrupted run.

**EAP** (:func:`edge_attribution`, Syed et al. 2023): one forward and backward of the corrupted
run gives the gradient at every reader's input, so every edge's estimate is ``(out_u(clean) −
out_u(corrupted)) · ∂m/∂in_r``, summed over positions and averaged over pairs (denoising: the
clean edge patched into the corrupted run). **EAP-IG** (Hanna et al. 2024) averages the
gradient along ``steps`` points of the path from the corrupted to the clean input embeddings.

The graph is built for the GPT-2 family (its attention computed here, head by head, so that each
head's query, key and value can read inputs of their own); other families are refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from editors.errors import InvalidEditError
from editors.intervals import Estimate, ratio_of_sums
from editors.locate import MetricSpec, Pairs, PromptPair
from editors.validation import check_int

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Edge:
    """One writer feeding one reader: ``embed``, ``L0.H1`` or ``L0.MLP`` into ``L1.H3.k``,
    ``L1.MLP`` or ``logits``."""

    writer: str
    reader: str

    @property
    def name(self) -> str:
        return f"{self.writer}->{self.reader}"


class ResidualGraph:
    """The residual-stream graph of a GPT-2-family model (see the module docstring)."""

    def __init__(self, model: torch.nn.Module) -> None:
        if getattr(model.config, "model_type", "") != "gpt2":
            raise InvalidEditError(
                "model", f"is {getattr(model.config, 'model_type', type(model).__name__)!r}", "a GPT-2-family model"
            )
        self.model = model
        self.body = model.transformer
        self.n_layers, self.n_heads = model.config.n_layer, model.config.n_head
        self.d_model = model.config.n_embd
        self.d_head = self.d_model // self.n_heads
        self.writers = ["embed"]
        self.readers: list[str] = []
        for layer in range(self.n_layers):
            self.readers += [f"L{layer}.H{h}.{x}" for h in range(self.n_heads) for x in QKV]
            self.writers += [f"L{layer}.H{h}" for h in range(self.n_heads)]
            self.readers.append(f"L{layer}.MLP")
            self.writers.append(f"L{layer}.MLP")
        self.readers.append("logits")
        self.writer_index = {w: i for i, w in enumerate(self.writers)}
        self.reader_index = {r: i for i, r in enumerate(self.readers)}
        # which writers come before each reader: a head at layer L reads embed, heads and MLPs
        # below L; the MLP at L also reads L's heads; the logits read everything
        self.feeds = torch.zeros(len(self.writers), len(self.readers), dtype=torch.bool)
        for r, reader in enumerate(self.readers):
            bound = self._writers_before(reader)
            self.feeds[:bound, r] = True
        self.edges = [
            Edge(self.writers[w], self.readers[r]) for r in range(len(self.readers)) for w in range(len(self.writers))
            if self.feeds[w, r]
        ]  # fmt: skip

    def _writers_before(self, reader: str) -> int:
        """How many writers (in order) precede ``reader``."""
        if reader == "logits":
            return len(self.writers)
        layer = int(reader.split(".")[0][1:])
        heads_too = reader.endswith(".MLP")
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if heads_too else 0)

    def absent(self, kept: Sequence[Edge]) -> torch.Tensor:
        """``[writers, readers]``: 1 where an edge is left out of the circuit ``kept``."""
        out = self.feeds.clone().float()
        for edge in kept:
            out[self.writer_index[edge.writer], self.reader_index[edge.reader]] = 0.0
        return out

    def _inputs(
        self, resid: torch.Tensor, deltas: list[torch.Tensor], absent: torch.Tensor | None, readers: slice
    ) -> torch.Tensor:
        """``[n_readers, b, pos, d]``: each reader's input, the left-out edges' deltas taken away."""
        n = readers.stop - readers.start
        if absent is None or not deltas:
            return resid.unsqueeze(0).expand(n, *resid.shape)
        weights = absent[: len(deltas), readers].to(resid)  # [writers so far, readers]
        return resid.unsqueeze(0) - torch.einsum("wr,wbpd->rbpd", weights, torch.stack(deltas))

    def run(
        self,
        input_ids: torch.Tensor,
        corrupted: torch.Tensor | None = None,
        absent: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
        keep_inputs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits, writer outputs ``[writers, b, pos, d]``, reader inputs by layer if
        ``keep_inputs``). ``corrupted``: the writer outputs of the corrupted run, which the edges
        ``absent`` marks take; ``embeds``: the input embeddings instead of ``input_ids``'."""
        body = self.body
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        token = embeds if embeds is not None else body.wte(input_ids)
        resid = token + body.wpe(positions)[None]
        outputs = [resid]
        inputs: list[torch.Tensor] = []
        causal = torch.ones(input_ids.shape[1], input_ids.shape[1], dtype=torch.bool, device=input_ids.device).tril()

        def deltas() -> list[torch.Tensor]:
            return [] if corrupted is None else [o - corrupted[i] for i, o in enumerate(outputs)]

        reader = 0
        h, dh, d = self.n_heads, self.d_head, self.d_model
        for block in body.h:
            span = slice(reader, reader + 3 * h)
            heads_in = self._inputs(resid, deltas(), absent, span)
            if keep_inputs:
                _keep(heads_in, inputs)
            normed = block.ln_1(heads_in)  # [3h, b, pos, d]
            weight, bias = block.attn.c_attn.weight, block.attn.c_attn.bias  # Conv1D: x @ W + b, W [d, 3d]
            q, k, v = [], [], []
            for head in range(h):
                for which, store in enumerate((q, k, v)):
                    columns = slice(which * d + head * dh, which * d + (head + 1) * dh)
                    store.append(normed[3 * head + which] @ weight[:, columns] + bias[columns])
            q, k, v = torch.stack(q, 1), torch.stack(k, 1), torch.stack(v, 1)  # [b, h, pos, dh]
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
            z = scores.softmax(-1) @ v  # [b, h, pos, dh]
            out_weight = block.attn.c_proj.weight  # [d, d]: rows of head h are its output projection
            head_out = [z[:, head] @ out_weight[head * dh : (head + 1) * dh] for head in range(h)]
            resid = resid + sum(head_out) + block.attn.c_proj.bias
            outputs += head_out
            reader += 3 * h
            mlp_in = self._inputs(resid, deltas(), absent, slice(reader, reader + 1))
            if keep_inputs:
                _keep(mlp_in, inputs)
            mlp_out = block.mlp(block.ln_2(mlp_in[0]))
            resid = resid + mlp_out
            outputs.append(mlp_out)
            reader += 1
        final_in = self._inputs(resid, deltas(), absent, slice(reader, reader + 1))
        if keep_inputs:
            _keep(final_in, inputs)
        logits = self.model.lm_head(body.ln_f(final_in[0]))
        return logits, torch.stack(outputs), inputs


def _keep(tensor: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    """Keep a reader input (and, in a gradient pass, its gradient)."""
    if tensor.requires_grad:
        tensor.retain_grad()
    inputs.append(tensor)


@dataclass(frozen=True)
class EdgeScores:
    """Every edge's estimated change of the metric when its clean output is patched into the
    corrupted run, averaged over the pairs."""

    edges: tuple[Edge, ...]
    scores: torch.Tensor  # [len(edges)], float64
    clean_metric: float
    corrupted_metric: float
    passes: int

    def ranked(self, top: int | None = None) -> list[tuple[Edge, float]]:
        """(edge, score), by the score's size, largest first."""
        order = self.scores.abs().argsort(descending=True)[:top]
        return [(self.edges[i], float(self.scores[i])) for i in order.tolist()]


def edge_attribution(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    metric: MetricSpec,
    steps: int = 1,
) -> EdgeScores:
    """EAP (``steps`` = 1) or EAP-IG (``steps`` > 1) scores of every edge of the model's graph."""
    check_int("steps", steps, 1, 64)
    graph = ResidualGraph(model)
    device = next(model.parameters()).device
    data = Pairs(tokenizer, pairs, metric, device)
    with torch.inference_mode():
        clean_logits, clean_out, _ = graph.run(data.clean)
        corrupted_logits, corrupted_out, _ = graph.run(data.corrupted)
    clean_metric, corrupted_metric = float(data.score(clean_logits).mean()), float(data.score(corrupted_logits).mean())
    embed = model.get_input_embeddings()
    with torch.no_grad():
        clean_embeds, corrupted_embeds = embed(data.clean), embed(data.corrupted)
    alphas = [0.0] if steps == 1 else [(i + 0.5) / steps for i in range(steps)]
    grads: list[torch.Tensor] | None = None
    for alpha in alphas:
        embeds = torch.lerp(corrupted_embeds, clean_embeds, alpha)
        with torch.enable_grad():
            logits, _, inputs = graph.run(data.corrupted, embeds=embeds.requires_grad_(True), keep_inputs=True)
            data.score(logits).sum().backward()
        step = [i.grad.float() / len(alphas) for i in inputs]
        grads = step if grads is None else [g + s for g, s in zip(grads, step, strict=True)]
    assert grads is not None
    reader_grads = torch.cat(grads)  # [readers, b, pos, d], in reader order
    mask = data.mask.to(reader_grads.dtype)[None, :, :, None]
    delta = (clean_out - corrupted_out).float()  # [writers, b, pos, d]
    matrix = torch.einsum("wbpd,rbpd->wr", delta, reader_grads * mask) / data.n  # [writers, readers]
    scores = torch.tensor(
        [float(matrix[graph.writer_index[e.writer], graph.reader_index[e.reader]]) for e in graph.edges],
        dtype=torch.float64,
    )
    return EdgeScores(tuple(graph.edges), scores, clean_metric, corrupted_metric, 2 + 2 * len(alphas))


class EdgePatcher:
    """The pairs' clean runs with chosen edges patched from their corrupted runs (one forward
    each), beside the two ends every measure is relative to, per pair: every edge kept (``full``,
    the model) and none (``empty``, the corrupted run)."""

    @torch.inference_mode()
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[PromptPair],
        metric: MetricSpec,
    ) -> None:
        self.graph = ResidualGraph(model)
        self.data = Pairs(tokenizer, pairs, metric, next(model.parameters()).device)
        self.corrupted = self.graph.run(self.data.corrupted)[1]
        self.passes = 1
        self.full = self.with_absent(self.graph.absent(self.graph.edges))
        self.empty = self.with_absent(self.graph.absent([]))

    @torch.inference_mode()
    def with_absent(self, absent: torch.Tensor) -> torch.Tensor:
        """``[pairs]``: the metric with the edges ``absent`` marks patched."""
        self.passes += 1
        return self.data.score(self.graph.run(self.data.clean, self.corrupted, absent)[0]).double()

    def kept(self, edges: Sequence[Edge]) -> torch.Tensor:
        """``[pairs]``: the metric with only ``edges`` kept."""
        return self.with_absent(self.graph.absent(edges))

    def faithfulness(self, edges: Sequence[Edge]) -> float:
        """``(m(C) − m(∅)) / (m(M) − m(∅))`` for the circuit ``edges``, over all the pairs."""
        empty = self.empty.mean()
        return float((self.kept(edges).mean() - empty) / (self.full.mean() - empty))


def edge_faithfulness(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    kept: Sequence[Edge],
    metric: MetricSpec,
) -> float:
    """``(m(C) − m(∅)) / (m(M) − m(∅))`` for the circuit of edges ``kept``, every other edge
    patched from the corrupted run (``m(∅)``: every edge patched, the corrupted run itself)."""
    return EdgePatcher(model, tokenizer, pairs, metric).faithfulness(kept)


def acdc(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    metric: MetricSpec,
    threshold: float = 0.01,
) -> tuple[list[Edge], int]:
    """ACDC (Conmy et al. 2023), the exact and slow reference: from the whole graph, each edge
    is tried out in turn (readers from the logits back, each one's writers from the latest) and
    left out for good when the metric moves by less than ``threshold`` of the behaviour (clean
    less corrupted) without it. Returns the edges kept and the forwards run."""
    if not 0 < threshold < 1:
        raise InvalidEditError("threshold", f"{threshold} is outside (0, 1)", "a share of the behaviour, e.g. 0.01")
    patcher = EdgePatcher(model, tokenizer, pairs, metric)
    graph = patcher.graph
    absent = graph.absent(graph.edges)  # every edge in
    current = float(patcher.full.mean())
    span = abs(current - float(patcher.empty.mean()))
    for reader in reversed(range(len(graph.readers))):
        for writer in reversed(range(len(graph.writers))):
            if not graph.feeds[writer, reader]:
                continue
            absent[writer, reader] = 1.0
            trial = float(patcher.with_absent(absent).mean())
            if abs(trial - current) < threshold * span:
                current = trial
            else:
                absent[writer, reader] = 0.0
    kept = [e for e in graph.edges if absent[graph.writer_index[e.writer], graph.reader_index[e.reader]] == 0]
    return kept, patcher.passes


@dataclass(frozen=True)
class EdgeCircuit:
    """A circuit of edges, chosen on the discovery pairs and scored on the held-out ones (every
    ``held_out``-th pair), with 95% bootstrap intervals over the held-out pairs."""

    edges: tuple[Edge, ...]
    faithfulness: Estimate
    completeness: Estimate
    discovery_faithfulness: float
    metric_full: float  # held out, every edge in (the model)
    metric_empty: float  # held out, every edge patched (the corrupted run)
    scores: EdgeScores
    passes: int


def discover_edges(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    metric: MetricSpec,
    target: float = 0.9,
    held_out: int = 4,
    steps: int = 4,
    resamples: int = 1000,
    seed: int = 0,
) -> EdgeCircuit:
    """The fewest top edges by EAP-IG (EAP at ``steps`` = 1) whose faithfulness on the discovery
    pairs reaches ``target`` (binary search over how many), scored on the held-out pairs."""
    if not 0 < target <= 1:
        raise InvalidEditError("target", f"{target} is outside (0, 1]", "a share of the behaviour, e.g. 0.9")
    check_int("held_out", held_out, 2, 1000)
    if len(pairs) < held_out:
        raise InvalidEditError("pairs", f"has {len(pairs)} pairs", f"at least held_out = {held_out}")
    held = [p for i, p in enumerate(pairs) if i % held_out == held_out - 1]
    chosen = [p for i, p in enumerate(pairs) if i % held_out != held_out - 1]
    scores = edge_attribution(model, tokenizer, chosen, metric, steps)
    discovery, scoring = EdgePatcher(model, tokenizer, chosen, metric), EdgePatcher(model, tokenizer, held, metric)
    order = [edge for edge, _ in scores.ranked()]
    low, high = 1, len(order)
    while low < high:
        middle = (low + high) // 2
        if discovery.faithfulness(order[:middle]) >= target:
            high = middle
        else:
            low = middle + 1
    kept = order[:low]
    found = discovery.faithfulness(kept)
    full, empty = scoring.full, scoring.empty
    inside, outside = scoring.kept(kept), scoring.kept([e for e in scoring.graph.edges if e not in kept])
    span = full - empty
    return EdgeCircuit(
        tuple(kept),
        ratio_of_sums(inside - empty, span, resamples, seed),
        ratio_of_sums(full - outside, span, resamples, seed),
        found,
        float(full.mean()),
        float(empty.mean()),
        scores,
        scores.passes + discovery.passes + scoring.passes,
    )


@dataclass(frozen=True)
class HypothesisComparison:
    """Two circuits of edges, each a claim that everything outside it may be taken from the
    corrupted run without losing the behaviour: the share each keeps, and their paired difference
    (``a`` − ``b``), with 95% bootstrap intervals over the pairs."""

    a: Estimate
    b: Estimate
    difference: Estimate


def compare_hypotheses(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PromptPair],
    metric: MetricSpec,
    a: Sequence[Edge],
    b: Sequence[Edge],
    resamples: int = 1000,
    seed: int = 0,
) -> HypothesisComparison:
    """Score hypotheses ``a`` and ``b`` on the same pairs (held-out ones, for a fair test) and
    their difference, paired pair by pair: an interval that excludes 0 says one explains the
    behaviour better than the other."""
    patcher = EdgePatcher(model, tokenizer, pairs, metric)
    empty, kept_a, kept_b = patcher.empty, patcher.kept(a), patcher.kept(b)
    span = patcher.full - empty
    return HypothesisComparison(
        ratio_of_sums(kept_a - empty, span, resamples, seed),
        ratio_of_sums(kept_b - empty, span, resamples, seed),
        ratio_of_sums(kept_a - kept_b, span, resamples, seed),
    )
