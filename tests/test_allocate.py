"""Allocation: budgets met, the min-max optimum found, baselines never better, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnx_alds.allocate import DENSE, allocate_lrank, allocate_minmax, minimum_cost
from onnx_alds.decompose import candidate_groups
from onnx_alds.errors import BudgetError
from onnx_alds.spectra import error_table, layer_spectra


def random_tables(seed: int, shapes, measure: str = "spectral", max_groups: int = 4, rank_multiple: int = 1):
    rng = np.random.default_rng(seed)
    tables = []
    for f, c, kappa in shapes:
        decay = np.exp(-np.linspace(0, rng.uniform(0.5, 4), c * kappa))
        matrix = rng.standard_normal((f, c * kappa)) * decay
        groups = candidate_groups(c, f, kappa, max_groups)
        spectra = layer_spectra(matrix, groups)
        tables.append(error_table(spectra, f, c * kappa, groups=groups, measure=measure, rank_multiple=rank_multiple))
    return tables


SMALL = [(8, 4, 2), (12, 6, 1), (6, 3, 3)]


def all_choices(table):
    yield DENSE, 0, float(table.dense_size), 0.0
    for option in table.options:
        for rank, size, error in zip(option.ranks, option.sizes, option.errors):
            yield option.groups, int(rank), float(size), float(error)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep", [0.45, 0.6, 0.75])
def test_minmax_equals_brute_force(seed, keep):
    tables = random_tables(seed, SMALL)
    total = sum(t.dense_size for t in tables)
    budget = keep * total
    best = min(
        max(choice[3] for choice in combo)
        for combo in itertools.product(*(list(all_choices(t)) for t in tables))
        if sum(choice[2] for choice in combo) <= budget
    )
    allocation = allocate_minmax(tables, [1.0] * len(tables), budget, seed=seed)
    assert allocation.max_error == pytest.approx(best, abs=1e-12)
    assert allocation.cost <= budget + 1e-9


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7, 0.9])
def test_budget_met_within_one_percent(keep):
    shapes = [(64, 32, 9), (64, 64, 9), (128, 64, 9), (128, 128, 9), (256, 128, 1), (10, 256, 1)]
    tables = random_tables(0, shapes, max_groups=16)
    scales = [1024.0, 1024.0, 256.0, 256.0, 256.0, 1.0]
    total = sum(t.dense_size * s for t, s in zip(tables, scales))
    for method in ("alds", "svd", "l-rank"):
        if method == "l-rank":
            allocation = allocate_lrank(tables, scales, keep * total)
        else:
            allocation = allocate_minmax(tables, scales, keep * total, search_groups=method == "alds")
        assert allocation.cost <= keep * total + 1e-6
        assert allocation.cost >= 0.99 * keep * total, (method, allocation.cost / total)


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7])
def test_alds_max_error_not_above_baselines(keep):
    shapes = [(64, 32, 9), (64, 64, 9), (128, 64, 9), (128, 128, 1)]
    tables = random_tables(4, shapes, max_groups=8)
    g1_tables = random_tables(4, shapes, max_groups=1)
    total = sum(t.dense_size for t in tables)
    scales = [1.0] * len(tables)
    alds = allocate_minmax(tables, scales, keep * total)
    baselines = [allocate_minmax(g1_tables, scales, keep * total, search_groups=False),
                 allocate_lrank(g1_tables, scales, keep * total)]
    uniform = allocate_minmax(random_tables(4, shapes, "rank-fraction", max_groups=1), scales, keep * total,
                              search_groups=False)
    energy = allocate_minmax(random_tables(4, shapes, "frobenius", max_groups=1), scales, keep * total,
                             search_groups=False)
    for baseline in baselines + [uniform, energy]:
        errors = [t.error(c.groups, c.rank) if c.groups else 0.0 for t, c in zip(g1_tables, baseline.choices)]
        assert alds.max_error <= max(errors) + 1e-12


def test_rank_multiple_respected_and_budget_met():
    tables = random_tables(2, [(64, 64, 9), (128, 64, 9), (128, 128, 9)], max_groups=4, rank_multiple=16)
    total = sum(t.dense_size for t in tables)
    allocation = allocate_minmax(tables, [1.0] * 3, 0.5 * total)
    assert all(c.rank % 16 == 0 for c in allocation.choices if c.groups)
    assert allocation.cost <= 0.5 * total


def test_same_seed_same_allocation_and_impossible_budget():
    tables = random_tables(5, [(32, 16, 9), (64, 32, 9), (64, 64, 9)], max_groups=16)
    total = sum(t.dense_size for t in tables)
    first = allocate_minmax(tables, [1.0] * 3, 0.4 * total, seed=7)
    second = allocate_minmax(tables, [1.0] * 3, 0.4 * total, seed=7)
    assert first == second
    floor = minimum_cost(tables, [1.0] * 3)
    with pytest.raises(BudgetError, match="below the cheapest"):
        allocate_minmax(tables, [1.0] * 3, 0.5 * floor)
