"""The null-space formulation of a fact edit's closed-form update (AlphaEdit, Fang et al. 2025):
project the update onto the directions the keys to preserve barely use, so that their outputs are
unchanged by construction rather than traded against the new facts by a weight.

The keys to preserve are the model's own: the key second moment ``C = E[k kᵀ]`` over its corpus
(the same matrix ROME and MEMIT already use). Its eigenvectors whose eigenvalues are below
``threshold`` × the largest span the null space; ``P`` projects onto it. An update
``ΔW = R Vᵀ`` with ``V`` in the range of ``P`` leaves every preserved key's output alone
(``ΔW k₀ = R Vᵀ P k₀ ≈ 0``). The derivation is ours (a symmetric form of the paper's): minimise
``‖ΔW K − R‖² + ‖ΔW Kₚ‖² + α‖ΔW‖²`` over ``ΔW = X P``, whose solution is

    V = (P (K Kᵀ + Kₚ Kₚᵀ) P + α I)⁻¹ P K

with ``K`` the keys to write, ``Kₚ`` the keys of earlier edits to keep, and ``α`` a ridge relative
to the mean key energy per dimension (``trace(C) / d``).
"""

from __future__ import annotations

import torch

from editors.errors import InvalidEditError
from editors.validation import check_scale


def check_null_space(hparams: object) -> None:
    """``null_space`` in [0, 1) (0: off) and a non-negative ``null_space_ridge``."""
    if not 0 <= check_scale("null_space", hparams.null_space) < 1:
        raise InvalidEditError("null_space", f"{hparams.null_space!r} is outside [0, 1)", "0 (off) or e.g. 1e-4")
    if check_scale("null_space_ridge", hparams.null_space_ridge) <= 0:
        raise InvalidEditError("null_space_ridge", f"{hparams.null_space_ridge!r} is not positive", "e.g. 1.0")


def null_space_projector(covariance: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[d, d]`` projector (float64) onto the eigenvectors of ``covariance`` whose eigenvalues are
    below ``threshold`` × its largest eigenvalue."""
    matrix = covariance.double().cpu()
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    kept = vectors[:, values < threshold * values.max()]
    if kept.shape[1] == 0:
        raise InvalidEditError(
            "null_space", f"{threshold:g} leaves no null space: every key direction is in use", "a larger threshold"
        )
    return kept @ kept.T


def projected_keys(
    projector: torch.Tensor,
    covariance: torch.Tensor,
    keys: torch.Tensor,
    ridge: float,
    kept_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """``V = (P (K Kᵀ + Kₚ Kₚᵀ) P + α I)⁻¹ P K`` (float64, ``[d, columns]``): ``keys`` and
    ``kept_keys`` are ``[d, columns]``; ``α = ridge × trace(C) / d``."""
    d = projector.shape[0]
    gram = keys @ keys.T
    if kept_keys is not None and kept_keys.shape[1]:
        gram = gram + kept_keys @ kept_keys.T
    alpha = ridge * float(covariance.double().diagonal().mean())
    system = projector @ gram @ projector + alpha * torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(system, projector @ keys)
