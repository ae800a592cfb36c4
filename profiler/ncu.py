"""Optional Nsight Compute mode: DRAM bytes and FLOPs of one decode step from hardware counters, stored
beside the analytic figures as `hw_bytes` and `hw_flops`.

`ncu` profiles a fresh process (`python -m profiler ncu-step`) that runs one eager decode step inside an
NVTX range; only kernels in that range are counted, summed over kernels. FLOPs are the scalar
floating-point instructions (an FMA counts 2) plus the tensor-core path's math ops, which NVIDIA does not
document in FLOPs: they are converted by a calibration GEMM of known size profiled the same way (its
2·n³ FLOPs over its counted ops), so no per-architecture factor is assumed.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass

from profiler.provenance import PROJECT_ROOT

STEP_RANGE = "ssmplan_step"
CALIB_RANGE = "ssmplan_calib"
CALIB_N = 2048
TIMEOUT_S = 300
DRAM = ("dram__bytes_read.sum", "dram__bytes_write.sum")
SCALAR_FLOPS = {  # metric: FLOPs per thread instruction
    "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum": 1,
    "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum": 1,
    "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum": 2,
    "smsp__sass_thread_inst_executed_op_hadd_pred_on.sum": 1,
    "smsp__sass_thread_inst_executed_op_hmul_pred_on.sum": 1,
    "smsp__sass_thread_inst_executed_op_hfma_pred_on.sum": 2,
}
TENSOR_OPS = ("sm__ops_path_tensor_src_bf16_dst_fp32.sum", "sm__ops_path_tensor_src_fp16_dst_fp32.sum",
              "sm__ops_path_tensor_src_fp16_dst_fp16.sum")
METRICS = (*DRAM, *SCALAR_FLOPS, *TENSOR_OPS)


@dataclass(frozen=True)
class HwCounts:
    hw_bytes: float | None
    hw_flops: float | None
    note: str | None = None


def parse_raw_csv(text: str) -> list[dict[str, float]]:
    """Kernels of `ncu --csv --page raw --print-units base` output: one dict of metric → value each.
    Lines before the CSV header (the profiled program's own output, ncu's notices) are skipped."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        return []
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, body = rows[0], rows[1:]
    kernels = []
    for r in body:
        if len(r) != len(header) or not r[0].strip().isdigit():
            continue  # the units row, or a stray line
        values = {}
        for name, cell in zip(header, r):
            try:
                values[name] = float(cell.replace(",", ""))
            except ValueError:
                continue
        kernels.append(values)
    return kernels


def _sum(kernels: list[dict[str, float]], metric: str) -> float | None:
    seen = [k[metric] for k in kernels if metric in k]
    return sum(seen) if seen else None


def tensor_ops(kernels: list[dict[str, float]]) -> float:
    return sum(_sum(kernels, m) or 0.0 for m in TENSOR_OPS)


def combine(step: list[dict[str, float]], calib: list[dict[str, float]], calib_flops: float) -> HwCounts:
    """Bytes and FLOPs of the step's kernels; tensor ops converted by the calibration GEMM."""
    if not step:
        return HwCounts(None, None, "ncu reported no kernels for the decode step")
    parts = [_sum(step, m) for m in DRAM]
    hw_bytes = sum(parts) if all(p is not None for p in parts) else None
    scalar = sum((_sum(step, m) or 0.0) * f for m, f in SCALAR_FLOPS.items())
    ops, calib_ops = tensor_ops(step), tensor_ops(calib)
    note = None
    if ops and calib_ops:
        hw_flops = scalar + ops * calib_flops / calib_ops
    elif ops:
        hw_flops, note = None, "ncu counted tensor-core ops but the calibration GEMM gave none to convert them"
    else:
        hw_flops = scalar
    return HwCounts(hw_bytes, hw_flops, note)


def available() -> str | None:
    return shutil.which("ncu")


def _profile(part: str, args: list[str], nvtx_range: str) -> list[dict[str, float]]:
    exe = available()
    cmd = [exe, "--target-processes", "all", "--nvtx", "--nvtx-include", f"{nvtx_range}/", "--metrics",
           ",".join(METRICS), "--csv", "--page", "raw", "--print-units", "base",
           sys.executable, "-m", "profiler", "ncu-step", "--part", part, *args]
    out = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"ncu exited with {out.returncode}: {tail[0][:300]}")
    return parse_raw_csv(out.stdout)


def measure_decode_step(*, ref, req, batch: int, context: int) -> HwCounts:
    """Counters of one decode step of `ref` at (batch, context) on the request's device."""
    if available() is None:
        return HwCounts(None, None, "ncu not found; hardware counters not measured")
    args = ["--model", ref.folder or ref.preset, "--device", req.device, "--dtype", req.dtype, "--impl", req.impl,
            "--batch", str(batch), "--context", str(context), "--seed", str(req.seed)]
    try:
        step = _profile("step", args, STEP_RANGE)
        calib = _profile("calib", ["--device", req.device], CALIB_RANGE)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return HwCounts(None, None, f"ncu failed: {exc}"[:500])
    return combine(step, calib, 2.0 * CALIB_N**3)


def run_part(*, part: str, model: str | None, device: str, dtype: str, impl: str, batch: int, context: int,
             seed: int) -> None:
    """The profiled program: one decode step (or the calibration GEMM) inside its NVTX range."""
    import torch

    from profiler import models

    dev = torch.device(device)
    torch.cuda.set_device(dev)
    if part == "calib":
        a = torch.randn(CALIB_N, CALIB_N, dtype=torch.bfloat16, device=dev)
        b = torch.randn(CALIB_N, CALIB_N, dtype=torch.bfloat16, device=dev)
        a @ b
        torch.cuda.synchronize()
        with torch.cuda.nvtx.range(CALIB_RANGE):
            a @ b
            torch.cuda.synchronize()
        return
    ref = models.resolve(model)
    m = models.build(ref, device=dev, dtype=dtype, impl=impl, seed=seed)
    cache = m.allocate_cache(batch=batch, max_context=context + 1)
    token = torch.zeros(batch, dtype=torch.int64, device=dev)
    cache.pos.fill_(context)
    m.decode_step(token, cache)  # warm-up: compilation and autotuning stay outside the range
    cache.pos.fill_(context)
    torch.cuda.synchronize()
    with torch.cuda.nvtx.range(STEP_RANGE):
        m.decode_step(token, cache)
        torch.cuda.synchronize()
