#!/usr/bin/env bash
# The GPU rows of the latency benchmark (docs/benchmarks.md), in one command, on a machine
# with an NVIDIA GPU and a CUDA build of PyTorch. From the repository root:
#
#   bash benchmarks/gpu_rows.sh check
#       names any Python package that does not import, or a missing GPU, and exits 3; else 0
#
#   bash benchmarks/gpu_rows.sh run OUT_DIR
#       1. `check`, then
#       2. where TensorRT and pycuda import: python -m export.trt for fp32, fp16 and int8,
#          each under its own $BUILD_TIMEOUT (default 300) seconds, with the profile the
#          latency run asks for (batch 1..max($BATCHES), the runtime's default lengths),
#          cached in OUT_DIR/cache ($EMOTECH_CACHE for every step): OUT_DIR/build.log
#       3. python -m benchmarks.latency --device cuda for every engine that can run there
#          (torch fp32/fp16; ort with onnxruntime-gpu; trt with TensorRT + pycuda, loading
#          the engines of step 2; the others are listed as skipped), the librosa +
#          PyTorch-eager baseline on the same GPU, batch sizes $BATCHES (default 1,8,64),
#          3-s clips and 12-word texts: OUT_DIR/latency.*
#       4. the tests marked requires_cuda / requires_trt: OUT_DIR/tests.log
#       Bounded by $LATENCY_TIMEOUT (default 420) and $TESTS_TIMEOUT (default 300: the
#       requires_trt tests build small engines of a tiny model) seconds; latency.json/.md
#       are rewritten after the baseline and after each engine's rows at each batch size,
#       so a run cut short keeps what it measured (marked partial, and the plot is drawn
#       from it). An engine whose build failed or timed out is built again by the latency
#       run within its own timeout.
#       Exit status: 0, or 1 if a step failed or timed out (the logs say which).
#
#   bash benchmarks/gpu_rows.sh build OUT_DIR
#       step 2 of `run` alone (engines in OUT_DIR/cache, log in OUT_DIR/build.log).
#
#   bash benchmarks/gpu_rows.sh wheels DIR [PYTHON_VERSION]
#       On a machine with a package registry: the manylinux x86_64 wheels of the packages a
#       GPU image with PyTorch, ONNX Runtime, tokenizers, SciPy, scikit-learn and numba
#       usually lacks (soundfile, soxr, librosa and what they need), for CPython
#       PYTHON_VERSION (default 3.12). On the GPU machine, before `run`:
#         python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#         export PYTHONPATH=/tmp/site
#
# The repository is used in place (PYTHONPATH), not installed: the [export] extra pins the
# CPU build of torch that CI uses, and the GPU machine brings its own CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# Imported by the engines, the harness and the baseline. (module -> pip name)
MODULES="numpy:numpy onnxruntime:onnxruntime tokenizers:tokenizers soundfile:soundfile soxr:soxr torch:torch onnx:onnx
librosa:librosa safetensors:safetensors matplotlib:matplotlib psutil:psutil threadpoolctl:threadpoolctl pytest:pytest"
# What `wheels` fetches: soundfile, soxr, librosa and the requirements of theirs such images lack.
WHEELS="soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 librosa==0.11.0 audioread==3.1.0 decorator==5.3.1
pooch==1.9.0 platformdirs==4.14.9 lazy_loader==0.6 msgpack==1.2.4"

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

check_imports() {
    local missing=()
    for pair in $MODULES; do
        python3 -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "gpu_rows: these packages do not import here: ${missing[*]}" >&2
        echo "gpu_rows: pip install them, or on a machine without a registry see 'wheels' in $0" >&2
        exit 3
    fi
    python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "gpu_rows: torch $(python3 -c 'import torch; print(torch.__version__)') sees no CUDA GPU" >&2
        exit 3
    }
}

run() {
    local out=$1
    mkdir -p "$out"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    check_imports
    { nvidia-smi || true; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >"$out/env.txt" 2>&1
    local rc=0 st
    export EMOTECH_CACHE="$out/cache"  # TensorRT engines and timing caches of this run
    build_engines "$out" || rc=1
    timeout -k 10 "${LATENCY_TIMEOUT:-420}" python3 -m benchmarks.latency --engine torch,ort,trt --precision fp32,fp16,int8 --device cuda \
        --batch "${BATCHES:-1,8,64}" --audio-seconds 3 --text-words 12 --retries 1 --max-other-cpu 50 --out "$out" \
        2>&1 | tee "$out/latency.log" || {
        st=${PIPESTATUS[0]} rc=1  # read PIPESTATUS first: any other command resets it
        echo "gpu_rows: the latency run $([ "$st" = 124 ] && echo "timed out" || echo "failed (exit $st)")" >&2
        # a run cut short wrote latency.json/.md at its last checkpoint, but no plot
        [ -s "$out/latency.json" ] && python3 -c 'import json, sys; from pathlib import Path; from benchmarks import report
p = Path(sys.argv[1]); report.write_plot(json.loads((p / "latency.json").read_text()), p)' "$out" || true
    }
    timeout -k 10 "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m "requires_cuda or requires_trt" -rs tests \
        2>&1 | tee "$out/tests.log" || {
        st=${PIPESTATUS[0]} rc=1
        echo "gpu_rows: the GPU tests $([ "$st" = 124 ] && echo "timed out" || echo "failed (exit $st)")" >&2
    }
    return $rc
}

# TensorRT engines first, each under its own timeout: a first run on a GPU then spends the
# latency run's time measuring, not building. --max-batch gives the profile that
# EmotionRecognizer.load(engine="trt", max_batch=max(BATCHES)) asks for, so the latency run
# finds them in the cache.
build_engines() {
    local out=$1 rc=0 st max_batch
    if ! python3 -c "import tensorrt, pycuda.driver" 2>/dev/null; then
        echo "gpu_rows: TensorRT or pycuda does not import: no engines built (the trt rows are listed as skipped)" | tee "$out/build.log"
        return 0
    fi
    max_batch=$(python3 -c 'import sys; print(max(int(b) for b in sys.argv[1].split(",")))' "${BATCHES:-1,8,64}")
    : >"$out/build.log"
    for precision in fp32 fp16 int8; do
        timeout -k 10 "${BUILD_TIMEOUT:-300}" python3 -m export.trt --precision "$precision" --max-batch "$max_batch" --device cuda \
            2>&1 | tee -a "$out/build.log" || {
            st=${PIPESTATUS[0]} rc=1
            echo "gpu_rows: the TensorRT $precision engine build $([ "$st" = 124 ] && echo "timed out" || echo "failed (exit $st)")" | tee -a "$out/build.log" >&2
        }
    done
    return $rc
}

wheels() {
    local dir=$1 py=${2:-3.12}
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    python3 -m pip download --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir" $WHEELS
}

case "${1:-}" in
    check) [ $# -eq 1 ] || usage; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; check_imports; echo "gpu_rows: ready" ;;
    run) [ $# -eq 2 ] || usage; run "$2" ;;
    build) [ $# -eq 2 ] || usage; mkdir -p "$2"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" EMOTECH_CACHE="$2/cache"; build_engines "$2" ;;
    wheels) [ $# -ge 2 ] || usage; wheels "$2" "${3:-3.12}" ;;
    *) usage ;;
esac
