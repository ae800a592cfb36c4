"""Triton chunked prefill scan for Mamba-3, SISO and MIMO (spec §3.2/§3.3); Mamba-2 with λ = 1, S = 0.

One program per (batch, head, P-block) walks the chunks in order with the P×N fp32 state in registers.
A chunk holds `chunk_size` time steps × R ranks as rows (MIMO rows are (time, rank) pairs, so the
intra-chunk products are the SISO tiles with R-times as many rows). Per chunk: decay cumsum, angle
cumsum (running offset wrapped mod 2π), bias + rotation of B/C, the masked QKᵀ term, the inter-chunk
term e^ℓ·S q, D skip, gate, mimo_o reduction, then the state update.

Why the N axis is split in three: a rotation mixes state coordinates in pairs, so B/C/state columns are
held as (first-of-pair, second-of-pair, unrotated) tiles. Rotating then costs S sin/cos per row instead
of N, and every product is a plain dot over the three pieces.

Matmuls run in the input dtype (bf16 tensor cores, or exact fp32 for fp32 inputs) with fp32 accumulation;
the state, decays, angles and scalars stay fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.reference import ScanState
from kernels.mamba3.tl_utils import INTERPRETED, cast, mm, wrap_angle

TWO_PI = 2.0 * math.pi


@triton.jit
def _chunk_scan_kernel(
    x_ptr, z_ptr, B_ptr, C_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr,
    Bb_ptr, Cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    o_ptr, s0_ptr, a0_ptr, k0_ptr, x0_ptr, s1_ptr, a1_ptr, k1_ptr, x1_ptr,
    T,
    sx_b, sx_t, sx_h, sx_p, sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p,
    sB_b, sB_t, sB_r, sB_g, sB_n, sC_b, sC_t, sC_r, sC_g, sC_n,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_U: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_STATE: tl.constexpr, MIMO: tl.constexpr, WIDE: tl.constexpr, EMULATE: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = pid_bh // H
    h = pid_bh % H
    g = h // (H // G)
    ROWS: tl.constexpr = BLOCK_T * BLOCK_R
    U: tl.constexpr = N - 2 * S
    DT = x_ptr.dtype.element_ty

    rows = tl.arange(0, ROWS)
    t_loc = rows // BLOCK_R  # (ROWS,) time within the chunk
    rr = rows % BLOCK_R  # (ROWS,) rank
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = ps < P
    si = tl.arange(0, BLOCK_S)
    smask = si < S
    uj = tl.arange(0, BLOCK_U)
    umask = uj < U
    # state coordinates of the three column pieces (spec §1.4 pairings)
    if INTERLEAVED:
        cf = 2 * si
        cs = 2 * si + 1
        cu = 2 * S + uj
    else:
        cf = si
        cs = N // 2 + si
        cu = S + uj + tl.where(uj >= N // 2 - S, S, 0)

    bh = bi * H + h
    s_f = tl.zeros((BLOCK_P, BLOCK_S), tl.float32)  # state columns cf
    s_s = tl.zeros((BLOCK_P, BLOCK_S), tl.float32)  # state columns cs
    s_u = tl.zeros((BLOCK_P, BLOCK_U), tl.float32)  # state columns cu
    off = tl.zeros((BLOCK_S,), tl.float32)  # running angle, wrapped
    D_h = tl.load(D_ptr + h).to(tl.float32)

    rk = tl.arange(0, BLOCK_R)
    rkmask = rk < R
    if HAS_STATE:
        mps = pmask[:, None] & smask[None, :]
        mpu = pmask[:, None] & umask[None, :]
        sbase = s0_ptr + bh * P * N + ps[:, None] * N
        s_f = tl.load(sbase + cf[None, :], mask=mps, other=0.0).to(tl.float32)
        s_s = tl.load(sbase + cs[None, :], mask=mps, other=0.0).to(tl.float32)
        s_u = tl.load(sbase + cu[None, :], mask=mpu, other=0.0).to(tl.float32)
        off = tl.load(a0_ptr + bh * S + si, mask=smask, other=0.0).to(tl.float32)
        # fold the cached token in: δ_0 Σ_r (x⁰ ⊙ mimo_x_r) k⁰_rᵀ, without α_0 (spec §7.5)
        delta0 = (1.0 - tl.load(lam_ptr + bi * T * H + h)) * tl.load(dt_ptr + bi * T * H + h)
        x0 = tl.load(x0_ptr + bh * P + ps, mask=pmask, other=0.0).to(tl.float32)
        xr0 = tl.zeros((BLOCK_R, BLOCK_P), tl.float32) + x0[None, :]
        if MIMO:
            xr0 = xr0 * tl.load(mx_ptr + (h * R + rk[:, None]) * P + ps[None, :],
                                mask=rkmask[:, None] & pmask[None, :], other=0.0)
        kbase = k0_ptr + ((bi * R + rk[:, None]) * H + h) * N
        mrs = rkmask[:, None] & smask[None, :]
        mru = rkmask[:, None] & umask[None, :]
        k0f = tl.load(kbase + cf[None, :], mask=mrs, other=0.0).to(tl.float32)
        k0s = tl.load(kbase + cs[None, :], mask=mrs, other=0.0).to(tl.float32)
        k0u = tl.load(kbase + cu[None, :], mask=mru, other=0.0).to(tl.float32)
        s_f += delta0 * tl.sum(xr0[:, :, None] * k0f[:, None, :], axis=0)
        s_s += delta0 * tl.sum(xr0[:, :, None] * k0s[:, None, :], axis=0)
        s_u += delta0 * tl.sum(xr0[:, :, None] * k0u[:, None, :], axis=0)

    for t0 in range(0, T, BLOCK_T):
        t = t0 + t_loc
        rvalid = (t < T) & (rr < R)
        first = rvalid & (rr == 0)
        sc = (bi * T + t) * H + h
        dt = tl.load(dt_ptr + sc, mask=rvalid, other=0.0)
        adt = tl.load(adt_ptr + sc, mask=first, other=0.0)
        lam = tl.load(lam_ptr + sc, mask=rvalid, other=0.0)
        nvalid = rvalid & (t + 1 < T)
        dt_n = tl.load(dt_ptr + sc + H, mask=nvalid, other=0.0)
        lam_n = tl.load(lam_ptr + sc + H, mask=nvalid, other=0.0)
        gamma = lam * dt
        sigma = gamma + (1.0 - lam_n) * dt_n  # σ̂_t, shifted across chunk boundaries
        ell = tl.cumsum(adt, axis=0)  # ℓ of the row's time (adt only on rank-0 rows)
        ell_last = tl.sum(adt, axis=0)

        m_rs = rvalid[:, None] & smask[None, :]
        m_ru = rvalid[:, None] & umask[None, :]
        bb = Bb_ptr + (h * R + rr[:, None]) * N
        cb = Cb_ptr + (h * R + rr[:, None]) * N
        bbase = B_ptr + bi * sB_b + t[:, None] * sB_t + rr[:, None] * sB_r + g * sB_g
        cbase = C_ptr + bi * sC_b + t[:, None] * sC_t + rr[:, None] * sC_r + g * sC_g
        k_u = (tl.load(bbase + cu[None, :] * sB_n, mask=m_ru, other=0.0).to(tl.float32)
               + tl.load(bb + cu[None, :], mask=m_ru, other=0.0))
        q_u = (tl.load(cbase + cu[None, :] * sC_n, mask=m_ru, other=0.0).to(tl.float32)
               + tl.load(cb + cu[None, :], mask=m_ru, other=0.0))
        k_f = tl.zeros((ROWS, BLOCK_S), tl.float32)
        k_s = tl.zeros((ROWS, BLOCK_S), tl.float32)
        q_f = tl.zeros((ROWS, BLOCK_S), tl.float32)
        q_s = tl.zeros((ROWS, BLOCK_S), tl.float32)
        if S > 0:
            th = tl.load(th_ptr + (bi * T + t[:, None]) * S + si[None, :],
                         mask=first[:, None] & smask[None, :], other=0.0)
            inc = dt[:, None] * th  # (ROWS, BLOCK_S), zero off rank-0 rows
            phi = off[None, :] + tl.cumsum(inc, axis=0)
            off = wrap_angle(off + tl.sum(inc, axis=0))
            cos = tl.cos(phi)
            sin = tl.sin(phi)
            a = (tl.load(bbase + cf[None, :] * sB_n, mask=m_rs, other=0.0).to(tl.float32)
                 + tl.load(bb + cf[None, :], mask=m_rs, other=0.0))
            b = (tl.load(bbase + cs[None, :] * sB_n, mask=m_rs, other=0.0).to(tl.float32)
                 + tl.load(bb + cs[None, :], mask=m_rs, other=0.0))
            k_f = a * cos - b * sin
            k_s = a * sin + b * cos
            a = (tl.load(cbase + cf[None, :] * sC_n, mask=m_rs, other=0.0).to(tl.float32)
                 + tl.load(cb + cf[None, :], mask=m_rs, other=0.0))
            b = (tl.load(cbase + cs[None, :] * sC_n, mask=m_rs, other=0.0).to(tl.float32)
                 + tl.load(cb + cs[None, :], mask=m_rs, other=0.0))
            q_f = a * cos - b * sin
            q_s = a * sin + b * cos

        m_rp = rvalid[:, None] & pmask[None, :]
        xv = tl.load(x_ptr + bi * sx_b + t[:, None] * sx_t + h * sx_h + ps[None, :] * sx_p,
                     mask=m_rp, other=0.0).to(tl.float32)
        v = xv
        if MIMO:
            v = xv * tl.load(mx_ptr + (h * R + rr[:, None]) * P + ps[None, :], mask=m_rp, other=0.0)

        # intra-chunk: e^{ℓi−ℓj}·σ̂j for earlier times, γ on the same time (all rank pairs)
        qk = mm(q_u, tl.trans(k_u), DT, WIDE, EMULATE)
        if S > 0:
            qk += mm(q_f, tl.trans(k_f), DT, WIDE, EMULATE)
            qk += mm(q_s, tl.trans(k_s), DT, WIDE, EMULATE)
        ti = t_loc[:, None]
        tj = t_loc[None, :]
        decay = tl.exp(tl.minimum(ell[:, None] - ell[None, :], 0.0))
        w = tl.where(ti > tj, decay * sigma[None, :], tl.where(ti == tj, gamma[None, :], 0.0))
        y = mm(qk * w, v, DT, WIDE, EMULATE)
        # inter-chunk: e^{ℓi} S q_i
        sq = mm(q_u, tl.trans(s_u), DT, WIDE, EMULATE)
        if S > 0:
            sq += mm(q_f, tl.trans(s_f), DT, WIDE, EMULATE)
            sq += mm(q_s, tl.trans(s_s), DT, WIDE, EMULATE)
        y += tl.exp(ell)[:, None] * sq + D_h * v
        if HAS_Z:
            zv = tl.load(z_ptr + bi * sz_b + t[:, None] * sz_t + h * sz_h + ps[None, :] * sz_p,
                         mask=m_rp, other=0.0).to(tl.float32)
            if MIMO:
                zv = zv * tl.load(mz_ptr + (h * R + rr[:, None]) * P + ps[None, :], mask=m_rp, other=0.0)
            y = y * zv * tl.sigmoid(zv)
        if MIMO:
            y = y * tl.load(mo_ptr + (h * R + rr[:, None]) * P + ps[None, :], mask=m_rp, other=0.0)
        if BLOCK_R > 1:
            y = tl.sum(tl.reshape(y, (BLOCK_T, BLOCK_R, BLOCK_P)), axis=1)
        to = t0 + tl.arange(0, BLOCK_T)
        tl.store(o_ptr + bi * so_b + to[:, None] * so_t + h * so_h + ps[None, :] * so_p,
                 cast(y, o_ptr.dtype.element_ty, EMULATE), mask=(to[:, None] < T) & pmask[None, :])

        # state passing: S ← e^{ℓ_last} S + Σ_j e^{ℓ_last−ℓ_j} σ̂_j v_j k_jᵀ
        vw = tl.trans(v * (tl.exp(ell_last - ell) * sigma)[:, None])  # (BLOCK_P, ROWS)
        carry = tl.exp(ell_last)
        s_u = s_u * carry + mm(vw, k_u, DT, WIDE, EMULATE)
        if S > 0:
            s_f = s_f * carry + mm(vw, k_f, DT, WIDE, EMULATE)
            s_s = s_s * carry + mm(vw, k_s, DT, WIDE, EMULATE)

        # caches of the last token: rotated key (all ranks) and raw x
        last = rvalid & (t == T - 1)
        lead = pid_p == 0
        kout = k1_ptr + ((bi * R + rr[:, None]) * H + h) * N
        KT = k1_ptr.dtype.element_ty
        tl.store(kout + cu[None, :], cast(k_u, KT, EMULATE), mask=last[:, None] & umask[None, :] & lead)
        if S > 0:
            tl.store(kout + cf[None, :], cast(k_f, KT, EMULATE), mask=last[:, None] & smask[None, :] & lead)
            tl.store(kout + cs[None, :], cast(k_s, KT, EMULATE), mask=last[:, None] & smask[None, :] & lead)
        tl.store(x1_ptr + bh * P + ps[None, :] + 0 * rows[:, None], cast(xv, x1_ptr.dtype.element_ty, EMULATE),
                 mask=(last & (rr == 0))[:, None] & pmask[None, :])

    out = s1_ptr + bh * P * N + ps[:, None] * N
    ST = s1_ptr.dtype.element_ty
    tl.store(out + cu[None, :], cast(s_u, ST, EMULATE), mask=pmask[:, None] & umask[None, :])
    if S > 0:
        tl.store(out + cf[None, :], cast(s_f, ST, EMULATE), mask=pmask[:, None] & smask[None, :])
        tl.store(out + cs[None, :], cast(s_s, ST, EMULATE), mask=pmask[:, None] & smask[None, :])
        tl.store(a1_ptr + bh * S + si, off, mask=smask & (pid_p == 0))


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(n, 1)))


def scan_chunked(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None,
                 mimo_o=None, pairing="interleaved", state: ScanState | None = None,
                 chunk_size: int | None = None, block_p: int | None = None, out: Tensor | None = None,
                 final_state: ScanState | None = None, dot_precision: str = "tf32",
                 num_warps: int | None = None) -> tuple[Tensor, ScanState]:
    """Triton twin of `reference.scan_chunked` (same tensors and meaning).

    chunk_size: time steps per chunk (power of two); default 64 rows, i.e. 64 // R' time steps with
    R' = R rounded up to a power of two. block_p: P rows per program (default: all of P, halved while
    batch·H is below 2× the SM count). out / final_state: preallocated outputs to write into (the
    final state may alias `state`, e.g. a model's static cache). dot_precision, for 16-bit inputs:
    "tf32" multiplies with tf32 operands (p95 error ≈ 0.6% vs float64 at 1.5B head shapes), "input"
    rounds the operands to the input dtype (bf16 tensor cores, twice the rate; ≈ 3%). fp32 inputs
    always multiply in exact fp32.
    """
    if dot_precision not in ("tf32", "input"):
        raise ValueError(f"dot_precision must be 'tf32' or 'input', got {dot_precision!r}")
    b, T, H, P = x.shape
    R, G, N = B.shape[-3:]
    S = theta.shape[-1]
    if T < 1:
        raise ValueError("need at least one token")
    if (mimo_x is None) != (mimo_o is None) or (mimo_x is None and (R != 1 or mimo_z is not None)):
        raise ValueError("SISO needs R = 1 and no mimo_*; MIMO needs mimo_x and mimo_o")
    if pairing not in ("interleaved", "half") or 2 * S > N or (pairing == "half" and N % 2):
        raise ValueError(f"bad pairing {pairing!r} for N = {N}, S = {S}")
    block_r = triton.next_power_of_2(R)
    block_t = chunk_size or max(1, 64 // block_r)
    if block_t & (block_t - 1) or block_t * block_r < 16:
        raise ValueError(f"chunk_size must be a power of two with chunk_size·R' >= 16, got {block_t}")
    if block_p is None:
        block_p = _pow2(P)
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        while block_p > 16 and b * H * triton.cdiv(P, block_p) < 2 * sms:
            block_p //= 2
    dev, f32 = x.device, torch.float32
    dt, adt, lam, theta = (t.to(f32).contiguous() for t in (dt, adt, lam, theta))
    params = [t.to(f32).contiguous() for t in (B_bias, C_bias, D)]
    mimo = [t.to(f32).contiguous() if t is not None else params[2] for t in (mimo_x, mimo_z, mimo_o)]
    if out is None:
        out = torch.empty(b, T, H, P, device=dev, dtype=x.dtype)
    if final_state is None:
        ssm_dtype = state.ssm.dtype if state is not None else f32
        final_state = ScanState(angle=torch.empty(b, H, S, device=dev, dtype=f32),
                                ssm=torch.empty(b, H, P, N, device=dev, dtype=ssm_dtype),
                                k=torch.empty(b, R, H, N, device=dev, dtype=x.dtype),
                                x=torch.empty(b, H, P, device=dev, dtype=x.dtype))
    for name, t in zip(ScanState._fields, final_state):
        if not t.is_contiguous():
            raise ValueError(f"final_state.{name} must be contiguous")
    if state is not None:
        # P-blocks read k⁰/Φ⁰/x⁰ while block 0 writes the final ones: never share them
        state = ScanState(state.angle.contiguous().clone(), state.ssm.contiguous(),
                          state.k.contiguous().clone(), state.x.contiguous().clone())
    init = state if state is not None else final_state
    zz = z if z is not None else x
    grid = (b * H, triton.cdiv(P, block_p))
    _chunk_scan_kernel[grid](
        x, zz, B, C, dt, adt, lam, theta, *params, *mimo,
        out, init.ssm, init.angle, init.k, init.x,
        final_state.ssm, final_state.angle, final_state.k, final_state.x,
        T, *x.stride(), *zz.stride(), *out.stride(), *B.stride(), *C.stride(),
        H=H, G=G, R=R, P=P, N=N, S=S, BLOCK_T=block_t, BLOCK_R=block_r, BLOCK_P=block_p,
        BLOCK_S=_pow2(S), BLOCK_U=_pow2(N - 2 * S), INTERLEAVED=pairing == "interleaved",
        HAS_Z=z is not None, HAS_STATE=state is not None, MIMO=mimo_x is not None,
        WIDE=dot_precision == "tf32", EMULATE=INTERPRETED,
        num_warps=num_warps or (8 if block_t * block_r * max(block_p, 64) >= 4096 else 4),
    )
    return out, final_state
