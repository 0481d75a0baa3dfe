"""Edit values: validation, immutability, identity and lossless serialisation."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import subprocess
import sys

import pytest
import torch

from editors import (
    DirectionalAblation,
    HeadAblation,
    InvalidEditError,
    LowRank,
    ModelDims,
    NeuronAblation,
    Steering,
    artifact_blobs_by_hash,
    edit_from_json,
    load_edit,
    save_edit,
)

DIMS = ModelDims(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def every_kind() -> list:
    """One edit of every kind and mode, shaped for ``DIMS``."""
    return [
        HeadAblation(layer=1, heads=(0, 2)),
        HeadAblation(layer=1, heads=(0, 2), mode="mean", means=_rand(2, 8)),
        HeadAblation(layer=2, heads=(3,), mode="resample", pool=_rand(16, 1, 8), seed=5),
        NeuronAblation(layer=0, neurons=(1, 7, 9)),
        NeuronAblation(layer=0, neurons=(1, 7), mode="mean", means=_rand(2)),
        NeuronAblation(layer=2, neurons=(63,), mode="resample", pool=_rand(10, 1)),
        DirectionalAblation(direction=_rand(32), layers=(0, 2)),
        DirectionalAblation(direction=_rand(32), layers=(1,), points=("hook_resid_post",)),
        Steering(site="blocks.1.hook_resid_pre", vector=_rand(32), scale=3.5),
        Steering(
            site="blocks.2.hook_resid_mid",
            vector=_rand(32),
            scale=-1.0,
            mode="ablate_then_add",
            positions=(0, 3),
            provenance={"method": "mean_diff", "pairs": [["a b", "a c"]]},
        ),
        LowRank(site="blocks.0.mlp.W_out", U=_rand(32, 2), V=_rand(64, 2)),
        LowRank(site="blocks.2.attn.W_O", U=_rand(32, 1), V=_rand(32, 1), provenance={"request": "x"}),
        LowRank(site="blocks.1.mlp.W_in", U=_rand(64, 1), V=_rand(32, 1)),
    ]


@pytest.mark.parametrize("edit", every_kind(), ids=lambda e: e.kind)
def test_round_trip_through_json_and_safetensors_is_lossless(edit, tmp_path) -> None:
    edit.validate_for(DIMS)
    text = edit.to_json()
    again = edit_from_json(text, artifact_blobs_by_hash(edit))
    assert again.id == edit.id and again.to_json() == text
    assert again.params() == edit.params()
    for name, tensor in edit.tensors().items():
        assert torch.equal(again.tensors()[name], tensor) and again.tensors()[name].dtype == tensor.dtype
    save_edit(edit, tmp_path / "edit.safetensors")
    assert load_edit(tmp_path / "edit.safetensors").id == edit.id


def test_identity_is_the_content_hash() -> None:
    a = Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(32), scale=2.0)
    assert a.id == hashlib.sha256(a.to_json().encode()).hexdigest()
    assert a == Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(32), scale=2.0)
    assert a != Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(32), scale=2.5)
    assert a != Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(32, dtype=torch.float16), scale=2.0)
    different_vector = torch.ones(32)
    different_vector[5] = 1.0001
    assert a != Steering(site="blocks.1.hook_resid_pre", vector=different_vector, scale=2.0)
    assert len({a, Steering(site="blocks.1.hook_resid_pre", vector=torch.ones(32), scale=2.0)}) == 1


def test_unit_order_is_canonical_and_keeps_statistics_aligned() -> None:
    means = torch.stack([torch.full((8,), 0.0), torch.full((8,), 3.0)])
    forward = HeadAblation(layer=0, heads=(1, 3), mode="mean", means=means)
    backward = HeadAblation(layer=0, heads=(3, 1), mode="mean", means=means.flip(0))
    assert forward.id == backward.id and backward.heads == (1, 3)
    assert torch.equal(backward.means[1], torch.full((8,), 3.0))


def test_edits_are_immutable_and_own_their_tensors() -> None:
    vector = torch.ones(32)
    edit = Steering(site="blocks.0.hook_resid_pre", vector=vector)
    before = edit.id
    vector.mul_(5)
    assert torch.equal(edit.vector, torch.ones(32)) and edit.id == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        edit.scale = 3.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32), provenance={"a": [1]}).provenance["a"] = 2


NAN = torch.full((32,), math.nan)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: HeadAblation(layer=-1, heads=(0,)), "layer"),
        (lambda: HeadAblation(layer=True, heads=(0,)), "layer"),
        (lambda: HeadAblation(layer=0, heads=()), "heads"),
        (lambda: HeadAblation(layer=0, heads=(1, 1)), "heads"),
        (lambda: HeadAblation(layer=0, heads=(0,), mode="erase"), "mode"),
        (lambda: HeadAblation(layer=0, heads=(0,), mode="mean"), "means"),
        (lambda: HeadAblation(layer=0, heads=(0,), mode="zero", means=torch.zeros(1, 8)), "means"),
        (lambda: HeadAblation(layer=0, heads=(0, 1), mode="mean", means=torch.zeros(3, 8)), "means"),
        (lambda: HeadAblation(layer=0, heads=(0,), mode="resample", pool=torch.zeros(4, 8)), "pool"),
        (lambda: NeuronAblation(layer=0, neurons=(0, "a")), "neurons[1]"),
        (
            lambda: NeuronAblation(layer=0, neurons=(0,), mode="mean", means=torch.tensor([1], dtype=torch.int64)),
            "means",
        ),
        (lambda: DirectionalAblation(direction=torch.zeros(32), layers=(0,)), "direction"),
        (lambda: DirectionalAblation(direction=NAN, layers=(0,)), "direction"),
        (lambda: DirectionalAblation(direction=torch.ones(32), layers=(0,), points=("hook_z",)), "points[0]"),
        (lambda: Steering(site="blocks.0.attn.hook_z", vector=torch.ones(32)), "site"),
        (lambda: Steering(site="layer0", vector=torch.ones(32)), "site"),
        (lambda: Steering(site="blocks.01.hook_resid_pre", vector=torch.ones(32)), "site"),  # one name per site
        (lambda: Steering(site="blocks.\u0661.hook_resid_pre", vector=torch.ones(32)), "site"),  # Arabic-Indic 1
        (lambda: Steering(site="blocks.0." + "x" * 1_000_000, vector=torch.ones(32)), "site"),
        (lambda: NeuronAblation(layer=0, neurons=[*range(50_000), 7]), "neurons"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(4, 8)), "vector"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32, dtype=torch.int32)), "vector"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.full((32,), math.inf)), "vector"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.full((32,), 1e9)), "vector"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32), scale=math.nan), "scale"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32), scale=1e7), "scale"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32), scale="2"), "scale"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32), positions=(-1,)), "positions[0]"),
        (lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.zeros(32), mode="ablate_then_add"), "vector"),
        (
            lambda: Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32), provenance={"x": math.nan}),
            "provenance",
        ),
        (lambda: LowRank(site="blocks.0.mlp.hook_post", U=torch.ones(32, 1), V=torch.ones(64, 1)), "site"),
        (lambda: LowRank(site="blocks.0.mlp.W_out", U=torch.ones(32, 2), V=torch.ones(64, 1)), "V"),
        (lambda: LowRank(site="blocks.0.mlp.W_out", U="not a tensor", V=torch.ones(64, 1)), "U"),
    ],
)
def test_invalid_edits_raise_one_error_type_naming_the_field(build, field) -> None:
    with pytest.raises(InvalidEditError) as caught:
        build()
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and "allowed" in str(caught.value)
    assert len(str(caught.value)) < 2000  # a bad value is quoted by a short prefix, never whole


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (HeadAblation(layer=3, heads=(0,)), "layer"),
        (HeadAblation(layer=0, heads=(4,)), "heads[0]"),
        (HeadAblation(layer=0, heads=(0,), mode="mean", means=torch.zeros(1, 16)), "means"),
        (NeuronAblation(layer=0, neurons=(64,)), "neurons[0]"),
        (DirectionalAblation(direction=torch.ones(16), layers=(0,)), "direction"),
        (DirectionalAblation(direction=torch.ones(32), layers=(7,)), "layers[0]"),
        (Steering(site="blocks.9.hook_resid_pre", vector=torch.ones(32)), "site"),
        (Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(31)), "vector"),
        (LowRank(site="blocks.0.mlp.W_out", U=torch.ones(64, 1), V=torch.ones(32, 1)), "U"),
        (LowRank(site="blocks.0.mlp.W_in", U=torch.ones(64, 1), V=torch.ones(64, 1)), "V"),
    ],
)
def test_edits_that_do_not_fit_the_model_are_rejected(edit, field) -> None:
    with pytest.raises(InvalidEditError) as caught:
        edit.validate_for(DIMS)
    assert caught.value.field == field and "allowed" in str(caught.value)


def test_resid_mid_is_rejected_for_parallel_attention_blocks() -> None:
    parallel = dataclasses.replace(DIMS, parallel_residual=True)
    with pytest.raises(InvalidEditError, match="hook_resid_mid does not exist"):
        Steering(site="blocks.0.hook_resid_mid", vector=torch.ones(32)).validate_for(parallel)


def test_tampered_or_missing_artifacts_are_refused() -> None:
    edit = Steering(site="blocks.0.hook_resid_pre", vector=torch.ones(32))
    blobs = artifact_blobs_by_hash(edit)
    ((digest, blob),) = blobs.items()
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(InvalidEditError, match="does not match its SHA-256"):
        edit_from_json(edit.to_json(), {digest: bytes(tampered)})
    with pytest.raises(InvalidEditError, match="not provided"):
        edit_from_json(edit.to_json(), {})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", "spec"),
        ("[1, 2]", "spec"),
        ('{"kind": "melt", "params": {}, "artifacts": {}}', "kind"),
        ('{"kind": "head_ablation", "params": {"layer": 0, "heads": [0], "colour": 1}, "artifacts": {}}', "colour"),
        ('{"kind": "head_ablation", "params": {"heads": [0]}, "artifacts": {}}', "params"),
        ('{"kind": "head_ablation", "params": {"layer": 0, "heads": [99999999999]}, "artifacts": {}}', "heads[0]"),
    ],
)
def test_malformed_specs_raise_invalid_edit(text, field) -> None:
    with pytest.raises(InvalidEditError) as caught:
        edit_from_json(text, {})
    assert caught.value.field == field


def test_the_package_names_resolve_on_first_use_and_importing_it_loads_no_torch() -> None:
    import editors

    assert set(editors.__all__) == set(editors._HOMES)  # every public name has a home, and only those
    assert all(getattr(editors, name) is not None for name in editors.__all__)
    script = "import sys, editors, editors.errors, editors.choices; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
