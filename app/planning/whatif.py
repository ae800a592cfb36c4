"""What-if: the Mamba-3 SSM state kept in bf16 instead of fp32 during decode.

The decode kernels support it (`kernels/mamba3/step.py`, a bf16 `state.ssm`), but the profiler measures
the fp32 state the public code keeps. The what-if takes a measured decode surface and scales it by its
own fitted roofline with part of the state traffic's time removed. Per sequence and step the SSM state
is read and written once, so a bf16 state saves 2 × (fp32 − bf16 state bytes) of traffic (`model.cost`);
at the surface's fitted ms per byte that is b × saved × ms_per_byte, of which the whole model realised
only a fraction when measured (REALISED, calibrated in the formula's own terms: H200,
whole model (`kernels.bench_step_ab --models`, `kernels.bench_model.time_decode_ms`), batch 128 at 768 tokens, the
same weights with an fp32 and a bf16 state, as shipped since 3416ff8 (each key's rotation partner from registers):
MIMO R=4 5.188 → 4.322 ms in one run, SISO 4.742 → 3.234 ms in two (bbe0f96's and 3416ff8's, whose SISO step is
the same; 2026-12-03: docs/benchmarks.md, twenty-eighth session; MIMO's step reads out one (row, rank) a lane and
a bf16 state halves its TMA'd bytes, SISO's fp32 state walks 8-row blocks and its bf16 state stores its outputs
from every holder); against 1.573 and 1.690 ms that the shipped H200 surfaces' fitted memory terms give the saved
traffic at that point). A negative
fraction would add time instead of removing it. The TMA-fed step runs from sm_90 on; before it (A100, L40S, L4,
T4, the RTX cards) MIMO's step takes the pointer loads' tile and the per-row readout, which 2abad13 measured 6.666
→ 6.106 ms against the surface then shipped (2.402 ms), so those GPUs keep that
fraction (`realised_fraction(cfg, gpu)`). So

    latency' = latency × (t0 + memory − REALISED·b·saved·ms_per_byte + compute) / (t0 + memory + compute),

the memory term never below zero; on a projected GPU that lighter surface is projected like the fp32
one (projection.py). Prefill is unchanged (the chunked scan keeps its state in registers).
Each cached sequence holds that many fewer bytes, so more may fit on a GPU.

Its cost, stated with every row: the logits drift of a bf16 state over 4,096 decode steps, measured on
the 180M models with random weights (docs/benchmarks.md, "bf16 state"): median 1.2 % (SISO) / 0.9 % (MIMO)
relative error at step 4,096, 97.5–97.6 % top-1 agreement. Every what-if latency is labelled projected,
and a what-if row is never the recommendation itself (routing.py names it beside the recommendation).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from app.planning.projection import ProjectedSurface, ScaledSurface
from app.planning.surfaces import Surface
from model import cost
from store.datasheets import DATASHEETS

LABEL = "bf16 state"
NOTE = ("what-if: SSM state in bf16, decode scaled by the fitted roofline with the state traffic's time cut as "
        "far as the step kernel realised it when measured; logits drift ≈ 1 % over 4,096 steps (180M, random "
        "weights)")
# by MIMO rank (1: SISO, also the hybrid's layers): the measured whole-model saving at batch 128, 768 tokens on an
# H200 (3416ff8's step, each state on its own tile as shipped) ÷ the saving the shipped H200 surface's fitted memory
# term gives the saved traffic there (3416ff8's bundle; tests/planning/test_whatif.py recomputes the latter from
# data/reference)
MEASURED_SAVING_MS = {1: 4.742 - 3.234, 4: 5.188 - 4.322}
SURFACE_SAVING_MS = {1: 1.573, 4: 1.690}
REALISED = {rank: ms / SURFACE_SAVING_MS[rank] for rank, ms in MEASURED_SAVING_MS.items()}
# before sm_90 MIMO's step loads its state by pointers on the tile 2abad13 timed (whole model, same point), against
# the H200 surface shipped then (a4ca2e8's bundle: 2.402 ms)
REALISED_BEFORE_TMA = {**REALISED, 4: (6.666 - 6.106) / 2.402}


def realised_fraction(cfg, gpu: str | None = None) -> float:
    """The share of the saved traffic's time the measured step kernel realised, for this config's rank
    (the nearest measured rank at or below it), on GPU `gpu` (a datasheet key: one before sm_90 runs the
    step without TMA; unknown or None: the TMA-fed step)."""
    sheet = DATASHEETS.get(gpu) if gpu else None
    table = REALISED_BEFORE_TMA if sheet is not None and 0 < sheet.compute_capability < 90 else REALISED
    rank = int(getattr(cfg, "mimo_rank", 1) or 1)
    return table[max(r for r in table if r <= rank)]


def is_what_if(models) -> "np.ndarray":
    """Which of these model names are what-if rows."""
    return np.array([str(m).endswith(f" · {LABEL}") for m in models], dtype=bool)


@dataclasses.dataclass(frozen=True)
class _LighterRoofline:
    """A fitted roofline whose memory term carries `saved_bytes_per_seq` less per sequence (for projection)."""

    source: object
    saved_bytes_per_seq: float

    def lighter(self, memory_ms, batch) -> np.ndarray:
        """The memory term `memory_ms` of the source at `batch`, less the saved traffic, never below zero."""
        saved = np.asarray(batch, dtype=float) * self.saved_bytes_per_seq * self.source.ms_per_byte
        return np.maximum(memory_ms - saved, 0.0)

    def terms_ms(self, batch, length):
        t0, tb, tf = self.source.terms_ms(batch, length)
        return t0, self.lighter(tb, batch), tf


@dataclasses.dataclass(frozen=True)
class StatePrecisionSurface(ScaledSurface):
    """A measured decode surface with `saved_bytes_per_seq` less traffic per sequence and step (already
    discounted by the realised fraction)."""

    saved_bytes_per_seq: float

    @property
    def roofline(self) -> _LighterRoofline:
        """The source's roofline with the lighter memory term: what a projection to another GPU scales."""
        return _LighterRoofline(self.source.roofline, self.saved_bytes_per_seq)

    def scale(self, batch, length) -> np.ndarray:
        t0, tb, tf = self.source.roofline.terms_ms(batch, length)
        return (t0 + self.roofline.lighter(tb, batch) + tf) / np.maximum(t0 + tb + tf, 1e-12)


def state_bytes_saved(cfg, dtype_bytes: int) -> int:
    """Bytes per sequence a bf16 SSM state saves over the fp32 one (0 when the config has no fp32 state)."""
    if getattr(cfg, "state_dtype", None) != "float32":
        return 0
    bf16 = dataclasses.replace(cfg, state_dtype="bfloat16")
    return cost.state_bytes_fixed(cfg, dtype_bytes) - cost.state_bytes_fixed(bf16, dtype_bytes)


def bf16_state_subject(subject, cfg, dtype_bytes: int):
    """The what-if twin of a measured or projected subject (same GPU, same prefill), or None when it does
    not apply."""
    cand = subject.candidate
    saved = state_bytes_saved(cfg, dtype_bytes) if cfg is not None else 0
    if cand is None or saved <= 0:
        return None
    per_seq = 2.0 * saved * realised_fraction(cfg, subject.gpu)
    if isinstance(cand.decode, Surface):
        decode = StatePrecisionSurface(cand.decode, per_seq)
    elif isinstance(cand.decode, ProjectedSurface) and isinstance(cand.decode.source, Surface):
        # the what-if on the measured source, then projected like the fp32 surface
        decode = dataclasses.replace(cand.decode, source=StatePrecisionSurface(cand.decode.source, per_seq))
    else:
        return None
    twin = dataclasses.replace(cand, decode=decode, state_bytes_fixed=max(int(cand.state_bytes_fixed) - saved, 0))
    return dataclasses.replace(subject, preset=f"{subject.preset} · {LABEL}", candidate=twin,
                               implementation=f"{subject.implementation} ({NOTE})")
