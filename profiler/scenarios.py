"""Named scenarios: what to measure, on which models, with which timing policy. Torch-free.

- `quick` (the default on a GPU): every family at its 1.5B-class preset over a small grid; budgeted to
  finish within 8 minutes on one H100.
- `paper`: the Mamba-3 paper's latency workload (batch 128, prefill n then decode n tokens,
  n = 512 … 16384, H100-SXM): prefill (128, n) and decode steps across the contexts n … 2n that the
  n decoded tokens pass through, so the prefill + decode time composes per n (see `profiler.paper`).
- `capacity`: per model and context, the largest batch whose cache and decode step fit in memory,
  found by doubling then bisecting (every try is stored; an OOM is the boundary, not a failure).
- `cpu-demo` (the default on a CPU): the tiny preset of every family, for real, in seconds.

`quick`, `paper` and `capacity` are GPU-sized (`Scenario.gpu_sized`): on a CPU their 1.5B-class models,
large batches and long contexts would run for hours, so a request for one on the CPU is refused unless
its models are CPU-sized (`profiler.request.CPU_MODEL_PARAMS`: the *-tiny presets) or it asks for a slow
run (`--allow-slow`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KINDS = ("grid", "paper", "capacity")
FAMILY_MODELS_1_5B = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "mamba2-1.5b", "llama-3.2-1b", "hybrid-1.5b")
TINY_MODELS = ("mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "transformer-tiny", "hybrid-tiny")
PAPER_MODELS = ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "mamba2-1.5b", "llama-3.2-1b")
PAPER_N = (512, 1024, 2048, 4096, 16384)
PAPER_BATCH = 128


# the command-line flag of each TimingPolicy field, for messages
TIMING_FLAGS = {"warmup": "--warmup", "min_repeats": "--min-repeats", "min_duration_s": "--min-duration",
                "max_repeats": "--max-repeats"}


@dataclass(frozen=True)
class TimingPolicy:
    """Sample until both `min_repeats` calls and `min_duration_s` of timed calls are reached, or
    `max_repeats` calls (a cap for very fast calls; `min_repeats` always wins). `warmup` calls run
    first and are not timed (compilation, autotuning and allocator growth happen there)."""

    warmup: int = 1
    min_repeats: int = 5
    min_duration_s: float = 0.2
    max_repeats: int = 500

    def __post_init__(self):
        """Each refusal names the command-line flag that sets the field (TIMING_FLAGS) and its rule."""
        for name in ("warmup", "min_repeats", "max_repeats", "min_duration_s"):
            value, whole = getattr(self, name), name != "min_duration_s"
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                kind = "a whole number" if whole else "a number of seconds"
                raise ValueError(f"{TIMING_FLAGS[name]} must be {kind}, got {value!r}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be 0 or more untimed calls, got {self.warmup}")
        if self.min_repeats < 1:
            raise ValueError(f"--min-repeats must be at least 1 timed call, got {self.min_repeats}")
        if self.max_repeats < self.min_repeats:
            raise ValueError(f"--min-repeats ({self.min_repeats}) must not exceed --max-repeats ({self.max_repeats})")
        if not (math.isfinite(self.min_duration_s) and self.min_duration_s >= 0):
            raise ValueError(f"--min-duration must be a finite number of seconds ≥ 0, got {self.min_duration_s}")

    def done(self, n: int, total_s: float) -> bool:
        return n >= self.min_repeats and (total_s >= self.min_duration_s or n >= self.max_repeats)


def paper_contexts(ns: tuple[int, ...]) -> tuple[int, ...]:
    """Decode contexts that cover each n's decode span [n, 2n]: its ends and middle."""
    return tuple(sorted({c for n in ns for c in (n, n + n // 2, 2 * n)}))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    kind: str
    models: tuple[str, ...]
    batches: tuple[int, ...]
    prompts: tuple[int, ...] = ()
    prefill_batches: tuple[int, ...] | None = None  # None: the same as `batches`
    contexts: tuple[int, ...] = ()
    device: str | None = None  # None: whatever --device says (default cuda when present)
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on the CPU
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    capacity_max_batch: int = 4096
    gpu_sized: bool = False  # far beyond a CPU with models larger than the *-tiny presets


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "quick", "every family at 1.5B-class size: prefill b∈{1,16} × prompt∈{512,2048,8192}, "
            "decode b∈{1,16,128} × context∈{512,4096,16384} (≈ 8 min on one H100)",
            kind="grid", models=FAMILY_MODELS_1_5B, batches=(1, 16, 128), prompts=(512, 2048, 8192),
            prefill_batches=(1, 16), contexts=(512, 4096, 16384),
            timing=TimingPolicy(warmup=1, min_repeats=5, min_duration_s=0.2), gpu_sized=True,
        ),
        Scenario(
            "paper", "the Mamba-3 paper's workload: batch 128, prefill n then decode n, n = 512…16384; "
            "composes the prefill + decode seconds of its latency table",
            kind="paper", models=PAPER_MODELS, batches=(PAPER_BATCH,), prompts=PAPER_N,
            prefill_batches=(16, PAPER_BATCH),  # batch 16 composes a prefill that does not fit as one call
            contexts=paper_contexts(PAPER_N), timing=TimingPolicy(warmup=1, min_repeats=3, min_duration_s=0.5),
            gpu_sized=True,
        ),
        Scenario(
            "capacity", "largest batch whose cache and decode step fit, per context (doubling, then bisection)",
            kind="capacity", models=FAMILY_MODELS_1_5B, batches=(), contexts=(2048, 8192, 32768, 65536),
            timing=TimingPolicy(warmup=1, min_repeats=3, min_duration_s=0.02), gpu_sized=True,
        ),
        Scenario(
            "cpu-demo", "the tiny preset of every family on the CPU, in seconds: prefill and decode, b∈{1,4}",
            kind="grid", models=TINY_MODELS, batches=(1, 4), prompts=(16, 64), contexts=(16, 256),
            device="cpu", dtype="float32", timing=TimingPolicy(warmup=1, min_repeats=3, min_duration_s=0.02),
            capacity_max_batch=64,
        ),
    )
}


def default_scenario(device_kind: str) -> str:
    return "quick" if device_kind == "cuda" else "cpu-demo"


@dataclass(frozen=True)
class Point:
    """One measured point: a prefill of (batch, prompt_len), or one decode step of `batch` sequences
    each holding `context_len` tokens."""

    phase: str
    batch: int
    prompt_len: int = 0
    context_len: int = 0

    def key(self, model_key: str, dtype: str, impl: str) -> str:
        return f"{model_key}|{dtype}|{impl}|{self.phase}|b{self.batch}|p{self.prompt_len}|c{self.context_len}"


def grid_points(prefill_batches, prompts, batches, contexts) -> list[Point]:
    """Prefill points, then decode points, each from the smallest footprint up (an OOM comes last)."""
    pre = sorted((Point("prefill", b, prompt_len=p) for b in prefill_batches for p in prompts),
                 key=lambda x: (x.batch * x.prompt_len, x.batch))
    dec = sorted((Point("decode", b, context_len=c) for b in batches for c in contexts),
                 key=lambda x: (x.batch * x.context_len, x.batch))
    return pre + dec


def next_capacity_batch(fits: dict[int, bool], max_batch: int) -> int | None:
    """The next batch to try at one context, given the outcomes so far (batch → fitted); None when the
    boundary is known: the largest fitting batch is within 1/16 of the smallest failing one (or exact
    below 16), nothing fits at batch 1, or `max_batch` fits."""
    if not fits:
        return 1
    ok = [b for b, f in fits.items() if f]
    bad = [b for b, f in fits.items() if not f]
    if bad and min(bad) == 1:
        return None
    hi = min(bad) if bad else None
    lo = max((b for b in ok if hi is None or b < hi), default=0)
    if hi is None:
        return None if lo >= max_batch else min(2 * lo, max_batch)
    if hi - lo <= max(1, lo // 16):
        return None
    return (lo + hi) // 2


def capacity_boundary(fits: dict[int, bool]) -> tuple[int, int | None]:
    """(largest fitting batch, smallest failing batch above it or None)."""
    bad = [b for b, f in fits.items() if not f]
    hi = min(bad) if bad else None
    lo = max((b for b, f in fits.items() if f and (hi is None or b < hi)), default=0)
    return lo, hi


def capacity_estimate(max_batch: int) -> int:
    """Points one capacity search is expected to take (for progress): doublings plus a few bisections."""
    return max_batch.bit_length() + 4
