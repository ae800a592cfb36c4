"""Money and energy from GPU time.

Per task, with P and D the prefill and decode GPU-seconds (capacity), u the target utilisation,
price in $/GPU-hour and e the energy price in $/J at the wall (usd_per_kwh × PUE / 3.6e6):

    $/task          = (P + D) / u · price / 3600  +  energy · e
    energy / task   = P · W_prefill + D · W_decode          (GPU board energy, J)
    $/1M input      = prefill share of $/task ÷ input tokens per task × 1e6   (prefill GPU time → input)
    $/1M output     = decode share of $/task ÷ output tokens per task × 1e6   (decode GPU time → output)
    GPUs at peak    = ceil(peak tasks/s · (P + D) / u);  N+1 adds one
    $/month         = GPUs billed (N+1 when chosen) · 730.5 h · price  +  energy · e · tasks/month

$/task is the cost of the GPU time a task uses at the target utilisation (an autoscaled fleet);
$/month is a fixed fleet sized for the peak hour, so $/month ÷ tasks/month is higher when the peak
factor or the rounding up leaves GPUs idle. Input tokens are counted as an API bills them (the whole
context of every call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.planning.capacity import Timing
from app.planning.pricing import HOURS_PER_MONTH
from app.planning.workloads import Workload


@dataclass(frozen=True)
class Power:
    prefill_w: float
    decode_w: float
    source: str  # "measured", "projected (…)", "TDP upper bound"


@dataclass(frozen=True)
class TaskCost:
    gpus_at_peak: int
    gpus_n_plus_1: int
    usd_per_task: float
    usd_per_month: float
    usd_per_1m_input_tokens: float
    usd_per_1m_output_tokens: float
    energy_per_task_j: float
    energy_usd_per_task: float
    fleet_utilisation: float  # mean load ÷ billed fleet capacity (0–1)


def gpus_needed(tasks_per_s: float, gpu_s_per_task: float, utilisation: float) -> int:
    """Whole GPUs to serve `tasks_per_s` at the target utilisation (at least one)."""
    need = tasks_per_s * gpu_s_per_task / utilisation
    return max(1, math.ceil(need - 1e-9))


def task_cost(w: Workload, t: Timing, *, usd_per_gpu_hour: float, power: Power | None, energy_usd_per_j: float,
              utilisation: float, n_plus_1: bool) -> TaskCost:
    """Costs of one task; with `power` None the energy is unknown (NaN) and not charged."""
    usd_per_gpu_s = usd_per_gpu_hour / 3600.0
    if power is None:
        e_pre = e_dec = 0.0
    else:
        e_pre = t.prefill_gpu_s * power.prefill_w
        e_dec = t.decode_gpu_s * power.decode_w
    usd_pre = t.prefill_gpu_s / utilisation * usd_per_gpu_s + e_pre * energy_usd_per_j
    usd_dec = t.decode_gpu_s / utilisation * usd_per_gpu_s + e_dec * energy_usd_per_j
    energy_usd = (e_pre + e_dec) * energy_usd_per_j
    peak = gpus_needed(w.peak_tasks_per_s, t.gpu_s, utilisation)
    billed = peak + 1 if n_plus_1 else peak
    per_month = billed * HOURS_PER_MONTH * usd_per_gpu_hour + energy_usd * w.tasks_per_month
    return TaskCost(
        gpus_at_peak=peak,
        gpus_n_plus_1=peak + 1,
        usd_per_task=usd_pre + usd_dec,
        usd_per_month=per_month,
        usd_per_1m_input_tokens=usd_pre / w.input_tokens_per_task * 1e6,
        usd_per_1m_output_tokens=usd_dec / w.output_tokens_per_task * 1e6,
        energy_per_task_j=math.nan if power is None else e_pre + e_dec,
        energy_usd_per_task=energy_usd,
        fleet_utilisation=w.mean_tasks_per_s * t.gpu_s / billed,
    )
