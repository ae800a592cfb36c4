"""Stores written through `store.repo` for the app tests and the page benchmark.

A GPU (with measured and datasheet peaks) and a CPU (none); an SSM whose decode step is flat in context
and a Transformer whose step grows with its KV cache; finished, failed, cancelled and running runs;
telemetry; a price book. Values are seeded and shaped like the profiler's, not measured.
"""

from __future__ import annotations

import itertools
import random

from store import repo
from store.db import session

GIB = 2**30

GPU = dict(identity="GPU-11111111-test", kind="gpu", name="NVIDIA H100 80GB HBM3", host="gpu-host",
           memory_bytes=80 * GIB, driver_version="570.00", cuda_version="12.8", compute_capability="9.0",
           sm_count=132, measured_copy_bw_bytes_per_s=2.9e12, measured_bf16_flops_per_s=7.1e14,
           datasheet_key="H100-SXM", datasheet_bw_bytes_per_s=3.35e12, datasheet_bf16_flops_per_s=9.89e14,
           datasheet_tdp_w=700.0)
CPU = dict(identity="cpu-test-host", kind="cpu", name="Test CPU (2 cores)", host="cpu-host", memory_bytes=8 * GIB)
EXTRA_GPUS = [
    dict(identity=f"GPU-extra-{i}", kind="gpu", name=name, memory_bytes=mem * GIB,
         measured_copy_bw_bytes_per_s=bw, measured_bf16_flops_per_s=fl)
    for i, (name, mem, bw, fl) in enumerate((("NVIDIA H200", 141, 4.3e12, 7.5e14),
                                              ("NVIDIA L4", 24, 2.7e11, 1.0e14)))
]

# preset: (family, params, weight bytes, fixed state bytes per sequence, KV bytes per token)
MODELS = {
    "mamba3-siso-tiny": ("mamba3-siso", 10_000_000, 20_000_000, 1_048_576, 0),
    "transformer-tiny": ("transformer", 11_000_000, 22_000_000, 0, 8_192),
    "hybrid-tiny": ("hybrid", 10_500_000, 21_000_000, 524_288, 1_024),
    "mamba3-mimo-tiny": ("mamba3-mimo", 10_000_000, 20_000_000, 2_097_152, 0),
    "mamba2-tiny": ("mamba2", 9_000_000, 18_000_000, 1_048_576, 0),
}
PRICES = [
    dict(gpu="H100-SXM", tier="on-demand", usd_per_gpu_hour=3.0, source="test", as_of="2026-01"),
    dict(gpu="H100-SXM", tier="spot", usd_per_gpu_hour=1.5, source="test", as_of="2026-01"),
]


def _model(s, preset: str):
    family, params, wbytes, fixed, per_token = MODELS[preset]
    return repo.upsert_model_spec(s, preset=preset, family=family, config={"preset": preset, "d_model": 64},
                                  param_count=params, weight_bytes=wbytes, state_bytes_fixed=fixed,
                                  kv_bytes_per_token=per_token, max_context=65_536)


def _point(run_id, dev, spec, *, phase, batch, length, dtype, rng, peak_bytes_per_s, memory_bytes) -> dict:
    """One measured-looking point: bytes from weights + state, time from bandwidth, some spread."""
    state = spec.state_bytes_fixed + spec.kv_bytes_per_token * length
    if phase == "decode":
        bytes_moved = spec.weight_bytes + batch * state
        flops = 2.0 * spec.param_count * batch + 4.0 * batch * length * 64 * (spec.kv_bytes_per_token > 0)
        tokens = batch
    else:
        bytes_moved = spec.weight_bytes + batch * state
        flops = 2.0 * spec.param_count * batch * length
        tokens = batch * length
    seconds = max(bytes_moved / peak_bytes_per_s, flops / 5e14) * rng.uniform(1.2, 1.6) + 2e-5
    p50 = seconds * 1e3
    peak_mem = spec.weight_bytes + batch * state * 2
    oom = peak_mem > memory_bytes
    peak_bw, peak_flops = dev.measured_copy_bw_bytes_per_s, dev.measured_bf16_flops_per_s
    return dict(
        run_id=run_id, device_id=dev.id, model_id=spec.id,
        point_key=f"{spec.preset}/{dtype}/{phase}/b{batch}/l{length}",
        phase=phase, dtype=dtype, implementation="chunked", batch=batch,
        prompt_len=length if phase == "prefill" else 0, context_len=length if phase == "decode" else 0,
        gen_tokens=1 if phase == "decode" else 0,
        latency_p50_ms=None if oom else p50, latency_p10_ms=None if oom else p50 * 0.97,
        latency_p90_ms=None if oom else p50 * 1.05, n_samples=0 if oom else 20,
        tokens_per_s=None if oom else tokens / seconds, peak_mem_bytes=int(peak_mem),
        weight_bytes=spec.weight_bytes, state_bytes=int(batch * state), bytes_moved=bytes_moved, flops=flops,
        achieved_bw_bytes_per_s=None if oom else bytes_moved / seconds, arithmetic_intensity=flops / bytes_moved,
        mbu=None if oom or not peak_bw else bytes_moved / seconds / peak_bw,
        mfu=None if oom or not peak_flops else flops / seconds / peak_flops,
        energy_j=None, energy_per_token_j=None, mean_power_w=None, oom=oom, gpu_shared=False,
    )


def _grid(s, run, dev, presets, *, dtypes=("bfloat16",), batches=(1, 4, 16), prompts=(128, 512, 2048),
          contexts=(256, 1024, 4096, 16384), seed=0, peak_bytes_per_s=None) -> int:
    rng = random.Random(seed)
    bw = peak_bytes_per_s or dev.measured_copy_bw_bytes_per_s or 2e10
    rows = []
    for preset, dtype in itertools.product(presets, dtypes):
        spec = _model(s, preset)
        for b, p in itertools.product(batches, prompts):
            rows.append(_point(run.id, dev, spec, phase="prefill", batch=b, length=p, dtype=dtype, rng=rng,
                               peak_bytes_per_s=bw, memory_bytes=dev.memory_bytes))
        for b, c in itertools.product(batches, contexts):
            rows.append(_point(run.id, dev, spec, phase="decode", batch=b, length=c, dtype=dtype, rng=rng,
                               peak_bytes_per_s=bw, memory_bytes=dev.memory_bytes))
    return repo.add_measurements(s, rows=rows)


def _done_run(s, dev, presets, label, **grid) -> tuple[int, int]:
    run = repo.create_run(s, request={"models": list(presets), "device": dev.kind}, label=label)
    n = _grid(s, run, dev, presets, **grid)
    repo.update_run(s, run_id=run.id, status="running", device_id=dev.id, points_total=n)
    repo.update_run(s, run_id=run.id, status="done", progress=1.0, points_done=n, eta_s=0.0)
    return run.id, n


def seeded(url: str) -> dict:
    """A GPU run and a CPU run of an SSM and a Transformer, GPU telemetry, and a price book."""
    with session(url) as s:
        gpu = repo.upsert_device(s, **GPU)
        cpu = repo.upsert_device(s, **CPU)
        gpu_run, _ = _done_run(s, gpu, ["mamba3-siso-tiny", "transformer-tiny"], "gpu grid")
        cpu_run, _ = _done_run(s, cpu, ["mamba3-siso-tiny"], "cpu check", batches=(1, 2), contexts=(64, 256),
                            prompts=(32, 64))
        run = repo.get_run(s, run_id=gpu_run)
        repo.add_telemetry(s, samples=[
            dict(run_id=gpu_run, device_id=gpu.id, t=run.started_at, power_w=300.0 + i, sm_clock_mhz=1980.0,
                 mem_clock_mhz=2619.0, mem_used_bytes=(10 + i) * GIB, gpu_util=0.9, temperature_c=55.0)
            for i in range(5)
        ])
        repo.save_prices(s, rows=PRICES)
    return {"gpu_run": gpu_run, "cpu_run": cpu_run}


def reference(url: str) -> dict:
    """The shipped reference bundles (real GPU measurements, real model configs)."""
    from pathlib import Path

    from store.bundle import seed_reference

    with session(url) as s:
        return {"runs": seed_reference(s, folder=Path(__file__).resolve().parents[2] / "data" / "reference")}


def cpu_only(url: str) -> dict:
    """Only CPU measurements: no peaks, no telemetry, no prices."""
    with session(url) as s:
        cpu = repo.upsert_device(s, **CPU)
        run, _ = _done_run(s, cpu, ["mamba3-siso-tiny", "transformer-tiny"], "cpu only", batches=(1, 2),
                        contexts=(64, 256), prompts=(32, 64))
    return {"cpu_run": run}


def failed(url: str) -> dict:
    """A run that failed part-way (some points stored), one cancelled before it started, one running."""
    with session(url) as s:
        gpu = repo.upsert_device(s, **GPU)
        run = repo.create_run(s, request={"models": ["transformer-tiny"], "device": "cuda"}, label="fails")
        n = _grid(s, run, gpu, ["transformer-tiny"], batches=(1,), contexts=(256,), prompts=(128,))
        repo.update_run(s, run_id=run.id, status="running", device_id=gpu.id, points_total=12, points_done=n)
        repo.update_run(s, run_id=run.id, status="failed", progress=n / 12,
                        error="CUDA out of memory while allocating the KV cache for batch 64 at 65,536 tokens")
        cancelled = repo.create_run(s, request={"models": ["mamba3-siso-tiny"]}, label="never started")
        repo.request_cancel(s, run_id=cancelled.id)
        running = repo.create_run(s, request={"models": ["mamba3-siso-tiny"]}, label="in flight")
        repo.update_run(s, run_id=running.id, status="running", device_id=gpu.id, points_total=10, points_done=3,
                        progress=0.3, eta_s=42.0)
    return {"failed_run": run.id, "cancelled_run": cancelled.id, "running_run": running.id}


def large(url: str, n_measurements: int) -> int:
    """About `n_measurements` points: repeated sweeps over 3 GPUs × 5 models × 2 dtypes × a wide grid."""
    batches = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    prompts = tuple(2**k for k in range(6, 16)) + (48_000, 64_000, 96_000, 128_000, 160_000)
    contexts = tuple(2**k for k in range(6, 18)) + tuple(range(3000, 3008))
    per_sweep = 3 * len(MODELS) * 2 * len(batches) * (len(prompts) + len(contexts))
    written = 0
    with session(url) as s:
        devs = [repo.upsert_device(s, **GPU)] + [repo.upsert_device(s, **d) for d in EXTRA_GPUS]
        for sweep in range(max(1, round(n_measurements / per_sweep))):
            for dev in devs:
                written += _done_run(s, dev, list(MODELS), f"sweep {sweep}", dtypes=("bfloat16", "float16"),
                                     batches=batches, prompts=prompts, contexts=contexts, seed=sweep)[1]
        repo.save_prices(s, rows=PRICES)
    return written
