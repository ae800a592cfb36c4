#!/usr/bin/env bash
# One GPU session in one command: the GPU-only tests (one file per process, so a CUDA error in one
# cannot cascade), the whole-model benchmark (with the bf16-state rows), the matrix-vector benchmark,
# the per-kernel traces and, when ncu is installed, Nsight Compute on the scan kernels; then optionally
# the reference sweep.
# Every step runs even when an earlier one fails; logs and JSON land in OUT_DIR, and a short table is
# printed last. Set SSMPLAN_GIT_REVISION to the commit the tree holds (the copy's .git may be stale).
#
#   bash scripts/gpu_session.sh OUT_DIR [--reference [BUDGET_S [STEPS]]]   # also the reference sweep
#                                                                          (STEPS: quick, or quick,paper)
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
for f in tests/kernels/test_fused.py tests/kernels/test_gemv.py tests/kernels/test_rope.py tests/kernels/test_attention.py \
         tests/kernels/test_mamba3_step.py tests/kernels/test_mamba3_chunk.py tests/kernels/test_mamba3_segmented.py \
         tests/kernels/test_mamba3_ssd.py \
         tests/model/test_model_cuda.py \
         tests/profiler/test_timing.py; do
    [ -f "$f" ] && step "$(basename "$f" .py)" timeout 150 python -m pytest "$f" -q -p no:cacheprovider
done
step bench_model timeout 240 python -m kernels.bench_model --json "$out/bench_model.json"
step bench_gemv timeout 150 python -m kernels.bench_gemv --json "$out/bench_gemv.json"
step bench_gemv_b128 timeout 240 python -m kernels.bench_gemv --rows 128 --sweep --sweep-rows 128 \
    --json "$out/bench_gemv_b128.json"
step bench_segmented timeout 300 python -m kernels.bench --segmented-only --json "$out/bench_segmented.json"
# short prompts' segments walk a few chunks: the plain and segmented scans at other chunk sizes and warps
step bench_segmented_tiles timeout 300 python -m kernels.bench --segmented-only --sweep --cases 1x512 1x2048 \
    --json "$out/bench_segmented_tiles.json"
# the chunk-parallel scan (kernels/mamba3/ssd.py) against the model's prefill path, short and long prompts
step bench_ssd timeout 300 python -m kernels.bench --ssd-only --json "$out/bench_ssd.json"
step bench_model_long timeout 120 python -m kernels.bench_model --models llama-3.2-1b --batch 1 --context 4096 16384 \
    --prefill 0 0 --json "$out/bench_model_long.json"
# batch-1 prefill of a long prompt: the segmented scan against the plain one ("fused glue, plain scan"),
# Mamba-2's segmented prefill included (not timed yet)
step bench_prefill_long timeout 240 python -m kernels.bench_model --models mamba3-siso-1.5b mamba3-mimo-1.5b \
    mamba2-1.5b --batch 1 --context 16 --no-bf16-state --prefill 1 16384 --json "$out/bench_prefill_long.json"
step bench_prefill_8k timeout 150 python -m kernels.bench_model --models mamba2-1.5b --batch 1 --context 16 \
    --no-bf16-state --prefill 1 8192 --json "$out/bench_prefill_8k.json"
# batch-1 prefill of a short prompt, launch-bound: the prologue and rotary kernels against PyTorch
step bench_prefill_short timeout 200 python -m kernels.bench_model --models mamba3-siso-1.5b llama-3.2-1b hybrid-1.5b \
    --batch 1 --context 16 --no-bf16-state --prefill 1 512 --json "$out/bench_prefill_short.json"
# ours against the public Mamba-3 SISO Triton kernels, when a state-spaces/mamba checkout's mamba_ssm is on PYTHONPATH
if python -c "import mamba_ssm.ops.triton.mamba3.mamba3_siso_combined" >/dev/null 2>&1; then
    step bench_public timeout 300 python -m kernels.bench_public --json "$out/bench_public.json"
fi
# where the time goes: every kernel of a step, and Nsight Compute on the scan kernels when ncu is there
step trace_b1 timeout 240 python -m kernels.trace --model mamba3-siso-1.5b mamba3-mimo-1.5b llama-3.2-1b --batch 1 \
    --json "$out/trace_b1.json"
step trace_b128 timeout 240 python -m kernels.trace --model mamba3-siso-1.5b mamba3-mimo-1.5b llama-3.2-1b \
    --batch 128 --json "$out/trace_b128.json"
step trace_prefill timeout 200 python -m kernels.trace --model mamba3-siso-1.5b --prefill 128 512 --steps 2 \
    --json "$out/trace_prefill.json"
# a short prefill's wall time against its kernels' sum and count: how host-bound it is
step trace_prefill_short timeout 150 python -m kernels.trace --model mamba3-siso-1.5b llama-3.2-1b hybrid-1.5b \
    --prefill 1 512 --steps 3 --json "$out/trace_prefill_short.json"
if command -v ncu >/dev/null; then
    step ncu_scan timeout 300 ncu -k regex:'_chunk_scan|_step_kernel' -c 5 --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis python -m kernels.trace --ops
fi
if [ "${2:-}" = "--reference" ]; then
    step reference python -m profiler.gpu_check --out "$out/reference" --steps "${4:-quick}" --budget-s "${3:-300}"
fi

cat "$out/gpu.txt"
grep -v '^\s*$' "$out/bench_model.log" | tail -n 40
grep -v '^\s*$' "$out/bench_model_long.log" | tail -n 10
grep prefill "$out/bench_prefill_long.log" | tail -n 8
printf '%s\n' "${summary[@]}"
