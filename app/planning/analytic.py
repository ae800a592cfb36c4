"""An analytic stand-in dataset: what the profiler would store, computed from the roofline, not measured.

For development, tests and the press-claims check until the reference measurements ship. Every row is
tagged `implementation="analytic-roofline"`, its run is labelled as analytic, and `n_samples` is 0, so
nothing downstream can mistake it for a measurement. Sizes, bytes moved and FLOPs come from the team's
cost model (`model.cost`) for the exact preset, as the profiler stores them.

Per decode step or prefill call, on a GPU with datasheet bandwidth BW and bf16 peak F:

    t = t0 + bytes / (BW_EFF · BW) + flops / (eff · GEMM_FRACTION · F)

Constants from our H100 anchors: device copy reaches 3.00 of 3.35 TB/s and a bf16 GEMM 795 of 989
TFLOP/s. The public Mamba-3 SISO 1.5B decode step (CUDA graph) takes 2.37 ms at batch 1 and 8.04 ms at
batch 128; a line through those two points over the bytes moved gives t0 ≈ 1.0 ms and ≈ 76 % of the
copy bandwidth, applied to every architecture alike (a static KV cache with CUDA graphs, as serving
engines run). Decode FLOPs run at the GEMM rate (eff 1). Prefill runs at 45 % of the GEMM rate for the
SSMs (the public Mamba-3 module measured 0.36–0.49 of 795 TFLOP/s) and 75 % for the Transformer (the
paper's vLLM prefill times imply ≈ 0.77); MIMO prefill at 0.85 × SISO's rate (paper: 0.60 s vs 0.51 s
at 128×512); a hybrid at 0.5 (a guess: mostly SSM layers). Timings get 2 % seeded log-normal noise.
"""

from __future__ import annotations

import numpy as np

from model import cost
from model.config import Config, get_config, to_dict
from store.datasheets import DATASHEETS, GpuSheet

IMPLEMENTATION = "analytic-roofline"
NOTE = "analytic stand-in (roofline with anchor efficiencies); not a measurement"
COPY_FRACTION = 3.00 / 3.35
GEMM_FRACTION = 795 / 989
BW_EFF = 0.76 * COPY_FRACTION
T0_DECODE_MS = 1.0
T0_PREFILL_MS = 2.0
PREFILL_FLOP_EFF = {"mamba3-siso": 0.45, "mamba3-mimo": 0.45 * 0.85, "mamba2": 0.45, "transformer": 0.75,
                    "hybrid": 0.5}
GIB = 2**30
WORKSPACE_BYTES = 2 * GIB
PREFILL_TOKEN_LIMIT = 262_144  # batch × prompt beyond which a prefill call OOMs on activations
NOISE_SIGMA = 0.02
DEFAULT_PRESETS = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "llama-3.2-1b")
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
PREFILL_BATCHES = (1, 4, 16, 64)
PREFILL_PROMPTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def spec_row(cfg: Config) -> dict:
    """The store's model-spec fields for a preset, from the cost model (bf16 weights)."""
    return dict(preset=cfg.name, family=cfg.family, config=to_dict(cfg), param_count=cost.param_count(cfg),
                weight_bytes=cost.weight_bytes(cfg), state_bytes_fixed=cost.state_bytes_fixed(cfg),
                kv_bytes_per_token=cost.kv_bytes_per_token(cfg), max_context=cfg.max_context, source="analytic")


def _time_ms(cfg: Config, sheet: GpuSheet, phase: str, c: cost.Cost) -> float:
    t0, eff = (T0_DECODE_MS, 1.0) if phase == "decode" else (T0_PREFILL_MS, PREFILL_FLOP_EFF[cfg.family])
    return (t0 + 1e3 * c.bytes / (BW_EFF * sheet.bw_bytes_per_s)
            + 1e3 * c.flops / (eff * GEMM_FRACTION * sheet.bf16_flops_per_s))


def _power_w(sheet: GpuSheet, phase: str, nbytes: float, t_ms: float) -> float:
    if phase == "prefill":
        return 0.93 * sheet.tdp_w
    return sheet.tdp_w * (0.17 + 0.83 * min(1.0, nbytes / (t_ms * 1e-3) / sheet.bw_bytes_per_s))


def analytic_points(cfg: Config, sheet: GpuSheet, *, seed: int = 0) -> list[dict]:
    """Measurement rows (without run/device/model ids) for one preset on one GPU."""
    rng = np.random.default_rng(seed)
    weight = cost.weight_bytes(cfg)
    rows = []
    for phase, batches, lengths in (("decode", DECODE_BATCHES, DECODE_CONTEXTS),
                                    ("prefill", PREFILL_BATCHES, PREFILL_PROMPTS)):
        for b in batches:
            for L in lengths:
                held = L + 1 if phase == "decode" else L
                state = b * cost.state_bytes_per_seq(cfg, held)
                oom = weight + state + WORKSPACE_BYTES > sheet.memory_bytes or (
                    phase == "prefill" and b * L > PREFILL_TOKEN_LIMIT) or L > cfg.max_context
                row = dict(point_key=f"{cfg.name}/{phase}/b{b}/L{L}", phase=phase, dtype="bfloat16",
                           implementation=IMPLEMENTATION, batch=b,
                           prompt_len=L if phase == "prefill" else 0,
                           context_len=L if phase == "decode" else 0,
                           gen_tokens=1 if phase == "decode" else 0, n_samples=0, oom=oom, gpu_shared=False,
                           weight_bytes=weight, state_bytes=state, notes=NOTE)
                if not oom:
                    c = cost.decode_cost(cfg, b, L) if phase == "decode" else cost.prefill_cost(cfg, b, L)
                    t = _time_ms(cfg, sheet, phase, c) * float(np.exp(rng.normal(0.0, NOISE_SIGMA)))
                    power = _power_w(sheet, phase, c.bytes, t)
                    tokens = b if phase == "decode" else b * L
                    row.update(
                        latency_p50_ms=t, latency_p10_ms=t * 0.98, latency_p90_ms=t * 1.03,
                        tokens_per_s=tokens / (t * 1e-3), peak_mem_bytes=int(weight + state + GIB),
                        bytes_moved=float(c.bytes), flops=float(c.flops),
                        achieved_bw_bytes_per_s=c.bytes / (t * 1e-3), arithmetic_intensity=c.flops / c.bytes,
                        mbu=c.bytes / (t * 1e-3) / sheet.bw_bytes_per_s,
                        mfu=c.flops / (t * 1e-3) / sheet.bf16_flops_per_s, mean_power_w=power,
                        energy_j=power * t * 1e-3, energy_per_token_j=power * t * 1e-3 / tokens,
                    )
                rows.append(row)
    return rows


def write_analytic_store(s, *, gpu: str = "H100-SXM", presets: tuple[str, ...] | None = None, seed: int = 0) -> int:
    """Write an analytic device, model specs, one done run and its rows into a store; returns the run id."""
    from store import repo

    sheet = DATASHEETS[gpu]
    dev = repo.upsert_device(
        s, identity=f"analytic-{gpu}", kind="gpu", name=f"{sheet.name} (analytic)", host="analytic",
        memory_bytes=int(sheet.memory_bytes), datasheet_key=sheet.key, datasheet_bw_bytes_per_s=sheet.bw_bytes_per_s,
        datasheet_bf16_flops_per_s=sheet.bf16_flops_per_s, datasheet_tdp_w=sheet.tdp_w,
    )
    run = repo.create_run(s, request={"analytic": True, "gpu": gpu, "seed": seed}, label=f"analytic stand-in {gpu}",
                          host="analytic", git_revision=None, versions={"planner": "analytic"})
    rows = []
    for i, preset in enumerate(presets or DEFAULT_PRESETS):
        cfg = get_config(preset)
        spec = repo.upsert_model_spec(s, **spec_row(cfg))
        for r in analytic_points(cfg, sheet, seed=seed + i):
            rows.append(dict(run_id=run.id, device_id=dev.id, model_id=spec.id, **r))
    repo.add_measurements(s, rows=rows)
    repo.update_run(s, run_id=run.id, status="done", device_id=dev.id, points_total=len(rows),
                    points_done=len(rows), progress=1.0)
    return run.id
