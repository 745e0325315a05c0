#!/usr/bin/env bash
# Run HERE, on a machine that reaches PyPI: download the wheels the GPU check machine lacks
# into .gpu_wheels/ (git-ignored), for `bench/gpu_check.sh` to install there without an index.
#
# The GPU machine (Python 3.12, no package registry) has torch, transformers, accelerate and
# peft with their dependencies (numpy, pyyaml, tqdm, tokenizers, safetensors, huggingface-hub,
# fsspec, filelock, packaging, psutil, httpx). Everything else that the pipeline, the tests
# and the bench import travels as py3.12 manylinux x86_64 wheels, without their dependencies
# (the list below is the closure). wandb is left out (23 MiB with its dependencies): the
# project imports it only with logger=wandb, and the check runs logger=none; WITH_WANDB=1
# adds it. pyarrow is shipped slimmed (bench/slim_wheel.py). Every wheel plus the working
# tree must fit in the 64 MiB a command carries.
#
#   bash bench/gpu_wheels.sh            # or: make gpu-wheels
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${GPU_WHEELS_PYTHON:-.venv/bin/python}  # any Python with pip that reaches PyPI
DEST=${GPU_WHEELS_DIR:-.gpu_wheels}
PY_VERSION=${GPU_PYTHON_VERSION:-3.12}
LIMIT_MIB=${GPU_WHEELS_LIMIT_MIB:-55}
ABI="cp${PY_VERSION/./}"

PACKAGES=(
    hydra-core omegaconf                              # config (antlr4 is built below)
    datasets pyarrow dill multiprocess xxhash         # the sample store
    pandas python-dateutil tzdata pytz                # data sources
    requests urllib3 idna certifi charset-normalizer  # imported by datasets and gguf
    gguf
    pytest pluggy iniconfig pygments
)
if [[ "${WITH_WANDB:-0}" == 1 ]]; then
    PACKAGES+=(wandb protobuf pydantic pydantic-core typing-inspection annotated-types
               platformdirs cwevals googleapis-common-protos opentelemetry-api
               opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
               opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
               opentelemetry-exporter-http-transport)
fi
# Versions come from constraints.txt except where the GPU machine needs another one:
# datasets 5.0.0 accepts huggingface-hub < 2 (transformers 5.17 pins hub < 2; datasets 5.2
# needs hub >= 1.31), pandas 2.3.3 imports with numpy 1.x or 2.x (pandas 3 needs numpy 2)
# and needs pytz, which pandas 3 dropped.
declare -A OVERRIDE=([datasets]=5.0.0 [pandas]=2.3.3 [pytz]=2026.6)

normalize() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }

pinned() {  # the version constraints.txt pins for package $1
    local want
    want=$(normalize "$1")
    while IFS='=' read -r name _ version; do
        if [[ "$(normalize "$name")" == "$want" ]]; then echo "$version"; return; fi
    done < <(grep -E '^[A-Za-z0-9]' constraints.txt)
    echo "no pin for $1 in constraints.txt" >&2
    return 1
}

specs=()
for name in "${PACKAGES[@]}"; do
    specs+=("$name==${OVERRIDE[$name]:-$(pinned "$name")}")
done

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --dest "$DEST" --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 "${specs[@]}"
# antlr4-python3-runtime 4.9.3 (the one omegaconf 2.3 needs) exists only as an sdist; it is
# pure Python, so a wheel built here installs anywhere.
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" "antlr4-python3-runtime==$(pinned antlr4-python3-runtime)"
# pyarrow is 52 MiB: keep what datasets loads (~32 MiB), see bench/slim_wheel.py.
for wheel in "$DEST"/pyarrow-*.whl; do
    "$PY" bench/slim_wheel.py "$wheel" "$wheel.slim"
    mv "$wheel.slim" "$wheel"
done

echo "wheels in $DEST (Python $PY_VERSION, manylinux x86_64):"
du -b "$DEST"/*.whl | sort -rn | awk '{printf "  %7.2f MiB  %s\n", $1 / 1048576, $2}'
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
awk -v w="$wheels" -v t="$tree" -v limit="$LIMIT_MIB" 'BEGIN {
    printf "total: wheels %.1f MiB + working tree %.1f MiB = %.1f MiB (a command carries 64 MiB)\n",
        w / 1048576, t / 1048576, (w + t) / 1048576
    if (w / 1048576 > limit) { printf "over the %s MiB budget for wheels\n", limit; exit 1 }
}'
