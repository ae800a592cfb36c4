"""Mamba-3 scan operators in plain PyTorch: the readable twin of the Triton kernels.

Letters (docs/mamba3-spec.md §0): b batch, T time, H heads, P headdim, N state, R MIMO rank,
G B/C groups, S rotary angles.

- `scan_sequential`: the token-by-token loop of spec §3.1 (ground truth).
- `scan_chunked`: the chunked algorithm of spec §3.2 (SISO) / §3.3 (MIMO), batched over b and H.
- `step`: one decode token; updates a `ScanState` in place.
- `preprocess`: the in_proj output row → the operator's inputs (spec §1.2–1.3, BCNorm); with `step`
  it is the twin of the fused Triton decode entry `step.step_fused`.

Arithmetic runs in the inputs' dtype promoted to at least float32 (float64 in tests, float32 for
bf16 inputs); the output and the cached k/x come back in the dtype of x.
Mamba-2 is the same operator with lam = 1, S = 0 and zero biases.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

TWO_PI = 2.0 * math.pi


class ScanState(NamedTuple):
    """Per-layer decode cache of one Mamba-3 mixer (spec §1.6)."""

    angle: Tensor  # (b, H, S)     cumulative angle of the last token, wrapped to [0, 2π)
    ssm: Tensor  # (b, H, P, N)  S_t (fp32; bf16 as an explicit option)
    k: Tensor  # (b, R, H, N)  last key, biased and rotated
    x: Tensor  # (b, H, P)     last raw x (un-projected for MIMO)

    @staticmethod
    def zeros(batch: int, heads: int, headdim: int, d_state: int, n_angles: int, rank: int = 1, *,
              device=None, dtype: torch.dtype = torch.bfloat16,
              ssm_dtype: torch.dtype = torch.float32) -> "ScanState":
        """A fresh-sequence cache: zero angle, state, key and x."""
        f32 = torch.float64 if ssm_dtype == torch.float64 else torch.float32
        return ScanState(
            angle=torch.zeros(batch, heads, n_angles, device=device, dtype=f32),
            ssm=torch.zeros(batch, heads, headdim, d_state, device=device, dtype=ssm_dtype),
            k=torch.zeros(batch, rank, heads, d_state, device=device, dtype=dtype),
            x=torch.zeros(batch, heads, headdim, device=device, dtype=dtype),
        )


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def rotation_pairs(d_state: int, n_angles: int, pairing: str) -> tuple[list[int], list[int]]:
    """State coordinates (first, second) rotated by angle i (spec §1.4)."""
    if 2 * n_angles > d_state:
        raise ValueError(f"{n_angles} angles need d_state >= {2 * n_angles}, got {d_state}")
    if pairing == "interleaved":
        return [2 * i for i in range(n_angles)], [2 * i + 1 for i in range(n_angles)]
    if pairing == "half":
        return list(range(n_angles)), [d_state // 2 + i for i in range(n_angles)]
    raise ValueError(f"pairing must be 'interleaved' or 'half', got {pairing!r}")


def rotation_slices(d_state: int, n_angles: int, pairing: str) -> tuple[slice, slice]:
    """`rotation_pairs` as slices: indexing with them needs no index tensor, so a decode step on the
    GPU copies nothing from the host and can be captured in a CUDA graph."""
    rotation_pairs(d_state, n_angles, pairing)  # validates
    if pairing == "interleaved":
        return slice(0, 2 * n_angles, 2), slice(1, 2 * n_angles, 2)
    return slice(0, n_angles), slice(d_state // 2, d_state // 2 + n_angles)


def rotate(v: Tensor, phi: Tensor, pairing: str) -> Tensor:
    """Rotate pairs of the last axis of v (..., N) by the angles phi (..., S), broadcasting."""
    n_angles = phi.shape[-1]
    if n_angles == 0:
        return v
    first, second = rotation_slices(v.shape[-1], n_angles, pairing)
    a, b = v[..., first], v[..., second]
    cos, sin = torch.cos(phi), torch.sin(phi)
    out = v.clone()
    out[..., first] = a * cos - b * sin
    out[..., second] = a * sin + b * cos
    return out


def _heads_of_groups(bc: Tensor, heads: int) -> Tensor:
    """(..., R, G, N) -> (..., R, H, N): head h reads group h // (H / G)."""
    groups = bc.shape[-2]
    if heads % groups:
        raise ValueError(f"H={heads} is not a multiple of G={groups}")
    return bc.repeat_interleave(heads // groups, dim=-2)


def _rank_expand(v: Tensor, proj: Tensor | None) -> Tensor:
    """v (..., H, P) -> (..., R, H, P): v ⊙ proj[h, r] for MIMO, v itself as rank 1 for SISO."""
    if proj is None:
        return v.unsqueeze(-3)
    return v.unsqueeze(-3) * proj.transpose(0, 1).to(v.dtype)


def _gate_reduce(y: Tensor, z: Tensor | None, mimo_z: Tensor | None, mimo_o: Tensor | None) -> Tensor:
    """y (..., R, H, P), z (..., H, P) -> o (..., H, P): per-rank SiLU gate, then the mimo_o sum."""
    if z is not None:
        y = y * torch.nn.functional.silu(_rank_expand(z.to(y.dtype), mimo_z))
    if mimo_o is None:
        return y.squeeze(-3)
    return (y * mimo_o.transpose(0, 1).to(y.dtype)).sum(-3)


def _check_rank(B: Tensor, mimo_x, mimo_z, mimo_o) -> int:
    rank = B.shape[-3]
    given = [m is not None for m in (mimo_x, mimo_o)]
    if any(given) and not all(given):
        raise ValueError("MIMO needs both mimo_x and mimo_o")
    if not all(given) and (rank != 1 or mimo_z is not None):
        raise ValueError(f"SISO (no mimo_x/mimo_o) needs R = 1 and no mimo_z, got R = {rank}")
    return rank


def _state_or_zeros(state: ScanState | None, x: Tensor, rank: int, d_state: int, n_angles: int,
                    cdt: torch.dtype) -> ScanState:
    if state is not None:
        return state
    b, H, P = x.shape[0], x.shape[-2], x.shape[-1]
    return ScanState.zeros(b, H, P, d_state, n_angles, rank, device=x.device, dtype=x.dtype, ssm_dtype=cdt)


def _step_math(x, z, B, C, dt, adt, lam, theta, B_bias, C_bias, D, mimo_x, mimo_z, mimo_o, pairing,
               phi, ssm, k_prev, x_prev):
    """One token of spec §3.1 step 2 in the compute dtype; returns (o, phi, ssm, k, q)."""
    H = x.shape[-2]
    phi = torch.remainder(phi + dt[..., None] * theta[..., None, :], TWO_PI)  # (b, H, S)
    k = rotate(_heads_of_groups(B, H) + B_bias.transpose(0, 1), phi[:, None], pairing)  # (b, R, H, N)
    q = rotate(_heads_of_groups(C, H) + C_bias.transpose(0, 1), phi[:, None], pairing)
    alpha = torch.exp(adt)
    gamma = lam * dt
    beta = (1 - lam) * dt * alpha
    xs = _rank_expand(x, mimo_x)  # (b, R, H, P)
    xs_prev = _rank_expand(x_prev, mimo_x)
    ssm = (alpha[..., None, None] * ssm
           + beta[..., None, None] * torch.einsum("brhp,brhn->bhpn", xs_prev, k_prev)
           + gamma[..., None, None] * torch.einsum("brhp,brhn->bhpn", xs, k))
    y = torch.einsum("bhpn,brhn->brhp", ssm, q) + D[:, None] * xs
    return _gate_reduce(y, z, mimo_z, mimo_o), phi, ssm, k


def step(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None, mimo_o=None,
         pairing="interleaved", state: ScanState) -> Tensor:
    """One decode token. x, z (b, H, P); B, C (b, R, G, N); dt, adt, lam (b, H); theta (b, S).

    Returns o (b, H, P) in x's dtype and writes the new angle, ssm, k and x into `state`.
    """
    _check_rank(B, mimo_x, mimo_z, mimo_o)
    cdt = _compute_dtype(x)
    c = lambda t: None if t is None else t.to(cdt)  # noqa: E731
    o, phi, ssm, k = _step_math(
        c(x), c(z), c(B), c(C), c(dt), c(adt), c(lam), c(theta), c(B_bias), c(C_bias), c(D),
        c(mimo_x), c(mimo_z), c(mimo_o), pairing,
        c(state.angle), c(state.ssm), c(state.k), c(state.x))
    state.angle.copy_(phi)
    state.ssm.copy_(ssm)
    state.k.copy_(k)
    state.x.copy_(x)
    return o.to(x.dtype)


def scan_sequential(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None,
                    mimo_o=None, pairing="interleaved", state: ScanState | None = None
                    ) -> tuple[Tensor, ScanState]:
    """Spec §3.1, token by token. x, z (b, T, H, P); B, C (b, T, R, G, N); dt, adt, lam (b, T, H);
    theta (b, T, S). Returns o (b, T, H, P) and the final state (a new ScanState; `state` is not
    modified)."""
    rank = _check_rank(B, mimo_x, mimo_z, mimo_o)
    cdt = _compute_dtype(x)
    init = _state_or_zeros(state, x[:, 0], rank, B.shape[-1], theta.shape[-1], cdt)
    cur = ScanState(init.angle.to(cdt).clone(), init.ssm.to(cdt).clone(), init.k.clone(), init.x.clone())
    outs = []
    for t in range(x.shape[1]):
        outs.append(step(x[:, t], None if z is None else z[:, t], B[:, t], C[:, t], dt[:, t], adt[:, t],
                         lam[:, t], theta[:, t], B_bias=B_bias, C_bias=C_bias, D=D, mimo_x=mimo_x,
                         mimo_z=mimo_z, mimo_o=mimo_o, pairing=pairing, state=cur))
    final = ScanState(cur.angle, cur.ssm.to(init.ssm.dtype), cur.k, cur.x)
    return torch.stack(outs, dim=1), final


def chunk_angles(dt: Tensor, theta: Tensor, angle0: Tensor, chunk_size: int) -> Tensor:
    """Φ_t = (Φ⁰ + Σ_{s≤t} Δ_s θ_s) mod 2π, summed within chunks with the running offset wrapped
    after each chunk (spec §7.3). dt (b, T, H), theta (b, T, S), angle0 (b, H, S) -> (b, T, H, S)."""
    inc = dt[..., None] * theta[:, :, None, :]
    out, offset = [], angle0
    for c0 in range(0, dt.shape[1], chunk_size):
        run = offset[:, None] + torch.cumsum(inc[:, c0:c0 + chunk_size], dim=1)
        out.append(torch.remainder(run, TWO_PI))
        offset = out[-1][:, -1]
    return torch.cat(out, dim=1)


def scan_chunked(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None,
                 mimo_o=None, pairing="interleaved", state: ScanState | None = None, chunk_size: int = 64
                 ) -> tuple[Tensor, ScanState]:
    """Spec §3.2/§3.3: intra-chunk masked products plus a carried P×N state per (b, H).

    Same inputs and outputs as `scan_sequential`. Each (time, rank) pair is one row of the chunk.
    """
    rank = _check_rank(B, mimo_x, mimo_z, mimo_o)
    cdt = _compute_dtype(x)
    b, T, H, P = x.shape
    N = B.shape[-1]
    init = _state_or_zeros(state, x[:, 0], rank, N, theta.shape[-1], cdt)
    c = lambda t: None if t is None else t.to(cdt)  # noqa: E731
    xc, dt, adt, lam, theta = c(x), c(dt), c(adt), c(lam), c(theta)
    mx = c(mimo_x)

    # phase 1: angles, biased + rotated keys/queries, trapezoid weights — (b, T, R, H, ·)
    phi = chunk_angles(dt, theta, c(init.angle), chunk_size)  # (b, T, H, S)
    k = rotate(_heads_of_groups(c(B), H) + c(B_bias).transpose(0, 1), phi[:, :, None], pairing)
    q = rotate(_heads_of_groups(c(C), H) + c(C_bias).transpose(0, 1), phi[:, :, None], pairing)
    v = _rank_expand(xc, mx)  # (b, T, R, H, P)
    gamma = lam * dt  # (b, T, H)
    delta = (1 - lam) * dt
    sigma = gamma + torch.cat([delta[:, 1:], torch.zeros_like(delta[:, :1])], dim=1)

    # fold the cached previous token into the carried state (spec §7.5), without α_0
    carry = (c(init.ssm) + delta[:, 0, :, None, None]
             * torch.einsum("brhp,brhn->bhpn", _rank_expand(c(init.x), mx), c(init.k)))  # (b, H, P, N)

    ys = []
    for c0 in range(0, T, chunk_size):
        sl = slice(c0, min(c0 + chunk_size, T))
        n = sl.stop - sl.start
        ell = torch.cumsum(adt[:, sl], dim=1)  # (b, n, H)
        qc, kc, vc = q[:, sl], k[:, sl], v[:, sl]
        y = torch.exp(ell)[:, :, None, :, None] * torch.einsum("bhpn,birhn->birhp", carry, qc)
        # mask[i, j] over time: e^{ℓi−ℓj}σ̂j below the diagonal, γi on it, 0 above
        seg = (ell[:, :, None] - ell[:, None, :]).clamp(max=0)  # (b, i, j, H)
        below = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)[None, :, :, None]
        mask = torch.where(below, torch.exp(seg) * sigma[:, None, sl], torch.zeros((), dtype=cdt,
                                                                                   device=x.device))
        mask = mask + torch.diag_embed(gamma[:, sl].transpose(1, 2)).permute(0, 2, 3, 1)
        scores = torch.einsum("birhn,bjshn->bijhrs", qc, kc)
        y = y + torch.einsum("bijh,bijhrs,bjshp->birhp", mask, scores, vc)
        y = y + D.to(cdt)[:, None] * vc
        ys.append(_gate_reduce(y, None if z is None else c(z[:, sl]), c(mimo_z), c(mimo_o)))
        tail = torch.exp(ell[:, -1:] - ell) * sigma[:, sl]  # (b, n, H)
        carry = (torch.exp(ell[:, -1])[..., None, None] * carry
                 + torch.einsum("bjh,bjrhp,bjrhn->bhpn", tail, vc, kc))

    final = ScanState(angle=phi[:, -1], ssm=carry.to(init.ssm.dtype), k=k[:, -1].to(x.dtype),
                      x=x[:, -1].clone())
    return torch.cat(ys, dim=1).to(x.dtype), final


def heavy_tail(u: Tensor) -> Tensor:
    """φ(u) = 1 + u for u ≥ 0, 1 / (1 − u) for u < 0 (spec §1.3)."""
    return u.clamp(min=0) + 1.0 / (1.0 - u.clamp(max=0))


def proj_groups(d_proj: int, H: int, P: int, N: int, R: int, S: int) -> int:
    """The B/C groups G of an in_proj row [z, x, B, C, dd_dt, dd_A, trap, angles] of width
    d_proj = 2·H·P + 2·R·G·N + 3·H + S (spec §1.2), or a ValueError when no G ≥ 1 fits."""
    G, rest = divmod(d_proj - 2 * H * P - 3 * H - S, 2 * R * N)
    if rest or G < 1:
        raise ValueError(f"d_proj = {d_proj} does not fit H={H}, P={P}, N={N}, R={R}, S={S}")
    return G


def preprocess(proj: Tensor, *, dt_bias: Tensor, B_norm_weight: Tensor, C_norm_weight: Tensor, heads: int,
               headdim: int, d_state: int, rank: int, n_angles: int, a_floor: float = 1e-4,
               eps: float = 1e-5) -> dict:
    """proj (..., d_proj) split as [z, x, B, C, dd_dt, dd_A, trap, angles] → dict of the operator's
    x, z (..., H, P), B, C (..., R, G, N) after RMSNorm (fp32 maths, weight's dtype out), and fp32
    dt = softplus(dd_dt + dt_bias), adt = min(−φ(dd_A), −a_floor)·dt, lam = sigmoid(trap),
    theta = π·tanh(angles)."""
    H, P, N, R, S = heads, headdim, d_state, rank, n_angles
    G = proj_groups(proj.shape[-1], H, P, N, R, S)
    z, x, B, C, dd_dt, dd_A, trap, angles = proj.split([H * P, H * P, R * G * N, R * G * N, H, H, H, S], -1)
    lead = proj.shape[:-1]
    cdt = _compute_dtype(proj)
    f32 = torch.promote_types(dt_bias.dtype, cdt)

    def norm(v, w):
        vf = v.reshape(*lead, R, G, N).to(cdt)
        return (vf * torch.rsqrt(vf.pow(2).mean(-1, keepdim=True) + eps) * w.to(cdt)).to(w.dtype)

    dt = torch.nn.functional.softplus(dd_dt.to(f32) + dt_bias)
    A = torch.clamp(-heavy_tail(dd_A.to(f32)), max=-a_floor)
    return dict(x=x.unflatten(-1, (H, P)), z=z.unflatten(-1, (H, P)), B=norm(B, B_norm_weight),
                C=norm(C, C_norm_weight), dt=dt, adt=A * dt, lam=torch.sigmoid(trap.to(f32)),
                theta=math.pi * torch.tanh(angles.to(f32)))
