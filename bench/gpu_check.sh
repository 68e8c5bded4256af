#!/usr/bin/env bash
# The GPU check of issue 23, ready for the day a GPU is lent: the CUDA kernels' parity tests on the
# real device, the four benches with --device=cuda (ours, our references and PyTorch eager on the
# same GPU), then the whole gpu-marked suite with the time that is left.
#
#   bash bench/gpu_check.sh [--install] [--cuda=12|13] [--no-torch] [--torch-venv]
#                           [--skip=tests,benches,suite]
#
# Run in the repository root (with the device tool: command "bash bench/gpu_check.sh",
# timeout_s about 560, which leaves the 15 minutes of device time room for one shorter rerun, e.g.
# --skip=tests,suite). Results go to $OUT (default /tmp/gpu_check_out), at most 8 files:
#   summary.txt      one line per step: its exit status (124: hit its time limit) and seconds,
#                    then the goals' ratios read from the JSON
#   env.txt          nvidia-smi, the Python, CuPy / Numba / PyTorch versions, the GPU's name
#   tests.txt        the pytest output
#   bench_ops.json, bench_train.json, bench_decode.json, bench_quant.json   each bench's JSON
#   benches.log      the benches' progress lines (stderr)
# Every step runs under `timeout` (its own cap, and never past GPU_CHECK_SECONDS, default 480, from
# the start) and a failing step does not stop the next.
#
# Python: by default $PYTHON (python3), used in place when it already imports cupy and
# numba.cuda (the lent machines' image holds CuPy, numba-cuda and PyTorch, and reaches no package
# registry), with the repository on PYTHONPATH. --install (or an interpreter without them)
# makes a venv and runs pip install -e '.[cuda12,test]' (--cuda=13: '.[cuda13,test]'), which
# needs a package registry. PyTorch's side runs wherever torch imports with CUDA; --torch-venv
# installs torch in a second venv (a registry again, and minutes); --no-torch leaves it out.
set -u

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
TESTS=$OUT/tests.txt
BENCH_LOG=$OUT/benches.log
: > "$SUMMARY"; : > "$TESTS"; : > "$BENCH_LOG"
BUDGET=${GPU_CHECK_SECONDS:-480}
START=$(date +%s)
PYTHON=${PYTHON:-python3}
SCRATCH=${GPU_CHECK_SCRATCH:-/tmp/gpu_check}
mkdir -p "$SCRATCH"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

INSTALL=0; CUDA=12; TORCH=auto; SKIP=""
for arg in "$@"; do
    case $arg in
        --install) INSTALL=1 ;;
        --cuda=12|--cuda=13) CUDA=${arg#--cuda=} ;;
        --no-torch) TORCH=off ;;
        --torch-venv) TORCH=venv ;;
        --skip=*) SKIP=${arg#--skip=} ;;
        *) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

# Caps in seconds per step (the whole run also stops at BUDGET)
CAP_INSTALL=240; CAP_TORCH_VENV=300; CAP_TESTS=120
CAP_OPS=60; CAP_TRAIN=110; CAP_DECODE=75; CAP_QUANT=75; CAP_SUITE=240

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

# step NAME CAP LOG command...: run under timeout, stdout and stderr to LOG, one summary line
step() {
    local name=$1 cap=$2 log=$3; shift 3
    local remaining limit t0 rc note=""
    remaining=$(left)
    limit=$(( cap < remaining ? cap : remaining ))
    if (( limit < 10 )); then
        echo "$name rc=skipped (no time left)" >> "$SUMMARY"
        return 0
    fi
    echo "== $name (limit ${limit}s)"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" > "$log" 2>&1
    rc=$?
    (( rc == 124 || rc == 137 )) && note=" (hit its ${limit}s limit)"
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))$note" >> "$SUMMARY"
    tail -n 3 "$log"
    return 0
}

# ---- the Python ----------------------------------------------------------------------------
if (( INSTALL == 0 )) && ! "$PYTHON" -c "import cupy, numba.cuda" > /dev/null 2>&1; then
    echo "$PYTHON lacks cupy or numba.cuda: installing into a venv" | tee -a "$SUMMARY"
    INSTALL=1
fi
if (( INSTALL == 1 )); then
    step install "$CAP_INSTALL" "$SCRATCH/install.log" bash -c "
        '$PYTHON' -m venv '$SCRATCH/venv' &&
        '$SCRATCH/venv/bin/pip' install -q -e '.[cuda$CUDA,test]'"
    cat "$SCRATCH/install.log" >> "$TESTS"
    if "$SCRATCH/venv/bin/python" -c "import cupy, numba.cuda" > /dev/null 2>&1; then
        PYTHON=$SCRATCH/venv/bin/python
    else
        echo "the venv does not import cupy and numba.cuda: going on with $PYTHON" >> "$SUMMARY"
    fi
fi

TORCH_ARGS=()
if [[ $TORCH == off ]]; then
    TORCH_ARGS=(--torch=false)
elif [[ $TORCH == venv ]]; then
    step torch_venv "$CAP_TORCH_VENV" "$SCRATCH/torch_venv.log" bash -c "
        '$PYTHON' -m venv '$SCRATCH/torchvenv' &&
        '$SCRATCH/torchvenv/bin/pip' install -q torch numpy numba safetensors tiktoken tqdm"
    CUDA_TORCH="import torch, sys; sys.exit(not torch.cuda.is_available())"
    if "$SCRATCH/torchvenv/bin/python" -c "$CUDA_TORCH" > /dev/null 2>&1; then
        TORCH_ARGS=(--torch_python="$SCRATCH/torchvenv/bin/python")
    else
        echo "the torch venv has no torch with CUDA: PyTorch's side left out" >> "$SUMMARY"
        TORCH_ARGS=(--torch=false)
    fi
elif ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
        > /dev/null 2>&1; then
    echo "torch with CUDA does not import in $PYTHON: PyTorch's side left out" >> "$SUMMARY"
    TORCH_ARGS=(--torch=false)
fi

PYTEST_ARGS=(-q -p no:cacheprovider)
if "$PYTHON" -c "import pytest_timeout" > /dev/null 2>&1; then
    PYTEST_ARGS+=(--timeout=120)           # one hung test must not take the whole step
fi

# ---- the machine ---------------------------------------------------------------------------
{
    nvidia-smi 2>&1
    echo "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version)' 2>&1)"
    "$PYTHON" - <<'EOF' 2>&1
import importlib
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "not available:", e)
try:
    import cupy
    print("gpu:", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
          "cuda runtime", cupy.cuda.runtime.runtimeGetVersion())
    from numba import cuda
    print("numba sees:", cuda.get_current_device().name)
except Exception as e:
    print("gpu query failed:", e)
EOF
} > "$OUT/env.txt" 2>&1
head -n 20 "$OUT/env.txt"

# ---- the kernels' parity on the device (the stand-in steps aside when a GPU answers) ---------
if ! skipped tests; then
    step tests_cuda "$CAP_TESTS" "$SCRATCH/tests_cuda.log" \
        "$PYTHON" -m pytest tests/cuda tests/test_on_device.py "${PYTEST_ARGS[@]}"
    { echo "==== pytest tests/cuda tests/test_on_device.py"; cat "$SCRATCH/tests_cuda.log"; } \
        >> "$TESTS"
fi

# ---- the benches, --device=cuda --------------------------------------------------------------
bench() {   # bench NAME CAP args...: stdout's last line (the JSON) to $OUT/NAME.json
    local name=$1 cap=$2; shift 2
    step "$name" "$cap" "$SCRATCH/$name.out" \
        "$PYTHON" "bench/$name.py" --device=cuda "$@"
    grep -v '^{' "$SCRATCH/$name.out" | sed "s/^/[$name] /" >> "$BENCH_LOG"
    grep '^{' "$SCRATCH/$name.out" | tail -n 1 > "$OUT/$name.json"
}
if ! skipped benches; then
    bench bench_ops "$CAP_OPS" --repeats=10 ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"}
    bench bench_train "$CAP_TRAIN" --configs=c --repeats=5 --rounds=1 \
        ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"}
    bench bench_decode "$CAP_DECODE" --models=b --new_tokens=32 --nocache_tokens_b=4 \
        --prefixes=64,1024 --steps=8 --repeats=2 ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"}
    bench bench_quant "$CAP_QUANT" --models=gpt2_small --schemes=f32,f16,q8_0,q4_0 --steps=16 \
        --repeats=2 --files=false
fi

# ---- the whole gpu-marked suite with the time left ------------------------------------------
if ! skipped suite; then
    step tests_gpu "$CAP_SUITE" "$SCRATCH/tests_gpu.log" \
        "$PYTHON" -m pytest -m gpu -x "${PYTEST_ARGS[@]}"
    { echo "==== pytest -m gpu -q -x"; cat "$SCRATCH/tests_gpu.log"; } >> "$TESTS"
fi

# ---- issue 23's goals, read from the JSON ---------------------------------------------------
"$PYTHON" - "$OUT" <<'EOF' >> "$SUMMARY" 2>&1
import json, os, sys
out = sys.argv[1]

def read(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d

train, decode, quant = read("bench_train"), read("bench_decode"), read("bench_quant")
print("device:", get(train, "device", "name") or get(decode, "device", "name")
      or get(quant, "device", "name"))
for label, value, goal in [
        ("train GPT-2 small B8 T1024 tokens/s vs PyTorch eager",
         get(train, "results", "c", "speedup_vs_torch"), 0.7),
        ("batch-1 decode GPT-2 small cached vs PyTorch eager",
         get(decode, "results", "b", "speedup_vs_torch", "cached"), 1.0),
        ("Q4_0 decode vs our float16", get(quant, "results", "gpt2_small", "q4_0_vs_f16_speed"),
         1.5)]:
    verdict = "missing" if value is None else ("met" if value >= goal else "not met")
    print(f"goal {label}: {value} (goal >= {goal}: {verdict})")
EOF
echo "total seconds=$(( $(date +%s) - START ))" >> "$SUMMARY"
cat "$SUMMARY"
