"""Steering vectors in the files other tools read and write: repeng's GGUF control vectors (what
llama.cpp's ``--control-vector`` loads) and plain safetensors per-layer dicts (steering-vectors'
``layer_activations``, saved with safetensors).

Both hold one direction per layer, added to that decoder block's *output*: ``direction.{L}`` in
GGUF and key ``"{L}"`` in safetensors are Scalpel's ``Steering`` at ``blocks.{L}.hook_resid_post``
(llama.cpp applies ``direction.L`` after block L, counting from 0, and has no ``direction.0``:
a vector on block 0's output cannot go to GGUF). Round trips are lossless (float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from editors.adapters import ModelDims
from editors.edits import Edit, Steering
from editors.errors import BadSteeringFile, NotExportable
from editors.sites import Site

GGUF_ARCH = "controlvector"


def directions(edits: Sequence[Edit]) -> dict[int, torch.Tensor]:
    """The per-layer vectors of ``edits`` (each layer's edits summed), which must all be plain
    additions at every position on a block's output; otherwise :class:`NotExportable` names them."""
    refusals, found = [], {}
    for index, edit in enumerate(edits):
        site = Site.parse(edit.site) if isinstance(edit, Steering) else None
        if site is None or site.point != "hook_resid_post" or edit.mode != "add" or edit.positions is not None:
            refusals.append(
                f"edit {index} ({edit.kind} at {getattr(edit, 'site', '?')}): a control vector is an addition at "
                "every position of a block's output (steering at blocks.L.hook_resid_post, mode add, all positions)"
            )
            continue
        vector = edit.vector.float() * edit.scale
        found[site.layer] = found[site.layer] + vector if site.layer in found else vector
    if refusals:
        raise NotExportable(refusals)
    if not found:
        raise NotExportable(["the version has no steering edits to export"])
    return found


def as_edits(layers: dict[int, torch.Tensor], dims: ModelDims | tuple[int, int], source: str) -> list[Steering]:
    """One ``Steering`` per layer, checked against the model: a layer it does not have or a
    vector of another width is refused with the expected shape."""
    n_layers, d_model = (dims.n_layers, dims.d_model) if isinstance(dims, ModelDims) else dims
    problems = []
    for layer, vector in sorted(layers.items()):
        if not 0 <= layer < n_layers:
            problems.append(f"layer {layer} is not in the model's 0..{n_layers - 1}")
        elif tuple(vector.shape) != (d_model,):
            shape = tuple(vector.shape)
            problems.append(f"layer {layer}'s vector has shape {shape}; the model needs ({d_model},)")
    if problems:
        raise BadSteeringFile(f"{source} does not fit the model: " + "; ".join(problems))
    return [
        Steering(
            site=f"blocks.{layer}.hook_resid_post",
            vector=vector.float(),
            provenance={"imported_from": source, "layer": layer},
        )
        for layer, vector in sorted(layers.items())
    ]


def write_gguf(layers: dict[int, torch.Tensor], path: Path, model_hint: str) -> None:
    """A repeng / llama.cpp control vector: tensors ``direction.{L}``, ``controlvector.*`` metadata."""
    from gguf import GGUFWriter

    if 0 in layers:
        raise NotExportable(["a control vector has no direction.0: llama.cpp cannot steer block 0's output"])
    writer = GGUFWriter(str(path), GGUF_ARCH)
    writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
    writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(layers))
    for layer, vector in sorted(layers.items()):
        writer.add_tensor(f"direction.{layer}", vector.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(path: Path) -> dict[int, torch.Tensor]:
    """The per-layer directions of a control-vector GGUF file."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise BadSteeringFile(f"{path} is not a GGUF file: {error}") from None
    layers = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction" or not number.isdigit():
            raise BadSteeringFile(f"{path}: tensor {tensor.name!r} is not a control vector's direction.N")
        layers[int(number)] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    if not layers:
        raise BadSteeringFile(f"{path} holds no direction.N tensors")
    return layers


def write_safetensors(layers: dict[int, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Keys ``"{L}"`` → float32 vectors (steering-vectors' ``layer_activations``, decoder block outputs)."""
    tensors = {str(layer): vector.detach().float().cpu().contiguous() for layer, vector in layers.items()}
    save_file(tensors, str(path), metadata={"layer_type": "decoder_block", **metadata})


def read_safetensors(path: Path) -> dict[int, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a malformed file
        raise BadSteeringFile(f"{path} is not a safetensors file: {error}") from None
    if not tensors or not all(key.isdigit() for key in tensors):
        raise BadSteeringFile(f'{path}: keys must be layer numbers ("0", "1", …), got {sorted(tensors)[:5]}')
    return {int(key): value.reshape(-1) for key, value in tensors.items()}


def read_steering_file(path: Path) -> dict[int, torch.Tensor]:
    """A GGUF control vector (``.gguf``) or a safetensors per-layer dict (anything else)."""
    return read_gguf(path) if path.suffix == ".gguf" else read_safetensors(path)
