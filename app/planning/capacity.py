"""Capacity: how many sequences one GPU can serve for a workload, what binds it, and the task's timing.

Memory. A slot holds one sequence's cache at the task's final context (static allocation, as the
profiler's cache is allocated):

    weights + n · state(context) + workspace ≤ usable_fraction · memory
    state(context) = state_bytes_fixed + kv_bytes_per_token · context

usable_fraction (0.90, the default of vLLM's gpu_memory_utilization) leaves room for the CUDA context,
allocator fragmentation and other processes; workspace (2 GiB) holds activations of the prefill in
flight and the logits. Both are options.

Timing at concurrency n (n sequences decoding together on one GPU; continuous batching). Per task:

    prefill GPU-s  P    = Σ_calls prefill_ms(b_p, tokens) / b_p                   (b_p = prefill batch)
    decode GPU-s   D(n) = Σ_calls (o − 1) · mean step_ms(n, context over the call) / n
    prefill share  f    = P / (P + D(n))   (prefills of other requests interleave with the decode steps)
    TPOT           = mean step_ms / (1 − f),  worst call
    TTFT           = prefill_ms + one decode step in flight,  worst call
    task latency   = Σ_calls TTFT + (o − 1) · TPOT              (model time; tool time is not counted)
    tasks/s per GPU at utilisation u = u / (P + D(n))

Reuse mode prefills only a call's new tokens over the held context; that costs
max(prefill(new), prefill(held + new) − prefill(held)): at least a fresh prefill of the new tokens,
and at least the marginal cost of those tokens at the end of a long prompt (attention over the history).

The per-GPU concurrency is the n on a fixed grid (1 … memory limit, capped) that maximises tasks/s
while meeting every SLO; a looser SLO only widens that set, so it never costs more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.planning.surfaces import worst_label
from app.planning.workloads import Workload

GIB = 2**30
USABLE_MEMORY_FRACTION = 0.90
WORKSPACE_BYTES = 2 * GIB
DECODE_SAMPLES_PER_CALL = 5


def concurrency_grid(limit: int) -> list[int]:
    """1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, … (about 4 per doubling), up to and including `limit`."""
    grid = {1, 2, 3}
    x = 4
    while x <= limit:
        step = max(1, x // 4)
        grid.update(range(x, min(2 * x, limit + 1), step))
        x *= 2
    grid.add(limit)
    return sorted(g for g in grid if 1 <= g <= limit)


def state_bytes_per_seq(state_bytes_fixed: int, kv_bytes_per_token: int, context_tokens: int) -> int:
    return int(state_bytes_fixed) + int(kv_bytes_per_token) * int(context_tokens)


def usable_bytes(memory_bytes: float, usable_fraction: float, workspace_bytes: float) -> float:
    return usable_fraction * memory_bytes - workspace_bytes


def max_concurrency_by_memory(*, memory_bytes: float, weight_bytes: float, state_bytes: float,
                              usable_fraction: float = USABLE_MEMORY_FRACTION,
                              workspace_bytes: float = WORKSPACE_BYTES) -> int:
    """Largest n with weights + n · state + workspace ≤ usable_fraction · memory (0 when none fits)."""
    room = usable_bytes(memory_bytes, usable_fraction, workspace_bytes) - weight_bytes
    if room <= 0:
        return 0
    if state_bytes <= 0:
        return 1 << 30
    return int(room // state_bytes)


def max_context_by_memory(*, memory_bytes: float, weight_bytes: float, state_bytes_fixed: int,
                          kv_bytes_per_token: int, concurrency: int,
                          usable_fraction: float = USABLE_MEMORY_FRACTION,
                          workspace_bytes: float = WORKSPACE_BYTES) -> float:
    """Longest context `concurrency` sequences can hold (inf when the state does not grow; 0 when none fits)."""
    room = usable_bytes(memory_bytes, usable_fraction, workspace_bytes) - weight_bytes
    room_per_seq = room / concurrency - state_bytes_fixed
    if room_per_seq < 0:
        return 0.0
    if kv_bytes_per_token <= 0:
        return math.inf
    return room_per_seq / kv_bytes_per_token


class LatencySurface(Protocol):
    phase: str

    def latency_ms(self, batch, length) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Candidate:
    """One model on one GPU: what capacity and cost need."""

    prefill: LatencySurface
    decode: LatencySurface
    memory_bytes: float
    weight_bytes: float
    state_bytes_fixed: int
    kv_bytes_per_token: int
    max_context: int


@dataclass(frozen=True)
class Limits:
    usable_fraction: float = USABLE_MEMORY_FRACTION
    workspace_bytes: float = WORKSPACE_BYTES
    prefill_batch: int = 1
    max_concurrency: int = 1024


@dataclass(frozen=True)
class Timing:
    """A task's timing at one concurrency; times in ms unless the name says otherwise."""

    concurrency: int
    ttft_ms: float  # worst call
    tpot_ms: float  # worst call, prefill interference included
    task_latency_s: float
    prefill_gpu_s: float  # per task
    decode_gpu_s: float  # per task
    prefill_label: int
    decode_label: int

    @property
    def gpu_s(self) -> float:
        return self.prefill_gpu_s + self.decode_gpu_s


@dataclass(frozen=True)
class Capacity:
    feasible: bool
    reason: str  # why infeasible; empty when feasible
    bound_by: str
    concurrency: int
    memory_limit: int
    state_bytes: int
    timing: Timing | None


@dataclass(frozen=True)
class _Prefill:
    ms: np.ndarray  # (K,) per call, whole prefill batch
    label: int


def _prefill_per_call(w: Workload, cand: Candidate, bp: int) -> _Prefill:
    calls = w.calls()
    full = np.array([c.prefill_tokens + c.prior_tokens for c in calls], dtype=float)
    new = np.array([c.prefill_tokens for c in calls], dtype=float)
    prior = np.array([c.prior_tokens for c in calls], dtype=float)
    reuse = prior > 0
    lengths = np.concatenate([full, new[reuse], prior[reuse]])
    ms, labels = cand.prefill.latency_ms(bp, lengths)
    k = len(calls)
    out = ms[:k].copy()
    if reuse.any():
        r = int(reuse.sum())
        fresh, held = ms[k:k + r], ms[k + r:]
        out[reuse] = np.maximum(fresh, out[reuse] - held)
    return _Prefill(ms=out, label=worst_label(labels))


def _decode_contexts(w: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Sample contexts (K, S) over each call's decode steps, and the steps per call (K,)."""
    ctx, steps = [], []
    for c in w.calls():
        n_steps = c.output_tokens - 1
        first, last = c.context_tokens + 1, c.context_tokens + n_steps
        ctx.append(np.linspace(first, last, DECODE_SAMPLES_PER_CALL))
        steps.append(n_steps)
    return np.array(ctx), np.array(steps, dtype=float)


def timings(w: Workload, cand: Candidate, ns: list[int], bp: int) -> list[Timing]:
    """The task's timing at each concurrency in `ns` (one vectorised surface query for all of them)."""
    pre = _prefill_per_call(w, cand, bp)
    ctx, steps = _decode_contexts(w)
    k, s = ctx.shape
    nn = np.repeat(np.asarray(ns, dtype=float), k * s)
    step_ms, labels = cand.decode.latency_ms(nn, np.tile(ctx.ravel(), len(ns)))
    step_ms = step_ms.reshape(len(ns), k, s).mean(axis=2)  # (N, K) mean step over each call
    labels = labels.reshape(len(ns), k * s)
    p_gpu_s = float(pre.ms.sum()) / bp / 1e3
    out = []
    for i, n in enumerate(ns):
        d_gpu_s = float((steps * step_ms[i]).sum()) / n / 1e3
        share = p_gpu_s / (p_gpu_s + d_gpu_s) if d_gpu_s > 0 else 0.0
        tpot = step_ms[i] / max(1.0 - share, 1e-9)
        ttft = pre.ms + step_ms[i]
        task_s = float((ttft + steps * tpot).sum()) / 1e3
        out.append(Timing(concurrency=n, ttft_ms=float(ttft.max()), tpot_ms=float(tpot.max()), task_latency_s=task_s,
                          prefill_gpu_s=p_gpu_s, decode_gpu_s=d_gpu_s, prefill_label=pre.label,
                          decode_label=worst_label(labels[i])))
    return out


def _over(value: float, target: float | None) -> bool:
    """Above the target, beyond float rounding (a value equal to its SLO meets it)."""
    return target is not None and value > target * (1 + 1e-9)


def _violations(t: Timing, w: Workload) -> list[str]:
    slo, out = w.slo, []
    if _over(t.ttft_ms, slo.ttft_ms):
        out.append("TTFT SLO")
    if _over(t.tpot_ms, slo.tpot_ms):
        out.append("TPOT SLO")
    if _over(t.task_latency_s, slo.task_latency_s):
        out.append("task-latency SLO")
    return out


def _fmt(x: float) -> str:
    """Three significant figures at most, thousands separated: 0.5, 12.3, 2,005."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _explain_slo(t: Timing, w: Workload, failed: list[str]) -> str:
    slo, parts = w.slo, []
    longest = max(c.prefill_tokens for c in w.calls())
    if "TTFT SLO" in failed:
        parts.append(f"TTFT {_fmt(t.ttft_ms)} ms > SLO {_fmt(slo.ttft_ms)} ms (prefill of up to {longest:,} tokens)")
    if "TPOT SLO" in failed:
        parts.append(f"TPOT {_fmt(t.tpot_ms)} ms > SLO {_fmt(slo.tpot_ms)} ms")
    if "task-latency SLO" in failed:
        parts.append(f"task latency {_fmt(t.task_latency_s)} s > SLO {_fmt(slo.task_latency_s)} s")
    return "; ".join(parts) + " even at one sequence per GPU"


def plan_capacity(w: Workload, cand: Candidate, limits: Limits) -> Capacity:
    ctx = w.final_context_tokens
    state = state_bytes_per_seq(cand.state_bytes_fixed, cand.kv_bytes_per_token, ctx)
    if ctx > cand.max_context:
        return Capacity(False, f"the task reaches {ctx:,} tokens of context; this model supports {cand.max_context:,}",
                        "context limit", 0, 0, state, None)
    n_mem = max_concurrency_by_memory(memory_bytes=cand.memory_bytes, weight_bytes=cand.weight_bytes,
                                      state_bytes=state, usable_fraction=limits.usable_fraction,
                                      workspace_bytes=limits.workspace_bytes)
    if n_mem < 1:
        usable = usable_bytes(cand.memory_bytes, limits.usable_fraction, limits.workspace_bytes)
        return Capacity(
            False,
            f"does not fit: weights {cand.weight_bytes / GIB:,.2f} GiB + one sequence's state at {ctx:,} tokens "
            f"{state / GIB:,.2f} GiB > {usable / GIB:,.2f} GiB usable ({limits.usable_fraction:.0%} of "
            f"{cand.memory_bytes / GIB:,.1f} GiB less {limits.workspace_bytes / GIB:,.1f} GiB workspace)",
            "memory", 0, 0, state, None)
    cap = min(n_mem, limits.max_concurrency)
    grid = concurrency_grid(cap)
    ts = timings(w, cand, grid, limits.prefill_batch)
    fails = [_violations(t, w) for t in ts]
    ok = [i for i, f in enumerate(fails) if not f]
    if not ok:
        return Capacity(False, _explain_slo(ts[0], w, fails[0]), fails[0][0], 0, n_mem, state, ts[0])
    best = min(ok, key=lambda i: (ts[i].gpu_s, grid[i]))
    n = grid[best]
    if n == cap:
        bound = "memory" if cap == n_mem else "concurrency cap"
    elif fails[best + 1]:
        bound = fails[best + 1][0]
    else:
        bound = "throughput peak"
    return Capacity(True, "", bound, n, n_mem, state, ts[best])
