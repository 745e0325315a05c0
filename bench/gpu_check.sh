#!/usr/bin/env bash
# The GPU check. Runs ON the GPU machine (Python 3.12 with torch, transformers, accelerate and
# peft; no package registry), from the repository root, with .gpu_wheels/ carried along
# (`make gpu-wheels` builds it on a machine that reaches PyPI). In under 9 minutes (5 on an H200):
#   install    the wheels into a temporary directory (pip --no-index --no-deps --target)
#   gpu-tests  pytest -m gpu over the test files that have gpu-marked tests
#   pipeline   the tiny pipeline (the test suite's fast overrides, stage=all method=eapo)
#   multi-gpu  the same under `accelerate launch` with 2 processes (only where 2+ GPUs exist)
#   bench      preference-step tokens/s and MFU on a ~1B Llama (bench/bench_gpu_preference.py)
#   bench-large the same at 128 prompts per step, eager then torch.compile'd (8 prompts are
#              launch-bound on an H200; compile has been seen to pay only at this size)
#   throughput SmolLM2-sized SFT/preference/score steps vs the measured matmul peak
#              (bench/bench_throughput.py, eager and fast variants)
# Each check has its own timeout and a failed one does not stop the rest. The end is one line
# per check, `CHECK <name>: PASS|FAIL|SKIP (<detail>) <seconds> s`, and the exit status is 1
# if any check failed. Full logs go to $OUT/gpu_check (the device tool brings $OUT back) or,
# without $OUT, to a temporary directory.
#
#   bash bench/gpu_check.sh                          # or: make gpu-check
#   GPU_CHECK_ALLOW_CPU=1 bash bench/gpu_check.sh    # rehearsal on a CPU (bench --tiny;
#                                                    # GPU_CHECK_MULTI=1: 2 CPU ranks too)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS_DIR:-.gpu_wheels}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/eapo_gpu_check.XXXXXX")
LOGS=${OUT:+$OUT/gpu_check}
LOGS=${LOGS:-$WORK/logs}
SITE=$WORK/site
mkdir -p "$LOGS" "$SITE"

export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=$WORK/hf WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

SUMMARY=()
FAILED=0

check() {  # check NAME TIMEOUT_S COMMAND...: run it, show its tail, record its summary line
    local name=$1 limit=$2 log="$LOGS/$1.log" start=$SECONDS rc detail status=PASS
    shift 2
    echo "=== $name (timeout $limit s): $*"
    # timeout runs programs, not functions: the check functions are exported to a bash child.
    timeout --kill-after=15 "$limit" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    rc=$?
    tail -n "${GPU_CHECK_TAIL:-12}" "$log" | sed 's/^/  | /'
    detail=$("detail_${name//-/_}" "$log" 2>&1 | tail -n 1)
    if (( rc == 124 || rc == 137 )); then
        status=FAIL detail="timed out after $limit s"
    elif (( rc != 0 )); then
        status=FAIL detail="exit $rc${detail:+; $detail}"
    fi
    [[ $status == FAIL ]] && FAILED=1
    SUMMARY+=("CHECK $name: $status${detail:+ ($detail)} $((SECONDS - start)) s")
}

skip() { SUMMARY+=("CHECK $1: SKIP ($2) 0 s"); }

last_error() { grep -E '(Error|Exception|error):' "$1" | tail -n 1 | cut -c1-160; }

# ------------------------------------------------------------------------------- checks
install_wheels() {
    local wheels=("$WHEELS"/*.whl)
    [[ -e ${wheels[0]} ]] || { echo "no wheels in $WHEELS: run make gpu-wheels first"; return 1; }
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}"
    else  # no pip: a wheel is a zip of the installed tree
        "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
            "$SITE" "${wheels[@]}"
    fi
    "$PY" -c 'import datasets, hydra, pandas, pyarrow, pytest' || return 1
    echo "${#wheels[@]} wheels"
}
detail_install() { grep -Eo '^[0-9]+ wheels$' "$1" || last_error "$1"; }

gpu_tests() {
    local files
    mapfile -t files < <(grep -lE 'mark\.gpu|pytestmark.*gpu' tests/test_*.py)
    (( ${#files[@]} )) || { echo "no gpu-marked tests"; return 1; }
    "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider "${files[@]}" 2>&1 | tee "$WORK/pytest.out"
    local rc=${PIPESTATUS[0]}
    (( rc == 0 )) || return "$rc"
    if [[ $HAS_CUDA == 1 ]] && ! grep -q ' passed' "$WORK/pytest.out"; then
        echo "error: no gpu test ran (all skipped)"
        return 1
    fi
}
detail_gpu_tests() {
    grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)' "$1" | tail -n 1 \
        | sed -E 's/=+//g; s/ in [0-9.]+s.*//; s/^ +//'
}

pipeline() {  # pipeline RUN_DIR [launcher args...]: the tiny job, then its metrics.json
    local run_dir=$1
    shift
    local fast
    fast=$("$PY" -c 'from tests.conftest import FAST; print(" ".join(FAST))') || return 1
    # grad_accum 2: the same global batch splits evenly over 1 or 2 processes.
    # shellcheck disable=SC2086 # FAST holds space-free Hydra overrides
    "$@" -m eapo_exp $fast stage=all method=eapo train.sft.grad_accum=2 \
        train.preference.grad_accum=2 "paths.cache_dir=$run_dir/cache" \
        "hydra.run.dir=$run_dir/job" || return 1
    summarize_metrics "$run_dir/job"
}

summarize_metrics() {  # one line: where it ran and on how many processes; fails if wrong
    "$PY" - "$1" "${EXPECT_PROCESSES:-1}" "$GPU_CHECK_ALLOW_CPU" <<'EOF'
import json, sys
from pathlib import Path
found = sorted(Path(sys.argv[1]).rglob("metrics.json"))
if len(found) != 1:
    sys.exit(f"metrics error: {len(found)} metrics.json files (expected 1)")
runtime = json.loads(found[0].read_text()).get("runtime", {})
device, processes = str(runtime.get("device", "?")), runtime.get("num_processes", "?")
print(f"device {device}, {processes} process(es), 1 metrics.json")
if not device.startswith("cuda") and sys.argv[3] != "1":
    sys.exit(f"metrics error: ran on {device}, not on the GPU")
if str(processes) != sys.argv[2]:
    sys.exit(f"metrics error: {processes} processes, expected {sys.argv[2]}")
EOF
}
detail_pipeline() { grep -E '^device .*metrics.json$' "$1" || last_error "$1"; }
detail_multi_gpu() { detail_pipeline "$1"; }

bench() {
    local args=()
    [[ $HAS_CUDA == 1 ]] || args=(--tiny --device cpu)
    "$PY" -m bench.bench_gpu_preference "${args[@]}"
}
detail_bench() { grep -Eo '[0-9,]+ tokens/s, [0-9.]+ TFLOP/s, MFU [^,]+' "$1" || last_error "$1"; }

bench_large() {  # eager, then compiled: two processes, so the second pays its compilation
    local args=(--prompts 128 --steps 10)
    [[ $HAS_CUDA == 1 ]] || args=(--tiny --device cpu --prompts 4)
    "$PY" -m bench.bench_gpu_preference "${args[@]}" || return 1
    "$PY" -m bench.bench_gpu_preference "${args[@]}" --compile
}
detail_bench_large() {
    local mfu
    mfu=$(grep -Eo '(MFU [0-9.]+%|MFU n/a)' "$1" | paste -sd' ')
    [[ -n $mfu ]] && echo "eager / compiled: $mfu" || last_error "$1"
}

throughput() {  # SmolLM2-sized: eager vs fast, share of the measured matmul peak
    EAPO_BENCH_VARIANTS=${EAPO_BENCH_VARIANTS:-eager,fast} "$PY" -m bench throughput
}
detail_throughput() { grep -E '^(preference K=3|score) +fast' "$1" | tr -s ' ' | paste -sd';' \
    || last_error "$1"; }

# --------------------------------------------------------------------------------- main
echo "=== machine"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
"$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.device_count()} GPU(s)")
for name in ("transformers", "accelerate", "peft", "huggingface-hub", "numpy", "fsspec"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} missing")
EOF
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
HAS_CUDA=$(( GPUS > 0 ))
export PY WORK SITE WHEELS HAS_CUDA GPU_CHECK_ALLOW_CPU=${GPU_CHECK_ALLOW_CPU:-0}
export -f install_wheels gpu_tests pipeline summarize_metrics bench bench_large throughput
if [[ $HAS_CUDA == 0 && "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]]; then
    echo "no CUDA device visible (GPU_CHECK_ALLOW_CPU=1 rehearses the check on a CPU)"
    exit 1
fi

check install "${TIMEOUT_INSTALL:-60}" install_wheels
check gpu-tests "${TIMEOUT_TESTS:-150}" gpu_tests
check pipeline "${TIMEOUT_PIPELINE:-120}" pipeline "$WORK/single" "$PY"
if (( GPUS >= 2 )) || [[ "${GPU_CHECK_MULTI:-0}" == 1 ]]; then
    # GPU_CHECK_MULTI=1 with GPU_CHECK_ALLOW_CPU=1 rehearses it on CPU ranks (gloo).
    (( GPUS >= 2 )) || export ACCELERATE_USE_CPU=1
    export EXPECT_PROCESSES=2
    check multi-gpu "${TIMEOUT_MULTI:-150}" pipeline "$WORK/multi" \
        "$PY" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no
    export EXPECT_PROCESSES=1
else
    skip multi-gpu "$GPUS GPU(s)"
fi
check bench "${TIMEOUT_BENCH:-120}" bench
check bench-large "${TIMEOUT_BENCH_LARGE:-300}" bench_large
check throughput "${TIMEOUT_THROUGHPUT:-120}" throughput

echo "=== summary (logs: $LOGS)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
