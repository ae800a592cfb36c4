"""Scan-kernel benchmark (CUDA only): our Triton kernels against their roofline floor, the PyTorch
reference, and the public mamba_ssm prefill kernel when that package happens to be importable; plus the
Transformer's decode attention (Triton split-K vs the masked SDPA it replaces, both replayed from a graph).

The floor uses this GPU's copy bandwidth and bf16 matmul rate, both measured at the start of the same
run: floor = max(bytes / bandwidth, FLOPs / rate). `frac` = floor / ours (1.0 = at the roofline).
Our kernels are timed as GPU time per call, replayed from a CUDA graph; the reference runs eagerly.

    python -m kernels.bench                 # decode step + prefill tables, bf16 state drift, JSON last
    python -m kernels.bench --quick         # fewer shapes, 512-step drift
    python -m kernels.bench --sweep         # also try block/warp/stage configs, print the best per case
    python -m kernels.bench --attention-only  # Llama-3.2-1B decode attention only: Triton vs masked SDPA
    python -m kernels.bench --segmented-only  # the segment-parallel prefill at batch 1 vs the plain scan
    python -m kernels.bench --ssd-only        # the chunk-parallel SISO / Mamba-2 scan vs what the model runs

The public column is filled where state-spaces/mamba's Triton Mamba-3 kernels are importable (SISO prefill);
`python -m kernels.bench_public` compares them with ours in full (speed and accuracy).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import itertools
import json
import platform
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton

from kernels.mamba3 import reference as ref
from kernels.mamba3.chunk import default_tile, scan_chunked
from kernels.mamba3.reference import ScanState
from kernels.mamba3.step import step, step_fused
from kernels.mamba3.testing import random_inputs, random_state, rel_p95
from kernels.mamba3.tl_utils import without_pdl

# 1.5B Mamba-3 head shapes (spec §4.3)
H, P, N, S = 64, 64, 128, 32
STEP_SWEEP_ROWS, STEP_SWEEP_WARPS = (1, 2, 4, 8, 16, 32, 64), (1, 2, 4, 8)
# the state's row blocks by TMA (`step.state_stages`): pipeline depths, on the default tile and a few others
STEP_SWEEP_STAGES, STEP_SWEEP_STAGE_TILES = (2, 3, 4, 6, 8), ((None, None), (4, 1), (8, 1), (8, 2), (16, 4))


@dataclass
class Row:
    kind: str
    case: str
    ours_ms: float
    floor_ms: float
    bytes_moved: int
    flops: int
    reference_ms: float | None = None
    public_ms: float | None = None
    config: str = ""

    @property
    def frac(self) -> float:
        return self.floor_ms / self.ours_ms


def _events_ms(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def time_eager_ms(fn, min_reps: int = 5, min_s: float = 0.3) -> float:
    """Median per-call time of eager calls (warm-up excluded), at least min_reps and min_s."""
    fn()
    torch.cuda.synchronize()
    samples, total = [], 0.0
    while len(samples) < min_reps or total < min_s * 1e3:
        samples.append(_events_ms(fn, 1))
        total += samples[-1]
    return statistics.median(samples)


def time_graph_ms(fn, calls: int = 20, min_reps: int = 10, min_s: float = 0.3, pdl: bool = False) -> float:
    """Median GPU time per call of `calls` back-to-back calls captured in one CUDA graph. Captured without
    programmatic dependent launch unless `pdl`: with it, each call of a Triton kernel would start while
    the one before drains, a saving a kernel gets in the model only from its neighbours, and one that
    cuBLAS, timed beside it, never gets."""
    with contextlib.nullcontext() if pdl else without_pdl():  # the warm-up compiles what the capture launches
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    graph.replay()
    torch.cuda.synchronize()
    samples, total = [], 0.0
    while len(samples) < min_reps or total < min_s * 1e3:
        samples.append(_events_ms(graph.replay, 1) / calls)
        total += samples[-1] * calls
    return statistics.median(samples)


def measure_copy_bytes_per_s() -> float:
    """Device-to-device copy of 1 GiB; bytes read + written per second (best of the medians)."""
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = time_eager_ms(lambda: dst.copy_(src), min_reps=20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def measure_bf16_flop_per_s(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = time_eager_ms(lambda: a @ b, min_reps=20)
    return 2 * n**3 / (ms * 1e-3)


def step_cost(b: int, R: int, ssm_bytes: int, fused: bool) -> tuple[int, int]:
    """(bytes, FLOPs) of one decode step of one layer (spec §5.2–5.3, SSM part only)."""
    d_proj = 2 * H * P + 2 * R * N + 3 * H + S
    cache = 2 * (ssm_bytes * H * P * N + 2 * R * H * N + 2 * H * P + 4 * H * S)
    inputs = 2 * d_proj if fused else 2 * (2 * H * P + 2 * R * N) + 4 * (3 * H + S)
    params = 4 * (2 * H * R * N + H + (3 * H * R * P if R > 1 else 0)) + (4 * N if fused else 0)
    flops = b * H * ((6 * R + 1) * N * P + 12 * R * S + 12 * R * P)
    return b * (cache + inputs + 2 * H * P) + params, flops


def prefill_cost(b: int, T: int, R: int, rows: int, angles: int = S) -> tuple[int, int]:
    """(bytes, FLOPs) of the chunked scan of one layer: x, z read, o written, B/C and scalars (`angles` θ
    per token: 0 for Mamba-2) read, the final state written; FLOPs H·R·[2Q(N+P) + 4NP] per token (spec §5.5)."""
    nbytes = b * T * (3 * 2 * H * P + 2 * 2 * R * N + 4 * (3 * H + angles)) + b * 4 * H * P * N
    return nbytes, b * T * H * R * (2 * rows * (N + P) + 4 * N * P)


def _floor_ms(nbytes: int, flops: int, bw: float, rate: float) -> float:
    return max(nbytes / bw, flops / rate) * 1e3


def parse_assignments(text: str, sep: str, accepts, want: str, noun: str) -> dict:
    """`name=value<sep>…` → {name: value}, values as Python literals, every name one `accepts(name)` takes; a
    ValueError saying what was wanted (`want`; `noun` when there is none) otherwise. The A/B tools' variants."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(sep))):
        name, eq, value = (t.strip() for t in part.partition("="))
        if not eq or not accepts(name):
            raise ValueError(f"{part!r}: want {want}")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{part!r}: {value!r} is not a Python literal") from None
    if not out:
        raise ValueError(f"{text!r}: no {noun}")
    return out


def _fused_args(b: int, R: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d_proj = 2 * H * P + 2 * R * N + 3 * H + S
    proj = torch.randn(b, d_proj, generator=g).to("cuda", torch.bfloat16)
    kw = random_inputs(b, None, H, P, N, S, R, seed=seed, device="cuda", dtype=torch.bfloat16)
    for name in ("x", "z", "B", "C", "dt", "adt", "lam", "theta"):
        kw.pop(name)
    kw.update(dt_bias=torch.full((H,), -3.0, device="cuda"),
              B_norm_weight=torch.ones(N, device="cuda", dtype=torch.bfloat16),
              C_norm_weight=torch.ones(N, device="cuda", dtype=torch.bfloat16))
    return proj, kw


def bench_step(b: int, R: int, ssm_dtype: torch.dtype, fused: bool, bw: float, rate: float,
               sweep: bool) -> Row:
    state = random_state(b, H, P, N, S, R, device="cuda", dtype=torch.bfloat16, ssm_dtype=ssm_dtype)
    if fused:
        proj, kw = _fused_args(b, R)
        call = functools.partial(step_fused, proj, **kw, state=state)
    else:
        kw = random_inputs(b, None, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
        call = functools.partial(step, **kw, state=state)
    ours, config = time_graph_ms(call), "default"
    if sweep:
        # num_stages does not matter (the pointer-load walk is not software-pipelined); one-warp heads are
        # MIMO's default with many programs (`step.DEFAULT_CONFIG`); state_stages > 0 pipelines the state's
        # row blocks through TMA copies (MIMO's default there), 0 loads them by pointers
        configs = [dict(block_p=bp, num_warps=w, state_stages=0)
                   for bp, w in itertools.product(STEP_SWEEP_ROWS, STEP_SWEEP_WARPS)]
        configs += [{k: v for k, v in dict(block_p=bp, num_warps=w, state_stages=st).items() if v is not None}
                    for (bp, w), st in itertools.product(STEP_SWEEP_STAGE_TILES, STEP_SWEEP_STAGES)]
        best = None
        for cfg in configs:
            label = " ".join(f"{k}={v}" for k, v in cfg.items())
            try:
                t = time_graph_ms(lambda: call(**cfg))
            except Exception as e:  # noqa: BLE001 - a config that does not fit is reported, not fatal
                print(f"  step b={b} R={R} {label}: {type(e).__name__}")
                continue
            if t < ours:
                ours, config, best = t, label, cfg
        if best is not None:  # a fast but wrong configuration must not win: one step against the default's
            outs = []
            for cfg in ({}, best):
                st = ScanState(*(t.clone() for t in state))
                outs.append((call(state=st, **cfg).float(), st.ssm.float()))  # `call` with its state replaced
            (o0, s0), (o1, s1) = outs
            if not (torch.allclose(o1, o0, rtol=1e-3, atol=1e-3) and torch.allclose(s1, s0, rtol=1e-3, atol=1e-3)):
                config += " (OUTPUT DIFFERS FROM THE DEFAULT'S)"
    ref_state = ScanState(*(t.clone() for t in state))
    if fused:
        norm_keys = ("dt_bias", "B_norm_weight", "C_norm_weight")
        norm = {k: kw[k] for k in norm_keys}
        rest = {k: v for k, v in kw.items() if k not in norm_keys}

        def reference_call():
            pre = ref.preprocess(proj, **norm, heads=H, headdim=P, d_state=N, rank=R, n_angles=S)
            return ref.step(**pre, **rest, state=ref_state)

        reference_ms = time_eager_ms(reference_call)
    else:
        reference_ms = time_eager_ms(lambda: ref.step(**kw, state=ref_state))
    nbytes, flops = step_cost(b, R, torch.finfo(ssm_dtype).bits // 8, fused)
    name = f"{'MIMO R=4' if R > 1 else 'SISO'} b={b} state={str(ssm_dtype)[6:]}{' fused' if fused else ''}"
    return Row("decode step, 1 layer", name, ours, _floor_ms(nbytes, flops, bw, rate), nbytes, flops,
               reference_ms, None, config)


def bench_prefill(b: int, T: int, R: int, precision: str, bw: float, rate: float, sweep: bool,
                  with_reference: bool) -> Row:
    kw = random_inputs(b, T, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(b, T, H, P, device="cuda", dtype=torch.bfloat16)
    fin = ScanState.zeros(b, H, P, N, S, R, device="cuda")
    def call(**cfg):
        return scan_chunked(**kw, out=out, final_state=fin, dot_precision=precision, **cfg)

    rows = default_tile(b, H, P, R, "cuda", S)[0]
    ours, config = time_graph_ms(call, calls=3), "default"
    if sweep:
        r_pad = 1 if R == 1 else 4
        for rows_, bp, w, ns in itertools.product((16, 32, 64), (16, 32, 64), (4, 8), (1, 2)):
            try:
                t = time_graph_ms(lambda: call(chunk_size=max(1, rows_ // r_pad), block_p=bp, num_warps=w,
                                               num_stages=ns), calls=3)
            except Exception as e:  # noqa: BLE001 - a config that does not fit is reported, not fatal
                print(f"  prefill rows={rows_} block_p={bp} warps={w} stages={ns}: {type(e).__name__}")
                continue
            if t < ours:
                ours, rows = t, rows_
                config = f"chunk_size={max(1, rows_ // r_pad)} block_p={bp} num_warps={w} num_stages={ns}"
    reference_ms = None
    if with_reference:
        reference_ms = time_eager_ms(lambda: ref.scan_chunked(**kw, chunk_size=64), min_reps=2, min_s=0.1)
    from kernels import bench_public  # it imports this module

    public_ms = None
    try:
        public = bench_public.public_kernels() if R == 1 else None
    except RuntimeError as e:
        print(f"  public column left empty: {e}")
        public = None
    if public is not None:  # same-run comparison, set up as `kernels.bench_public` does
        bench_public.narrow_autotune(public)
        try:
            pa = bench_public.public_prefill_args(*bench_public.matched_inputs(b, T))
            public_ms = time_graph_ms(lambda: public.prefill(**pa, chunk_size=64, return_final_states=True), calls=3)
        except Exception as e:  # noqa: BLE001 - the public API moves; say so instead of guessing
            print(f"  public mamba3_siso_combined present but not callable as expected: {e}")
    nbytes, flops = prefill_cost(b, T, R, rows)
    name = f"{'MIMO R=4' if R > 1 else 'SISO'} {b}x{T} dots={'tf32' if precision == 'tf32' else 'bf16'}"
    return Row("prefill scan, 1 layer", name, ours, _floor_ms(nbytes, flops, bw, rate), nbytes, flops,
               reference_ms, public_ms, config)


# (batch, tokens, rank) where programs are scarce: one to four sequences of 512 tokens or more (MIMO's plain
# scan takes the whole-P tile from 3: b·H of 192–256 programs of 4 warps)
SEGMENTED_CASES = ([(1, T, 1) for T in (16384, 8192, 4096, 2048, 1024, 512)] + [(2, T, 1) for T in (4096, 2048, 512)]
                   + [(4, 2048, 1)] + [(1, T, 4) for T in (16384, 4096, 2048, 1024, 512)]
                   + [(b, T, 4) for b in (2, 3, 4) for T in (4096, 2048, 512)])


def bench_segmented(b: int, T: int, R: int, bw: float, rate: float, sweep: bool = False) -> Row:
    """The segment-parallel prefill (kernels/mamba3/segmented.py) where programs are scarce: each segment
    count of 2–16 timed from a CUDA graph beside the plain `scan_chunked` of the same inputs (tf32 dots,
    default tiles, `segmented.segment_tile` for MIMO segments, the one-launch chaining); the fastest is the
    row, every time is in its config column, with eager times of the plain scan and of the best count with
    the PyTorch and the one-launch chaining.
    `sweep`: the best count and the plain scan again at chunks of 16 / 32 / 64 rows × 4 / 8 warps (the
    default tile, `chunk.default_tile`, was chosen on long sequences, where each program walks many chunks;
    a short prompt's segments walk a few)."""
    from kernels.mamba3.segmented import scan_segmented

    kw = random_inputs(b, T, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
    plain = time_graph_ms(lambda: scan_chunked(**kw), calls=3)
    times = {n: time_graph_ms(lambda n=n: scan_segmented(**kw, segments=n), calls=3) for n in (2, 3, 4, 6, 8, 16)}
    best = min(times, key=times.get)
    want, _ = scan_chunked(**kw)
    got, _ = scan_segmented(**kw, segments=best)
    got_torch, _ = scan_segmented(**kw, segments=best, chain="torch")
    # eager, where the chaining's launches show: plain scan, and the best count with either chain
    eager = {"plain": time_eager_ms(lambda: scan_chunked(**kw))}
    eager |= {c: time_eager_ms(lambda c=c: scan_segmented(**kw, segments=best, chain=c)) for c in ("torch", "triton")}
    tiles = _tile_sweep(kw, R, best) if sweep else ""
    nbytes, flops = prefill_cost(b, T, R, default_tile(b, H, P, R, "cuda", S)[0])
    config = (f"segments={best} (plain scan {plain * 1e3:.0f} us, {plain / times[best]:.2f}x; "
              + ", ".join(f"{n}: {t * 1e3:.0f}" for n, t in times.items())
              + f" us; p95 rel. diff vs plain {rel_p95(got, want):.1e}, PyTorch chain "
              + f"{rel_p95(got_torch, want):.1e}; eager us: "
              + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in eager.items()) + tiles + ")")
    name = f"{'MIMO R=4' if R > 1 else 'SISO'} {b}x{T} segmented"
    return Row("prefill scan, 1 layer", name, times[best], _floor_ms(nbytes, flops, bw, rate), nbytes, flops,
               None, None, config)


def _tile_sweep(kw: dict, R: int, segments: int) -> str:
    """The plain scan and `segments` segments of it at chunks of 16 / 32 / 64 rows × 4 / 8 warps, from CUDA
    graphs: a config-column fragment."""
    from kernels.mamba3.segmented import scan_segmented

    cells = []
    for rows, warps in itertools.product((16, 32, 64), (4, 8)):
        chunk = max(1, rows // triton.next_power_of_2(R))
        got = [_or_error(lambda: time_graph_ms(lambda: scan_segmented(**kw, segments=n, chunk_size=chunk,
                                                                        num_warps=warps), calls=3))
               for n in (1, segments)]  # each closure is called at once, so the loop variables are current
        cells.append(f"{rows}/{warps}: {got[0]} and {got[1]}")
    return "; rows/warps, plain and segmented us: " + ", ".join(cells)


def _or_error(time_ms) -> str:
    """A configuration's time in µs, or why it did not run (a sweep reports, it does not stop)."""
    try:
        return f"{time_ms() * 1e3:.0f}"
    except Exception as exc:  # e.g. a tile that does not build or fit
        return f"{type(exc).__name__}"


# (batch, T, R, Mamba-2): short prompts at batch 1 (the planner's per-call prefills), long ones, batch 128
SSD_CASES = [(1, 512, 1, False), (1, 2048, 1, False), (1, 16384, 1, False), (16, 2048, 1, False),
             (128, 512, 1, False), (1, 512, 4, False), (128, 512, 4, False), (1, 512, 1, True),
             (128, 512, 1, True)]


def bench_ssd(b: int, T: int, R: int, mamba2: bool, bw: float, rate: float, sweep: bool = False) -> Row:
    """The chunk-parallel scan (kernels/mamba3/ssd.py) at chunks of 64 / 128 rows ((time, rank) pairs)
    × 4 / 8 warps, 64 P rows a program (32-row chunks and 32-row P blocks lost at every SISO shape on an
    H200, 2026-12-01; `sweep`: try them again), against what the model runs for this shape
    (`segmented.prefill`: the plain chunked scan, or segments for one or two sequences; bf16 dots for rank-1
    scans, as the model runs them), each from a CUDA graph (bf16 I/O, an initial state); the fastest is the row,
    the model's path is in the "ref us" column (the PyTorch reference in the other tables), and the p95
    difference of the outputs and states from the model's path at tf32 (the chunk-parallel scan's precision)
    is in the config."""
    from kernels.mamba3.segmented import prefill as model_prefill
    from kernels.mamba3.segmented import model_dots
    from kernels.mamba3.ssd import scan_ssd

    kw = random_inputs(b, T, H, P, N, S, R, device="cuda", dtype=torch.bfloat16, mamba2=mamba2)
    if mamba2:  # no biases, as the Mamba-2 model's Triton prefill passes them
        kw.update(B_bias=None, C_bias=None)
    st = random_state(b, H, P, N, kw["theta"].shape[-1], R, device="cuda", dtype=torch.bfloat16)
    block_r = triton.next_power_of_2(R)
    model_ms = time_graph_ms(lambda: model_prefill(**kw, state=st), calls=3)
    times = {}
    for rows, warps, bp in itertools.product((32, 64, 128) if sweep else (64, 128), (4, 8),
                                             (32, 64) if sweep else (64,)):
        chunk = rows // block_r
        try:
            times[(chunk, warps, bp)] = time_graph_ms(lambda c=chunk, w=warps, bp=bp: scan_ssd(
                **kw, state=st, chunk_size=c, num_warps=w, block_p=bp), calls=3)
        except Exception as exc:  # a configuration that does not build or fit is reported, not fatal
            print(f"ssd {b}x{T} chunk={chunk} warps={warps} block_p={bp}: {type(exc).__name__}: {str(exc)[:120]}")
    if not times:
        raise RuntimeError(f"no chunk-parallel configuration ran at {b}x{T}")
    best = min(times, key=times.get)
    with model_dots("tf32"):  # like with like: the chunk-parallel scan multiplies in tf32
        want_o, want_st = model_prefill(**kw, state=st)
    got_o, got_st = scan_ssd(**kw, state=st, chunk_size=best[0], num_warps=best[1], block_p=best[2])
    nbytes, flops = prefill_cost(b, T, R, best[0] * block_r, angles=kw["theta"].shape[-1])
    config = (f"chunk={best[0]} warps={best[1]} block_p={best[2]} ({model_ms / times[best]:.2f}x the model's path; "
              + ", ".join(f"{c}/{w}/{bp}: {t * 1e3:.0f}" for (c, w, bp), t in times.items())
              + f" us; p95 rel. diff out {rel_p95(got_o, want_o):.1e}, state {rel_p95(got_st.ssm, want_st.ssm):.1e})")
    name = "Mamba-2" if mamba2 else "SISO" if R == 1 else f"MIMO R={R}"
    print(f"{name} {b}x{T}: best {times[best] * 1e3:.0f} us, model's path {model_ms * 1e3:.0f} us; {config}",
          flush=True)  # a case at a time: the sweep is long
    return Row("prefill scan, 1 layer", f"{name} {b}x{T} chunk-parallel", times[best],
               _floor_ms(nbytes, flops, bw, rate), nbytes, flops, model_ms, None, config)


# (batch, max_context, positions held): full caches, and a short request in a long cache
ATTENTION_CASES = [(b, ctx, ctx) for b in (1, 128) for ctx in (768, 4096, 16384)] + [(1, 16384, 768)]


def bench_decode_attention(b: int, max_context: int, held: int, bw: float, rate: float) -> Row:
    """Decode attention of one Llama-3.2-1B layer (32 query heads on 8 KV heads, head_dim 64, bf16) over
    a static cache of `max_context` positions of which `held` are filled: the split-K Triton kernel
    (kernels/attention.py) vs, as the reference column, SDPA over the whole buffer with the mask
    `arange(max_context) <= pos` that impl "chunked" runs (model/transformer.py). Both timed in a CUDA
    graph; floor = K+V bytes held (+ q, out) at the measured copy bandwidth."""
    import torch.nn.functional as F

    from kernels.attention import decode_attention, default_splits

    h, n_kv, d = 32, 8, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(b, n_kv, max_context, d, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    pos = torch.tensor(held - 1, device="cuda")

    def sdpa():
        mask = (torch.arange(max_context, device="cuda") <= pos)[None, :]
        return F.scaled_dot_product_attention(q.view(b, n_kv, h // n_kv, d), k, v, attn_mask=mask)

    want = sdpa().view(b, h, d).float()
    err = ((decode_attention(q, k, v, pos).float() - want).norm() / want.norm()).item()
    ours = time_graph_ms(lambda: decode_attention(q, k, v, pos))
    reference_ms = time_graph_ms(sdpa, calls=5, min_reps=5)
    nbytes, flops = 2 * (2 * b * n_kv * held * d + 2 * b * h * d), 4 * b * h * held * d
    return Row("decode attention, 1 layer", f"Llama-3.2-1B b={b} held={held}/{max_context}", ours,
               _floor_ms(nbytes, flops, bw, rate), nbytes, flops, reference_ms, None,
               f"splits={default_splits(b, n_kv, max_context, 64)} rel err vs SDPA {err:.1e}")


def bf16_state_drift(steps: int, b: int = 8, R: int = 1) -> list[dict]:
    """Decode `steps` random tokens through one layer twice, fp32 state vs bf16 state, same inputs;
    p95 relative error of the layer output (and of the state) at checkpoints. Layer-level only: the
    logits drift of a whole model needs the model on top."""
    st32 = random_state(b, H, P, N, S, R, device="cuda", dtype=torch.bfloat16)
    st16 = ScanState(st32.angle.clone(), st32.ssm.to(torch.bfloat16), st32.k.clone(), st32.x.clone())
    marks = {1, 16, 256, 1024, steps} | {2**k for k in range(4, 20) if 2**k <= steps}
    out = []
    for t in range(1, steps + 1):
        kw = random_inputs(b, None, H, P, N, S, R, seed=t, device="cuda", dtype=torch.bfloat16)
        o32 = step(**kw, state=st32)
        o16 = step(**kw, state=st16)
        if t in marks:
            out.append(dict(step=t, out_rel_p95=rel_p95(o16, o32), state_rel_p95=rel_p95(st16.ssm, st32.ssm)))
    return out


def _git_rev() -> str:
    from profiler.provenance import git_revision

    return git_revision() or "unknown"


_CASE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)(?::([1-9][0-9]*|mamba2))?", re.ASCII)


def _parse_case(text: str) -> tuple[int, int, int | str | None]:
    """'BxT', 'BxT:R' or 'BxT:mamba2' → (B, T, rank, 'mamba2' or None for any)."""
    m = _CASE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not BxT, BxT:R or BxT:mamba2 (e.g. 1x512, 1x512:4, 128x512:mamba2)")
    kind = m[3]
    return int(m[1]), int(m[2]), kind if kind in (None, "mamba2") else int(kind)


def _case_matches(case: tuple[int, int, int | str | None], b: int, T: int, R: int, mamba2: bool) -> bool:
    cb, ct, kind = case
    return (cb, ct) == (b, T) and kind in (None, "mamba2" if mamba2 else R)


def _picked(cases: list[str] | None, b: int, T: int, R: int, mamba2: bool) -> bool:
    """Whether a (b, T, R, Mamba-2) case is among `--cases` (all of them without the option)."""
    return not cases or any(_case_matches(_parse_case(c), b, T, R, mamba2) for c in cases)


def _check_cases(ap: argparse.ArgumentParser, args) -> None:
    """`--cases` goes with --ssd-only / --segmented-only, and each case must name one of their rows: a
    typo is an error before any GPU work, not an empty table."""
    if not args.cases:
        return
    if not (args.ssd_only or args.segmented_only):
        ap.error("--cases picks rows of --ssd-only or --segmented-only; give one of them")
    rows = ([(b, T, R, m2) for b, T, R, m2 in SSD_CASES] if args.ssd_only else []) + (
        [(b, T, R, False) for b, T, R in SEGMENTED_CASES] if args.segmented_only else [])
    for text in args.cases:
        try:
            case = _parse_case(text)
        except ValueError as exc:
            ap.error(f"--cases: {exc}")
        if not any(_case_matches(case, *row) for row in rows):
            known = ", ".join(f"{b}x{T}:{'mamba2' if m2 else R}" for b, T, R, m2 in rows)
            ap.error(f"--cases: {text} is none of the rows asked for ({known})")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:9.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes, 512-step drift")
    ap.add_argument("--sweep", action="store_true", help="try kernel configs and keep the fastest")
    ap.add_argument("--drift-steps", type=int, default=None, help="bf16-state drift steps (default 4096)")
    ap.add_argument("--json", type=Path, help="also write the JSON record here")
    ap.add_argument("--attention-only", action="store_true",
                    help="only the decode-attention rows (Triton vs masked SDPA), no scans, no drift")
    ap.add_argument("--segmented-only", action="store_true",
                    help="only the segment-parallel prefill rows (SEGMENTED_CASES: one to four sequences)")
    ap.add_argument("--ssd-only", action="store_true",
                    help="only the chunk-parallel scan rows (SSD_CASES), against the model's prefill path")
    ap.add_argument("--cases", nargs="+", metavar="CASE",
                    help="with --ssd-only / --segmented-only: only these cases, as BxT (any rank), BxT:R, "
                         "or BxT:mamba2, e.g. 1x512:4 128x512:mamba2")
    args = ap.parse_args(argv)
    _check_cases(ap, args)
    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    bw, rate = measure_copy_bytes_per_s(), measure_bf16_flop_per_s()
    dev = torch.cuda.get_device_name()
    print(f"{dev}: copy {bw / 1e12:.2f} TB/s (read+write), bf16 matmul {rate / 1e12:.0f} TFLOP/s")

    only = args.attention_only or args.segmented_only or args.ssd_only
    batches = () if only else (1, 128) if args.quick else (1, 16, 128)
    rows = [] if args.segmented_only or args.ssd_only else [bench_decode_attention(b, ctx, held, bw, rate)
                                                            for b, ctx, held in ATTENTION_CASES]
    for b, R, ssm_dtype, fused in itertools.product(batches, (1, 4), (torch.float32, torch.bfloat16),
                                                    (False, True)):
        if args.quick and (ssm_dtype == torch.bfloat16 and not fused):
            continue
        rows.append(bench_step(b, R, ssm_dtype, fused, bw, rate, args.sweep))
    shapes = [(1, 16384), (128, 512)] + ([] if args.quick else [(1, 4096), (16, 2048)])
    if only:
        shapes = []
    for (b, T), R, prec in itertools.product(shapes, (1, 4), ("tf32", "input")):
        rows.append(bench_prefill(b, T, R, prec, bw, rate, args.sweep, with_reference=(b == 1 and T <= 4096)))
    if args.ssd_only:
        rows += [bench_ssd(b, T, R, mamba2, bw, rate, args.sweep) for b, T, R, mamba2 in SSD_CASES
                 if _picked(args.cases, b, T, R, mamba2)]
    if not (args.attention_only or args.ssd_only) or (args.ssd_only and args.segmented_only):
        rows += [bench_segmented(b, T, R, bw, rate, args.sweep) for b, T, R in SEGMENTED_CASES
                 if _picked(args.cases, b, T, R, False)]

    print(f"\n{'what':22s} {'case':34s} {'ours us':>9s} {'floor us':>9s} {'frac':>5s} "
          f"{'ref us':>9s} {'public us':>9s}  config")
    for r in rows:
        print(f"{r.kind:22s} {r.case:34s} {_fmt(r.ours_ms)} {_fmt(r.floor_ms)} {r.frac:5.2f} "
              f"{_fmt(r.reference_ms)} {_fmt(r.public_ms)}  {r.config}")

    steps = args.drift_steps or (512 if args.quick else 4096)
    drift = {} if only else {f"R={R}": bf16_state_drift(steps, R=R) for R in (1, 4)}
    if drift:
        print(f"\nbf16 state vs fp32 state, one layer, batch 8, {steps} decode steps (p95 relative error):")
    for key, marks in drift.items():
        print("  " + key + ": " + ", ".join(f"step {m['step']}: out {m['out_rel_p95']:.3g} "
                                           f"state {m['state_rel_p95']:.3g}" for m in marks))

    record = dict(device=dev, torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                  python=platform.python_version(), git=_git_rev(), copy_bytes_per_s=bw,
                  bf16_flop_per_s=rate, rows=[dict(asdict(r), frac=r.frac) for r in rows],
                  bf16_state_drift=drift, argv=sys.argv[1:])
    line = json.dumps(record)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
