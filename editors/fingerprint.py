"""SHA-256 of a model's weights (its identity, and the proof that edits never touch them)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def weights_sha256(model: nn.Module) -> str:
    """Hash of every state-dict entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{flat.dtype}|{tuple(flat.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()
