"""Surgeon mechanics on small random GPT-2, GPT-NeoX (both residual layouts) and Llama models."""

from __future__ import annotations

import copy
import gc
import threading

import pytest
import torch
from torch import nn

from editors import (
    DirectionalAblation,
    HeadAblation,
    InvalidEditError,
    LowRank,
    NeuronAblation,
    Steering,
    Surgeon,
    UnsupportedArchitectureError,
    weights_sha256,
)
from editors.adapters import weight_delta_as_stored
from tests.conftest import tiny_model


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def every_edit(surgeon: Surgeon) -> list:
    """Every edit kind at every site the model has."""
    d = surgeon.dims
    edits: list = []
    for layer in range(d.n_layers):
        edits += [
            HeadAblation(layer=layer, heads=(0, d.n_heads - 1)),
            HeadAblation(layer=layer, heads=(1,), mode="mean", means=_rand(1, d.d_head)),
            HeadAblation(layer=layer, heads=(1,), mode="resample", pool=_rand(8, 1, d.d_head)),
            NeuronAblation(layer=layer, neurons=(0, d.d_mlp - 1)),
            NeuronAblation(layer=layer, neurons=(3,), mode="mean", means=_rand(1)),
            NeuronAblation(layer=layer, neurons=(3,), mode="resample", pool=_rand(8, 1)),
            DirectionalAblation(direction=_rand(d.d_model), layers=(layer,)),
        ]
        for point in d.residual_points():
            edits += [
                Steering(site=f"blocks.{layer}.{point}", vector=_rand(d.d_model), scale=2.0),
                Steering(
                    site=f"blocks.{layer}.{point}", vector=_rand(d.d_model), mode="ablate_then_add", positions=(1, 4)
                ),
            ]
        d_attn = d.n_heads * d.d_head
        for point, (d_in, d_out) in {
            "attn.W_O": (d_attn, d.d_model),
            "mlp.W_in": (d.d_model, d.d_mlp),
            "mlp.W_out": (d.d_mlp, d.d_model),
        }.items():
            edits.append(LowRank(site=f"blocks.{layer}.{point}", U=_rand(d_out, 2), V=_rand(d_in, 2)))
    return edits


def test_every_edit_kind_runs_at_every_site_and_leaves_weights_bit_identical(tiny, token_ids) -> None:
    model, surgeon = tiny
    base_hash = weights_sha256(model)
    plain = _logits(model, token_ids)
    for edit in every_edit(surgeon):
        with surgeon.apply([edit]):
            edited = _logits(model, token_ids)
        assert torch.isfinite(edited).all()
        assert not torch.allclose(edited, plain), f"{edit.kind} {edit.params()} changed nothing"
    with surgeon.apply(every_edit(surgeon)):
        assert torch.isfinite(_logits(model, token_ids)).all()
    assert torch.equal(_logits(model, token_ids), plain)
    assert weights_sha256(model) == base_hash


def test_empty_stack_and_no_stack_match_the_plain_model_exactly(tiny, token_ids) -> None:
    model, surgeon = tiny
    plain = _logits(model, token_ids)
    keep_alive = surgeon.compile(
        [
            Steering(
                site="blocks.0.hook_resid_mid" if not surgeon.dims.parallel_residual else "blocks.0.hook_resid_pre",
                vector=torch.ones(surgeon.dims.d_model),
            )
        ]
    )
    with surgeon.apply([]):
        assert torch.equal(_logits(model, token_ids), plain)
    assert torch.equal(_logits(model, token_ids), plain)
    del keep_alive


def test_hooks_exist_only_while_a_stack_needs_them(tiny, token_ids) -> None:
    model, surgeon = tiny

    def hook_count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    assert hook_count() == 0
    stack = surgeon.compile(every_edit(surgeon))
    assert hook_count() > 0
    again = surgeon.compile(every_edit(surgeon))
    installed = hook_count()
    del stack
    gc.collect()
    assert hook_count() == installed  # still needed by `again`
    del again
    gc.collect()
    assert hook_count() == 0


def test_resid_pre_of_next_layer_is_resid_post_of_this_one(tiny, token_ids) -> None:
    model, surgeon = tiny
    vector = _rand(surgeon.dims.d_model)
    with surgeon.apply([Steering(site="blocks.0.hook_resid_post", vector=vector)]):
        post = _logits(model, token_ids)
    with surgeon.apply([Steering(site="blocks.1.hook_resid_pre", vector=vector)]):
        pre = _logits(model, token_ids)
    torch.testing.assert_close(post, pre)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_resid_mid_steering_equals_adding_to_the_attention_output(family, token_ids) -> None:
    model = tiny_model(family)
    surgeon = Surgeon(model)
    vector = _rand(surgeon.dims.d_model)
    with surgeon.apply([Steering(site="blocks.1.hook_resid_mid", vector=vector, scale=1.5)]):
        ours = _logits(model, token_ids)
    attention = {"gpt2": "attn", "gpt_neox": "attention", "llama": "self_attn"}[family]
    module = getattr(surgeon.adapter.blocks(model)[1], attention)
    handle = module.register_forward_hook(lambda m, a, out: (out[0] + 1.5 * vector, *out[1:]))
    try:
        reference = _logits(model, token_ids)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, reference)


def _copy_with(model: nn.Module, surgeon: Surgeon, layer: int, role: str, edit_weight) -> nn.Module:
    clone = copy.deepcopy(model)
    module = surgeon.adapter.module(clone, layer, role)
    with torch.no_grad():
        edit_weight(module)
    return clone


def test_low_rank_equals_the_delta_added_to_a_copy_of_the_weights(tiny, token_ids) -> None:
    model, surgeon = tiny
    d = surgeon.dims
    edit = LowRank(site="blocks.1.mlp.W_out", U=_rand(d.d_model, 2) * 0.3, V=_rand(d.d_mlp, 2) * 0.3)
    with surgeon.apply([edit]):
        ours = _logits(model, token_ids)

    def add_delta(module: nn.Module) -> None:
        module.weight += weight_delta_as_stored(module, edit.delta().float())

    torch.testing.assert_close(
        ours, _logits(_copy_with(model, surgeon, 1, "mlp_out", add_delta), token_ids), atol=1e-5, rtol=1e-5
    )


def test_zero_head_ablation_equals_zeroing_the_heads_output_weights(tiny, token_ids) -> None:
    model, surgeon = tiny
    d = surgeon.dims
    heads = (0, 2)
    with surgeon.apply([HeadAblation(layer=2, heads=heads)]):
        ours = _logits(model, token_ids)

    def zero_heads(module: nn.Module) -> None:
        for head in heads:
            columns = slice(head * d.d_head, (head + 1) * d.d_head)
            if isinstance(module, nn.Linear):
                module.weight[:, columns] = 0
            else:  # GPT-2 Conv1D: [d_in, d_out]
                module.weight[columns, :] = 0

    torch.testing.assert_close(ours, _logits(_copy_with(model, surgeon, 2, "attn_out", zero_heads), token_ids))


def test_zero_neuron_ablation_equals_zeroing_the_neurons_output_weights(tiny, token_ids) -> None:
    model, surgeon = tiny
    neurons = [1, 5, 33]
    with surgeon.apply([NeuronAblation(layer=0, neurons=neurons)]):
        ours = _logits(model, token_ids)

    def zero_neurons(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.weight[:, neurons] = 0
        else:
            module.weight[neurons, :] = 0

    torch.testing.assert_close(ours, _logits(_copy_with(model, surgeon, 0, "mlp_out", zero_neurons), token_ids))


def test_positioned_edits_use_absolute_positions_under_a_kv_cache(tiny, token_ids) -> None:
    model, surgeon = tiny
    d = surgeon.dims
    edits = [
        Steering(site="blocks.1.hook_resid_pre", vector=_rand(d.d_model) * 3, positions=(2, 9)),
        HeadAblation(layer=0, heads=(1, 3), mode="resample", pool=_rand(5, 2, d.d_head), seed=3),
    ]
    with surgeon.apply(edits), torch.no_grad():
        full = model(input_ids=token_ids).logits
        prefix = model(input_ids=token_ids[:, :8], use_cache=True)
        cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values
        stepwise = [prefix.logits]
        for position in range(8, token_ids.shape[1]):
            out = model(input_ids=token_ids[:, position : position + 1], cache=cache, use_cache=True)
            stepwise.append(out.logits)
    torch.testing.assert_close(torch.cat(stepwise, dim=1), full, atol=1e-5, rtol=1e-4)


def test_rows_sample_keys_pick_each_rows_resample_draws(tiny, token_ids) -> None:
    """By default every row draws as the only row of a batch (key 0); with ``keys`` row ``i``
    draws as row ``keys[i]`` would, so two rows of one prompt under one resample ablation differ
    exactly when their keys do, and a row keyed 0 equals its solo run."""
    model, surgeon = tiny
    d = surgeon.dims
    stack = surgeon.compile([HeadAblation(layer=0, heads=(1,), mode="resample", pool=_rand(7, 1, d.d_head), seed=1)])
    token_ids = token_ids[:1]
    twice = token_ids.expand(2, -1)
    with torch.no_grad():
        with surgeon.apply(stack):
            solo = model(input_ids=token_ids).logits[0]
        with surgeon.apply_rows(surgeon.rows([stack, stack])):
            default = model(input_ids=twice).logits
        with surgeon.apply_rows(surgeon.rows([stack, stack, surgeon.compile([])], keys=[0, 5, 9])):
            keyed = model(input_ids=token_ids.expand(3, -1)).logits
    torch.testing.assert_close(default[0], solo)
    torch.testing.assert_close(default[1], solo)
    torch.testing.assert_close(keyed[0], solo)
    assert not torch.allclose(keyed[1], solo)  # key 5 draws other pool rows
    with surgeon.apply(surgeon.compile([])), torch.no_grad():
        torch.testing.assert_close(keyed[2], model(input_ids=token_ids).logits[0])  # the empty stack


def test_steering_at_chosen_positions_changes_only_those_positions(tiny, token_ids) -> None:
    model, surgeon = tiny
    site = "blocks.1.hook_resid_post"
    with surgeon.trace([site]) as clean:
        _logits(model, token_ids)
    clean_resid = clean[site]
    edit = Steering(site=site, vector=torch.ones(surgeon.dims.d_model), scale=2.0, positions=(3, 5))
    with surgeon.trace([site], edits=[edit]) as steered:
        _logits(model, token_ids)
    changed = (steered[site] - clean_resid).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [3, 5]
    torch.testing.assert_close(steered[site][:, [3, 5]], clean_resid[:, [3, 5]] + 2.0)


def _read_residuals(
    model: nn.Module, surgeon: Surgeon, layers: tuple[int, ...], ids: torch.Tensor, edits: list
) -> dict[str, torch.Tensor]:
    """The residual stream at ``layers``, read by plain torch hooks independent of the Surgeon.

    resid_pre is the block's input, resid_post its output, and resid_mid the input of the
    MLP's norm (what the MLP reads and what the stream carries past it).
    """
    stack = surgeon.compile(edits)  # install the Surgeon's hooks first, so the readers run after them
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for layer in layers:
        block = surgeon.adapter.blocks(model)[layer]
        handles.append(
            block.register_forward_pre_hook(
                lambda m, args, name=f"pre{layer}": seen.__setitem__(name, args[0].detach())
            )
        )
        handles.append(
            block.register_forward_hook(lambda m, args, out, name=f"post{layer}": seen.__setitem__(name, out.detach()))
        )
        if not surgeon.dims.parallel_residual:
            handles.append(
                surgeon.adapter.module(model, layer, "mid_norm").register_forward_pre_hook(
                    lambda m, args, name=f"mid{layer}": seen.__setitem__(name, args[0].detach())
                )
            )
    try:
        with surgeon.apply(stack):
            _logits(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_directional_ablation_zeroes_the_projection_read_by_independent_hooks(tiny, token_ids) -> None:
    model, surgeon = tiny
    direction = _rand(surgeon.dims.d_model)
    unit = direction / direction.norm()
    layers = (0, 2)
    plain = _read_residuals(model, surgeon, layers, token_ids, [])
    ablated = _read_residuals(
        model, surgeon, layers, token_ids, [DirectionalAblation(direction=direction, layers=layers)]
    )
    assert len(ablated) == len(layers) * len(surgeon.dims.residual_points())
    for name, resid in ablated.items():
        assert (resid @ unit).abs().max() <= 1e-5 * resid.norm(dim=-1).max(), name
        assert (plain[name] @ unit).abs().max() > 1e-2, f"{name}: the direction was not there to begin with"


def test_concurrent_threads_with_different_stacks_match_their_solo_results(tiny, token_ids) -> None:
    model, surgeon = tiny
    d = surgeon.dims
    stacks = [
        [],
        [Steering(site="blocks.1.hook_resid_pre", vector=_rand(d.d_model, seed=1) * 4)],
        [HeadAblation(layer=1, heads=(0, 1, 2))],
        [
            LowRank(site="blocks.0.mlp.W_out", U=_rand(d.d_model, 1), V=_rand(d.d_mlp, 1)),
            NeuronAblation(layer=2, neurons=(4, 5), mode="resample", pool=_rand(6, 2)),
        ],
    ]
    compiled = [surgeon.compile(s) for s in stacks]
    solo = []
    for stack in compiled:
        with surgeon.apply(stack):
            solo.append(_logits(model, token_ids))
    assert all(not torch.equal(solo[0], other) for other in solo[1:])
    mismatches: list[str] = []
    barrier = threading.Barrier(len(compiled))

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(25):
            with surgeon.apply(compiled[index]):
                if not torch.equal(_logits(model, token_ids), solo[index]):
                    mismatches.append(f"stack {index}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(compiled))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_trace_records_site_shapes(tiny, token_ids) -> None:
    model, surgeon = tiny
    d = surgeon.dims
    sites = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post", "blocks.2.hook_resid_post"]
    with surgeon.trace(sites) as cache:
        _logits(model, token_ids)
    b, p = token_ids.shape
    assert cache["blocks.0.hook_resid_pre"].shape == (b, p, d.d_model)
    assert cache["blocks.1.attn.hook_z"].shape == (b, p, d.n_heads, d.d_head)
    assert cache["blocks.2.mlp.hook_post"].shape == (b, p, d.d_mlp)
    with pytest.raises(InvalidEditError, match=r"sites\[0\]"), surgeon.trace(["blocks.9.hook_resid_pre"]):
        pass


def test_invalid_stack_is_rejected_before_any_hook_is_installed(tiny) -> None:
    model, surgeon = tiny
    good = Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(surgeon.dims.d_model))
    bad = HeadAblation(layer=0, heads=(surgeon.dims.n_heads,))
    with pytest.raises(InvalidEditError) as caught:
        surgeon.compile([good, bad])
    assert caught.value.field == "edits[1].heads[0]"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unknown_architecture_error_lists_the_supported_ones() -> None:
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(UnsupportedArchitectureError, match=r"'bert'.*gpt2.*gpt_neox.*llama.*mistral.*qwen2"):
        Surgeon(model)


def test_component_outputs_add_up_to_the_residual_stream(tiny, token_ids) -> None:
    model, surgeon = tiny
    names = [f"blocks.1.{p}" for p in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    with surgeon.trace(names) as cache:
        _logits(model, token_ids)
    pre, attn, mlp, post = (cache[name] for name in names)
    torch.testing.assert_close(pre + attn + mlp, post, atol=1e-5, rtol=1e-5)
    if not surgeon.dims.parallel_residual:
        with surgeon.trace(["blocks.1.hook_resid_mid"]) as mid:
            _logits(model, token_ids)
        torch.testing.assert_close(pre + attn, mid["blocks.1.hook_resid_mid"], atol=1e-5, rtol=1e-5)


def test_your_own_hook_at_a_site_and_a_record_of_every_forward_with_gradients(tiny, token_ids) -> None:
    model, surgeon = tiny

    def zero_head_one(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with torch.inference_mode():
        hooked = surgeon.run_with_hooks(input_ids=token_ids, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_one)])
        untouched = surgeon.run_with_hooks(input_ids=token_ids, fwd_hooks=[("blocks.0.attn.hook_z", lambda z: None)])
        with surgeon.apply([HeadAblation(layer=0, heads=(1,))]):
            ablated = model(input_ids=token_ids)
    assert torch.allclose(hooked.logits, ablated.logits, atol=1e-6)
    assert torch.equal(untouched.logits, _logits(model, token_ids))
    site = "blocks.1.hook_resid_pre"
    with torch.inference_mode(), surgeon.trace([site], every_forward=True) as steps:
        model.generate(token_ids[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert [t.shape[1] for t in steps[site]] == [token_ids.shape[1], 1, 1]  # the prefill, then each new token
    with surgeon.trace([site], keep_grad=True) as cache:
        logits = model(input_ids=token_ids).logits
    (grad,) = torch.autograd.grad(logits[:, -1].logsumexp(-1).sum(), cache[site])
    assert grad.shape == cache[site].shape and grad.abs().sum() > 0


def test_queries_keys_values_embeddings_and_the_final_norm_are_sites(tiny, token_ids) -> None:
    model, surgeon = tiny
    d = surgeon.dims
    kv_heads = getattr(model.config, "num_key_value_heads", None) or d.n_heads
    sites = ["hook_embed", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v"]
    with torch.inference_mode(), surgeon.trace([*sites, "ln_final.hook_normalized"]) as cache:
        logits = model(input_ids=token_ids).logits
    b, p = token_ids.shape
    assert cache["blocks.1.attn.hook_q"].shape == (b, p, d.n_heads, d.d_head)
    assert cache["blocks.1.attn.hook_k"].shape == cache["blocks.1.attn.hook_v"].shape == (b, p, kv_heads, d.d_head)
    with torch.inference_mode():
        assert torch.equal(cache["hook_embed"], model.get_input_embeddings()(token_ids))
        unembedded = model.get_output_embeddings()(cache["ln_final.hook_normalized"])
    assert torch.allclose(unembedded, logits, atol=1e-5)  # what the unembedding reads

    def zero(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    with torch.inference_mode():  # no values: every head's output z is zero, whatever it attends to
        no_values = surgeon.run_with_hooks(input_ids=token_ids, fwd_hooks=[("blocks.0.attn.hook_v", zero)]).logits
        no_z = surgeon.run_with_hooks(input_ids=token_ids, fwd_hooks=[("blocks.0.attn.hook_z", zero)]).logits
        no_keys = surgeon.run_with_hooks(input_ids=token_ids, fwd_hooks=[("blocks.0.attn.hook_k", zero)]).logits
    assert torch.allclose(no_values, no_z, atol=1e-5) and not torch.allclose(no_keys, no_z, atol=1e-3)
    with pytest.raises(InvalidEditError, match=r"unknown site 'blocks\.0\.hook_embed'"):
        surgeon.site("blocks.0.hook_embed")
    import dataclasses

    bare = Surgeon(model, adapter=dataclasses.replace(surgeon.adapter, qkv=(), final_norm=""))
    for name in ("blocks.0.attn.hook_q", "ln_final.hook_normalized"):
        with pytest.raises(InvalidEditError, match="adapter does not name the modules"):
            bare.site(name)
