"""Grouped low-rank decomposition of one folded weight matrix (numpy/scipy only, no ONNX).

A layer's weight is folded to ``W`` of shape ``f × (c·κ)`` (output features × input channels ·
kernel positions). Its input channels are split into ``g`` equal consecutive groups,
``W = [W_1 … W_g]`` with ``W_i`` of shape ``f × (c/g·κ)``, and every group is approximated at the
same rank ``r`` by its truncated SVD ``W_i ≈ A_i B_i`` with ``A_i = U_i[:, :r] √Σ_i`` and
``B_i = √Σ_i V_i[:, :r]ᵀ``. The layer then computes ``y = Σ_i A_i (B_i x_i)``: an *encoder*
(block-diagonal ``B``, ``c·κ → g·r``) followed by a *decoder* (``A = [A_1 … A_g]``, ``g·r → f``).

Data-aware variant: given the second moment ``C_i = E[x_i x_iᵀ]`` of what group ``i`` multiplies,
the rank-``r`` factors minimizing ``E‖(W_i − A_i B_i) x_i‖²`` come from the SVD of ``W_i L_i``
(``C_i = L_i L_iᵀ``), mapped back with ``B_i ← B_i L_i⁻¹``. At full rank both reproduce ``W_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import scipy.linalg

__all__ = [
    "GroupedFactors",
    "fold_weight",
    "split_columns",
    "max_rank",
    "factorized_size",
    "candidate_groups",
    "group_singular_values",
    "whitening_factor",
    "decompose",
]


@dataclass(frozen=True)
class GroupedFactors:
    """Factors of one layer: ``W ≈ decoder @ blockdiag(encoder[i*r:(i+1)*r] for each group)``.

    ``encoder`` has shape ``(g·r, c/g·κ)`` (group ``i`` owns rows ``i·r … (i+1)·r − 1``);
    ``decoder`` has shape ``(f, g·r)``.
    """

    groups: int
    rank: int
    encoder: np.ndarray
    decoder: np.ndarray

    def dense(self) -> np.ndarray:
        """The ``f × (c·κ)`` matrix the factors represent."""
        blocks = []
        for i in range(self.groups):
            rows = slice(i * self.rank, (i + 1) * self.rank)
            blocks.append(self.decoder[:, rows] @ self.encoder[rows])
        return np.concatenate(blocks, axis=1)


def fold_weight(weight: np.ndarray) -> np.ndarray:
    """Fold a Conv weight ``(f, c, k1, …)`` to ``f × (c·κ)``; a 2-D ``f × c`` matrix is returned as is."""
    if weight.ndim < 2:
        raise ValueError(f"got a weight of rank {weight.ndim}; a layer weight has rank >= 2")
    return weight.reshape(weight.shape[0], -1)


def split_columns(matrix: np.ndarray, groups: int) -> list[np.ndarray]:
    """Split the columns of a folded weight into ``groups`` equal consecutive blocks."""
    cols = matrix.shape[1]
    if groups < 1 or cols % groups:
        raise ValueError(f"got groups={groups}; groups must be >= 1 and divide the {cols} folded columns")
    width = cols // groups
    return [matrix[:, i * width:(i + 1) * width] for i in range(groups)]


def max_rank(out_features: int, cols: int, groups: int) -> int:
    """Largest meaningful rank per group: ``min(f, c·κ/g)``."""
    return min(out_features, cols // groups)


def factorized_size(out_features: int, cols: int, groups: int, rank: int) -> int:
    """Weights kept by the factorization: ``r·(g·f + c·κ)``."""
    return rank * (groups * out_features + cols)


def candidate_groups(in_channels: int, out_features: int, kernel: int, max_groups: int) -> tuple[int, ...]:
    """Divisors ``g ≤ max_groups`` of ``c`` for which rank 1 would shrink the layer."""
    cols = in_channels * kernel
    dense = out_features * cols
    return tuple(
        g for g in range(1, min(max_groups, in_channels) + 1)
        if in_channels % g == 0 and factorized_size(out_features, cols, g, 1) < dense
    )


def whitening_factor(second_moment: np.ndarray, *, damping: float = 1e-6) -> np.ndarray:
    """A lower-triangular ``L`` with ``L Lᵀ = C + δ·mean(diag C)·I`` (Cholesky of the damped moment).

    The damping keeps rank-deficient statistics (fewer samples than dims, dead inputs) invertible.
    """
    size = second_moment.shape[0]
    scale = float(np.mean(np.diag(second_moment))) if size else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    damped = np.asarray(second_moment, dtype=np.float64) + (damping * scale) * np.eye(size)
    for attempt in range(6):
        try:
            return np.linalg.cholesky(damped)
        except np.linalg.LinAlgError:
            damped = damped + (damping * scale * 10 ** (attempt + 1)) * np.eye(size)
    raise np.linalg.LinAlgError("input second moment is not positive definite even after damping")


def group_singular_values(matrix: np.ndarray, groups: int,
                          whitening: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Singular values of every group, shape ``(g, m)`` with ``m = max_rank``, descending per row.

    With ``whitening`` (one factor ``L_i`` per group), the spectra are those of ``W_i L_i``.
    """
    blocks = split_columns(matrix, groups)
    out_features, width = blocks[0].shape
    values = np.zeros((groups, min(out_features, width)))
    for i, block in enumerate(blocks):
        target = block if whitening is None else block @ whitening[i]
        values[i] = scipy.linalg.svd(target, compute_uv=False, check_finite=False, lapack_driver="gesdd")
    return values


def _svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD with deterministic signs: the largest-magnitude entry of every left vector is positive."""
    try:
        u, s, vt = scipy.linalg.svd(matrix, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:
        u, s, vt = scipy.linalg.svd(matrix, full_matrices=False, check_finite=False, lapack_driver="gesvd")
    pivots = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[pivots, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs, s, vt * signs[:, None]


def decompose(matrix: np.ndarray, groups: int, rank: int,
              whitening: Optional[Sequence[np.ndarray]] = None) -> GroupedFactors:
    """Rank-``rank`` factors of every group of ``matrix`` (float64 maths, float64 result).

    ``whitening``: optional per-group factors ``L_i`` (see :func:`whitening_factor`); the factors then
    minimize the output error on inputs with second moment ``L_i L_iᵀ`` instead of ``‖W_i − A_i B_i‖``.
    """
    blocks = split_columns(np.asarray(matrix, dtype=np.float64), groups)
    out_features, width = blocks[0].shape
    limit = min(out_features, width)
    if not 1 <= rank <= limit:
        raise ValueError(f"got rank={rank}; rank must be between 1 and min(f, c·κ/g) = {limit}")
    encoders, decoders = [], []
    for i, block in enumerate(blocks):
        target = block if whitening is None else block @ whitening[i]
        u, s, vt = _svd(target)
        root = np.sqrt(s[:rank])
        encoder = root[:, None] * vt[:rank]
        if whitening is not None:
            # B_i = √Σ Vᵀ L⁻¹  ⇔  B_i L = √Σ Vᵀ  ⇔  Lᵀ B_iᵀ = V √Σ
            encoder = scipy.linalg.solve_triangular(whitening[i], encoder.T, trans="T", lower=True).T
        encoders.append(encoder)
        decoders.append(u[:, :rank] * root)
    return GroupedFactors(groups, rank, np.concatenate(encoders, axis=0), np.concatenate(decoders, axis=1))
