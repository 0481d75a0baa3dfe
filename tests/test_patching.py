"""Activation patching and causal tracing."""

from __future__ import annotations

import pytest
import torch

from editors import InvalidEditError
from editors.patching import (
    answer_probability,
    causal_trace,
    patch_grid,
    plot_causal_trace,
    recommend_edit_layer,
    subject_token_span,
)


def test_patch_grid_restores_exactly_what_it_should(tiny, token_ids) -> None:
    _, surgeon = tiny
    clean = token_ids[:1]
    corrupted = clean.clone()
    corrupted[0, 4] = (corrupted[0, 4] + 7) % 64  # one corrupted token
    metric = answer_probability(5)
    grids, clean_score, corrupted_score = patch_grid(surgeon, clean, corrupted, metric)
    last_layer, last = surgeon.dims.n_layers - 1, clean.shape[1] - 1
    assert set(grids) == {"resid", "attn", "mlp"} and grids["resid"].shape == (surgeon.dims.n_layers, clean.shape[1])
    # the final hidden state determines the logits: restoring it recovers the clean score
    assert grids["resid"][last_layer, last].item() == pytest.approx(clean_score, abs=1e-6)
    # positions before the corruption carry nothing corrupted: restoring them changes nothing
    torch.testing.assert_close(grids["resid"][:, :4], torch.full((surgeon.dims.n_layers, 4), corrupted_score))
    # restoring the corrupted token's hidden state after layer 0 ... is a real intervention
    assert grids["resid"][0, 4].item() != pytest.approx(corrupted_score, abs=1e-9)
    # the same clean and corrupted input: every restoration gives the clean score
    same, clean_again, _ = patch_grid(surgeon, clean, clean.clone(), metric, kinds=("mlp",))
    torch.testing.assert_close(same["mlp"], torch.full_like(same["mlp"], clean_again), atol=1e-6, rtol=1e-5)


def test_patch_grid_rejects_bad_arguments(tiny, token_ids) -> None:
    _, surgeon = tiny
    with pytest.raises(InvalidEditError, match=r"kinds\[0\]"):
        patch_grid(surgeon, token_ids[:1], token_ids[:1], answer_probability(1), kinds=("heads",))
    with pytest.raises(InvalidEditError, match="corrupted"):
        patch_grid(surgeon, token_ids[:1], token_ids[:1, :5], answer_probability(1))


def test_causal_trace_on_the_toy_model_locates_the_fact(toy, toy_surgeon, tmp_path) -> None:
    _, tokenizer, world = toy
    fact = world.facts_for("capital")[0]
    trace = causal_trace(toy_surgeon, tokenizer, fact.canonical_prompt, fact.subject)
    assert trace.answer == fact.object
    assert trace.clean_probability > 0.9 and trace.corrupted_probability < 0.5
    n_layers, n_tokens = toy_surgeon.dims.n_layers, len(trace.tokens)
    assert all(grid.shape == (n_layers, n_tokens) for grid in trace.grids.values())
    assert trace.tokens[trace.subject_span[0]] == fact.subject
    assert 0 <= recommend_edit_layer(trace) < n_layers
    # restoring the last layer's hidden state at the last token recovers the clean answer
    assert trace.grids["resid"][-1, -1].item() == pytest.approx(trace.clean_probability, abs=1e-5)
    png = plot_causal_trace(trace, tmp_path / "trace.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_subject_must_occur_in_the_prompt(toy) -> None:
    tokenizer = toy[1]
    with pytest.raises(InvalidEditError, match="subject: 'Atlantis' does not occur"):
        subject_token_span(tokenizer, "The capital of Riia is", "Atlantis")
    assert subject_token_span(tokenizer, "The capital of Riia is", "Riia") == (4, 5)


@pytest.mark.parametrize(("window", "restored"), [(1, [2]), (2, [1, 2]), (3, [1, 2, 3]), (4, [0, 1, 2, 3])])
def test_a_window_restores_the_papers_layers(toy_surgeon, window, restored, monkeypatch) -> None:
    """Meng et al.: a window of w around layer L restores layers L - w//2 … L - w//2 + w - 1."""
    seen: list[list[int]] = []
    compile_ = toy_surgeon.compile

    def recording(edits, extra_ops=()):
        seen.append(sorted({int(name.split(".")[1]) for name, _ in extra_ops}))
        return compile_(edits, extra_ops=extra_ops)

    monkeypatch.setattr(toy_surgeon, "compile", recording)
    ids = torch.tensor([[5]])
    noise = torch.zeros(1, 1, toy_surgeon.dims.d_model)
    embeds = toy_surgeon.model.get_input_embeddings()(ids).detach() + noise
    patch_grid(toy_surgeon, ids, embeds, lambda logits: logits[:, 0], ("mlp",), window, batch_rows=1,
               show_progress=False)  # fmt: skip
    cells = seen[2:]  # after the clean trace and the corrupted run: one compile per (layer, position) cell
    assert cells[2] == [layer for layer in restored if layer < toy_surgeon.dims.n_layers]  # the cell at layer 2
