"""Speed-checked compression: keep dense every layer whose factorized pair is not measurably faster.

Fewer MACs are not a speedup by themselves: a grouped or badly aligned pair can run slower in ONNX
Runtime than the dense layer it replaces. ``compress_speed_checked`` compresses, times every
factorized layer against its original node (single-layer models, interleaved, on the provider the
user deploys on), keeps the slower ones dense with the measurement as the reason, and allocates the
budget again over the remaining layers, for a few rounds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Optional

from .api import CompressionResult, compress
from .bench import compare_layers, provider_options_for
from .errors import BudgetError
from .model_io import ModelLike, load_model

log = logging.getLogger(__name__)


def compress_speed_checked(model: ModelLike, *, provider: str = "cpu", threads: Optional[int] = None,
                           batch: int = 1, min_speedup: float = 1.0, rounds: int = 3, runs: int = 30,
                           **options) -> CompressionResult:
    """:func:`onnx_alds.compress` whose factorized layers each measured at least ``min_speedup``
    faster than the original node on ``provider`` (at ``batch``), or that says which did not.

    Layers measured slower are kept dense and the budget is allocated again without them, up to
    ``rounds`` times; the report's notes list every measurement that decided something.
    """
    original = load_model(model)
    dense: dict[str, str] = dict(options.pop("keep_dense", {}) or {})
    notes: list[str] = []
    spent = 0.0
    for round_index in range(rounds):
        try:
            result = compress(original, keep_dense=dense, **options)
        except BudgetError as exc:
            if round_index == 0:
                raise
            raise BudgetError(f"{len(dense)} layers measured not faster when factorized and stay dense, so: "
                              f"{exc}") from None
        tick = time.perf_counter()
        comparison = compare_layers(original, result.model, model_name="compressed", provider=provider, batch=batch,
                                    input_shapes=options.get("input_shapes"), threads=threads,
                                    provider_options=provider_options_for(provider), warmup=5, runs=runs)
        spent += time.perf_counter() - tick
        slow = [row for row in comparison.rows if row.speedup < min_speedup]
        for row in slow:
            dense[row.layer] = (f"kept dense: its factorized pair measured {row.speedup:.2f}x on {provider} "
                                f"({row.original_us:.0f} -> {row.pair_us:.0f} us at batch {batch})")
        notes.append(f"speed check round {round_index + 1}: {len(comparison.rows)} pairs timed on {provider}, "
                     f"{len(slow)} not {min_speedup:g}x faster" + (" (kept dense, budget reallocated)" if slow else ""))
        if not slow:
            break
    else:
        notes.append(f"speed check stopped after {rounds} rounds: the last allocation was not checked again")
    seconds = dict(result.report.seconds, speed_check=spent)
    report = replace(result.report, notes=result.report.notes + tuple(notes), seconds=seconds)
    return CompressionResult(result.model, report)
