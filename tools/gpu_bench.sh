#!/usr/bin/env bash
# GPU benchmark of the training stack (issue 7): the GPU tests and BENCHMARKS.md's training table.
#
#   tools/gpu_bench.sh wheels            # on a CPU machine with PyPI: the wheels the GPU image lacks -> .whl/
#   tools/gpu_bench.sh run OUT_DIR       # on the GPU machine: install .whl/, GPU tests, the table -> OUT_DIR
#   DEVICE=cpu SIZES=20m tools/gpu_bench.sh run OUT_DIR    # the same loop on CPU (a smoke run of this script)
#
# The GPU image (Python 3.12, torch 2.11 CUDA 13, transformers, sentencepiece, ...) lacks deepspeed,
# megatron-core, webdataset, submitit and a few of their dependencies: `wheels` builds/downloads them
# for Python 3.12 (deepspeed is an sdist: built here as a pure-Python wheel; its ops JIT-build there).
# With the device tool: carry [".whl"], command `tools/gpu_bench.sh run $OUT/gpu` (about 20 min of
# device time: split the table with SIZES=... over two calls if needed).
#
# `run` writes OUT_DIR/env.txt (nvidia-smi, versions), OUT_DIR/gpu_tests.log (pytest -m gpu, -s: the
# parity losses are printed), one OUT_DIR/<size>_z<stage>_<ac>.json per table row (the bench's JSON)
# and OUT_DIR/table.md (tools/bench_table.py), ready to paste into BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."

wheels() {
    mkdir -p .whl
    python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8 || exit 1
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl megatron-core==0.16.1 webdataset==1.0.2 submitit==1.5.4 braceexpand==0.1.7 hjson \
        pydantic==2.14.3 pydantic-core annotated-types typing-inspection || exit 1
    ls -la .whl
}

install() {
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 1
        export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
    export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
    python3 -c "import deepspeed, megatron.core, webdataset, bigtrain" || { echo "missing packages: run 'tools/gpu_bench.sh wheels' and carry .whl"; exit 1; }
}

# size zero_stage activation_checkpointing [extra overrides...]: one table row
ROWS_GPU=(
    "125m 1 none"
    "125m 3 none"
    "350m 3 none"
    "1.3b 1 none"
    "1.3b 1 selective"
    "1.3b 3 none"
    "1.3b 3 selective"
    "1.3b 3 full"
    "7b-4l 3 selective"
)
ROWS_CPU=(
    "20m 1 none" "20m 1 selective" "20m 1 full"
    "20m 2 none" "20m 2 selective" "20m 2 full"
    "20m 3 none" "20m 3 selective" "20m 3 full"
)

run() {
    local out=${1:?usage: tools/gpu_bench.sh run OUT_DIR}
    local device=${DEVICE:-cuda} steps=${STEPS:-10}
    mkdir -p "$out"
    install
    { date -u; nvidia-smi 2>&1 | head -15; python3 -c "import torch, deepspeed, megatron.core as m; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__, 'megatron-core', m.__version__)"; } \
        > "$out/env.txt" 2>&1
    if [ "$device" = cuda ]; then
        python3 -m pytest -m gpu -s -q tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -5
    fi
    local rows=("${ROWS_GPU[@]}") fast=(train.compile=true model.attention_backend=flash)
    [ "$device" = cpu ] && rows=("${ROWS_CPU[@]}") && fast=()
    for row in "${rows[@]}"; do
        read -r size stage ac extra <<< "$row"
        if [ -n "${SIZES:-}" ] && [[ " $SIZES " != *" $size "* ]]; then continue; fi
        local name="${size}_z${stage}_${ac}"
        echo "== $name"
        python3 -m bigtrain.cli bench --size "$size" --device "$device" --steps "$steps" --json \
            --out "$out/$name.json" parallel.zero_stage="$stage" model.activation_checkpointing="$ac" \
            "${fast[@]}" ${extra:-} run.dir="/tmp/bench-runs/$name" > /dev/null 2> "$out/$name.log" \
            || { echo "   failed: tail of $out/$name.log"; tail -5 "$out/$name.log"; continue; }
        tail -4 "$out/$name.log"
    done
    python3 tools/bench_table.py "$out"/*.json > "$out/table.md" && cat "$out/table.md"
}

case "${1:-}" in
    wheels) wheels ;;
    run) shift; run "$@" ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac
