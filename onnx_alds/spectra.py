"""Error tables: for every layer, candidate groups ``g`` and rank ``r``, the size and error of the
factorization (numpy/scipy only).

One SVD per layer and candidate ``g`` (singular values only); everything after is table look-ups.
Error measures (``ε`` for ``g`` groups at rank ``r``, ``σ_{i,j}`` the ``j``-th singular value of
group ``i``, ``σ_1(W)`` the spectral norm of the whole folded matrix):

- ``spectral`` (default, the ALDS reference code): ``max_i σ_{i,r+1} / σ_1(W)``;
- ``spectral-sqrt-g``: the same times ``√g`` (the paper's bound on the operator-norm error);
- ``frobenius``: ``sqrt(Σ_i Σ_{j>r} σ_{i,j}² / ‖W‖_F²)``, the relative Frobenius residual;
- ``rank-fraction``: ``1 − r/min(f, c·κ)`` (``g = 1`` only): min-max of it is the uniform-rank baseline.

With whitened spectra (data-aware), the same formulas measure the relative output error on the
calibration inputs instead of the weight error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from .decompose import factorized_size, group_singular_values, grouped_spectra, max_rank

ERROR_MEASURES = ("spectral", "spectral-sqrt-g", "frobenius", "rank-fraction")


@dataclass(frozen=True)
class GroupOption:
    """Every allowed rank of one group count, ascending, with its size (weights) and error."""

    groups: int
    ranks: np.ndarray
    sizes: np.ndarray
    errors: np.ndarray
    residuals: np.ndarray  # absolute discarded energy Σ_{i, j>r} σ_ij² (used by l-rank)
    order: Optional[str] = None  # set where one layer's table holds both orders (``--order auto``)


@dataclass(frozen=True)
class ErrorTable:
    """All factorizations of one layer that would shrink it; the dense layer (error 0) is implicit."""

    out_features: int
    cols: int
    dense_size: int
    options: tuple[GroupOption, ...]

    def option(self, groups: int) -> GroupOption:
        for candidate in self.options:
            if candidate.groups == groups:
                return candidate
        raise KeyError(f"no option with groups={groups}")

    def error(self, groups: int, rank: int) -> float:
        """Error of ``(groups, rank)``; ``groups == 0`` means dense (error 0)."""
        if groups == 0:
            return 0.0
        option = self.option(groups)
        index = int(np.searchsorted(option.ranks, rank))
        if index >= len(option.ranks) or option.ranks[index] != rank:
            raise KeyError(f"rank {rank} is not an allowed rank for groups={groups}")
        return float(option.errors[index])


def layer_spectra(matrix: np.ndarray, groups: Sequence[int],
                  whitening: Optional[Mapping[int, Sequence[np.ndarray]]] = None) -> dict[int, np.ndarray]:
    """Singular values per group for every candidate ``g`` (and always for ``g = 1``, the normalizer)."""
    counts = sorted(set(groups) | {1})
    if whitening is None:
        return grouped_spectra(matrix, counts)
    return {g: group_singular_values(matrix, g, whitening[g]) for g in counts}


def allowed_ranks(limit: int, rank_multiple: int) -> np.ndarray:
    """Ranks ``1 … limit``, or the multiples of ``rank_multiple`` up to ``limit``."""
    if rank_multiple < 1:
        raise ValueError(f"got rank_multiple={rank_multiple}; it must be >= 1")
    return np.arange(rank_multiple, limit + 1, rank_multiple, dtype=np.int64)


def error_table(spectra: Mapping[int, np.ndarray], out_features: int, cols: int, *,
                groups: Sequence[int], measure: str = "spectral", rank_multiple: int = 1) -> ErrorTable:
    """Build the table of one layer from its spectra (see the module docstring for ``measure``)."""
    if measure not in ERROR_MEASURES:
        raise ValueError(f"got measure='{measure}'; choose one of {', '.join(ERROR_MEASURES)}")
    dense = out_features * cols
    full = spectra[1]
    spectral_norm = float(full[0, 0]) if full.size else 0.0
    total_energy = float(np.sum(full ** 2))
    options = []
    for g in sorted(groups):
        if measure == "rank-fraction" and g != 1:
            continue
        values = spectra[g]
        limit = max_rank(out_features, cols, g)
        ranks = allowed_ranks(limit, rank_multiple)
        sizes = np.array([factorized_size(out_features, cols, g, int(r)) for r in ranks], dtype=np.int64)
        keep = sizes < dense
        ranks, sizes = ranks[keep], sizes[keep]
        if len(ranks) == 0:
            continue
        padded = np.concatenate([values, np.zeros((g, 1))], axis=1)  # σ_{i, limit+1} = 0
        energy = values ** 2
        # tail[i, r] = Σ_{j ≥ r} σ_ij² (0-based j), i.e. the energy discarded at rank r
        tail = np.concatenate([np.cumsum(energy[:, ::-1], axis=1)[:, ::-1], np.zeros((g, 1))], axis=1)
        residuals = tail[:, ranks].sum(axis=0)
        if measure in ("spectral", "spectral-sqrt-g"):
            errors = padded[:, ranks].max(axis=0) / spectral_norm if spectral_norm > 0 else np.zeros(len(ranks))
            if measure == "spectral-sqrt-g":
                errors = errors * np.sqrt(g)
        elif measure == "frobenius":
            errors = np.sqrt(residuals / total_energy) if total_energy > 0 else np.zeros(len(ranks))
        else:
            errors = 1.0 - ranks / float(limit)
        # an error table must not increase with rank (exact for these measures; guard rounding)
        errors = np.minimum.accumulate(np.asarray(errors, dtype=np.float64))
        options.append(GroupOption(g, ranks, sizes, errors, residuals))
    return ErrorTable(out_features, cols, dense, tuple(options))
