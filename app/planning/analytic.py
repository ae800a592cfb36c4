"""An analytic stand-in dataset: what the profiler would store, computed from the roofline, not measured.

For development, tests and the press-claims check until the reference measurements ship. Every row is
tagged `implementation="analytic-roofline"`, its run is labelled as analytic, and `n_samples` is 0, so
nothing downstream can mistake it for a measurement.

Per step or prefill call, on a GPU with datasheet bandwidth BW and bf16 peak F:

    t = t0 + bytes / (BW_EFF · BW) + flops / (FLOP_EFF · F)

Constants from our H100 anchors: device copy reaches 3.00 of 3.35 TB/s and a bf16 GEMM 795 of 989
TFLOP/s. The public Mamba-3 SISO 1.5B decode step (CUDA graph) takes 2.37 ms at batch 1 and 8.04 ms at
batch 128; a line through those two points over the bytes moved gives t0 ≈ 1.0 ms and ≈ 76 % of the
copy bandwidth, applied to every architecture alike (a static KV cache with CUDA graphs, as serving
engines run). Prefill runs at 45 % of the GEMM rate for the SSMs (the public Mamba-3 module measured
0.36–0.49 of 795 TFLOP/s) and 75 % for the Transformer (the paper's vLLM prefill times imply ≈ 0.77);
MIMO prefill is 0.85 × SISO's rate (paper: 0.60 s vs 0.51 s at 128×512). Timings get 2 % seeded
log-normal noise. Sizes follow the team's model spec: Mamba-3 1.5B keeps 48.75 MiB of fp32 state per
sequence; Llama-3.2-1B keeps 32 KiB of bf16 KV per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from store.datasheets import DATASHEETS, GpuSheet

IMPLEMENTATION = "analytic-roofline"
NOTE = "analytic stand-in (roofline with anchor efficiencies); not a measurement"
COPY_FRACTION = 3.00 / 3.35
GEMM_FRACTION = 795 / 989
BW_EFF = 0.76 * COPY_FRACTION
T0_DECODE_MS = 1.0
T0_PREFILL_MS = 2.0
ACT_BYTES_PER_SEQ_STEP = 0.5e6  # decode activations per sequence per step
ACT_BYTES_PER_PREFILL_TOKEN = 1.9e6
GIB = 2**30
WORKSPACE_BYTES = 2 * GIB
PREFILL_TOKEN_LIMIT = 262_144  # batch × prompt beyond which a prefill call OOMs on activations
NOISE_SIGMA = 0.02
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
PREFILL_BATCHES = (1, 4, 16, 64)
PREFILL_PROMPTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class AnalyticModel:
    preset: str
    family: str
    param_count: int
    weight_bytes: int
    state_bytes_fixed: int
    kv_bytes_per_token: int
    max_context: int
    flops_per_token: float  # dense part, 2 × matmul parameters (+ scan)
    attn_flops_per_token_ctx: float  # decode: × context per token; prefill: × L²/2 per sequence
    prefill_flop_eff: float
    config: dict = field(default_factory=dict)

    def state_bytes(self, context: int) -> int:
        return self.state_bytes_fixed + self.kv_bytes_per_token * context

    def spec_row(self) -> dict:
        return dict(preset=self.preset, family=self.family, config=self.config, param_count=self.param_count,
                    weight_bytes=self.weight_bytes, state_bytes_fixed=self.state_bytes_fixed,
                    kv_bytes_per_token=self.kv_bytes_per_token, max_context=self.max_context,
                    source="analytic")


MODELS: dict[str, AnalyticModel] = {
    m.preset: m
    for m in (
        AnalyticModel("mamba3-siso-1.5b", "mamba3-siso", 1_494_700_000, 2_989_400_000, 51_118_080, 0, 1 << 20,
                      3.08e9, 0.0, 0.45, {"d_model": 2048, "n_layer": 24, "d_state": 128, "headdim": 64}),
        AnalyticModel("mamba3-mimo-1.5b", "mamba3-mimo", 1_494_700_000, 2_989_400_000, 52_297_728, 0, 1 << 20,
                      3.31e9, 0.0, 0.45 * 0.85,
                      {"d_model": 2048, "n_layer": 24, "d_state": 128, "headdim": 64, "mimo_rank": 4}),
        AnalyticModel("llama-3.2-1b", "transformer", 1_235_814_400, 2_471_628_800, 0, 32_768, 131_072,
                      2.47e9, 16 * 4 * 2048, 0.75,
                      {"d_model": 2048, "n_layer": 16, "n_heads": 32, "n_kv_heads": 8, "head_dim": 64}),
    )
}


def _decode(m: AnalyticModel, sheet: GpuSheet, b: int, c: int) -> tuple[float, float, float]:
    per_seq = (2 * m.state_bytes_fixed + m.kv_bytes_per_token * (c + 1)) + ACT_BYTES_PER_SEQ_STEP
    nbytes = m.weight_bytes + b * per_seq
    flops = b * (m.flops_per_token + m.attn_flops_per_token_ctx * c)
    t = T0_DECODE_MS + 1e3 * nbytes / (BW_EFF * sheet.bw_bytes_per_s) + 1e3 * flops / (GEMM_FRACTION * sheet.bf16_flops_per_s)
    return t, nbytes, flops


def _prefill(m: AnalyticModel, sheet: GpuSheet, b: int, L: int) -> tuple[float, float, float]:
    nbytes = m.weight_bytes + b * L * (ACT_BYTES_PER_PREFILL_TOKEN + m.kv_bytes_per_token)
    flops = b * (m.flops_per_token * L + m.attn_flops_per_token_ctx * L * L / 2)
    rate = m.prefill_flop_eff * GEMM_FRACTION * sheet.bf16_flops_per_s
    t = T0_PREFILL_MS + 1e3 * nbytes / (BW_EFF * sheet.bw_bytes_per_s) + 1e3 * flops / rate
    return t, nbytes, flops


def _power_w(sheet: GpuSheet, phase: str, nbytes: float, t_ms: float) -> float:
    if phase == "prefill":
        return 0.93 * sheet.tdp_w
    return sheet.tdp_w * (0.17 + 0.83 * min(1.0, nbytes / (t_ms * 1e-3) / sheet.bw_bytes_per_s))


def analytic_points(m: AnalyticModel, sheet: GpuSheet, *, seed: int = 0) -> list[dict]:
    """Measurement rows (without run/device/model ids) for one model on one GPU."""
    rng = np.random.default_rng(seed)
    rows = []
    for phase, batches, lengths in (("decode", DECODE_BATCHES, DECODE_CONTEXTS),
                                    ("prefill", PREFILL_BATCHES, PREFILL_PROMPTS)):
        for b in batches:
            for L in lengths:
                held = L + 1 if phase == "decode" else L
                state = b * m.state_bytes(held)
                oom = m.weight_bytes + state + WORKSPACE_BYTES > sheet.memory_bytes or (
                    phase == "prefill" and b * L > PREFILL_TOKEN_LIMIT) or L > m.max_context
                row = dict(point_key=f"{m.preset}/{phase}/b{b}/L{L}", phase=phase, dtype="bfloat16",
                           implementation=IMPLEMENTATION, batch=b,
                           prompt_len=L if phase == "prefill" else 0,
                           context_len=L if phase == "decode" else 0,
                           gen_tokens=1 if phase == "decode" else 0, n_samples=0, oom=oom, gpu_shared=False,
                           weight_bytes=m.weight_bytes, state_bytes=state, notes=NOTE)
                if not oom:
                    t, nbytes, flops = (_decode if phase == "decode" else _prefill)(m, sheet, b, L)
                    t *= float(np.exp(rng.normal(0.0, NOISE_SIGMA)))
                    power = _power_w(sheet, phase, nbytes, t)
                    tokens = b if phase == "decode" else b * L
                    row.update(
                        latency_p50_ms=t, latency_p10_ms=t * 0.98, latency_p90_ms=t * 1.03,
                        tokens_per_s=tokens / (t * 1e-3), peak_mem_bytes=int(m.weight_bytes + state + GIB),
                        bytes_moved=nbytes, flops=flops, achieved_bw_bytes_per_s=nbytes / (t * 1e-3),
                        arithmetic_intensity=flops / nbytes, mbu=nbytes / (t * 1e-3) / sheet.bw_bytes_per_s,
                        mfu=flops / (t * 1e-3) / sheet.bf16_flops_per_s, mean_power_w=power,
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
    for i, preset in enumerate(presets or tuple(MODELS)):
        m = MODELS[preset]
        spec = repo.upsert_model_spec(s, **m.spec_row())
        for r in analytic_points(m, sheet, seed=seed + i):
            rows.append(dict(run_id=run.id, device_id=dev.id, model_id=spec.id, **r))
    repo.add_measurements(s, rows=rows)
    repo.update_run(s, run_id=run.id, status="done", device_id=dev.id, points_total=len(rows),
                    points_done=len(rows), progress=1.0)
    return run.id
