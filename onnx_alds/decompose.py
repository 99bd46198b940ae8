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

Per-group whitening sees only the diagonal blocks ``C_i`` of the full second moment ``C``; the
correlation between groups is ignored. :func:`refit_decoder` fixes that for a given encoder ``B``
(block-diagonal) by the least-squares decoder on the full moment:
``A = argmin E‖W x − A B x‖² = W C Bᵀ (B C Bᵀ)⁻¹``. Under sequential calibration the layer sees
``x̃`` (the output of an already-compressed prefix) instead of ``x``; with ``C̃ = E[x̃ x̃ᵀ]`` and
``M = E[x x̃ᵀ]``, ``E‖W x − P x̃‖² = const + E‖W' x̃ − P x̃‖²`` with ``W' = W M C̃⁻¹``
(:func:`sequential_target`), so the factors are the whitened decomposition of ``W'`` in the metric
``C̃`` and the refit becomes ``A = W M Bᵀ (B C̃ Bᵀ)⁻¹``. :func:`bias_shift` gives the mean residual
``E[W x − A B x̃]`` that a bias correction adds to the decoder's bias.

Pointwise-first order (a Conv with a spatial kernel, stride 1): the same grouped decomposition of the
*other* unfolding ``M`` (``f·κ × c``, :func:`pointwise_matrix`): the encoder is a 1x1 conv
``c → g·r`` and the decoder a k×k conv ``g·r → f``. In patch space its encoder is
``B ⊗ I_κ`` (:func:`patch_encoder`), so the refit and bias formulas above apply unchanged; its
whitening uses the per-pixel moment (:func:`pixel_moment`), which ignores the correlation between
neighbouring pixels, and the refit then restores it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

__all__ = [
    "GroupedFactors",
    "fold_weight",
    "split_columns",
    "max_rank",
    "factorized_size",
    "candidate_groups",
    "group_singular_values",
    "grouped_spectra",
    "whitening_factor",
    "decompose",
    "damped_moment",
    "encoder_matrix",
    "sequential_target",
    "refit_decoder",
    "bias_shift",
    "pointwise_matrix",
    "pixel_moment",
    "patch_encoder",
    "pointwise_decoder_to_patch",
    "patch_decoder_to_pointwise",
    "alternate_factors",
    "affine_correction",
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


def candidate_groups(in_channels: int, out_features: int, kernel: int, max_groups: int, *,
                     channel_multiple: int = 1) -> tuple[int, ...]:
    """Divisors ``g ≤ max_groups`` of ``c`` for which rank 1 would shrink the layer.

    ``channel_multiple > 1`` keeps only ``g`` whose channels per group ``c/g`` are a multiple of it
    (``g = 1`` always stays): grouped convolutions reach ONNX Runtime's fast blocked kernels only then.
    """
    cols = in_channels * kernel
    dense = out_features * cols
    return tuple(
        g for g in range(1, min(max_groups, in_channels) + 1)
        if in_channels % g == 0 and factorized_size(out_features, cols, g, 1) < dense
        and (g == 1 or (in_channels // g) % channel_multiple == 0)
    )


def whitening_factor(second_moment: np.ndarray, *, damping: float = 1e-6) -> np.ndarray:
    """A lower-triangular ``L`` with ``L Lᵀ = C + δ·mean(diag C)·I`` (Cholesky of the damped moment).

    The damping keeps rank-deficient statistics (fewer samples than dims, dead inputs) invertible; it
    grows tenfold while the Cholesky fails, and a moment still indefinite after that (rounding noise of
    denormal float32 sums) is replaced by its nearest positive definite matrix (eigenvalues clipped).
    """
    size = second_moment.shape[0]
    moment = np.asarray(second_moment, dtype=np.float64)
    scale = float(np.mean(np.diag(moment))) if size else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    # on the unit scale: inputs of 1e-23 (vanishing activations) have float32 moments of denormals
    damped = _with_diagonal_added(moment / scale, damping)
    for attempt in range(6):
        try:
            return np.sqrt(scale) * np.linalg.cholesky(damped)
        except np.linalg.LinAlgError:
            damped = _with_diagonal_added(damped, damping * 10 ** (attempt + 1))
    # still indefinite (rounding noise above the damping): the nearest positive definite moment
    values, vectors = np.linalg.eigh((damped + damped.T) / 2)
    values = np.maximum(values, damping * max(float(values.max()), 1.0))
    return np.sqrt(scale) * np.linalg.cholesky((vectors * values) @ vectors.T + damping * np.eye(size))


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread (threadpoolctl's limit is process-wide), in the main thread only: set and restored
    from several threads, or while a caller's other threads ran BLAS, OpenBLAS kept the "1" for the whole
    process for good. In other threads eigensolves run at the caller's setting (slower, the same factors up to
    rounding)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _eigh(matrix: np.ndarray, *, consume: bool = False, **options) -> np.ndarray:
    """``scipy.linalg.eigh`` on one BLAS thread: measured 2-3x faster than OpenBLAS's threads for
    the symmetric eigensolvers at every size used here (72 to 1024).

    ``consume``: the caller no longer needs ``matrix``; LAPACK then works in its memory instead of a
    copy (an exactly symmetric C-ordered matrix is its own Fortran-ordered transpose: same result,
    one n×n copy less, 128 MB at n = 4096)."""
    with _one_blas_thread():
        if consume and matrix.flags.c_contiguous and np.array_equal(matrix, matrix.T):
            return scipy.linalg.eigh(matrix.T, check_finite=False, overwrite_a=True, **options)
        return scipy.linalg.eigh(matrix, check_finite=False, **options)


def _gram_side(block: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix of ``block``: ``T Tᵀ`` when it has fewer rows than columns, else ``Tᵀ T``."""
    return block @ block.T if block.shape[0] <= block.shape[1] else block.T @ block


def group_singular_values(matrix: np.ndarray, groups: int,
                          whitening: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """Singular values of every group, shape ``(g, m)`` with ``m = max_rank``, descending per row.

    With ``whitening`` (one factor ``L_i`` per group), the spectra are those of ``W_i L_i``.
    Computed as square roots of the eigenvalues of the smaller Gram matrix (one BLAS product and a
    small symmetric eigensolve, several times faster than an SVD); values below about
    ``1e-8·σ_1`` are rounding noise, far below any error the allocation distinguishes.
    """
    blocks = split_columns(np.asarray(matrix, dtype=np.float64), groups)
    grams = [_gram_side(block if whitening is None else block @ whitening[i]) for i, block in enumerate(blocks)]
    return _spectra_from_grams(grams)


def _spectra_from_grams(grams: Sequence[np.ndarray]) -> np.ndarray:
    values = np.zeros((len(grams), grams[0].shape[0]))
    for i, gram in enumerate(grams):
        eigenvalues = _eigh(gram, eigvals_only=True)
        values[i] = np.sqrt(np.clip(eigenvalues[::-1], 0.0, None))
    return values


def grouped_spectra(matrix: np.ndarray, group_counts: Sequence[int]) -> dict[int, np.ndarray]:
    """:func:`group_singular_values` for several group counts at once, sharing the BLAS work.

    Where a group is wider than tall, its spectrum comes from the ``f × f`` Gram ``W_i W_iᵀ``; the
    Gram of a coarse group is the sum of the Grams of the finer groups it contains, so they are
    computed once, at the finest such ``g``, and summed up for the coarser ones.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    out_features, cols = matrix.shape
    counts = sorted(set(group_counts))
    wide = [g for g in counts if out_features <= cols // g]
    finest = max(wide, default=0)
    fine_grams = [block @ block.T for block in split_columns(matrix, finest)] if finest else []
    spectra = {}
    for g in counts:
        if g in wide and finest % g == 0:
            step = finest // g
            grams = [np.sum(fine_grams[i * step:(i + 1) * step], axis=0) for i in range(g)]
        else:
            grams = [_gram_side(block) for block in split_columns(matrix, g)]
        spectra[g] = _spectra_from_grams(grams)
    return spectra


def _top_vectors(target: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Top ``rank`` singular values and vectors of ``target`` from its smaller Gram matrix.

    Returns ``(σ, vectors, left)``: left singular vectors (``f × r``) when ``left`` is True, right
    ones (``n × r``) otherwise. Signs are deterministic: the largest-magnitude entry of every left
    vector is positive (for right vectors, of the left vector it induces).
    """
    return _top_vectors_induced(target, rank)[:3]


def _top_vectors_induced(target: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, bool, Optional[np.ndarray]]:
    """:func:`_top_vectors` and, for right vectors ``V``, the left ones they induce, ``target @ V``
    (signs applied: the same numbers as ``target @ vectors``, computed once)."""
    left = target.shape[0] <= target.shape[1]
    # the full divide-and-conquer solve is faster here than computing only the top ``rank`` pairs
    eigenvalues, vectors = _eigh(_gram_side(target), driver="evd", consume=True)
    eigenvalues, vectors = eigenvalues[::-1][:rank], vectors[:, ::-1][:, :rank]
    sigma = np.sqrt(np.clip(eigenvalues, 0.0, None))
    induced = vectors if left else target @ vectors
    pivots = _argmax_magnitude(induced)
    signs = np.sign(induced[pivots, np.arange(rank)])
    signs[signs == 0] = 1.0
    if left:
        return sigma, vectors * signs, left, None
    induced *= signs  # exact: a column times ±1
    return sigma, vectors * signs, left, induced


def _argmax_magnitude(values: np.ndarray) -> np.ndarray:
    """``np.argmax(np.abs(values), axis=0)`` (the first index on ties) without a copy of ``|values|``."""
    high, low = np.argmax(values, axis=0), np.argmin(values, axis=0)
    columns = np.arange(values.shape[1])
    top, bottom = values[high, columns], -values[low, columns]
    return np.where(top > bottom, high, np.where(bottom > top, low, np.minimum(high, low)))


def decompose(matrix: np.ndarray, groups: int, rank: int,
              whitening: Optional[Sequence[np.ndarray]] = None) -> GroupedFactors:
    """Rank-``rank`` factors of every group of ``matrix`` (float64 maths, float64 result).

    ``whitening``: optional per-group factors ``L_i`` (see :func:`whitening_factor`); the factors then
    minimize the output error on inputs with second moment ``L_i L_iᵀ`` instead of ``‖W_i − A_i B_i‖``.

    With ``T = W_i L_i`` (or ``W_i``) and its top singular triplets ``(σ, u, v)``: ``A_i = U √Σ`` and
    ``B_i = √Σ⁻¹ Uᵀ W_i`` (which equals ``√Σ Vᵀ L_i⁻¹``), so ``A_i B_i = U Uᵀ W_i`` is the projection
    onto the top left singular space: exact at full rank. Directions with ``σ < 1e-12·σ_1`` carry no
    signal and are zeroed rather than divided by.
    """
    blocks = split_columns(np.asarray(matrix, dtype=np.float64), groups)
    out_features, width = blocks[0].shape
    limit = min(out_features, width)
    if not 1 <= rank <= limit:
        raise ValueError(f"got rank={rank}; rank must be between 1 and min(f, c·κ/g) = {limit}")
    encoders, decoders = [], []
    for i, block in enumerate(blocks):
        target = block if whitening is None else block @ whitening[i]
        sigma, vectors, left, induced = _top_vectors_induced(target, rank)
        alive = sigma > 1e-12 * max(float(sigma[0]), 1e-300)
        root = np.sqrt(sigma)
        inverse_root = np.where(alive, 1.0 / np.where(alive, root, 1.0), 0.0)
        if left:  # vectors = U
            decoder = vectors * np.where(alive, root, 0.0)
            encoder = (vectors * inverse_root).T @ block
        else:  # vectors = V: B = √Σ Vᵀ L⁻¹, A = T V √Σ⁻¹
            encoder = (vectors * np.where(alive, root, 0.0)).T
            if whitening is not None:
                encoder = scipy.linalg.solve_triangular(whitening[i], encoder.T, trans="T", lower=True).T
            decoder = induced  # target @ vectors, scaled in place
            decoder *= inverse_root
        encoders.append(encoder)
        decoders.append(decoder)
    if groups == 1:  # the arrays concatenating would copy
        return GroupedFactors(1, rank, np.ascontiguousarray(encoders[0]), np.ascontiguousarray(decoders[0]))
    return GroupedFactors(groups, rank, np.concatenate(encoders, axis=0), np.concatenate(decoders, axis=1))


def damped_moment(second_moment: np.ndarray, *, damping: float = 1e-6) -> np.ndarray:
    """``C + δ·mean(diag C)·I`` in float64: the same damping :func:`whitening_factor` starts from."""
    return _with_diagonal_added(second_moment, _damping_shift(second_moment, damping))


def _with_diagonal_added(matrix: np.ndarray, value: float) -> np.ndarray:
    """A float64 copy of the square ``matrix`` plus ``value·I``, without building ``I`` (an ``n × n`` array:
    170 MB at ``n = 4608``, allocated per call)."""
    result = np.array(matrix, dtype=np.float64)
    result.flat[::result.shape[0] + 1] += value
    return result


def _damping_shift(second_moment: np.ndarray, damping: float) -> float:
    """``δ·mean(diag C)`` (``δ`` when that is zero or not finite): what :func:`damped_moment` adds."""
    size = second_moment.shape[0]
    scale = float(np.mean(np.diag(second_moment))) if size else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0
    return damping * scale


def encoder_matrix(factors: GroupedFactors) -> np.ndarray:
    """The block-diagonal encoder ``B`` of shape ``(g·r, c·κ)``: group ``i``'s rows act on its columns only."""
    g, r = factors.groups, factors.rank
    width = factors.encoder.shape[1]
    full = np.zeros((g * r, g * width))
    for i in range(g):
        full[i * r:(i + 1) * r, i * width:(i + 1) * width] = factors.encoder[i * r:(i + 1) * r]
    return full


def sequential_target(matrix: np.ndarray, second_moment: np.ndarray, cross: np.ndarray, *,
                      damping: float = 1e-6) -> np.ndarray:
    """``W' = (W M + λW)(C̃ + λ)⁻¹`` (``λ`` the damping of :func:`damped_moment`): the matrix whose whitened
    decomposition in the metric ``C̃`` minimizes ``E‖W x − P x̃‖²`` (``M = E[x x̃ᵀ]``, ``C̃ = E[x̃ x̃ᵀ]``).
    The damping pulls toward ``W`` itself, not toward zero: where the calibration inputs never reach (a
    moment of zeros), ``W`` is kept, as the data-free decomposition would."""
    moment = damped_moment(second_moment, damping=damping)
    weight = np.asarray(matrix, dtype=np.float64)
    rhs = np.asarray(cross, dtype=np.float64).T @ weight.T + _damping_shift(second_moment, damping) * weight.T
    try:
        solved = scipy.linalg.cho_solve(scipy.linalg.cho_factor(moment, lower=True, check_finite=False), rhs,
                                        check_finite=False)
    except np.linalg.LinAlgError:
        solved = scipy.linalg.lstsq(moment, rhs, check_finite=False)[0]
    return solved.T


def _symmetric_solve_right(rhs: np.ndarray, gram: np.ndarray, *, cutoff: float = 1e-12) -> np.ndarray:
    """``rhs · gram⁺`` for a symmetric positive semi-definite ``gram`` (eigenvalues below
    ``cutoff·λ_max`` are treated as zero: directions the data never excites get no weight)."""
    values, vectors = _eigh(gram)
    top = float(values[-1]) if values.size else 0.0
    keep = values > cutoff * max(top, 0.0)
    inverse = np.zeros_like(values)
    inverse[keep] = 1.0 / values[keep]
    return ((rhs @ vectors) * inverse) @ vectors.T


def refit_decoder(matrix: np.ndarray, factors: GroupedFactors, second_moment: np.ndarray,
                  cross: Optional[np.ndarray] = None, *, damping: float = 1e-6,
                  encoder: Optional[np.ndarray] = None) -> GroupedFactors:
    """The same encoder with the least-squares decoder on the full input moment.

    ``A = W M Bᵀ (B C Bᵀ)⁻¹`` with ``B`` the block-diagonal encoder, ``C`` the (damped) second moment of
    what the layer sees and ``M = E[x x̃ᵀ]`` (``M = C`` when ``cross`` is None, i.e. the layer sees the
    original model's inputs; damped as ``C`` is, so a moment of zeros gives the data-free projection).
    This minimizes ``E‖W x − A B x̃‖²`` over ``A`` given ``B``, so it never increases that error; when
    ``W = A₀ B`` exactly (full rank), it returns ``A₀``'s product exactly. The solve is a pseudo-inverse
    on the eigenvalues of ``B C Bᵀ`` (rank-deficient encoders and data).
    ``encoder``: the encoder in patch space when it is not the block-diagonal one (pointwise-first:
    :func:`patch_encoder`); the returned decoder is then in patch space too (``f × g·r·κ``).
    """
    weight = np.asarray(matrix, dtype=np.float64)
    moment = damped_moment(second_moment, damping=damping)
    full = encoder_matrix(factors) if encoder is None else encoder
    # the damping on both sides (M + λ, C + λ) pulls toward W's own product where the data never reaches
    mixed = moment if cross is None else _with_diagonal_added(cross, _damping_shift(second_moment, damping))
    rhs = weight @ (mixed @ full.T)  # W M Bᵀ, (f, g·r)
    gram = full @ moment @ full.T
    gram = 0.5 * (gram + gram.T)
    decoder = _symmetric_solve_right(rhs, gram)
    return GroupedFactors(factors.groups, factors.rank, factors.encoder, decoder)


def bias_shift(matrix: np.ndarray, factors: GroupedFactors, mean: np.ndarray,
               reference_mean: Optional[np.ndarray] = None, *, encoder: Optional[np.ndarray] = None,
               decoder: Optional[np.ndarray] = None) -> np.ndarray:
    """``E[W x − A B x̃] = W μ − A B μ̃`` (``μ = E[x]``, ``μ̃ = E[x̃]``; ``μ = μ̃`` without a reference).

    For a Conv, ``μ`` is the mean patch over samples and positions, so this is the per-output-channel
    mean error averaged over positions; adding it to the decoder's bias zeroes the mean output error
    on the calibration data. ``encoder``/``decoder``: the pair in patch space when it is not the
    factors' own (pointwise-first).
    """
    seen = np.asarray(mean, dtype=np.float64)
    original = seen if reference_mean is None else np.asarray(reference_mean, dtype=np.float64)
    full = encoder_matrix(factors) if encoder is None else encoder
    approx = (factors.decoder if decoder is None else decoder) @ (full @ seen)
    weight = np.asarray(matrix, dtype=np.float64)
    return without_rounding(weight @ original - approx, weight, original)


def without_rounding(shift: np.ndarray, matrix: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``shift`` (length ``f``) with the channels at float32 rounding level set to 0: below
    ``16 ε₃₂ (|W| |μ|)``, the rounding of ``W μ`` summed in float32, the shift cannot change the layer's
    float32 output on the calibration data, and it is not a mean error but rounding (calibration inputs of
    ~1e15 and an exactly low-rank weight gave a bias of 6.5e5 that dominated unit-scale inputs)."""
    scale = np.abs(np.asarray(matrix, dtype=np.float64)) @ np.abs(np.asarray(mean, dtype=np.float64))
    return np.where(np.abs(shift) <= 16 * np.finfo(np.float32).eps * scale, 0.0, shift)


def pointwise_matrix(weight: np.ndarray) -> np.ndarray:
    """The ``f·κ × c`` unfolding of a Conv weight ``(f, c, k1, …)``: row ``o·κ + k``, column ``c``."""
    f, c = weight.shape[:2]
    return np.moveaxis(np.asarray(weight), 1, -1).reshape(f * int(np.prod(weight.shape[2:])), c)


def pixel_moment(second_moment: np.ndarray, kernel: int) -> np.ndarray:
    """The ``c × c`` second moment of one input pixel: the mean of the ``κ`` diagonal blocks of a
    patch moment whose index is ``channel·κ + position``."""
    size = second_moment.shape[0] // kernel
    blocks = np.asarray(second_moment, dtype=np.float64).reshape(size, kernel, size, kernel)
    return np.einsum("akbk->ab", blocks) / kernel


def patch_encoder(factors: GroupedFactors, kernel: int) -> np.ndarray:
    """A pointwise-first encoder in patch space, ``B ⊗ I_κ`` (``g·r·κ × c·κ``)."""
    return np.kron(encoder_matrix(factors), np.eye(kernel))


def pointwise_decoder_to_patch(decoder: np.ndarray, kernel: int) -> np.ndarray:
    """A pointwise-first decoder ``(f·κ × g·r)`` as the patch-space matrix ``f × g·r·κ``."""
    rows, width = decoder.shape
    return decoder.reshape(rows // kernel, kernel, width).transpose(0, 2, 1).reshape(rows // kernel, width * kernel)


def patch_decoder_to_pointwise(decoder: np.ndarray, kernel: int) -> np.ndarray:
    """Inverse of :func:`pointwise_decoder_to_patch`."""
    f, cols = decoder.shape
    return decoder.reshape(f, cols // kernel, kernel).transpose(0, 2, 1).reshape(f * kernel, cols // kernel)


def alternate_factors(matrix: np.ndarray, factors: GroupedFactors, second_moment: np.ndarray,
                      cross: Optional[np.ndarray] = None, *, rounds: int = 1, damping: float = 1e-6) -> GroupedFactors:
    """Both-factor compensation: ``rounds`` of alternating least squares of the encoder and the decoder.

    Minimizes ``E‖W x − A B x̃‖² = tr(A B C̃ Bᵀ Aᵀ) − 2 tr(A B Mᵀ Wᵀ) + const`` (``C̃ = E[x̃ x̃ᵀ]`` damped,
    ``M = E[x x̃ᵀ]``, ``M = C̃`` when ``cross`` is None), seeded by ``factors`` (the whitened SVD, refit
    or not). One round: every group's encoder block ``B_i`` in turn (Gauss–Seidel over the groups of
    the block-diagonal encoder) solves ``A_iᵀA_i B_i C̃_ii = A_iᵀ(W M − Σ_{j≠i} A_j B_j C̃_j·)_{·i}``, then the
    decoder is refit (:func:`refit_decoder`). Each step minimizes the objective over its block, so it
    never increases (on the calibration statistics). For ``g = 1`` without ``cross`` the whitened SVD is
    already optimal and nothing changes; the gain is for ``g > 1`` (blocks coupled by ``C̃``) and under
    sequential calibration. Source: the alternating compensation of AdaSVD / SVD-LLM's parameter update,
    written for grouped factors. Spatial-first (patch-space) factors only.
    """
    weight = np.asarray(matrix, dtype=np.float64)
    moment = damped_moment(second_moment, damping=damping)
    target = weight @ (moment if cross is None else np.asarray(cross, dtype=np.float64))  # W M, f × d
    g, r = factors.groups, factors.rank
    width = moment.shape[0] // g
    encoder = np.array(factors.encoder, dtype=np.float64)
    for _ in range(max(0, int(rounds))):
        decoder = np.asarray(factors.decoder, dtype=np.float64)
        product = decoder @ encoder_matrix(GroupedFactors(g, r, encoder, decoder)) @ moment  # A B C̃, f × d
        for i in range(g):
            rows, cols = slice(i * r, (i + 1) * r), slice(i * width, (i + 1) * width)
            a_i = decoder[:, rows]
            block = moment[cols, cols]
            own = a_i @ encoder[rows] @ block
            rhs = a_i.T @ (target[:, cols] - (product[:, cols] - own))  # r × width
            gram = a_i.T @ a_i
            left = _symmetric_solve_right(rhs.T, gram).T  # (AᵢᵀAᵢ)⁺ rhs
            try:
                new = scipy.linalg.cho_solve(scipy.linalg.cho_factor(block, lower=True, check_finite=False),
                                             left.T, check_finite=False).T
            except np.linalg.LinAlgError:
                new = scipy.linalg.lstsq(block, left.T, check_finite=False)[0].T
            delta = new - encoder[rows]
            product += a_i @ delta @ moment[cols, :]
            encoder[rows] = new
        factors = refit_decoder(weight, GroupedFactors(g, r, encoder, decoder), second_moment, cross, damping=damping)
        encoder = np.array(factors.encoder, dtype=np.float64)
    return factors


AFFINE_SCALE_LIMITS = (0.5, 2.0)  # a channel's variance ratio outside this is clipped (a guard, not a fit)


def affine_correction(matrix: np.ndarray, product: np.ndarray, reference_moment: np.ndarray,
                      reference_mean: np.ndarray, moment: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel scale ``a`` and shift ``s`` (each length ``f``) so that ``a·(P x̃) + s`` has the
    mean and variance of ``W x`` on the calibration statistics, channel by channel.

    ``matrix`` ``W`` and ``product`` ``P`` (the factor pair's patch-space matrix) are ``f × d``;
    ``reference_moment``/``reference_mean``: ``E[x xᵀ]``, ``E[x]`` of the original model's layer input;
    ``moment``/``mean`` those of what the compressed layer sees (the same without sequential
    calibration). Means ``m = W μ``, ``m̂ = P μ̃``; variances ``diag(W C Wᵀ) − m²`` and
    ``diag(P C̃ Pᵀ) − m̂²`` (for a Conv, over samples and positions). ``a = sqrt(var / var̂)`` clipped to
    :data:`AFFINE_SCALE_LIMITS` (1 where a variance is not positive), ``s = m − a·m̂``; folded into the
    decoder as its rows times ``a`` and ``s`` added to its bias. This is the batch-norm re-estimation
    that a model exported with folded batch norm cannot do (the per-channel statistics correction of
    post-training compression, e.g. Nagel et al. 2019's bias correction extended to the variance).
    """
    weight = np.asarray(matrix, dtype=np.float64)
    approx = np.asarray(product, dtype=np.float64)
    m_ref = weight @ np.asarray(reference_mean, dtype=np.float64)
    m_new = approx @ np.asarray(mean, dtype=np.float64)
    var_ref = np.einsum("od,od->o", weight @ np.asarray(reference_moment, dtype=np.float64), weight) - m_ref ** 2
    var_new = np.einsum("od,od->o", approx @ np.asarray(moment, dtype=np.float64), approx) - m_new ** 2
    valid = (var_ref > 0) & (var_new > 1e-12 * max(float(np.max(var_ref, initial=0.0)), 1e-300))
    scale = np.ones_like(m_ref)
    scale[valid] = np.sqrt(var_ref[valid] / var_new[valid])
    scale = np.clip(scale, *AFFINE_SCALE_LIMITS)
    return scale, without_rounding(m_ref - scale * m_new, weight, np.asarray(reference_mean, dtype=np.float64))
