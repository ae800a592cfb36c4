#!/usr/bin/env bash
# One GPU session in one command: the GPU-only tests (one file per process, so a CUDA error in one
# cannot cascade), the whole-model benchmark, then optionally the reference sweep. Every step runs even
# when an earlier one fails; logs and JSON land in OUT_DIR, and a short table is printed last.
#
#   bash scripts/gpu_session.sh OUT_DIR [--reference [BUDGET_S]]   # also the quick reference sweep
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [--reference]}
mkdir -p "$out"
summary=()

step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.log, remember the exit status and duration
    local name=$1; shift
    local t0=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    summary+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$out/$name.log")")")
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1
for f in tests/kernels/test_fused.py tests/kernels/test_rope.py tests/kernels/test_attention.py \
         tests/kernels/test_mamba3_step.py tests/kernels/test_mamba3_chunk.py tests/model/test_model_cuda.py \
         tests/profiler/test_timing.py; do
    [ -f "$f" ] && step "$(basename "$f" .py)" timeout 150 python -m pytest "$f" -q -p no:cacheprovider
done
step bench_model timeout 240 python -m kernels.bench_model --json "$out/bench_model.json"
step bench_model_long timeout 120 python -m kernels.bench_model --models llama-3.2-1b --batch 1 --context 4096 16384 \
    --prefill 0 0 --json "$out/bench_model_long.json"
if [ "${2:-}" = "--reference" ]; then
    step reference python -m profiler.gpu_check --out "$out/reference" --steps quick --budget-s "${3:-300}"
fi

cat "$out/gpu.txt"
grep -v '^\s*$' "$out/bench_model.log" | tail -n 40
grep -v '^\s*$' "$out/bench_model_long.log" | tail -n 10
printf '%s\n' "${summary[@]}"
