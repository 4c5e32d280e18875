#!/usr/bin/env bash
# The GPU check that fits a borrowed GPU (issue 14): under 10 minutes on one H100/H200, every phase bounded.
#
#   tools/gpu_bench.sh wheels            # once, on a CPU machine with PyPI: the wheels the GPU image lacks -> .whl/
#   tools/gpu_check.sh OUT_DIR           # on the GPU machine (device tool: carry [".whl"], command
#                                        #   `tools/gpu_check.sh $OUT/gpu`, timeout_s 600)
#   DEVICE=cpu tools/gpu_check.sh OUT    # the dry run on CPU: the same phases, a 20m model, GPU tests skipped
#
# Phases (seconds: the `timeout` each gets; 560 s in all, leaving the machine's start within 10 minutes):
#   install  50   pip install --target the carried wheels (deepspeed, megatron-core, webdataset, submitit, ...)
#   tests   330   pytest -m gpu tests/test_gpu.py (bf16 debug + 125M training, fused AdamW + reshard resume,
#                 initial weights CPU = GPU, flash vs math and compile parity, bf16 export parity,
#                 one host sync per step)
#   z1, z3  2x90  bigtrain bench --size 1.3b, bf16, flash attention, torch.compile, ZeRO-1 then ZeRO-3
#                 (3 measured steps, no bare baseline: tools/gpu_bench.sh runs the full table with it)
# A phase that runs out of time is killed and recorded; the next one still runs.
#
# Writes OUT_DIR/phases.tsv (phase, seconds, exit status; 124 = timed out), env.txt (nvidia-smi,
# versions), gpu_tests.log + gpu_tests.xml (JUnit), <row>.json + <row>.log per bench row, table.md
# (tools/bench_table.py), ready for BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
printf "phase\tseconds\tstatus\n" > "$OUT/phases.tsv"

phase() {  # phase NAME TIMEOUT_S COMMAND...: run it bounded, record its time and status
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@"
    status=$?
    printf "%s\t%s\t%s\n" "$name" $((SECONDS - start)) "$status" >> "$OUT/phases.tsv"
    return 0
}

install_wheels() {
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || return 1
    fi
    python3 -c "import deepspeed, megatron.core, webdataset, bigtrain" \
        || { echo "missing packages: run 'tools/gpu_bench.sh wheels' here and carry .whl"; return 1; }
}

environment() {
    date -u
    nvidia-smi 2>&1 | head -15
    python3 -c "import torch, deepspeed, megatron.core as m; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'deepspeed', deepspeed.__version__, 'megatron-core', m.__version__)"
}

gpu_tests() {
    # the 125m bench test is left to tools/gpu_bench.sh: the 1.3B rows below exercise the bench
    python3 -m pytest -m gpu -s -q tests/test_gpu.py -p no:cacheprovider -k "not bench_125m" \
        --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1
    local status=$?
    tail -5 "$OUT/gpu_tests.log"
    return $status
}

bench_row() {  # bench_row NAME key=value...: one bench row -> OUT/NAME.json, OUT/NAME.log
    local name=$1
    shift
    python3 -m bigtrain.cli bench --json --out "$OUT/$name.json" "$@" run.dir="/tmp/gpu-check/$name" \
        > /dev/null 2> "$OUT/$name.log"
    local status=$?
    tail -3 "$OUT/$name.log"
    return $status
}

[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
export PYTHONPATH="$PWD:/tmp/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
phase install 50 bash -c "$(declare -f install_wheels); install_wheels"
environment > "$OUT/env.txt" 2>&1
export OUT
phase tests 330 bash -c "$(declare -f gpu_tests); gpu_tests"
if [ "$DEVICE" = cuda ]; then
    row=(--size 1.3b --device cuda --steps 3 --warmup 3 --bare none train.precision=bf16
         model.attention_backend=flash train.compile=true)
else  # the same phases on a CPU: a 2-layer 20m model, PyTorch's CPU flash kernel, no compile
    row=(--size 20m --device cpu --steps 2 --warmup 1 --bare none train.precision=fp32
         model.attention_backend=flash model.num_layers=2)
fi
name=$([ "$DEVICE" = cuda ] && echo 1.3b_bf16_flash_compile || echo 20m_fp32_flash)
for stage in 1 3; do
    phase "z${stage}" 90 bash -c "$(declare -f bench_row); bench_row ${name}_z${stage} ${row[*]} parallel.zero_stage=$stage"
done
python3 tools/bench_table.py "$OUT"/*.json > "$OUT/table.md" 2>> "$OUT/phases.tsv"
cat "$OUT/phases.tsv" "$OUT/table.md"
