"""Mamba-3 mixer, SISO and MIMO (spec §1, §2), in the state-spaces `Mamba3` parameter layout.

Per token u (D,): in_proj → [z, x, B, C, dd_dt, dd_A, trap, angles]; B and C RMS-normalised per
(rank, group); Δ = softplus(dd_dt + dt_bias), A = min(−φ(dd_A), −A_floor) with the heavy-tail φ,
λ = sigmoid(trap), θ = π·tanh(angles), all in fp32; then the scan operator (bias, rotation,
exponential-trapezoidal recurrence, D skip, SiLU(z) gate, MIMO reduction; kernels/mamba3) and
out_proj. No conv, no out-norm. The decode cache is the operator's `ScanState` (spec §1.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.mamba3.reference import ScanState
from model.config import Mamba3Config
from model.layers import Linear, RMSNorm, compute_dtype, dt_bias_, uniform_fan_in_
from model.lm import MixerLM
from model.scan import scan_ops

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def heavy_tail(u: Tensor) -> Tensor:
    """φ(u) = 1 + u for u ≥ 0, 1 / (1 − u) for u < 0 (spec §1.3)."""
    return u.clamp(min=0) + 1.0 / (1.0 - u.clamp(max=0))


class Mamba3Mixer(nn.Module):
    def __init__(self, cfg: Mamba3Config, impl: str, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        self.ops = scan_ops(impl, cfg.chunk_size)
        self.fast = impl == "triton"  # prefill's B/C norms and activations in one launch (`_inputs`)
        H, R, N, P = cfg.nheads, cfg.mimo_rank, cfg.d_state, cfg.headdim
        f32 = compute_dtype(dtype)
        self.in_proj = Linear(cfg.d_model, cfg.d_proj, bias=False, dtype=dtype)
        self.dt_bias = nn.Parameter(torch.empty(H, dtype=f32))
        self.B_bias = nn.Parameter(torch.empty(H, R, N, dtype=f32))
        self.C_bias = nn.Parameter(torch.empty(H, R, N, dtype=f32))
        self.B_norm = RMSNorm(N, 1e-5, dtype)
        self.C_norm = RMSNorm(N, 1e-5, dtype)
        if cfg.is_mimo:
            self.mimo_x = nn.Parameter(torch.empty(H, R, P, dtype=f32))
            self.mimo_z = nn.Parameter(torch.empty(H, R, P, dtype=f32))
            self.mimo_o = nn.Parameter(torch.empty(H, R, P, dtype=f32))
        self.D = nn.Parameter(torch.empty(H, dtype=f32))
        self.out_proj = Linear(cfg.d_inner, cfg.d_model, bias=False, dtype=dtype)

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator, depth_scale: float) -> None:
        cfg = self.cfg
        uniform_fan_in_(self.in_proj.weight, gen)
        dt_bias_(self.dt_bias, gen, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
        for p in (self.B_bias, self.C_bias, self.B_norm.weight, self.C_norm.weight, self.D):
            p.fill_(1.0)
        if cfg.is_mimo:
            self.mimo_x.fill_(1.0 / cfg.mimo_rank)
            self.mimo_z.fill_(1.0)
            self.mimo_o.fill_(1.0 / cfg.mimo_rank)
        uniform_fan_in_(self.out_proj.weight, gen, depth_scale)

    def allocate(self, batch: int, max_context: int, device) -> ScanState:
        cfg, dtype = self.cfg, self.in_proj.weight.dtype
        # float64 models (reference checks) keep the whole state in float64
        ssm_dtype = torch.float64 if dtype == torch.float64 else STATE_DTYPES[cfg.state_dtype]
        return ScanState.zeros(batch, cfg.nheads, cfg.headdim, cfg.d_state, cfg.n_angles, cfg.mimo_rank,
                               device=device, dtype=dtype, ssm_dtype=ssm_dtype)

    def _inputs(self, u: Tensor) -> tuple[tuple, dict]:
        """u (..., D) → the operator's positional tensors (x, z, B, C, dt, adt, lam, theta) with
        the leading axes of u, and its parameter keywords."""
        cfg = self.cfg
        H, P, R, G, N = cfg.nheads, cfg.headdim, cfg.mimo_rank, cfg.ngroups, cfg.d_state
        params = dict(B_bias=self.B_bias, C_bias=self.C_bias, D=self.D, pairing=cfg.pairing)
        if cfg.is_mimo:
            params.update(mimo_x=self.mimo_x, mimo_z=self.mimo_z, mimo_o=self.mimo_o)
        if self.fast:  # kernels.fused.mamba3_preprocess: the twin below in one launch
            from kernels import fused

            t = fused.mamba3_preprocess(self.in_proj(u), dt_bias=self.dt_bias, B_norm_weight=self.B_norm.weight,
                                        C_norm_weight=self.C_norm.weight, heads=H, headdim=P, d_state=N, rank=R,
                                        n_angles=cfg.n_angles, a_floor=cfg.A_floor, eps=self.B_norm.eps)
            return tuple(t[k] for k in ("x", "z", "B", "C", "dt", "adt", "lam", "theta")), params
        bc = R * G * N
        z, x, B, C, dd_dt, dd_A, trap, angles = self.in_proj(u).split(
            [cfg.d_inner, cfg.d_inner, bc, bc, H, H, H, cfg.n_angles], dim=-1)
        lead = u.shape[:-1]
        B = self.B_norm(B.reshape(*lead, R, G, N))
        C = self.C_norm(C.reshape(*lead, R, G, N))
        f32 = self.dt_bias.dtype
        dt = F.softplus(dd_dt.to(f32) + self.dt_bias)
        A = torch.clamp(-heavy_tail(dd_A.to(f32)), max=-cfg.A_floor)
        lam = torch.sigmoid(trap.to(f32))
        theta = math.pi * torch.tanh(angles.to(f32))
        return (x.reshape(*lead, H, P), z.reshape(*lead, H, P), B, C, dt, A * dt, lam, theta), params

    def forward(self, u: Tensor, cache: ScanState, start: int) -> Tensor:
        """u (b, T, D) continuing from `cache` (updated in place) → (b, T, D)."""
        args, params = self._inputs(u)
        o, _ = self.ops.prefill(*args, **params, state=cache, final_state=cache)
        return self.out_proj(o.flatten(-2))

    def step(self, u: Tensor, cache: ScanState, pos: Tensor) -> Tensor:
        """u (b, D) → (b, D); `cache` advanced one token in place. With a fused step (triton) the
        whole scan, B/C RMSNorm and activations included, is one launch between the projections."""
        if self.ops.step_fused is None:
            args, params = self._inputs(u)
            return self.out_proj(self.ops.step(*args, **params, state=cache).flatten(-2))
        cfg = self.cfg
        mimo = dict(mimo_x=self.mimo_x, mimo_z=self.mimo_z, mimo_o=self.mimo_o) if cfg.is_mimo else {}
        o = self.ops.step_fused(self.in_proj(u), dt_bias=self.dt_bias, B_norm_weight=self.B_norm.weight,
                                C_norm_weight=self.C_norm.weight, B_bias=self.B_bias, C_bias=self.C_bias,
                                D=self.D, **mimo, pairing=cfg.pairing, state=cache, a_floor=cfg.A_floor,
                                eps=self.B_norm.eps)
        return self.out_proj(o.flatten(-2))


def build(cfg: Mamba3Config, impl: str, dtype: torch.dtype) -> MixerLM:
    return MixerLM(cfg, impl, [Mamba3Mixer(cfg, impl, dtype) for _ in range(cfg.n_layer)], dtype)
