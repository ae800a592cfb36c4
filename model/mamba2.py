"""Mamba-2 mixer (spec §6.1) in the state-spaces `Mamba2` parameter layout.

Per token u (D,): in_proj → [z, xBC, dt]; depthwise causal conv1d (width d_conv, with bias) and SiLU
over xBC, split into x (d_inner), B, C (G·N each); Δ = softplus(dt + dt_bias), A = −exp(A_log) per
head, data-independent. The recurrence S_t = α_t S_{t−1} + Δ_t x_t B_tᵀ, y_t = S_t C_t + D x_t is the
Mamba-3 scan operator with λ = 1, no rotation and zero biases (the β term vanishes). Then
y ⊙ SiLU(z), a grouped RMSNorm after the gate, out_proj.

Decode cache: the last d_conv conv inputs and the SSM state, both in the model dtype as the repo
keeps them. The operator's previous-key/x slots are unused at λ = 1; they are transient zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.mamba3.reference import ScanState
from model.config import Mamba2Config
from model.layers import Linear, RMSNorm, compute_dtype, dt_bias_, uniform_, uniform_fan_in_
from model.lm import MixerLM
from model.scan import scan_ops


class Mamba2State(NamedTuple):
    conv: Tensor  # (b, conv_dim, d_conv)  last d_conv inputs of the conv, model dtype
    ssm: Tensor  # (b, H, P, N)           model dtype


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: Mamba2Config, impl: str, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        self.ops = scan_ops(impl, cfg.chunk_size)
        self.fast = impl == "triton"  # decode on the fused prologue and norm kernels (`_step_fast`)
        H = cfg.nheads
        self.in_proj = Linear(cfg.d_model, cfg.d_proj, bias=False, dtype=dtype)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=True, dtype=dtype)
        self.dt_bias = nn.Parameter(torch.empty(H, dtype=dtype))
        self.A_log = nn.Parameter(torch.empty(H, dtype=dtype))
        self.D = nn.Parameter(torch.empty(H, dtype=compute_dtype(dtype)))
        self.norm = RMSNorm(cfg.d_inner, cfg.norm_eps, dtype, group_size=cfg.d_inner // cfg.ngroups)
        self.out_proj = Linear(cfg.d_inner, cfg.d_model, bias=False, dtype=dtype)

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator, depth_scale: float) -> None:
        cfg = self.cfg
        uniform_fan_in_(self.in_proj.weight, gen)
        uniform_fan_in_(self.conv1d.weight, gen)
        bound = cfg.d_conv ** -0.5  # Conv1d bias default: U(±1/√fan_in), fan_in = d_conv (depthwise)
        uniform_(self.conv1d.bias, -bound, bound, gen)
        dt_bias_(self.dt_bias, gen, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
        A = torch.empty(cfg.nheads, device=self.A_log.device).uniform_(cfg.A_init_min, cfg.A_init_max,
                                                                        generator=gen)
        self.A_log.copy_(torch.log(A))  # A ~ U(A_init_min, A_init_max), stored as log
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)
        uniform_fan_in_(self.out_proj.weight, gen, depth_scale)

    def allocate(self, batch: int, max_context: int, device) -> Mamba2State:
        cfg, dtype = self.cfg, self.in_proj.weight.dtype
        cache = Mamba2State(
            conv=torch.zeros(batch, cfg.conv_dim, cfg.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch, cfg.nheads, cfg.headdim, cfg.d_state, device=device, dtype=dtype))
        if self.fast:
            _step_constants(cache, self.D.dtype)  # made here, outside any CUDA-graph capture
        return cache

    def _inputs(self, u: Tensor, conv_state: Tensor) -> tuple[tuple, dict]:
        """u (b, T, D) → the operator's tensors with a T axis; writes the new conv inputs into
        `conv_state`."""
        cfg = self.cfg
        H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        b, T, _ = u.shape
        if self.fast:  # kernels.fused.mamba2_conv_prefill: the twin below in one launch (and the state's tail)
            from kernels import fused

            proj = self.in_proj(u)
            z = proj[..., :cfg.d_inner]
            xBC, dt, adt = fused.mamba2_conv_prefill(proj, conv_state, self.conv1d.weight, self.conv1d.bias,
                                                     self.dt_bias, self.A_log, xbc_offset=cfg.d_inner,
                                                     dt_offset=cfg.d_inner + cfg.conv_dim)
            x, B, C = xBC.split([cfg.d_inner, G * N, G * N], dim=-1)
        else:
            z, xBC, dd_dt = self.in_proj(u).split([cfg.d_inner, cfg.conv_dim, H], dim=-1)
            # the conv sees the d_conv − 1 inputs before this call (zeros for a fresh sequence)
            window = torch.cat([conv_state[..., 1:], xBC.transpose(1, 2)], dim=-1)  # (b, conv_dim, d_conv−1+T)
            conv_state.copy_(window[..., -cfg.d_conv:])
            xBC = F.silu(F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=cfg.conv_dim))
            x, B, C = xBC.transpose(1, 2).split([cfg.d_inner, G * N, G * N], dim=-1)
            f32 = compute_dtype(u.dtype)
            dt = F.softplus(dd_dt.to(f32) + self.dt_bias.to(f32))
            adt = -torch.exp(self.A_log.to(f32)) * dt
        lam = torch.ones_like(dt)
        theta = dt.new_zeros(b, T, 0)
        zero_bias = dt.new_zeros(H, 1, N)
        params = dict(B_bias=zero_bias, C_bias=zero_bias, D=self.D)
        return (x.reshape(b, T, H, P), z.reshape(b, T, H, P), B.reshape(b, T, 1, G, N),
                C.reshape(b, T, 1, G, N), dt, adt, lam, theta), params

    def _step_fast(self, u: Tensor, cache: Mamba2State) -> Tensor:
        """impl "triton": the decode prologue in one launch (`kernels.fused.mamba2_conv_step`), the scan
        step, the gated norm on the fused RMSNorm kernel (one group), out_proj."""
        from kernels import fused

        cfg = self.cfg
        H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        b = u.shape[0]
        proj = self.in_proj(u)
        xBC, dt, adt = fused.mamba2_conv_step(proj, cache.conv, self.conv1d.weight, self.conv1d.bias, self.dt_bias,
                                              self.A_log, xbc_offset=cfg.d_inner, dt_offset=cfg.d_inner + cfg.conv_dim)
        x, B, C = xBC.split([cfg.d_inner, G * N, G * N], dim=-1)
        lam, theta, zero_bias, state = _step_constants(cache, self.D.dtype)
        y = self.ops.step(x.view(b, H, P), proj[:, :cfg.d_inner].view(b, H, P), B.view(b, 1, G, N),
                          C.view(b, 1, G, N), dt, adt, lam, theta, B_bias=zero_bias, C_bias=zero_bias, D=self.D,
                          state=state, previous_term=False)
        return self._out(y)

    def _scan_state(self, cache: Mamba2State) -> ScanState:
        b, H, P, N = cache.ssm.shape
        dtype = self.in_proj.weight.dtype
        return ScanState(angle=cache.ssm.new_zeros(b, H, 0, dtype=compute_dtype(dtype)), ssm=cache.ssm,
                         k=cache.ssm.new_zeros(b, 1, H, N), x=cache.ssm.new_zeros(b, H, P))

    def _out(self, y: Tensor) -> Tensor:
        """y (..., H, P), already gated → grouped RMSNorm, out_proj; with one group on the fast path, the norm on
        the fused kernel (`kernels.fused.add_rms_norm`: one launch where the twin makes about seven passes)."""
        if self.fast and self.cfg.ngroups == 1:
            from kernels import fused

            return self.out_proj(fused.add_rms_norm(y.flatten(-2), None, self.norm.weight, self.norm.eps)[1])
        return self.out_proj(self.norm(y.flatten(-2)))

    def forward(self, u: Tensor, cache: Mamba2State, start: int) -> Tensor:
        args, params = self._inputs(u, cache.conv)
        if self.fast:  # the Triton scans take "no biases" (None) and then neither read nor add them
            params = dict(params, B_bias=None, C_bias=None)
        y, final = self.ops.prefill(*args, **params, state=self._scan_state(cache))
        cache.ssm.copy_(final.ssm)
        return self._out(y)

    def step(self, u: Tensor, cache: Mamba2State, pos: Tensor) -> Tensor:
        if self.fast:
            return self._step_fast(u, cache)
        args, params = self._inputs(u[:, None], cache.conv)
        y = self.ops.step(*(a[:, 0] for a in args), **params, state=self._scan_state(cache))
        return self._out(y)


def _step_constants(cache: Mamba2State, f32: torch.dtype) -> tuple[Tensor, Tensor, Tensor, ScanState]:
    """(λ = 1 broadcast over (b, H), no angles (b, 0), zero B/C biases (H, 1, N), the ScanState of `cache`)
    for the fast decode step. The operator's previous-key and previous-x slots are only there for the
    state's shape: the step runs with `previous_term=False` (λ ≡ 1) and neither reads nor writes them, so
    one pair per shape serves every layer and every cache. Made when a cache is allocated, filled there (a
    CUDA-graph capture would only record the fill) and kept for the process, since a captured graph holds
    their addresses."""
    b, H, P, N = cache.ssm.shape
    lam, theta, angle, zero_bias, k, x = _scratch(b, H, P, N, cache.ssm.dtype, f32, cache.ssm.device)
    return lam, theta, zero_bias, ScanState(angle=angle, ssm=cache.ssm, k=k, x=x)


_SCRATCH: dict = {}  # (b, H, P, N, dtypes, device) → the step constants, kept for the process


def _scratch(b: int, H: int, P: int, N: int, dtype: torch.dtype, f32: torch.dtype, device: torch.device):
    key = (b, H, P, N, dtype, f32, device)
    if key not in _SCRATCH:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("Mamba-2 fast decode: its step constants are made when the cache is allocated; "
                               "this cache's were not, and a CUDA-graph capture would only record their fill")
        _SCRATCH[key] = (torch.ones((), device=device, dtype=f32).expand(b, H),
                         torch.zeros(b, 0, device=device, dtype=f32), torch.zeros(b, H, 0, device=device, dtype=f32),
                         torch.zeros(H, 1, N, device=device, dtype=f32),
                         torch.zeros(b, 1, H, N, device=device, dtype=dtype),
                         torch.zeros(b, H, P, device=device, dtype=dtype))
    return _SCRATCH[key]


def build(cfg: Mamba2Config, impl: str, dtype: torch.dtype) -> MixerLM:
    return MixerLM(cfg, impl, [Mamba2Mixer(cfg, impl, dtype) for _ in range(cfg.n_layer)], dtype)
