"""Activation patching and causal tracing (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT").

:func:`patch_grid` runs a clean and a corrupted input and, for every (layer, position) of a
site kind, restores that one activation from the clean run into the corrupted run, reporting a
metric of the final logits. All restorations of a kind run as rows of batched forwards.

:func:`causal_trace` is the paper's experiment: corrupt the subject tokens' embeddings with
Gaussian noise (3× the embedding matrix's standard deviation by default), then restore hidden
states, attention outputs and MLP outputs one (layer, position) at a time. Its grids show where
the fact is recalled; :func:`recommend_edit_layer` picks the MLP layer with the largest indirect
effect at the last subject token, the layer ROME should edit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from editors.edits import Edit, Op
from editors.errors import InvalidEditError
from editors.progress import progress_bar
from editors.surgeon import Surgeon
from editors.validation import check_choice, check_int

#: Site kind → activation point restored for it.
PATCH_KINDS = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}

#: Last-position logits ``[rows, vocab]`` → one score per row.
Metric = Callable[[torch.Tensor], torch.Tensor]


def answer_probability(token_id: int) -> Metric:
    """The probability of ``token_id`` as the next token."""
    return lambda logits: logits.float().softmax(dim=-1)[:, token_id]


def logit_difference(good_id: int, bad_id: int) -> Metric:
    """``logit(good) - logit(bad)`` for the next token."""
    return lambda logits: (logits[:, good_id] - logits[:, bad_id]).float()


def _restore_op(clean: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> Op:
    """Op writing ``clean[0, positions]`` into ``x[rows, positions]`` (out of place)."""
    values = clean[0, positions]

    def fn(x: torch.Tensor, _: object) -> torch.Tensor:
        return x.index_put((rows, positions), values.to(x.dtype))

    return Op(fn)


def _forward_last_logits(surgeon: Surgeon, inputs: torch.Tensor) -> torch.Tensor:
    key = "inputs_embeds" if inputs.is_floating_point() else "input_ids"
    return surgeon.model(**{key: inputs}).logits[:, -1]


@torch.inference_mode()
def patch_grid(
    surgeon: Surgeon,
    clean_ids: torch.Tensor,
    corrupted: torch.Tensor,
    metric: Metric,
    kinds: Sequence[str] = tuple(PATCH_KINDS),
    window: int = 1,
    edits: Sequence[Edit] = (),
    batch_rows: int = 256,
    show_progress: bool = True,
) -> tuple[dict[str, torch.Tensor], float, float]:
    """Restore each (layer, position) of each kind from the clean run into the corrupted one.

    ``clean_ids``: ``[1, P]`` token ids (or ``[1, P, d_model]`` input embeddings: a VLM's prompt
    with its image tokens in place). ``corrupted``: ``[S, P]`` token ids or ``[S, P, d_model]``
    input embeddings (S corrupted variants; scores are averaged over them). ``window``: restore
    that many consecutive layers centred on the layer (the paper uses 10 for attention and MLP
    in large models). Runs under ``edits``. Returns ``({kind: [n_layers, P] metric}, clean
    score, corrupted score)``.
    """
    for i, kind in enumerate(kinds):
        check_choice(f"kinds[{i}]", kind, tuple(PATCH_KINDS))
    n_layers = surgeon.dims.n_layers
    check_int("window", window, 1, n_layers)
    if (
        clean_ids.ndim != 2 + clean_ids.is_floating_point()
        or clean_ids.shape[0] != 1
        or corrupted.shape[1] != clean_ids.shape[1]
    ):
        raise InvalidEditError("corrupted", "clean must be [1, P] and corrupted [S, P, ...]", "matching lengths")
    length, samples = clean_ids.shape[1], corrupted.shape[0]
    device = surgeon.device_dtype[0]
    clean_ids, corrupted = clean_ids.to(device), corrupted.to(device)
    names = [f"blocks.{layer}.{PATCH_KINDS[kind]}" for kind in kinds for layer in range(n_layers)]
    with surgeon.trace(names, edits) as cache:
        clean_score = metric(_forward_last_logits(surgeon, clean_ids)).item()
    clean = {name: cache[name] for name in names}
    with surgeon.apply(edits):
        corrupted_score = metric(_forward_last_logits(surgeon, corrupted)).mean().item()

    cells = [(layer, position) for layer in range(n_layers) for position in range(length)]
    grids: dict[str, torch.Tensor] = {}
    bar = progress_bar(len(kinds) * len(cells), "patching (layer, position) cells", show_progress)
    for kind in kinds:
        scores = torch.empty(len(cells))
        per_chunk = max(1, batch_rows // samples)
        for start in range(0, len(cells), per_chunk):
            chunk = cells[start : start + per_chunk]
            extra: list[tuple[str, Op]] = []
            for layer in range(n_layers):
                # a cell at layer `lay` restores layers lay - window//2 … that + window - 1 (the paper's
                # convention: an even window reaches one layer further down than up)
                hit = [i for i, (lay, _) in enumerate(chunk) if 0 <= layer - lay + window // 2 < window]
                if not hit:
                    continue
                name = f"blocks.{layer}.{PATCH_KINDS[kind]}"
                device = clean[name].device
                rows = torch.tensor([i * samples + s for i in hit for s in range(samples)], device=device)
                positions = torch.tensor([chunk[i][1] for i in hit for _ in range(samples)], device=device)
                extra.append((name, _restore_op(clean[name], rows, positions)))
            batch = corrupted.repeat(len(chunk), *([1] * (corrupted.ndim - 1)))
            with surgeon.apply(surgeon.compile(edits, extra_ops=extra)):
                chunk_scores = metric(_forward_last_logits(surgeon, batch))
            scores[start : start + len(chunk)] = chunk_scores.view(len(chunk), samples).mean(dim=1).cpu()
            bar.update(len(chunk))
        grids[kind] = scores.view(n_layers, length)
    bar.close()
    return grids, clean_score, corrupted_score


def subject_token_span(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> tuple[int, int]:
    """``[start, end)`` token positions of ``subject``'s last occurrence in ``prompt``."""
    if not isinstance(subject, str) or not subject.strip():
        raise InvalidEditError("subject", "is empty", "a non-empty string that occurs in the prompt")
    char_start = prompt.rfind(subject)
    if char_start < 0:
        raise InvalidEditError("subject", f"{subject!r} does not occur in {prompt!r}", "a substring of the prompt")
    char_end = char_start + len(subject)
    offsets = tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < char_end and b > char_start]
    return hit[0], hit[-1] + 1


def answer_token(tokenizer: PreTrainedTokenizerBase, answer: str) -> int:
    """First token of ``answer`` as a continuation (with a leading space, as it follows a word)."""
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidEditError("answer", "is empty", "a non-empty string")
    ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if not ids or ids[0] == tokenizer.unk_token_id:
        raise InvalidEditError("answer", f"{answer!r} tokenises to nothing known", "text in the model's vocabulary")
    return ids[0]


@dataclass(frozen=True)
class CausalTrace:
    """Result of :func:`causal_trace`: probability of the answer with each activation restored."""

    prompt: str
    subject: str
    answer: str
    tokens: tuple[str, ...]
    subject_span: tuple[int, int]
    clean_probability: float
    corrupted_probability: float
    grids: dict[str, torch.Tensor]  # kind → [n_layers, n_tokens]

    def indirect_effect(self, kind: str) -> torch.Tensor:
        """``[n_layers, n_tokens]``: restored probability minus the corrupted one."""
        return self.grids[kind] - self.corrupted_probability


def causal_trace(
    surgeon: Surgeon,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    subject: str,
    answer: str | None = None,
    samples: int = 10,
    noise_scale: float | None = None,
    seed: int = 0,
    kinds: Sequence[str] = tuple(PATCH_KINDS),
    window: int = 1,
    edits: Sequence[Edit] = (),
    show_progress: bool = True,
) -> CausalTrace:
    """Causal tracing of ``prompt`` (the subject already filled in) under ``edits``.

    ``answer`` defaults to the model's own top prediction. ``noise_scale`` defaults to three
    times the standard deviation of the input-embedding matrix.
    """
    check_int("samples", samples, 1, 1000)
    start, end = subject_token_span(tokenizer, prompt, subject)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(surgeon.device_dtype[0])
    embed = surgeon.model.get_input_embeddings()
    with torch.inference_mode(), surgeon.apply(edits):
        if answer is None:
            top = surgeon.model(input_ids=ids).logits[0, -1].argmax().item()
            answer = tokenizer.decode([top]).strip()
            answer_id = top
        else:
            answer_id = answer_token(tokenizer, answer)
        scale = noise_scale if noise_scale is not None else 3 * embed.weight.float().std().item()
        generator = torch.Generator().manual_seed(seed)
        clean_embeds = embed(ids)
        noise = torch.randn(samples, end - start, clean_embeds.shape[-1], generator=generator) * scale
        corrupted = clean_embeds.repeat(samples, 1, 1)
        corrupted[:, start:end] += noise.to(corrupted.device, corrupted.dtype)
    grids, clean_p, corrupted_p = patch_grid(
        surgeon, ids, corrupted, answer_probability(answer_id), kinds, window, edits, show_progress=show_progress
    )
    return CausalTrace(
        prompt,
        subject,
        answer,
        tuple(tokenizer.decode([token]) for token in ids[0].tolist()),  # text, not byte-level symbols
        (start, end),
        clean_p,
        corrupted_p,
        grids,
    )


def recommend_edit_layer(trace: CausalTrace) -> int:
    """The layer whose MLP output, restored at the last subject token, recovers the answer most."""
    if "mlp" not in trace.grids:
        raise InvalidEditError("trace", "has no MLP grid", "a trace computed with kinds including 'mlp'")
    return int(trace.indirect_effect("mlp")[:, trace.subject_span[1] - 1].argmax())


def plot_causal_trace(trace: CausalTrace, path: str | Path) -> Path:
    """Render the trace's grids as a PNG heatmap (one panel per kind, tokens × layers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"resid": "hidden state (resid_post)", "attn": "attention output", "mlp": "MLP output"}
    labels = [
        (t.strip() or repr(t)) + ("*" if trace.subject_span[0] <= i < trace.subject_span[1] else "")
        for i, t in enumerate(trace.tokens)
    ]
    # the colour scale spans the data: from the corrupted run (or the lowest cell) to the clean run
    # (or the highest cell), so the small probabilities of a real model's answer stay visible
    values = torch.cat([grid.flatten() for grid in trace.grids.values()])
    low = min(trace.corrupted_probability, float(values.min()))
    high = max(trace.clean_probability, float(values.max()), low + 1e-6)
    fig, axes = plt.subplots(1, len(trace.grids), figsize=(4.2 * len(trace.grids), 0.45 * len(labels) + 1.6))
    for ax, (kind, grid) in zip(list(axes) if len(trace.grids) > 1 else [axes], trace.grids.items(), strict=True):
        image = ax.imshow(grid.T.numpy(), cmap="Purples", aspect="auto", vmin=low, vmax=high)
        ax.set_title(titles[kind], fontsize=10)
        ax.set_xlabel("layer")
        ax.set_xticks(range(grid.shape[0]))
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, label=f"p({trace.answer})")
    fig.suptitle(
        f"causal trace: {trace.prompt!r} → {trace.answer!r} (* = subject, corrupted p="
        f"{trace.corrupted_probability:.3f}, clean p={trace.clean_probability:.3f})",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
