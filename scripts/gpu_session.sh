#!/usr/bin/env bash
# One GPU session in one command: the GPU-only tests (one file per process, so a CUDA error in one
# cannot cascade), the whole-model benchmark, then optionally the reference sweep. Every step runs even
# when an earlier one fails; logs and JSON land in OUT_DIR, and a short table is printed last.
#
#   bash scripts/gpu_session.sh OUT_DIR [--reference]   # --reference: also python -m profiler.gpu_check quick
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
for f in tests/kernels/test_fused.py tests/kernels/test_rope.py tests/kernels/test_decode_attention.py \
         tests/kernels/test_mamba3_step.py tests/kernels/test_mamba3_chunk.py tests/model/test_model_cuda.py \
         tests/profiler/test_timing.py; do
    [ -f "$f" ] && step "$(basename "$f" .py)" python -m pytest "$f" -q -x -p no:cacheprovider
done
step bench_model python -m kernels.bench_model --json "$out/bench_model.json"
if [ "${2:-}" = "--reference" ]; then
    step reference python -m profiler.gpu_check --out "$out/reference" --steps quick --budget-s 300
fi

cat "$out/gpu.txt"
grep -v '^\s*$' "$out/bench_model.log" | tail -n 40
printf '%s\n' "${summary[@]}"
