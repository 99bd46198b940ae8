#!/usr/bin/env bash
# The CUDA check of docs/LATENCY.md, as one script for a machine with an NVIDIA GPU and
# onnxruntime-gpu importable (PYTHONPATH or installed):
#
#     OUT=results/ bash tools/cuda_check.sh
#
# 1. the GPU, the drivers and onnxruntime's providers;
# 2. tools/bench_latency.py --provider cuda: latency tables (cold and warm cache), --keep-latency 0.5
#    plans applied, the keep-flops variants, whole-model speedups timed on CUDA with IO binding, every
#    compressed model's CUDA outputs against its CPU outputs, and each factorized pair re-timed;
#    ResNet-50 (random weights) at batch 1 and 32, the MNIST ResNet at batch 32;
# 3. the CLI on CUDA: `onnx-alds compress --provider cuda --validate` on the MNIST ResNet (keep-flops 0.7,
#    its bundled digits, batch 256) and ResNet-50 (--keep-latency 0.9, batch 32); the same asked of a
#    CPU-only onnxruntime (CPU_PYTHONPATH: where the other dependencies are) must be refused.
#
# MODELS and BATCHES override step 2's models and `--batch NAME=N` flags.
#
# Every step is bounded by `timeout`, so one that hangs cannot hold the machine. The script stops at the
# first step that fails, with one `error:` line naming it (exit 1), and at once when `nvidia-smi` is missing
# or lists no GPU. The CUDA libraries are looked up in the NVIDIA wheels of the Python environment
# (LD_LIBRARY_PATH).
set -uo pipefail

fail() {  # one error line, exit 1
    echo "error: $*" >&2
    exit 1
}
step() {  # step NAME COMMAND...: run one step; stop the script when it fails
    local name=$1
    shift
    echo "=== $name"
    "$@" || fail "step '$name' failed (exit $?); what it printed is above, the results so far are in $OUT"
}

OUT=${OUT:-cuda-check}
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
gpus=$(nvidia-smi -L 2>&1) || fail "nvidia-smi lists no GPU (${gpus:-no output}): this check needs an NVIDIA GPU"
[[ $'\n'$gpus == *$'\n'"GPU "* ]] || fail "nvidia-smi lists no GPU (${gpus:-no output}): this check needs an NVIDIA GPU"

mkdir -p "$OUT" || fail "cannot create OUT '$OUT'"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
tmp=$(mktemp -d) || fail "mktemp failed"

gpu() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
}
providers() {
    python3 - <<'EOF' | tee -a "$OUT/gpu.txt"
import onnx, onnxruntime as ort, numpy
print("onnxruntime", ort.__version__, ort.get_available_providers(), "onnx", onnx.__version__, "numpy", numpy.__version__)
EOF
}
bench_latency() {  # exits 1 when any model failed (its JSON keeps the failures)
    # shellcheck disable=SC2086  # MODELS and BATCHES are lists of words
    timeout "${BENCH_SECONDS:-330}" python3 tools/bench_latency.py --provider cuda --models ${MODELS:-resnet50 mnist} \
        ${BATCHES:---batch resnet50=32 --batch resnet50=1 --batch mnist=32} --repeats 2 --runs 40 --layer-runs 10 \
        --json "$OUT/latency_cuda.json" 2>&1 | tee "$OUT/bench_latency.txt"
}
run_cli() {  # one compress command on CUDA, bounded, logged
    echo "--- onnx-alds compress $*" | tee -a "$OUT/cli_cuda.txt"
    timeout "${CLI_SECONDS:-120}" python3 -m onnx_alds.cli compress "$@" 2>&1 | tee -a "$OUT/cli_cuda.txt"
}
cpu_refuses_cuda() {  # the machine's own onnxruntime, without a CUDA provider: exit 1, nothing written
    local found status
    found=$(env PYTHONPATH="$PWD${CPU_PYTHONPATH:+:$CPU_PYTHONPATH}" python3 -c \
        'import onnxruntime as o; print(o.__file__, o.get_available_providers())') || return
    echo "$found"
    if [[ $found == *CUDAExecutionProvider* ]]; then
        echo "skipped: that onnxruntime has the CUDA provider (set CPU_PYTHONPATH to a CPU-only one)"
        return 0
    fi
    env PYTHONPATH="$PWD${CPU_PYTHONPATH:+:$CPU_PYTHONPATH}" timeout 40 python3 -m onnx_alds.cli compress \
        onnx_alds/data/mnist_resnet.onnx -o "$tmp/refused.onnx" --keep-latency 0.5 --provider cuda \
        >"$tmp/refused.txt" 2>&1
    status=$?
    tail -3 "$tmp/refused.txt"
    echo "exit $status; written: $(ls "$tmp" | tr '\n' ' ')"
    [[ $status == 1 && ! -e $tmp/refused.onnx ]] || { echo "expected exit 1 and no output file"; return 1; }
}

step "the GPU" gpu
step "onnxruntime and its providers" providers
step "tools/bench_latency.py --provider cuda" bench_latency
step "compress the MNIST ResNet on CUDA" run_cli onnx_alds/data/mnist_resnet.onnx -o "$tmp/mnist.onnx" \
    --keep-flops 0.7 --provider cuda --bench-batch 256 --calibration onnx_alds/data/mnist_calibration.npz \
    --validate --validate-inputs onnx_alds/data/mnist_eval.npz
step "compress ResNet-50 on CUDA" run_cli models/cache/resnet50/model.onnx -o "$tmp/resnet50.onnx" \
    --keep-latency 0.9 --provider cuda --bench-batch 32 --validate --validate-random 32
step "a CPU-only onnxruntime refuses --provider cuda" cpu_refuses_cuda
echo "cuda check: every step passed; results in $OUT"
