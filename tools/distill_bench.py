"""Distillation curves on the reference models: held-out quality against minutes of training.

For each model: split the calibration set into a training and a held-out part (as ``compress
--distill`` does), compress with the training part (the recipe below), measure the compressed model
on the held-out data set (never used by either step), then run :func:`onnx_alds.distill.distill`
on the training part under a time (or step) budget; at every evaluation of the run, at most every
``--curve-every`` seconds, the current factor values are written into the graph and the model is
measured on the held-out data set in ONNX Runtime (that time is not counted in the budget). The
final written model is measured the same way.

- ``mnist-resnet``: the bundled ``onnx_alds/data/mnist_resnet.onnx``, data-free ``svd`` at keep-flops 0.3;
  inputs ``mnist_calibration.npz`` (48 digits); figure: accuracy (and top-1 agreement) on ``mnist_eval.npz``
  (500 test digits);
- ``efficientnet-lite0``: ``models/cache``, data-aware ``alds`` at keep-flops 0.5; inputs ``calibration.npz``
  (48 crops); figure: top-1 agreement on ``agreement.npz`` (300 other crops);
- ``minilm``: ``models/cache``, data-aware ``alds`` at keep-flops 0.5 (MACs counted at 1x64 tokens); inputs
  ``calibration.npz`` (48 sentences); figure: nearest neighbour (cosine, self excluded) unchanged among the
  300 other sentences of ``eval.npz``, and the mean cosine similarity to the original embeddings.

``--method``, ``--rank-multiple``, ``--keep-flops``, ``--prune``, ``--sequential`` and ``--calibration`` change
the recipe; ``--out DIR`` keeps a run's results apart from ``docs/results/distill/``.

    python tools/distill_bench.py --models mnist-resnet --minutes 2 --lr 0.1 --intermediate-weight 3
    python tools/distill_bench.py --models efficientnet-lite0 --method svd --rank-multiple 16 --minutes 15 \
        --lr 0.008 --batch-size 8
    python tools/distill_bench.py --models minilm --minutes 10
    python tools/distill_bench.py --report      # rewrite the curve plot and table from the JSON

Results merge into ``docs/results/distill/distill.json`` (one entry per model, replaced when rerun);
``distill-curves.png`` and ``distill-curves.md`` are rewritten from it. Build the cached models
first: ``python -m models.build efficientnet-lite0 minilm``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

from _tool import check_output_folder, keep_ratio, positive_float  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx_alds import compress  # noqa: E402
from onnx_alds.argtypes import non_negative_float, positive_int, random_seed, thread_count  # noqa: E402
from onnx_alds.distill import DistillSettings, distill, split_inputs, write_back  # noqa: E402
from onnx_alds.errors import InputDataError  # noqa: E402
from onnx_alds.inputs import load_inputs  # noqa: E402
from onnx_alds.runtime import make_session  # noqa: E402

OUT = ROOT / "docs" / "results" / "distill"
CACHE = ROOT / "models" / "cache"
DATA = ROOT / "onnx_alds" / "data"


def _outputs(model: onnx.ModelProto, arrays: dict[str, np.ndarray], batch: int = 50) -> np.ndarray:
    session = make_session(model, "cpu", spinning=False)
    name = session.get_outputs()[0].name
    count = len(next(iter(arrays.values())))
    chunks = [session.run([name], {k: v[i:i + batch] for k, v in arrays.items()})[0] for i in range(0, count, batch)]
    return np.concatenate(chunks).astype(np.float64)


def neighbour_top1(original: np.ndarray, compressed: np.ndarray) -> float:
    """Fraction of samples whose nearest neighbour (cosine, self excluded) is unchanged."""
    def unit(x):
        x = x.reshape(len(x), -1)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)

    a, b = unit(original), unit(compressed)
    sim_a, sim_b = a @ a.T, b @ b.T
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    return float(np.mean(np.argmax(sim_a, axis=1) == np.argmax(sim_b, axis=1)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.mean(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)))


class Reference:
    """A model, how to compress it, its distillation inputs and its held-out figure."""

    def __init__(self, name: str, model: Path, calibration: Path, held_out: Path, compress_kwargs: dict,
                 metric: str, data_aware: bool) -> None:
        self.name, self.model_path, self.calibration_path, self.held_out_path = name, model, calibration, held_out
        self.compress_kwargs, self.metric, self.data_aware = compress_kwargs, metric, data_aware

    def load(self):
        self.model = onnx.load(str(self.model_path))
        self.calibration = load_inputs(self.model, npz=self.calibration_path)
        held = np.load(self.held_out_path)
        names = [i.name for i in self.model.graph.input]
        self.held_arrays = {k: held[k] for k in names}
        self.labels = held["labels"] if "labels" in held.files and self.metric == "accuracy" else None
        self.reference = _outputs(self.model, self.held_arrays)
        return self

    def figures(self, model: onnx.ModelProto) -> dict[str, float]:
        out = _outputs(model, self.held_arrays)
        figures = {"cosine": _cosine(self.reference, out)}
        if self.metric == "neighbours":
            figures["metric"] = neighbour_top1(self.reference, out)
        else:
            figures["agreement"] = float(np.mean(out.argmax(1) == self.reference.argmax(1)))
            figures["metric"] = figures["agreement"]
            if self.labels is not None:
                figures["accuracy"] = float(np.mean(out.argmax(1) == self.labels))
                figures["metric"] = figures["accuracy"]
        return figures

    def original_figures(self) -> dict[str, float]:
        return self.figures(self.model)


REFERENCES: dict[str, Callable[[], Reference]] = {
    "mnist-resnet": lambda: Reference(
        "mnist-resnet", DATA / "mnist_resnet.onnx", DATA / "mnist_calibration.npz", DATA / "mnist_eval.npz",
        dict(keep_flops=0.3, method="svd"), "accuracy", data_aware=False),
    "efficientnet-lite0": lambda: Reference(
        "efficientnet-lite0", CACHE / "efficientnet-lite0" / "model.onnx",
        CACHE / "efficientnet-lite0" / "calibration.npz", CACHE / "efficientnet-lite0" / "agreement.npz",
        dict(keep_flops=0.5, method="alds"), "agreement", data_aware=True),
    "minilm": lambda: Reference(
        "minilm", CACHE / "minilm" / "model.onnx", CACHE / "minilm" / "calibration.npz",
        CACHE / "minilm" / "eval.npz", dict(keep_flops=0.5, method="alds", input_shapes={
            "input_ids": [1, 64], "attention_mask": [1, 64]}), "neighbours", data_aware=True),
}
METRIC_LABEL = {"accuracy": "test accuracy (500 digits)", "agreement": "top-1 agreement (300 held-out crops)",
                "neighbours": "nearest neighbour unchanged (300 held-out sentences)"}


def run_one(ref: Reference, settings: DistillSettings, curve_every: float) -> dict[str, Any]:
    ref.load()
    # as `compress --distill` does: compress with the training part, keep the held-out part unseen
    train, held = split_inputs(ref.calibration, settings.held_out, settings.seed)
    tick = time.perf_counter()
    result = compress(ref.model, calibration=train if ref.data_aware else None, **ref.compress_kwargs)
    compress_s = time.perf_counter() - tick
    original = ref.original_figures()
    before = ref.figures(result.model)
    print(f"{ref.name}: original {original}, compressed {before} ({compress_s:.1f} s)", flush=True)
    curve: list[dict[str, Any]] = []
    last = [-1e9]

    def callback(step: int, seconds: float, student) -> None:
        if step and seconds - last[0] < curve_every:
            return
        last[0] = seconds
        values = {n: p.detach().numpy() for n, p in student.named_factors().items()}
        figures = ref.figures(write_back(result.model, values))
        curve.append(dict(step=step, minutes=round(seconds / 60, 3), **figures))
        print(f"  step {step:5d}  {seconds / 60:6.2f} min  {ref.metric} {figures['metric']:.4f}  "
              f"cosine {figures['cosine']:.4f}", flush=True)

    tick = time.perf_counter()
    distilled = distill(ref.model, result.model, train, held_out_inputs=held, settings=settings, progress=False,
                        callback=callback)
    wall = time.perf_counter() - tick
    after = ref.figures(distilled.model)
    report = distilled.report
    final_minutes = round(report.curve[-1]["seconds"] / 60, 3) if report.curve else None
    curve.append(dict(step=report.steps, minutes=final_minutes, final=True, **after))
    print(report.format(), flush=True)
    print(f"{ref.name}: {ref.metric} {before['metric']:.4f} -> {after['metric']:.4f} "
          f"(original {original['metric']:.4f}); "
          f"distill wall {wall:.0f} s", flush=True)
    return dict(model=ref.name, metric=ref.metric, metric_label=METRIC_LABEL[ref.metric],
                compression=dict({k: v for k, v in ref.compress_kwargs.items() if k != "input_shapes"},
                                 data_aware=ref.data_aware, achieved=result.report.achieved),
                original=original, before=before, after=after, curve=curve, distill_wall_s=round(wall, 1),
                report=report.to_dict(), load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)


def write_outputs(data: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Distillation curves (written by tools/distill_bench.py)", ""]
    for name, row in sorted(data["models"].items()):
        lines.append(f"## {name}: {row['metric_label']}")
        lines.append("")
        lines.append(f"Command: `{row['command']}`; machine: {row['machine']}; load average at the end "
                     f"{row.get('load_average') or 0:.1f}.")
        lines.append("")
        c = row["compression"]
        recipe = (f"{c.get('method')}{'+data' if c.get('data_aware') else ' (data-free)'}, keep-flops "
                  f"{c.get('keep_flops')}" + (f", rank multiple {c['rank_multiple']}" if c.get("rank_multiple") else "")
                  + (", sequential" if c.get("sequential") else "")
                  + (f", prune {c['prune']}" if c.get("prune") else "") + f"; achieved {c.get('achieved', 0):.3f}")
        lines.append(f"Original {row['original']['metric']:.4f}; compressed ({recipe}) "
                     f"{row['before']['metric']:.4f}; distilled {row['after']['metric']:.4f} "
                     f"(cosine {row['before']['cosine']:.4f} -> {row['after']['cosine']:.4f}); "
                     f"{row['report']['steps']} steps, {row['report']['stop_reason']}.")
        lines.append("")
        lines.append("| step | minutes | held-out figure | cosine |")
        lines.append("|---|---|---|---|")
        for point in row["curve"]:
            label = " (written model)" if point.get("final") else ""
            lines.append(f"| {point['step']} | {point['minutes']:.2f} | {point['metric']:.4f}{label} | "
                         f"{point['cosine']:.4f} |")
        lines.append("")
    (out / "distill-curves.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'onnx-alds[plots]')")
        return
    rows = sorted(data["models"].items())
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.6), squeeze=False)
    for axis, (name, row) in zip(axes[0], rows):
        points = [p for p in row["curve"] if not p.get("final")]
        axis.plot([p["minutes"] for p in points], [p["metric"] for p in points], marker="o", ms=3, label="distilled")
        axis.axhline(row["original"]["metric"], color="gray", ls="--", lw=1, label="original")
        axis.set_title(name)
        axis.set_xlabel("minutes of distillation (2-core CPU)")
        axis.set_ylabel(row["metric_label"])
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "distill-curves.png", dpi=110)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(REFERENCES), choices=list(REFERENCES))
    parser.add_argument("--minutes", type=positive_float, default=None, help="time budget of each distillation")
    parser.add_argument("--steps", type=positive_int, default=None, help="step budget of each distillation")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None)
    parser.add_argument("--intermediate-weight", type=non_negative_float, default=None)
    parser.add_argument("--eval-every", type=positive_int, default=None)
    parser.add_argument("--patience", type=positive_int, default=None)
    parser.add_argument("--threads", type=thread_count, default=None)
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--sequential", action="store_true",
                        help="compress with sequential calibration (data-aware models only)")
    parser.add_argument("--calibration", type=Path, default=None, metavar="FILE.npz",
                        help="compress and distill with these inputs instead of the model's calibration set")
    parser.add_argument("--method", default=None, help="compression method instead of the model's own (above)")
    parser.add_argument("--rank-multiple", type=positive_int, default=None, help="compress with this rank multiple")
    parser.add_argument("--keep-flops", type=keep_ratio, default=None, help="compress to this MAC fraction")
    parser.add_argument("--prune", choices=("combined", "only"), default=None,
                        help="compress with hidden-width pruning (data-aware recipes only)")
    parser.add_argument("--curve-every", type=positive_float, default=30.0, metavar="S",
                        help="measure the held-out figure at most every S seconds of training")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true", help="only rewrite the table and plot from the JSON")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    check_output_folder(args.out, "--out")
    path = args.out / "distill.json"
    if args.report and not path.exists():
        raise InputDataError(f"--report: no '{path}' to rewrite the table from; run the distillations first "
                             "(without --report), or give the --out folder of an earlier run")
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    if not args.report:
        keys = ("minutes", "steps", "batch_size", "lr", "intermediate_weight", "eval_every", "patience", "threads")
        overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
        settings = DistillSettings(seed=args.seed, **overrides)
        command = "python tools/distill_bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        for name in args.models:
            ref = REFERENCES[name]()
            if args.calibration is not None:
                ref.calibration_path = args.calibration
            if args.sequential and ref.data_aware:
                ref.compress_kwargs = dict(ref.compress_kwargs, sequential=True)
            for key, value in (("method", args.method), ("rank_multiple", args.rank_multiple),
                               ("keep_flops", args.keep_flops), ("prune", args.prune)):
                if value is not None:
                    ref.compress_kwargs = dict(ref.compress_kwargs, **{key: value})
            row = run_one(ref, settings, args.curve_every)
            row["command"] = command.replace(" --models " + " ".join(args.models), f" --models {name}")
            row["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            data["models"][name] = row
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")
    write_outputs(data, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    sys.exit(run_tool(main, kept="the models finished before it are in OUT/distill.json (--report writes their "
                                 "table)"))
