"""What the Export page hands out: the raw measurements as CSV with every column documented (the finance
table and its column documentation are the planner's, `app.planning.FINANCE_COLUMNS`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from app.planning import measurements_csv
from profiler.metrics import UNSTABLE_SPREAD, unstable_mask

# column → meaning with its unit; the CSV holds exactly these, in this order
MEASUREMENT_COLUMNS: dict[str, str] = {
    "id": "measurement id in this store",
    "run_id": "profiling run id in this store",
    "run_uid": "globally unique run id (kept across stores)",
    "run_label": "the run's label (e.g. reference quick, or the one given when it was started)",
    "run_status": "the run's status when exported: queued, running, done, failed, cancelled",
    "git_revision": "ssmplan git revision the profiler ran",
    "device_id": "device id in this store",
    "device_name": "GPU (or CPU) name as the driver reports it",
    "device_kind": "gpu or cpu",
    "device_memory_bytes": "device memory, bytes",
    "device_datasheet_key": "datasheet matched to the device (empty: unknown, so no datasheet figures)",
    "model_id": "model spec id in this store",
    "preset": "model preset or checkpoint folder name",
    "family": "mamba3-siso, mamba3-mimo, mamba2, transformer or hybrid",
    "param_count": "parameters (count)",
    "state_bytes_fixed": "per-sequence cache bytes that do not grow with context (SSM state), bytes",
    "kv_bytes_per_token": "per-sequence cache bytes per token of context (KV cache; 0 for SSMs), bytes",
    "max_context": "longest context the model supports, tokens",
    "point_key": "the point's key, unique within its run",
    "phase": "prefill or decode",
    "dtype": "weights and activations dtype",
    "implementation": "code path measured (e.g. chunked, triton, cuda-graph)",
    "batch": "sequences in the call (count)",
    "prompt_len": "prefill: prompt tokens per sequence; 0 for decode",
    "context_len": "decode: tokens each sequence holds during the step; 0 for prefill",
    "gen_tokens": "tokens generated per sequence by the timed call",
    "latency_p50_ms": "median latency of the call (TTFT for prefill, one step for decode), milliseconds",
    "latency_p10_ms": "10th percentile latency, milliseconds",
    "latency_p90_ms": "90th percentile latency, milliseconds",
    "n_samples": "timed calls behind the percentiles (count)",
    "tokens_per_s": "throughput: batch / step (decode), batch × prompt / TTFT (prefill), tokens per second",
    "peak_mem_bytes": "allocator peak during the phase, bytes",
    "weight_bytes": "model weights, bytes",
    "state_bytes": "state / KV cache held for the batch, bytes",
    "bytes_moved": "bytes moved per call by the analytic cost model, bytes",
    "flops": "floating-point operations per call by the analytic cost model",
    "achieved_bw_bytes_per_s": "bytes_moved / latency, bytes per second",
    "arithmetic_intensity": "flops / bytes_moved, FLOP per byte",
    "mbu": "achieved bandwidth / the device's measured copy bandwidth (read + written; a read-mostly step can "
           "pass 1 by a few %; empty: peak unknown)",
    "mfu": "achieved FLOP/s / the device's measured bf16 GEMM rate (empty: peak unknown)",
    "energy_j": "energy over the timed region (NVML counter delta), joules; empty on CPU",
    "energy_per_token_j": "energy per generated or prefilled token, joules",
    "mean_power_w": "mean board power over the timed region, watts",
    "oom": "true when the point ran out of memory (no timing)",
    "gpu_shared": "true when another process used the GPU during the measurement",
    "timing_unstable": f"true when the timed calls' p90 was above {UNSTABLE_SPREAD} × their p10: the timing moved "
                       "(another load, a throttled clock, calls too short to settle), so read the p50 with care",
    "hw_bytes": "bytes from Nsight Compute counters when that mode ran, bytes",
    "hw_flops": "FLOPs from Nsight Compute counters when that mode ran",
    "notes": "free text the profiler attached",
    "created_at": "when the point was stored, UTC",
}


DERIVED_COLUMNS = ("timing_unstable",)  # computed on export from the stored columns


def measurement_table(measurements: pd.DataFrame, run_ids: Sequence[int] = ()) -> pd.DataFrame:
    """The points of `run_ids` (all when empty), in MEASUREMENT_COLUMNS order."""
    rows = measurements[measurements["run_id"].isin(list(run_ids))] if run_ids else measurements
    rows = rows.assign(timing_unstable=unstable_mask(rows))
    return rows.reindex(columns=list(MEASUREMENT_COLUMNS))


def measurement_csv(measurements: pd.DataFrame, run_ids: Sequence[int] = ()) -> str:
    return measurements_csv(measurement_table(measurements, run_ids))


def documentation(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"column": list(columns), "meaning": list(columns.values())})
