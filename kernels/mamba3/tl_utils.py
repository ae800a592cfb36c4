"""Triton helpers shared by the scan kernels.

The Triton interpreter (CPU tests) casts fp32 → bf16 by truncation and multiplies bf16 dot operands
wrongly; the GPU rounds to nearest-even. With EMULATE set (interpreter runs), the helpers round in
integer arithmetic first so the CPU tests see the GPU's rounding.
"""

import functools
import os
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

_recorded: list | None = None
_PDL = True  # programmatic dependent launch where the GPU has it; `without_pdl` turns it off (A/B runs)


def mimo_operands(mimo_x, mimo_z, mimo_o, gated: bool, filler: torch.Tensor) -> list[torch.Tensor]:
    """MIMO's per-rank weights (H, R, P) as the kernels take them, fp32 and contiguous, `filler` for an absent one
    (SISO: never read). A gated MIMO operator given no mimo_z gates every rank by z itself, as the reference does:
    weights of one (the kernels read mimo_z whenever they gate a MIMO output)."""
    if mimo_x is not None and gated and mimo_z is None:
        mimo_z = torch.ones_like(mimo_x)
    return [t.to(torch.float32).contiguous() if t is not None else filler for t in (mimo_x, mimo_z, mimo_o)]


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """kernel[grid](*args, **meta), or only noted down inside `record_launches` (for AOT builds)."""
    if _recorded is not None:
        _recorded.append((kernel, grid, args, meta))
    else:
        kernel[grid](*args, **meta)


@contextmanager
def record_launches():
    """Collect (kernel, grid, args, meta) of the launches made inside instead of running them."""
    global _recorded
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


@functools.cache
def _sm_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device) -> int:
    """The number of SMs of a CUDA device (asked once per device; the launch heuristics ask every call)."""
    device = torch.device(device)
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def pdl_meta(t: torch.Tensor) -> dict:
    """Launch options for a kernel that takes a `PDL` constexpr and calls `grid_dependency_wait(PDL)`:
    on a CUDA GPU of compute capability ≥ 9 (Hopper on), the kernel is launched with programmatic
    dependent launch, so that it is scheduled while the kernel before it in the stream drains (inside a
    CUDA graph too), and waits on the device, not the host, before touching that kernel's outputs.
    Elsewhere (older GPUs, the CPU interpreter, inside `without_pdl`) a plain launch.

    Why: a decode step at batch 1 is ~200 kernels of 2–11 µs, and each one's launch and ramp-up (the
    first loads in flight) is otherwise paid after the previous one has fully finished."""
    if _PDL and not INTERPRETED and t.is_cuda and _sm_major(t.device.index or 0) >= 9:
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


@contextmanager
def without_pdl():
    """Launches inside use no programmatic dependent launch (the A/B of `pdl_meta`; capture a graph
    inside it to replay it that way)."""
    global _PDL
    saved, _PDL = _PDL, False
    try:
        yield
    finally:
        _PDL = saved


@triton.jit
def grid_dependency_wait(PDL: tl.constexpr):
    """With PDL: wait until the previous kernel in the stream has finished and its writes are visible,
    then let the next kernel be scheduled. Everything a kernel does before this call may read only
    memory no earlier kernel writes (weights), and must write nothing: the caching allocator can hand
    an earlier kernel's buffers to a later one."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wrap_angle(v):
    """v mod 2π into [0, 2π)."""
    return v - tl.floor(v * (1.0 / 6.283185307179586)) * 6.283185307179586


@triton.jit
def cos_sin(phi, EMULATE: tl.constexpr):
    """(cos φ, sin φ) for φ within a few turns of [0, 2π). On the GPU: shifted to [−π, π) and fed to
    the MUFU approximations (abs. error ~1e-6), because libdevice's exact sinf/cosf carry a
    large-argument reduction path that spills registers in the chunk kernel."""
    if EMULATE:
        return tl.cos(phi), tl.sin(phi)
    x = wrap_angle(phi + 3.141592653589793) - 3.141592653589793
    c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                  pack=1)
    s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                  pack=1)
    return c, s


@triton.jit
def sigmoid(x, APPROX: tl.constexpr):
    """σ(x); with APPROX as ½ + ½·tanh(x/2) on the PTX tanh.approx unit (one instruction, abs. error ~5e-4,
    as the public Mamba-3 kernels do), for 16-bit outputs; exact otherwise."""
    if APPROX:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [0.5 * x], dtype=tl.float32,
                                      is_pure=True, pack=1)
        return 0.5 + 0.5 * t
    return tl.sigmoid(x)


@triton.jit
def silu_mul_f32(gate, up):
    """SiLU(gate)·up in fp32, as gate / (1 + e^−gate) · up: SwiGLU's activation, one expression for every kernel
    that computes it (`kernels.fused.silu_mul`, the matrix-vector kernel's folded input), so they agree bit
    for bit."""
    gate = gate.to(tl.float32)
    return gate / (1.0 + tl.exp(-gate)) * up.to(tl.float32)


@triton.jit
def softplus(v):
    """Δ = log(1 + eᵛ), v itself above 20 (torch's threshold), in fp32."""
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def decay_rate(u, a_floor):
    """a = min(−φ(u), −a_floor), φ(u) = 1 + u for u ≥ 0 and 1 / (1 − u) below (spec §1.3)."""
    heavy = tl.where(u >= 0, 1.0 + u, 1.0 / (1.0 - tl.minimum(u, 0.0)))
    return tl.minimum(-heavy, -a_floor)


@triton.jit
def pi_tanh(u):
    """θ = π·tanh(u), as π·(2·sigmoid(2u) − 1)."""
    return 3.141592653589793 * (2.0 * tl.sigmoid(2.0 * u) - 1.0)


@triton.jit
def pair_partners(n, N: tl.constexpr, S: tl.constexpr, INTERLEAVED: tl.constexpr):
    """For state coordinates n (spec §1.4): whether each rotates, its angle index, its pair partner (0 past
    N) and the sign of its sin term. Pairs are (2i, 2i+1) when INTERLEAVED, else (i, i + N/2); i < S rotate."""
    nm = n < N
    if INTERLEAVED:
        rot = n < 2 * S
        ai = n // 2
        partner = n ^ 1
        sgn = tl.where(n % 2 == 0, -1.0, 1.0)
    else:
        rot = (n % (N // 2)) < S
        ai = n % (N // 2)
        partner = tl.where(n < N // 2, n + N // 2, n - N // 2)
        sgn = tl.where(n < N // 2, -1.0, 1.0)
    return rot & nm, ai, tl.where(nm, partner, 0), sgn


@triton.jit
def round_tf32(a):
    """fp32 → the nearest tf32 value (10 mantissa bits), as tensor cores round fp32 operands."""
    bits = a.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def cast(v, T: tl.constexpr, EMULATE: tl.constexpr):
    """v.to(T) with round-to-nearest-even also under the interpreter (bf16 targets)."""
    if EMULATE and T == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(T)
    return v.to(T)


@triton.jit
def store_replicated(ptr, v, mask, EMULATE: tl.constexpr):
    """tl.store(ptr, v, mask) of 16- or 32-bit values v (already in ptr's dtype) whose layout holds each element in
    several threads, as a reduction's result does: every holder stores it, the same bytes to the same address. A
    plain store would first move the values through shared memory, between two barriers, to give each one owner.
    EMULATE (the interpreter runs no PTX): tl.store."""
    if EMULATE:
        tl.store(ptr, v, mask=mask)
    else:
        BITS: tl.constexpr = v.dtype.primitive_bitwidth
        tl.static_assert(BITS == 16 or BITS == 32, "store_replicated takes 16- or 32-bit values")
        if BITS == 16:
            tl.inline_asm_elementwise(
                "{ .reg .pred %srp; setp.ne.u32 %srp, $3, 0; @%srp st.global.b16 [$1], $2; mov.u32 $0, 0; }",
                "=r,l,h,r", [ptr.to(tl.int64, bitcast=True), v.to(tl.int16, bitcast=True), mask.to(tl.int32)],
                dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise(
                "{ .reg .pred %srp; setp.ne.u32 %srp, $3, 0; @%srp st.global.b32 [$1], $2; mov.u32 $0, 0; }",
                "=r,l,r,r", [ptr.to(tl.int64, bitcast=True), v.to(tl.int32, bitcast=True), mask.to(tl.int32)],
                dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def mm(a, b, DT: tl.constexpr, WIDE: tl.constexpr, EMULATE: tl.constexpr):
    """a @ b with fp32 accumulation. fp32 inputs (DT) stay exact fp32 ("ieee"); for 16-bit inputs
    the operands are rounded to DT, or to tf32 when WIDE."""
    if DT == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    elif WIDE:
        if EMULATE:
            return tl.dot(round_tf32(a), round_tf32(b), input_precision="ieee")
        return tl.dot(a, b, input_precision="tf32")
    elif EMULATE:
        return tl.dot(cast(a, DT, True).to(tl.float32), cast(b, DT, True).to(tl.float32),
                      input_precision="ieee")
    else:
        return tl.dot(a.to(DT), b.to(DT))
