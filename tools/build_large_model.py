"""Build a large MatMul/Gemm chain with external data, one layer's weights in memory at a time.

    python tools/build_large_model.py OUT.onnx                    # 9 layers, 2.42 GB (over 2 GiB)
    python tools/build_large_model.py OUT.onnx --layers 2         # 0.54 GB, quick
    python tools/build_large_model.py OUT.onnx --size 1.0         # as many layers as reach 1.0 GB
    python tools/build_large_model.py OUT.onnx --dim 256 --hidden 1024 --layers 4   # 4 MB, for tests

The chain maps ``x`` (``batch × dim``) through ``layers`` layers that alternate between ``dim → hidden``
and ``hidden → dim``, cycling through four stored forms so that every weight layout the rewrite
handles is present: MatMul ``x @ W`` (``W``: dim × hidden), Gemm with ``transB = 1`` (``B``: dim ×
hidden, bias), Gemm with ``transB = 0`` (``B``: dim × hidden, bias), MatMul (``W``: hidden × dim).
Every weight is ``(U S V) / √c + noise``: a random rank-``core`` product with decaying scales plus
small Gaussian noise (seeded), i.e. low-rank-ish like a trained layer, cheap to make.

Each weight is written as raw little-endian bytes to ``OUT.onnx.data`` as soon as it is computed
and described in the graph by its location, offset and length (``external_data``), so memory stays
at one layer's weights plus the graph, whatever the model's size.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/_tool.py (which also finds onnx_alds)

from _tool import positive_float  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_alds.argtypes import non_negative_float, positive_int, random_seed  # noqa: E402
from onnx_alds.errors import OutputPathError  # noqa: E402
from onnx_alds.model_io import check_output_path  # noqa: E402

ALIGN = 4096  # offsets aligned to a page, as ONNX Runtime likes for memory-mapping


def layer_forms(layers: int) -> list[tuple[str, bool]]:
    """For each layer: ``("MatMul" | "Gemm", widening)``; the forms cycle MatMul↑, Gemm↓ (transB=1),
    Gemm↑ (transB=0), MatMul↓, so widths alternate dim → hidden → dim."""
    cycle = [("MatMul", True), ("Gemm", False), ("Gemm", True), ("MatMul", False)]
    return [cycle[i % 4] for i in range(layers)]


def weight_matrix(rng: np.random.Generator, rows: int, cols: int, core: int, noise: float,
                  fan_in: int) -> np.ndarray:
    """``rows × cols`` float32: a rank-``core`` product with decaying scales plus noise, scaled by
    1/√fan_in, computed in float32 so that one matrix is all that is held."""
    scales = np.exp(-np.arange(core, dtype=np.float32) / (core / 4.0)).astype(np.float32)
    left = rng.standard_normal((rows, core), dtype=np.float32) * scales
    right = rng.standard_normal((core, cols), dtype=np.float32)
    matrix = left @ right
    del left, right
    matrix *= np.float32(1.0 / math.sqrt(core))
    block = max(1, (1 << 24) // cols)  # add the noise a few MB at a time
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        matrix[start:stop] += noise * rng.standard_normal((stop - start, cols), dtype=np.float32)
    matrix *= np.float32(1.0 / math.sqrt(fan_in))
    return matrix


def external_tensor(name: str, array_shape: tuple[int, ...], location: str, offset: int,
                    length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array_shape),
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def build(output: Path, *, layers: int, dim: int, hidden: int, core: int, noise: float, seed: int,
          quiet: bool = False) -> dict:
    """Write the model and its data file; returns sizes and time. Interrupted or failed, it removes both
    files (a partial data file may be gigabytes)."""
    data_path = output.parent / (output.name + ".data")
    try:
        return _write(output, data_path, layers=layers, dim=dim, hidden=hidden, core=core, noise=noise, seed=seed,
                      quiet=quiet)
    except BaseException:
        for path in (output, data_path):
            if path.is_file():
                path.unlink()
        raise


def _write(output: Path, data_path: Path, *, layers: int, dim: int, hidden: int, core: int, noise: float,
           seed: int, quiet: bool) -> dict:
    started = time.perf_counter()
    data_name = data_path.name
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current, width = "x", dim
    with open(data_path, "wb") as data:
        for index, (op, widening) in enumerate(layer_forms(layers)):
            out_width = hidden if widening else dim
            name = f"layer{index}"
            # the layer maps width (c) → out_width (f); MatMul and Gemm transB=0 store B = Wᵀ (c × f)
            trans_b = op == "Gemm" and index % 4 == 1
            shape = (out_width, width) if trans_b else (width, out_width)
            attrs = {"transB": int(trans_b)} if op == "Gemm" else {}
            stored = weight_matrix(rng, *shape, core, noise, fan_in=width)
            offset = data.seek(0, os.SEEK_END)
            if offset % ALIGN:
                data.write(b"\0" * (ALIGN - offset % ALIGN))
                offset = data.tell()
            data.write(memoryview(stored).cast("B"))
            weight_name = f"{name}.weight"
            initializers.append(external_tensor(weight_name, stored.shape, data_name, offset, stored.nbytes))
            del stored
            output_name = f"{name}.out" if index < layers - 1 else "y"
            inputs = [current, weight_name]
            if op == "Gemm":
                bias = (0.01 * rng.standard_normal(out_width)).astype(np.float32)
                initializers.append(numpy_helper.from_array(bias, f"{name}.bias"))
                inputs.append(f"{name}.bias")
            nodes.append(helper.make_node(op, inputs, [output_name], name=f"/{name}/{op}", **attrs))
            if not quiet:
                print(f"  layer {index}: {op} {width}->{out_width}{' transB=1' if trans_b else ''} "
                      f"({time.perf_counter() - started:.1f} s)", flush=True)
            current, width = output_name, out_width
    graph = helper.make_graph(
        nodes, "large_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnx-alds tools/build_large_model.py")
    model.ir_version = 8
    output.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(output))  # path form: checks the external data files exist
    size = output.stat().st_size + data_path.stat().st_size
    return {"model": str(output), "data": str(data_path), "bytes": size, "layers": layers,
            "params": sum(int(np.prod(t.dims)) for t in initializers), "seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="model file to write (its data goes to OUTPUT.data)")
    parser.add_argument("--layers", type=positive_int, default=None, help="number of layers (default 9: 2.42 GB)")
    parser.add_argument("--size", type=positive_float, default=None,
                        help="instead of --layers: the fewest layers whose weights exceed this many GB (1e9 bytes)")
    parser.add_argument("--dim", type=positive_int, default=4096, help="narrow width (default 4096)")
    parser.add_argument("--hidden", type=positive_int, default=16384, help="wide width (default 16384)")
    parser.add_argument("--core", type=positive_int, default=256, help="rank of the low-rank part of each weight")
    parser.add_argument("--noise", type=non_negative_float, default=0.05, help="standard deviation of the added noise")
    parser.add_argument("--seed", type=random_seed, default=0)
    args = parser.parse_args(argv)
    if args.layers is not None and args.size is not None:
        parser.error("give --layers or --size, not both")
    if args.output.is_dir():
        raise OutputPathError(f"OUTPUT '{args.output}' is a folder; give a file name in it, such as "
                              f"{args.output / 'large.onnx'}")
    check_output_path(args.output, flag="OUTPUT")  # before any weight is written
    data_path = args.output.parent / (args.output.name + ".data")
    if data_path.is_dir():
        raise OutputPathError(f"OUTPUT's data file '{data_path}' would replace a folder; choose another OUTPUT")
    per_layer = 4 * args.dim * args.hidden
    layers = args.layers if args.layers is not None else (
        max(1, math.floor(args.size * 1e9 / per_layer) + 1) if args.size is not None else 9)
    if layers < 1:
        parser.error("--layers must be at least 1")
    print(f"building {layers} layers of {args.dim}x{args.hidden} float32 ({layers * per_layer / 1e9:.2f} GB) "
          f"into {args.output}", flush=True)
    info = build(args.output, layers=layers, dim=args.dim, hidden=args.hidden, core=min(args.core, args.dim),
                 noise=args.noise, seed=args.seed)
    print(f"wrote {info['model']} + {Path(info['data']).name}: {info['bytes'] / 1e9:.3f} GB, "
          f"{info['params'] / 1e6:.1f} M weights, {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    from _tool import run_tool

    raise SystemExit(run_tool(main, kept="the partial OUTPUT and OUTPUT.data were removed"))
