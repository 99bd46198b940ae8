"""Choose the groups and rank of every layer under one global budget (numpy only, no ONNX).

The ALDS problem: minimize ``max_ℓ ε_ℓ(g_ℓ, r_ℓ)`` subject to ``Σ_ℓ cost_ℓ(g_ℓ, r_ℓ) ≤ budget``,
where ``cost`` is weights (``--keep-params``) or weights × output positions (``--keep-flops``).

- **Global step** (groups fixed): for a threshold ``ε`` every layer takes its cheapest option with
  error ``≤ ε``; total cost falls as ``ε`` grows, so a bisection over the sorted table values finds
  the smallest feasible ``ε`` exactly.
- **Local step** (a layer's budget fixed): each ``g`` gets the largest rank that fits; keep the ``g``
  with the smallest error.
- **Alternation** from several seeded starts (``g ≈ 3, 5, 7, 9``, then random divisors), until the
  max error stops improving. One more start solves the min-max *jointly*: for a fixed threshold the
  problem separates per layer, so the global step over every ``(g, r)`` at once is the exact
  optimum. The alternation then only decides how the non-bottleneck layers spend their budget.
- **Fill**: budget left over after the min-max (options are discrete) goes, rank step by rank step,
  to the layer with the largest current error, so the achieved ratio lands at the target.

A layer's choice ``groups == 0`` means "left dense" (error 0, full cost).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import BudgetError
from .spectra import ErrorTable, GroupOption

DENSE = 0


@dataclass(frozen=True)
class LayerChoice:
    """The decision for one layer: ``groups == 0`` keeps it dense."""

    groups: int
    rank: int
    cost: float
    error: float
    order: Optional[str] = None  # the option's order where a table holds both (``--order auto``)


@dataclass(frozen=True)
class LayerCosts:
    """One layer's costs given per option (measured latency) instead of weights × a scale: ``dense``,
    and for every option of its :class:`ErrorTable`, the cost of each of its ranks."""

    dense: float
    options: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Allocation:
    """The decisions for every layer and how they were found."""

    choices: tuple[LayerChoice, ...]
    budget: float
    cost: float
    max_error: float
    search: str  # which start or rule produced it

    @property
    def sum_error(self) -> float:
        return float(sum(choice.error for choice in self.choices))


@dataclass(frozen=True)
class _Layer:
    """One layer's table with costs scaled to the budget's unit."""

    dense_cost: float
    options: tuple[GroupOption, ...]
    costs: tuple[np.ndarray, ...]

    def group_index(self, groups: int, order: Optional[str] = None) -> int:
        for index, option in enumerate(self.options):
            if option.groups == groups and option.order == order:
                return index
        raise KeyError(groups)


def _prepare(tables: Sequence[ErrorTable], scales: Sequence[float],
             costs: Optional[Sequence[LayerCosts]] = None) -> list[_Layer]:
    if costs is not None:
        return [_costed(table, layer_costs) for table, layer_costs in zip(tables, costs)]
    return [
        _Layer(float(table.dense_size) * scale, table.options,
               tuple(option.sizes.astype(np.float64) * scale for option in table.options))
        for table, scale in zip(tables, scales)
    ]


def _costed(table: ErrorTable, costs: LayerCosts) -> _Layer:
    """A layer whose options carry their own costs: a rank that costs as much as the dense layer or
    more is dropped (the plan never makes a layer slower), and so is a rank that costs as much as a
    higher rank or more (that one has no larger error), so that costs rise with rank as the steps need."""
    from dataclasses import replace

    options, option_costs = [], []
    for option, cost in zip(table.options, costs.options):
        cost = np.asarray(cost, dtype=np.float64)
        cheaper_above = np.append(np.minimum.accumulate(cost[::-1])[::-1][1:], np.inf)[:len(cost)]  # min(cost[i+1:])
        keep = (cost < costs.dense) & (cost < cheaper_above) & np.isfinite(cost)
        if not keep.any():
            continue
        options.append(replace(option, ranks=option.ranks[keep], sizes=option.sizes[keep],
                               errors=option.errors[keep], residuals=option.residuals[keep]))
        option_costs.append(cost[keep])
    return _Layer(float(costs.dense), tuple(options), tuple(option_costs))


def _floor(layers: Sequence[_Layer]) -> float:
    """Total cost with every layer at its cheapest option (dense where nothing is cheaper)."""
    return sum(min([costs[0] for costs in layer.costs if len(costs)] + [layer.dense_cost]) for layer in layers)


def minimum_cost(tables: Sequence[ErrorTable], scales: Sequence[float],
                 costs: Optional[Sequence[LayerCosts]] = None) -> float:
    """The smallest total cost any choice reaches (every layer at its cheapest option)."""
    return _floor(_prepare(tables, scales, costs))


def _cheapest_within(layer: _Layer, option_index: int, threshold: float) -> tuple[float, int]:
    """Cost and rank index of the cheapest rank of one group option with error ≤ threshold (-1: dense)."""
    errors = layer.options[option_index].errors
    # errors are non-increasing; count how many exceed the threshold
    index = int(np.searchsorted(-errors, -threshold, side="left"))
    if index >= len(errors):
        return layer.dense_cost, -1
    return float(layer.costs[option_index][index]), index


def _choice_at(layer: _Layer, option_indices: Sequence[int], threshold: float) -> tuple[float, int, int]:
    """Cheapest option among the given group options meeting the threshold: (cost, option, rank index)."""
    best = (layer.dense_cost, -1, -1)
    for option_index in option_indices:
        cost, rank_index = _cheapest_within(layer, option_index, threshold)
        if rank_index >= 0 and cost < best[0]:
            best = (cost, option_index, rank_index)
    return best


def _global_step(layers: Sequence[_Layer], allowed: Sequence[Sequence[int]],
                 budget: float) -> Optional[list[tuple[int, int]]]:
    """Exact min-max over the allowed group options of every layer: (option index, rank index) per
    layer, or None when even the cheapest of those options exceed the budget."""
    candidates = {0.0}
    for layer, indices in zip(layers, allowed):
        for option_index in indices:
            candidates.update(layer.options[option_index].errors.tolist())
    thresholds = np.array(sorted(candidates))

    def total(threshold: float) -> float:
        return sum(_choice_at(layer, indices, threshold)[0] for layer, indices in zip(layers, allowed))

    low, high = 0, len(thresholds) - 1
    if total(thresholds[high]) > budget:
        return None  # these group options cannot meet the budget
    while low < high:
        middle = (low + high) // 2
        if total(thresholds[middle]) <= budget:
            high = middle
        else:
            low = middle + 1
    threshold = thresholds[low]
    return [_choice_at(layer, indices, threshold)[1:] for layer, indices in zip(layers, allowed)]


def _local_step(layer: _Layer, layer_budget: float) -> int:
    """The group option with the smallest error when given ``layer_budget`` (-1: stay dense)."""
    if layer_budget >= layer.dense_cost:
        return -1
    best_index, best_error = -1, np.inf
    for option_index, costs in enumerate(layer.costs):
        fits = int(np.searchsorted(costs, layer_budget, side="right")) - 1
        if fits < 0:
            continue
        error = float(layer.options[option_index].errors[fits])
        if error < best_error:
            best_index, best_error = option_index, error
    return best_index


def _to_allocation(layers: Sequence[_Layer], picks: Sequence[tuple[int, int]], budget: float,
                   search: str) -> Allocation:
    choices = []
    for layer, (option_index, rank_index) in zip(layers, picks):
        if option_index < 0 or rank_index < 0:
            choices.append(LayerChoice(DENSE, 0, layer.dense_cost, 0.0))
            continue
        option = layer.options[option_index]
        choices.append(LayerChoice(option.groups, int(option.ranks[rank_index]),
                                   float(layer.costs[option_index][rank_index]), float(option.errors[rank_index]),
                                   option.order))
    cost = float(sum(choice.cost for choice in choices))
    return Allocation(tuple(choices), budget, cost, max((c.error for c in choices), default=0.0), search)


def _fill(layers: Sequence[_Layer], picks: list[tuple[int, int]], budget: float,
          allowed: Optional[Sequence[Sequence[int]]] = None) -> list[tuple[int, int]]:
    """Spend what is left of the budget on the layer with the largest error, step by step.

    A step moves a layer to its cheapest option (any group count, or dense) with a smaller error
    that still fits; the max error never grows and the budget is never exceeded. ``allowed``
    restricts each layer to some of its group options (all by default).
    """
    picks = list(picks)
    flat = []
    for index, layer in enumerate(layers):
        options = range(len(layer.options)) if allowed is None else allowed[index]
        costs = np.concatenate([layer.costs[o] for o in options] + [np.array([layer.dense_cost])])
        errors = np.concatenate([layer.options[o].errors for o in options] + [np.array([0.0])])
        where = [(o, r) for o in options for r in range(len(layer.options[o].ranks))] + [(-1, -1)]
        flat.append((costs, errors, where))

    def current(index: int) -> tuple[float, float]:
        option_index, rank_index = picks[index]
        if option_index < 0:
            return layers[index].dense_cost, 0.0
        return (float(layers[index].costs[option_index][rank_index]),
                float(layers[index].options[option_index].errors[rank_index]))

    spent = sum(current(i)[0] for i in range(len(layers)))
    heap = [(-current(i)[1], i) for i in range(len(layers)) if picks[i][0] >= 0]
    heapq.heapify(heap)
    while heap:
        _, index = heapq.heappop(heap)
        cost_now, error_now = current(index)
        costs, errors, where = flat[index]
        fits = (errors < error_now) & (costs <= budget - spent + cost_now)
        if not fits.any():
            continue  # this layer cannot improve any more; the others may
        candidates = np.flatnonzero(fits)
        best = candidates[np.lexsort((errors[candidates], costs[candidates]))[0]]
        picks[index] = where[best]
        spent += float(costs[best]) - cost_now
        if picks[index][0] >= 0:
            heapq.heappush(heap, (-float(errors[best]), index))
    return picks


def _better(candidate: Allocation, best: Optional[Allocation]) -> bool:
    if best is None:
        return True
    if candidate.max_error < best.max_error - 1e-12:
        return True
    return abs(candidate.max_error - best.max_error) <= 1e-12 and candidate.sum_error < best.sum_error - 1e-12


def _check_budget(layers: Sequence[_Layer], budget: float) -> None:
    floor = _floor(layers)
    if budget < floor:
        raise BudgetError(f"budget {budget:.6g} is below the cheapest factorization {floor:.6g}")


def allocate_minmax(tables: Sequence[ErrorTable], scales: Sequence[float], budget: float, *,
                    search_groups: bool = True, seed: int = 0, starts: int = 15, iterations: int = 4,
                    fill: bool = True, costs: Optional[Sequence[LayerCosts]] = None) -> Allocation:
    """Min-max allocation (ALDS). ``search_groups=False`` restricts every layer to ``g = 1``
    (the SVD, SVD-energy and fixed-``g`` baselines: the global step alone). ``costs``: each
    option's own cost (measured latency, :class:`LayerCosts`) instead of its size × ``scales``."""
    layers = _prepare(tables, scales, costs)
    _check_budget(layers, budget)
    if not search_groups:
        allowed = [[i for i, o in enumerate(layer.options) if o.groups == 1] for layer in layers]
        picks = _global_step(layers, allowed, budget)
        if picks is None:
            raise BudgetError(f"budget {budget:.6g} is below what g = 1 factorizations reach")
        if fill:
            picks = _fill(layers, picks, budget, allowed)
        return _to_allocation(layers, picks, budget, "global step, g = 1")

    every = [list(range(len(layer.options))) for layer in layers]
    joint = _global_step(layers, every, budget)
    if joint is None:
        raise BudgetError(f"budget {budget:.6g} is below the cheapest factorization")
    best = _to_allocation(layers, joint, budget, "joint global step")
    rng = np.random.default_rng(seed)
    for start in range(starts):
        assignment = _start_assignment(layers, start, rng)
        current: Optional[Allocation] = None
        for _ in range(iterations):
            picks = _global_step(layers, [[index] if index >= 0 else [] for index in assignment], budget)
            if picks is None:
                break
            candidate = _to_allocation(layers, picks, budget, f"alternating start {start}")
            improved = current is None or candidate.max_error < current.max_error - 1e-12
            if current is None or _better(candidate, current):
                current = candidate
            if not improved:
                break
            # local step: every factorized layer re-picks its groups for the budget it now has
            assignment = [assignment[i] if choice.groups == DENSE else _local_step(layer, choice.cost)
                          for i, (layer, choice) in enumerate(zip(layers, candidate.choices))]
        if current is not None and _better(current, best):
            best = current
    if fill:
        picks = [_pick_of(layer, choice) for layer, choice in zip(layers, best.choices)]
        return _to_allocation(layers, _fill(layers, picks, budget), budget, best.search)
    return best


def _pick_of(layer: _Layer, choice: LayerChoice) -> tuple[int, int]:
    if choice.groups == DENSE:
        return (-1, -1)
    option_index = layer.group_index(choice.groups, choice.order)
    rank_index = int(np.searchsorted(layer.options[option_index].ranks, choice.rank))
    return option_index, rank_index


def _start_assignment(layers: Sequence[_Layer], start: int, rng: np.random.Generator) -> list[int]:
    """Group option per layer for one start: ``g`` nearest to 3, 5, 7, 9 first, then random."""
    targets = (3, 5, 7, 9)
    assignment = []
    for layer in layers:
        if not layer.options:
            assignment.append(-1)
            continue
        groups = np.array([option.groups for option in layer.options])
        if start < len(targets):
            assignment.append(int(np.argmin(np.abs(groups - targets[start]))))
        else:
            assignment.append(int(rng.integers(len(groups))))
    return assignment


def allocate_lrank(tables: Sequence[ErrorTable], scales: Sequence[float], budget: float, *,
                   fill: bool = True, costs: Optional[Sequence[LayerCosts]] = None) -> Allocation:
    """L-Rank (one shot): ``r_ℓ = argmin_r λ·cost_ℓ(r) + residual_ℓ(r)`` (``g = 1``, dense allowed),
    with ``λ`` bisected (in log space) to the smallest value whose choice fits the budget."""
    layers = _prepare(tables, scales, costs)
    _check_budget(layers, budget)
    g1 = [next((i for i, o in enumerate(layer.options) if o.groups == 1), -1) for layer in layers]

    def choose(lam: float) -> list[tuple[int, int]]:
        picks = []
        for layer, option_index in zip(layers, g1):
            best, pick = lam * layer.dense_cost, (-1, -1)
            if option_index >= 0:
                objective = lam * layer.costs[option_index] + layer.options[option_index].residuals
                index = int(np.argmin(objective))
                if objective[index] < best:
                    pick = (option_index, index)
            picks.append(pick)
        return picks

    def cost(picks: list[tuple[int, int]]) -> float:
        return float(sum(layer.dense_cost if o < 0 else layer.costs[o][r] for layer, (o, r) in zip(layers, picks)))

    low, high = -40.0, 40.0  # log λ: low → everything dense, high → everything at its cheapest
    if cost(choose(np.exp(high))) > budget:
        raise BudgetError("budget below what l-rank reaches")
    for _ in range(80):
        middle = 0.5 * (low + high)
        if cost(choose(np.exp(middle))) <= budget:
            high = middle
        else:
            low = middle
    picks = choose(np.exp(high))
    if fill:
        picks = _fill(layers, picks, budget)
    return _to_allocation(layers, picks, budget, "l-rank λ search")


# --------------------------------------------------------------------------------------------------
# Output-damage allocation: a set-partitioning integer program over options (``--method damage``)


@dataclass(frozen=True)
class Option:
    """One way to treat a set of layers, for :func:`allocate_options`.

    ``layers``: the names of the layers the option decides (one for a dense or a low-rank option; a
    structured-width option covers a producer and its consumer). ``kind``: ``"dense"``,
    ``"low-rank"`` or another kind a module adds (e.g. ``"width"``). ``costs``: the option's cost in
    each budget unit it is counted in (``{"params": weights, "flops": MACs}``), for the layers it
    covers together. ``damage``: the predicted model-output damage (additive over the chosen options;
    :mod:`onnx_alds.damage` uses the relative squared output error). ``payload``: what the caller
    needs to carry the option out (for ``"low-rank"``: a :class:`LayerChoice`); not used here.
    """

    layers: tuple[str, ...]
    kind: str
    costs: "dict[str, float]" = None  # type: ignore[assignment]
    damage: float = 0.0
    payload: object = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "costs", dict(self.costs or {}))
        if not self.layers:
            raise ValueError("an option must cover at least one layer")
        if not np.isfinite(self.damage) or self.damage < 0:
            raise ValueError(f"option over {self.layers[0]!r} has damage {self.damage}; give a finite value >= 0")

    def __hash__(self) -> int:  # costs is a dict: hash what identifies the option
        return hash((self.layers, self.kind, self.damage, tuple(sorted(self.costs.items()))))


@dataclass(frozen=True)
class OptionAllocation:
    """The options :func:`allocate_options` chose (one per covered layer set), their total damage and costs."""

    chosen: tuple[Option, ...]
    damage: float
    costs: dict
    budgets: dict
    status: str  # the solver's word (``optimal`` or ``time limit: best found``)
    candidates: int  # options left after removing dominated ones


def _undominated(options: Sequence[Option], keys: Sequence[str]) -> list[Option]:
    """Options without another one over the same layers that costs no more in every unit and damages
    less, or costs the same and damages no more (ties keep the first). A costlier option of the same
    damage stays: where damage ties (exactly low-rank weights), the allocation spends the budget on it."""
    by_layers: dict[tuple, list[Option]] = {}
    for option in options:
        by_layers.setdefault(tuple(sorted(option.layers)), []).append(option)
    kept: list[Option] = []
    for group in by_layers.values():
        costs = np.array([[option.costs.get(key, 0.0) for key in keys] for option in group], dtype=np.float64)
        damage = np.array([option.damage for option in group])
        order = np.lexsort((damage, *costs.T[::-1]))  # by costs then damage
        for position, index in enumerate(order):
            earlier = order[:position]
            cheaper = np.all(costs[earlier] <= costs[index] + 1e-12, axis=1)
            same_cost = np.all(np.abs(costs[earlier] - costs[index]) <= 1e-12, axis=1)
            if len(earlier) and np.any(cheaper & ((damage[earlier] < damage[index] - 1e-15)
                                                  | (same_cost & (damage[earlier] <= damage[index] + 1e-15)))):
                continue
            kept.append(group[index])
    return kept


SPEND_REWARD = 1e-4  # objective units for spending the whole budget: a tie-break, under HiGHS's gap scale


def _objective_scale(damage: np.ndarray) -> float:
    """A factor that lifts the smallest positive damage well above HiGHS's absolute optimality gap
    (1e-6, which scipy does not expose): unscaled, options whose damage is ~1e-7 all look "optimal"
    and the solver may return any feasible cover, e.g. narrow widths at a budget of 1.0."""
    positive = damage[damage > 0]
    if not positive.size:
        return 1.0
    return float(min(1e-2 / positive.min(), 1e8 / positive.max()))


def allocate_options(options: Sequence[Option], budgets: "dict[str, float]", *,
                     layers: Optional[Sequence[str]] = None, time_limit: float = 60.0) -> OptionAllocation:
    """Choose options covering every layer exactly once, minimizing the total damage under the budgets.

    The set-partitioning integer program ``min Σ_o damage_o x_o`` subject to ``Σ_{o ∋ ℓ} x_o = 1`` for
    every layer ``ℓ`` and ``Σ_o cost_o[k] x_o ≤ budget[k]`` for every budget unit ``k``, ``x_o ∈ {0, 1}``,
    solved by ``scipy.optimize.milp`` (HiGHS branch and bound). Costs and damage are additive over the
    chosen options: that is the model (output errors of independent layers add in squared norm, the
    approximation the literature's output-aware allocations use, e.g. BALF arXiv 2509.25136, LEMS).
    Options dominated by another one over the same layers are removed first.

    ``layers``: the layers to cover (default: every layer some option covers). ``budgets``: the largest
    total cost per unit; an option without a unit in ``costs`` costs 0 there. ``time_limit`` seconds:
    then the best solution found is returned (``status`` says so).

    Raises :class:`BudgetError` when no choice meets the budgets (naming the smallest reachable total
    of the first unit), and ``ValueError`` for a layer no option covers.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    keys = list(budgets)
    if not keys:
        raise ValueError("give at least one budget, e.g. {'flops': 1e9}")
    names = list(dict.fromkeys(layers if layers is not None else [n for o in options for n in o.layers]))
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in names if not any(name in option.layers for option in options)]
    if missing:
        raise ValueError(f"no option covers layer {missing[0]!r}; give every layer at least its dense option")
    pool = [option for option in _undominated(options, keys) if all(name in index for name in option.layers)]
    rows, cols = [], []
    for j, option in enumerate(pool):
        for name in option.layers:
            rows.append(index[name])
            cols.append(j)
    cover = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(pool))).tocsr()
    cost = np.array([[option.costs.get(key, 0.0) for option in pool] for key in keys], dtype=np.float64)
    # the cheapest choice per unit ignoring the others: a fast, clear refusal of an impossible budget
    floor = {}
    for k, key in enumerate(keys):
        best: dict[tuple, float] = {}
        for j, option in enumerate(pool):
            cover_key = tuple(sorted(option.layers))
            best[cover_key] = min(best.get(cover_key, np.inf), cost[k, j])
        floor[key] = float(sum(best.values()))  # exact when every option covers one layer
    scale = np.maximum(np.abs(cost).max(axis=1, initial=0.0), 1.0)  # well-scaled rows for HiGHS
    constraints = [LinearConstraint(cover, 1.0, 1.0),
                   LinearConstraint(cost / scale[:, None], -np.inf, np.array([budgets[k] for k in keys]) / scale)]
    damage = np.array([option.damage for option in pool], dtype=np.float64)
    # among choices whose damage ties (exactly low-rank weights: all ~0), the one that spends the budget:
    # a reward of at most SPEND_REWARD, 1 % of the smallest positive damage after scaling
    limits = np.array([budgets[k] for k in keys], dtype=np.float64)
    spent = (cost / np.where(limits > 0, limits, scale)[:, None]).mean(axis=0)
    objective = damage * _objective_scale(damage) - SPEND_REWARD * spent
    result = milp(objective, constraints=constraints, integrality=np.ones(len(pool)), bounds=Bounds(0, 1),
                  options=dict(time_limit=float(time_limit), mip_rel_gap=1e-6, disp=False))
    if result.x is None:
        key = keys[0]
        raise BudgetError(f"no choice of options meets the budget: {key} {budgets[key]:.6g} is below the smallest "
                          f"reachable {floor[key]:.6g}" if budgets[key] < floor[key] else
                          f"the option allocation found no feasible choice ({result.message})")
    chosen = tuple(pool[j] for j in np.flatnonzero(result.x > 0.5))
    totals = {key: float(sum(option.costs.get(key, 0.0) for option in chosen)) for key in keys}
    status = "optimal" if result.status == 0 else f"{result.message.split('.')[0].lower()}: best found"
    return OptionAllocation(chosen, float(sum(option.damage for option in chosen)), totals, dict(budgets), status,
                            len(pool))
