"""``--speed-check``, now a thin alias: compression whose options measured slower than the dense layer
are never candidates.

Fewer MACs are not a speedup by themselves: a grouped or badly aligned pair can run slower in ONNX
Runtime than the dense layer it replaces. The latency tables (:mod:`onnx_alds.latency`: every option of
every layer timed alone, interleaved with its dense layer, on the provider and batch the user deploys
on, cached on disk) now drop such options before the allocation, in one pass; this used to compress,
time the chosen pairs, keep the slow ones dense and compress again. ``--keep-latency`` goes further:
it budgets the measured time itself.
"""

from __future__ import annotations

from typing import Optional

from .api import CompressionResult, compress
from .model_io import ModelLike
from .options import SpeedOptions


def compress_speed_checked(model: ModelLike, *, provider: str = "cpu", threads: Optional[int] = None,
                           batch: int = 1, min_speedup: float = 1.0, rounds: int = 1, runs: int = 15,
                           timer=None, cache_dir: Optional[str] = None, **options) -> CompressionResult:
    """:func:`onnx_alds.compress` with every factorized option that the latency tables measure less than
    ``min_speedup`` faster than the dense layer (on ``provider``, at ``batch``) left out of the
    allocation. ``rounds`` is ignored (one pass is enough now); ``timer``/``cache_dir``: see
    :class:`onnx_alds.options.SpeedOptions`."""
    del rounds
    speed = SpeedOptions(provider=provider, threads=threads, batch=batch, runs=runs, prune_slow=True,
                         min_speedup=min_speedup, timer=timer, cache_dir=cache_dir)
    return compress(model, speed=speed, **options)
