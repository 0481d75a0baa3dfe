"""One tensor ⇄ one safetensors blob: the unit the registry stores and addresses by SHA-256."""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save

from editors.errors import InvalidEditError

_BLOB_KEY = "tensor"


def tensor_to_blob(tensor: torch.Tensor) -> bytes:
    """The safetensors serialisation of one tensor (deterministic for equal tensors)."""
    return save({_BLOB_KEY: tensor.detach().cpu().contiguous()})


def blob_to_tensor(field: str, blob: bytes) -> torch.Tensor:
    try:
        tensors = load_bytes(bytes(blob))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise InvalidEditError(field, f"is not a valid safetensors blob: {exc}", "a blob from tensor_to_blob") from None
    if set(tensors) != {_BLOB_KEY}:
        raise InvalidEditError(field, f"blob holds {sorted(tensors)}", f"exactly one tensor named {_BLOB_KEY!r}")
    return tensors[_BLOB_KEY]
