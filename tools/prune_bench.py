"""Low-rank vs hidden-channel pruning vs both, side by side, on the reference models (docs/PRUNING.md).

For every model (``models/cache/<name>/`` with ``model.onnx``, ``calibration.npz`` and ``eval.npz``) and
every ``--keep`` value (fraction of MACs kept), compress with each variant, all data-aware on the same
calibration inputs:

- ``low-rank``: data-aware ALDS (``compress(..., calibration=cal)``, the default error measure);
- ``prune``: hidden widths alone (``prune="only"``: greedy channel selection + least-squares refit);
- ``combined``: widths of the prunable blocks and low-rank factors of the other layers in one min-max
  (``prune=True``);
- ``damage``: low-rank by the output-damage allocator (``method="damage"``);
- ``damage+prune``: widths and low-rank options in one output-damage integer program
  (``method="damage", prune="combined"``);
- ``prune-heads``, ``damage+prune-heads``: the same with ``prune_heads=True`` (``--prune-heads``): blocks
  also follow channels split into attention heads (attention's V → output projection);
- ``damage+prune-measured``, ``damage+prune-heads-measured``: the same with each width's damage measured
  at a few widths per block and interpolated (``width_damage="measured"``, an option of
  :func:`onnx_alds.prune.compress_pruned`) instead of extrapolated from one sensitivity probe;

and measure on the held-out inputs (never the calibration ones):

- classifiers: top-1 agreement with the original on ``eval.npz`` (and on ``agreement.npz`` when present);
- sentence embeddings (MiniLM): the fraction of held-out sentences whose nearest neighbour (cosine, self
  excluded) among the others is unchanged, and the mean cosine to the original embedding;
- ``--time KEEP``: at that budget, every variant's whole-model CPU latency against the original
  (:func:`onnx_alds.bench.bench`, interleaved, median), next to the ideal speedup the MACs allow
  (``1 / achieved``), and next to the speedup the MACs *that change* allow: the original is profiled
  at batch 1 (ONNX Runtime's node profiler, ``tools/profile_nodes.py``), each changed layer's share
  ``s_l`` of the summed kernel time scales with its MACs kept ``k_l`` and every other node keeps its
  time, so that ideal is ``1 / (1 - sum_l s_l (1 - k_l))`` (layers the optimized graph renamed or fused
  are counted as unchanged, and said). The load average is printed with it (the box is shared).

    python tools/prune_bench.py [--models efficientnet-lite0 minilm] [--keep 0.7 0.5]
        [--variants low-rank prune combined damage damage+prune] [--rank-multiple 16] [--time 0.5]
        [--calibration calibration|pool] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _tool import (check_known, check_measured, check_not_empty, check_output_file,  # noqa: E402
                   check_output_folder, keep_ratio)
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from accuracy_bench import embedding_scores, outputs  # noqa: E402
from profile_nodes import profile  # noqa: E402
from data_aware_bench import _load_npz  # noqa: E402
from models import BUILDERS  # noqa: E402
from onnx_alds import compress  # noqa: E402
from onnx_alds.argtypes import positive_int, thread_count  # noqa: E402
from onnx_alds.errors import OnnxAldsError  # noqa: E402
from onnx_alds.inputs import InputSet  # noqa: E402

VARIANTS = {
    "low-rank": dict(),
    "prune": dict(prune="only"),
    "combined": dict(prune="combined"),
    "damage": dict(method="damage"),
    "damage+prune": dict(method="damage", prune="combined"),
    # the same with the low-rank step calibrated sequentially on the pruned model (--sequential)
    "damage+prune-seq": dict(method="damage", prune="combined", sequential=True),
    # the same with blocks that also follow channels split into attention heads (--prune-heads)
    "prune-heads": dict(prune="only", prune_heads=True),
    "damage+prune-heads": dict(method="damage", prune="combined", prune_heads=True),
    # damage+prune with each width's damage measured at a few widths per block and interpolated, instead of
    # extrapolated from one sensitivity probe (compress_pruned(..., width_damage="measured"), an option)
    "damage+prune-measured": dict(method="damage", prune="combined", width_damage="measured"),
    "damage+prune-heads-measured": dict(method="damage", prune="combined", prune_heads=True,
                                        width_damage="measured"),
}


def run_variant(model: onnx.ModelProto, keep: float, calibration, shapes: dict, rank_multiple: int, variant: str):
    """``compress`` with the variant's keywords (``width_damage``, which ``compress`` does not take, goes
    to :func:`onnx_alds.prune.compress_pruned` directly)."""
    keywords = dict(VARIANTS[variant])
    width_damage = keywords.pop("width_damage", None)
    if width_damage is None:
        return compress(model, keep_flops=keep, calibration=calibration, input_shapes=shapes,
                        rank_multiple=rank_multiple, **keywords)
    from onnx_alds.options import compress_options, with_pruning
    from onnx_alds.prune import compress_pruned

    options = compress_options(keep_flops=keep, calibration=calibration, input_shapes=shapes,
                               rank_multiple=rank_multiple, method=keywords.pop("method", "alds"))
    options = replace(options, search=with_pruning(options.search, keywords.pop("prune"),
                                                   keywords.pop("prune_heads", False)))
    return compress_pruned(model, options, options.search.prune, width_damage=width_damage)


HELD_OUT = ("eval", "agreement")  # the sets the figures are measured on: never a --calibration


def check_calibration(calibration: str, models: list[str]) -> None:
    """Raise :class:`OnnxAldsError` before any work when ``--calibration`` names a held-out set, however spelled
    (``eval``, ``./eval``, ``eval.npz``, a path that resolves to one), or when a model to be measured has no
    such file (found after the earlier models were measured, their rows would be lost)."""
    stem = Path(calibration).name
    stem = stem[:-len(".npz")] if stem.endswith(".npz") else stem
    refusal = (f"--calibration {calibration}: it names a held-out set the figures are measured on "
               f"({', '.join(f'{name}.npz' for name in HELD_OUT)}), never calibrated on; give calibration or pool")
    if stem in HELD_OUT:
        raise OnnxAldsError(refusal)
    for name in models:
        folder = ROOT / "models" / "cache" / name
        if not (folder / "model.onnx").exists():
            continue  # skipped by the run, with a line saying so
        path = folder / f"{calibration}.npz"
        held_out = {(folder / f"{held}.npz").resolve() for held in HELD_OUT}
        if path.resolve() in held_out:
            raise OnnxAldsError(refusal)
        if not path.is_file():
            raise OnnxAldsError(f"--calibration {calibration}: {name} has no {path} (nothing was measured; "
                                f"give a set every model has, such as calibration, or leave {name} out)")


def held_out_sets(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    sets = {}
    for name in HELD_OUT:
        path = folder / f"{name}.npz"
        if path.exists():
            arrays = _load_npz(path)
            arrays.pop("labels", None)
            sets[name] = arrays
    return sets


def scores(kind: str, references: dict, model: onnx.ModelProto, sets: dict) -> dict[str, float]:
    result = {}
    for name, arrays in sets.items():
        out = outputs(model, arrays)
        if kind == "embedding":
            result[f"nn_{name}"], result[f"cos_{name}"] = embedding_scores(references[name], out)
        else:
            result[f"agree_{name}"] = float(np.mean(out.argmax(axis=1) == references[name].argmax(axis=1)))
    return result


FUSED_INTO_CONV = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "Add", "Sum"}


def layer_node_times(model: onnx.ModelProto, node_us: dict[str, float]) -> dict[str, float]:
    """Each Conv/Gemm/MatMul node's profiled time (µs) by its name in ``model``, where the profile names it:
    as itself, or as ONNX Runtime's blocked-layout conv (``<output>_nchwc``, where ``<output>`` is the
    conv's output or that of the activation or Add fused into it)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    times = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        names = [node.name, f"{node.output[0]}_nchwc"]
        names += [f"{r.output[0]}_nchwc" for r in readers.get(node.output[0], []) if r.op_type in FUSED_INTO_CONV]
        found = [name for name in names if name in node_us]
        if found:
            times[node.name] = node_us[found[0]]
    return times


def changed_mac_ideal(node_us: dict[str, float], layers, layer_us: dict[str, float]) -> tuple[float, int]:
    """The speedup the changed layers' MACs allow when every other node keeps its time.

    ``node_us``: the original's median kernel time per profiled node (µs, ``profile_nodes.profile``);
    ``layers``: the compression report's :class:`onnx_alds.report.LayerReport` rows; ``layer_us``: their
    times from :func:`layer_node_times`. Returns the ideal
    ``1 / (1 - sum_l s_l (1 - k_l))`` over the layers found in the profile and how many changed layers
    were not found there (renamed or fused by ONNX Runtime: counted as unchanged)."""
    total = sum(node_us.values())
    saved, missing = 0.0, 0
    for layer in layers:
        if not layer.macs_before or layer.macs_after is None or layer.macs_after >= layer.macs_before:
            continue
        if layer.name not in layer_us:
            missing += 1
            continue
        saved += layer_us[layer.name] / total * (1.0 - layer.macs_after / layer.macs_before)
    return 1.0 / (1.0 - saved), missing


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["efficientnet-lite0", "minilm"])
    parser.add_argument("--keep", nargs="*", type=keep_ratio, default=[0.7, 0.5])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rank-multiple", type=positive_int, default=16)
    parser.add_argument("--time", type=keep_ratio, default=None, metavar="KEEP",
                        help="time the whole models compressed at this keep (must be one of --keep)")
    parser.add_argument("--runs", type=positive_int, default=50, help="timed runs per model (bench)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="ONNX Runtime threads for timing (default: cores)")
    parser.add_argument("--save", type=Path, default=None, metavar="DIR", help="also write each compressed model there")
    parser.add_argument("--calibration", default="calibration", metavar="NAME",
                        help="calibration inputs: models/cache/<model>/NAME.npz (default calibration; 'pool' is the "
                             "larger unlabeled pool of `python -m models.pools`, disjoint from the held-out sets)")
    parser.add_argument("--json", type=Path, default=None, help="write all rows to this file")
    args = parser.parse_args(argv)
    if args.time is not None and not any(abs(keep - args.time) < 1e-9 for keep in args.keep):
        parser.error(f"--time {args.time:g} is not one of --keep ({' '.join(f'{k:g}' for k in args.keep)}); "
                     "time a budget that is compressed, or add it to --keep")
    check_not_empty(models=args.models, keep=args.keep, variants=args.variants)
    check_known(args.models, BUILDERS)
    check_calibration(args.calibration, args.models)
    check_output_file(args.json, "--json")  # now, not after the whole run
    check_output_folder(args.save, "--save")

    rows = []
    for name in args.models:
        folder = ROOT / "models" / "cache" / name
        if not (folder / "model.onnx").exists():
            print(f"skip {name}: no models/cache/{name}/model.onnx (build it: python -m models.build {name})",
                  file=sys.stderr)
            continue
        info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").exists() else {}
        kind = "embedding" if "embedding" in info.get("task", "") else "classifier"
        model = onnx.load(str(folder / "model.onnx"))
        cal = _load_npz(folder / f"{args.calibration}.npz")
        cal.pop("labels", None)
        calibration = InputSet(cal, source=f"{args.calibration}.npz ({len(next(iter(cal.values())))} samples)")
        sets = held_out_sets(folder)
        references = {key: outputs(model, arrays) for key, arrays in sets.items()}
        counts = ", ".join(f"{key} {len(next(iter(a.values())))}" for key, a in sets.items())
        print(f"\n## {name} ({kind}): held out {counts}; {len(calibration)} calibration inputs; "
              f"rank multiple {args.rank_multiple}", flush=True)
        timed = []
        # MACs counted at one sample of the calibration inputs' shape (MiniLM: 64 tokens)
        shapes = {key: (1,) + tuple(value.shape[1:]) for key, value in cal.items()}
        for keep in args.keep:
            for variant in args.variants:
                started = time.perf_counter()
                try:
                    result = run_variant(model, keep, calibration, shapes, args.rank_multiple, variant)
                except Exception as exc:  # a bench keeps going; the failure is printed in the table
                    print(f"{variant:<10} {keep:>5.2f} failed: {str(exc).splitlines()[0][:200]}", flush=True)
                    rows.append(dict(model=name, variant=variant, keep=keep, error=str(exc)))
                    continue
                seconds = time.perf_counter() - started
                report = result.report
                row = dict(model=name, variant=variant, keep=keep, achieved=report.achieved, seconds=seconds,
                           max_error=report.max_error,
                           factorized=sum(1 for layer in report.layers if layer.groups),
                           pruned=[(b.name, b.width_before, b.width_after) for b in report.pruned],
                           **scores(kind, references, result.model, sets))
                rows.append(row)
                figures = "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith(("agree", "nn", "cos")))
                narrowed = sum(1 for _, before, after in row["pruned"] if after < before)
                print(f"{variant:<10} keep {keep:.2f} achieved {report.achieved:.3f}  {figures}  "
                      f"factorized {row['factorized']}, blocks narrowed {narrowed}/{len(row['pruned'])}, "
                      f"max error {report.max_error:.3f}, {seconds:.0f} s", flush=True)
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    onnx.save(result.model, str(args.save / f"{name}-{variant}-{keep}.onnx"))
                if args.time is not None and abs(keep - args.time) < 1e-9:
                    timed.append((variant, result.model, report.achieved, report.layers))
        if timed:
            from onnx_alds.bench import bench

            load = os.getloadavg()
            report = bench([model] + [m for _, m, _, _ in timed], provider="cpu", batch_sizes=(1,),
                           runs=args.runs, threads=args.threads, input_shapes=shapes,
                           names=["original"] + [v for v, _, _, _ in timed])
            node_us = {node: us for node, _, us in profile(
                folder / "model.onnx", batch=1, runs=args.runs, threads=report.threads,
                dims=[f"{key}:{'x'.join(map(str, dims))}" for key, dims in shapes.items()])}
            after = os.getloadavg()
            print(f"timing at keep {args.time} (CPU, batch 1, {report.threads} threads, load average "
                  f"{load[0]:.1f} before, {after[0]:.1f} after):")
            original_ms = report.timings[0].median_ms
            print(f"  original: median {original_ms:.2f} ms")
            for (variant, _, achieved, layers), timing in zip(timed, report.timings[1:]):
                ideal = 1.0 / achieved
                changed, missing = changed_mac_ideal(node_us, layers, layer_node_times(model, node_us))
                print(f"  {variant:<10} median {timing.median_ms:.2f} ms, speedup {timing.speedup:.2f}x, "
                      f"MAC ideal {ideal:.2f}x, {timing.speedup / ideal:.0%} of it; changed-MAC ideal "
                      f"{changed:.2f}x, {timing.speedup / changed:.0%} of it"
                      + (f" ({missing} changed layers not in the profile, counted unchanged)" if missing else ""),
                      flush=True)
                for row in rows:
                    if row.get("model") == name and row.get("variant") == variant and row.get("keep") == args.time:
                        row.update(median_ms=timing.median_ms, original_ms=original_ms, speedup=timing.speedup,
                                   ideal_speedup=ideal, changed_mac_ideal=changed, layers_not_profiled=missing,
                                   load_average=[load[0], after[0]])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return check_measured(rows)


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the rows printed above are all that was measured (no --json file was written)"))
