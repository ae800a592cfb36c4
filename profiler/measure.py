"""Measuring, in the process that owns the device: model by model, point by point, each point written
to the store as soon as it is measured (progress shows, a resume skips it, a kill loses one point).

Prefill (b, p): a cache for p tokens, rewound to empty before every call; the timed call is
`prefill(tokens (b, p))`. Decode (b, c): a cache for c + 1 tokens positioned at c before every call
(its contents left as allocated: a step's cost depends on shapes, not values, and filling it by a real
prefill would cost as much as the prefill and cap decode points by prefill's activation memory); the
timed call is one `decode_step`. On CUDA both are replayed from a CUDA graph (implementation
`<impl>+cuda-graph`), so a point is the GPU's time: eagerly, a short prefill's time is the host's
launching of its few hundred kernels and moved by up to ±60 % between machines of one model.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session

from model import cost
from profiler import models, ncu
from profiler.device import ensure_device, nvml_index_for_uuid
from profiler.metrics import (UNSTABLE_SPREAD, derive, energy_from_counter_j, integrate_power_j, latency_stats,
                              per_token, tokens_per_call, unstable)
from profiler.models import DTYPE_BYTES, ModelRef
from profiler.runner import EXIT_STOPPED
from profiler.request import ModelPlan, Request, make_request, plan
from profiler.scenarios import Point, capacity_boundary, next_capacity_batch
from profiler.telemetry import Sampler, open_reader, power_series, shared_in, telemetry_rows
from profiler.timing import Stopped, capture_cuda_graph, clock_for, time_calls
from store import repo
from store.db import session
from store.models import Device, ModelSpec

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException | None) -> bool:
    """A failed allocation: torch's CUDA OOM, or a host allocator's (CPU runs), also where it caused
    another error (an OOM inside CUDA-graph capture surfaces as a failed capture)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class Stopper:
    """`should_stop` for the timing loops: a cancel in the store, or the parent process gone. Polls the
    store at most every `poll_s`, in a session of its own (a long-lived one would read a stale snapshot)."""

    def __init__(self, engine: Engine, run_id: int, parent_pid: int | None, poll_s: float = 0.5):
        self.engine, self.run_id, self.parent_pid, self.poll_s = engine, run_id, parent_pid, poll_s
        self.reason: str | None = None
        self._last = float("-inf")

    def __call__(self) -> bool:
        if self.reason is not None:
            return True
        now = time.monotonic()
        if now - self._last < self.poll_s:
            return False
        self._last = now
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.reason = "the profiler process that started this one is gone"
        else:
            with session(self.engine) as s:
                if repo.cancel_requested(s, run_id=self.run_id):
                    self.reason = "cancel requested"
        return self.reason is not None


@dataclass
class Meter:
    """What measuring one model's points needs."""

    s: Session
    run_id: int
    req: Request
    device: torch.device
    device_row: Device
    model_row: ModelSpec
    ref: ModelRef
    sampler: Sampler | None
    reader: object | None
    should_stop: Callable[[], bool]
    log: Callable[[str], None]

    @property
    def clock(self):
        return clock_for(self.device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _tokens(m: Meter, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator(device=m.device).manual_seed(m.req.seed)
    return torch.randint(0, m.ref.config.vocab_size, shape, device=m.device, generator=gen)


def timed_label(impl: str, device: torch.device) -> str:
    """The implementation label of a point measured on `device`: `<impl>+cuda-graph` on CUDA (also for a point
    that ran out of memory there), `<impl>+eager` elsewhere."""
    return f"{impl}+cuda-graph" if device.type == "cuda" else f"{impl}+eager"


def _time_call(m: Meter, model, call: Callable[[], object], rewind: Callable[[], None], phase: str,
               hooks: dict) -> tuple[str, object, str | None]:
    """Time `call` (one prefill or decode step, `rewind` ahead of each) replayed from a CUDA graph on CUDA,
    so that the GPU's time is measured and not the host's launches; eagerly where there is no GPU or the
    capture fails (said in the note). Out of memory is raised, except a prefill whose capture ran out:
    a capture cannot hand cached memory back to the device, so that prefill is tried again eagerly."""
    impl, note = f"{model.impl}+eager", None
    if m.device.type == "cuda":
        try:
            # one warm-up: a prefill of 128 × 16384 tokens runs about a second a call
            call = capture_cuda_graph(call, before=rewind, warmup=1 if phase == "prefill" else 2)
            impl = f"{model.impl}+cuda-graph"
        except Exception as exc:
            if is_oom(exc) and phase != "prefill":
                raise
            _release(m.device)
            why = "ran out of memory" if is_oom(exc) else f"failed ({_first_line(exc)})"
            note = f"CUDA graph capture {why}; {phase} timed eagerly"
    timed = time_calls(call, clock=m.clock, policy=m.req.timing, before=rewind, should_stop=m.should_stop,
                       **hooks)
    return impl, timed, note


def _time_prefill(m: Meter, model, point: Point, hooks: dict) -> tuple[str, object, str | None]:
    tokens = _tokens(m, (point.batch, point.prompt_len))
    cache = model.allocate_cache(batch=point.batch, max_context=point.prompt_len)
    return _time_call(m, model, lambda: model.prefill(tokens, cache, start=0), cache.pos.zero_, "prefill", hooks)


def _time_decode(m: Meter, model, point: Point, hooks: dict) -> tuple[str, object, str | None]:
    c = point.context_len
    token = _tokens(m, (point.batch,))
    cache = model.allocate_cache(batch=point.batch, max_context=c + 1)
    return _time_call(m, model, lambda: model.decode_step(token, cache), lambda: cache.pos.fill_(c), "decode",
                      hooks)


def base_row(m: Meter, point: Point, key: str, impl: str) -> dict:
    """The point's row before timing: shape, analytic bytes and FLOPs; every measured column null."""
    cfg, dbytes = m.ref.config, DTYPE_BYTES[m.req.dtype]
    if point.phase == "prefill":
        c, held = cost.prefill_cost(cfg, point.batch, point.prompt_len, dbytes), point.prompt_len
    else:
        c, held = cost.decode_cost(cfg, point.batch, point.context_len, dbytes), point.context_len
    return dict(
        run_id=m.run_id, device_id=m.device_row.id, model_id=m.model_row.id, point_key=key, phase=point.phase,
        dtype=m.req.dtype, implementation=impl, batch=point.batch, prompt_len=point.prompt_len,
        context_len=point.context_len, gen_tokens=1 if point.phase == "decode" else 0,
        latency_p50_ms=None, latency_p10_ms=None, latency_p90_ms=None, n_samples=0, tokens_per_s=None,
        peak_mem_bytes=None, weight_bytes=cost.weight_bytes(cfg, dbytes),
        state_bytes=cost.cache_bytes(cfg, point.batch, held, dbytes), bytes_moved=float(c.bytes),
        flops=float(c.flops), achieved_bw_bytes_per_s=None, arithmetic_intensity=c.flops / c.bytes,
        mbu=None, mfu=None, energy_j=None, energy_per_token_j=None, mean_power_w=None, oom=False,
        gpu_shared=False, hw_bytes=None, hw_flops=None, notes=None,
    )


def peak_flops_for(device_row: Device, dtype: str) -> float | None:
    """The measured roof that applies to `dtype`: the bf16 GEMM's for bf16 (and fp16, same tensor-core
    rate on the GPUs we know); none measured for fp32."""
    return device_row.measured_bf16_flops_per_s if dtype in ("bfloat16", "float16") else None


def measure_point(m: Meter, model, point: Point, key: str) -> dict:
    row = base_row(m, point, key, timed_label(model.impl, m.device))
    counter: dict[str, float | None] = {}
    hooks = {}
    if m.reader is not None:
        hooks = dict(on_start=lambda: counter.update(start=m.reader.energy_mj()),
                     on_end=lambda: counter.update(end=m.reader.energy_mj()))
    _reset_peak(m.device)
    failure = None
    try:
        timer = _time_prefill if point.phase == "prefill" else _time_decode
        impl, timed, note = timer(m, model, point, hooks)
    except Stopped:
        raise
    except Exception as exc:
        if not is_oom(exc):
            raise
        failure = _first_line(exc)
    peak = _peak(m.device)
    _release(m.device)
    if failure is not None:
        row.update(oom=True, peak_mem_bytes=peak, notes=f"out of memory: {failure}")
        return row
    stats = latency_stats(timed.samples_ms)
    d = derive(phase=point.phase, batch=point.batch, prompt_len=point.prompt_len, latency_ms=stats.p50_ms,
               bytes_moved=row["bytes_moved"], flops=row["flops"],
               peak_bw_bytes_per_s=m.device_row.measured_copy_bw_bytes_per_s,
               peak_flops_per_s=peak_flops_for(m.device_row, m.req.dtype))
    notes = [note] if note else []
    energy = energy_from_counter_j(counter.get("start"), counter.get("end"))
    window = m.sampler.window(timed.start_s, timed.end_s) if m.sampler is not None else []
    if energy is None and window:
        energy = integrate_power_j(power_series(window), timed.start_s, timed.end_s)
        if energy is not None:
            notes.append("energy integrated from power samples (no energy counter)")
    if unstable(stats.p10_ms, stats.p90_ms):
        notes.append(f"timings unstable: p90 {stats.p90_ms / stats.p10_ms:.2f}× p10, above {UNSTABLE_SPREAD}× "
                     "(another load on the machine, a throttled clock, or calls too short to settle): measure it "
                     "again on an idle machine")
    tokens = tokens_per_call(point.phase, point.batch, point.prompt_len) * stats.n
    row.update(
        implementation=impl, latency_p50_ms=stats.p50_ms, latency_p10_ms=stats.p10_ms,
        latency_p90_ms=stats.p90_ms, n_samples=stats.n, tokens_per_s=d.tokens_per_s, peak_mem_bytes=peak,
        achieved_bw_bytes_per_s=d.achieved_bw_bytes_per_s, mbu=d.mbu, mfu=d.mfu, energy_j=energy,
        energy_per_token_j=per_token(energy, tokens),
        mean_power_w=None if energy is None else energy / max(timed.end_s - timed.start_s, 1e-9),
        gpu_shared=shared_in(window), notes="; ".join(notes) or None,
    )
    return row


def _oom_row(m: Meter, point: Point, key: str, impl: str, why: str) -> dict:
    return {**base_row(m, point, key, impl), "oom": True, "notes": why}


def _store_point(m: Meter, row: dict, total: int) -> None:
    repo.add_measurements(m.s, rows=[row])
    if m.sampler is not None:
        repo.add_telemetry(m.s, samples=telemetry_rows(m.sampler.take_unflushed(), run_id=m.run_id,
                                                       device_id=m.device_row.id))
    done = len(repo.finished_point_keys(m.s, run_id=m.run_id))
    repo.update_run(m.s, run_id=m.run_id, points_done=done, progress=min(done / max(total, 1), 1.0))
    if row["oom"]:
        m.log(f"{row['point_key']}: out of memory")
    else:
        m.log(f"{row['point_key']}: p50 {row['latency_p50_ms']:.3f} ms over {row['n_samples']} calls "
              f"({row['implementation']})")


def _capacity_fits(m: Meter, mp: ModelPlan, context: int) -> dict[int, bool]:
    """Outcomes already stored for this model and context (a resumed probe continues from them)."""
    frame = repo.read_measurements(m.s, run_ids=[m.run_id], model_ids=[m.model_row.id], phase="decode")
    return {int(b): not bool(oom) for b, oom, key in zip(frame["batch"], frame["oom"], frame["point_key"])
            if key == mp.key(Point("decode", int(b), context_len=context), m.req)}


def _with_ncu(m: Meter, row: dict, point: Point) -> dict:
    found = ncu.measure_decode_step(ref=m.ref, req=m.req, batch=point.batch, context=point.context_len)
    row.update(hw_bytes=found.hw_bytes, hw_flops=found.hw_flops)
    if found.note:
        row["notes"] = "; ".join(x for x in (row["notes"], found.note) if x)
    return row


def measure_model(m: Meter, mp: ModelPlan, *, total: int, build=models.build) -> None:
    done = repo.finished_point_keys(m.s, run_id=m.run_id)
    todo = [(p, mp.key(p, m.req)) for p in mp.points]
    todo = [(p, k) for p, k in todo if k not in done]
    if not todo and not mp.capacity_contexts:
        return
    m.log(f"{mp.ref.label}: building ({m.req.dtype}, {m.req.impl}) on {m.device}")
    try:
        model = build(mp.ref, device=m.device, dtype=m.req.dtype, impl=m.req.impl, seed=m.req.seed)
    except Exception as exc:
        if not is_oom(exc):
            raise
        why = f"the weights do not fit: {_first_line(exc)}"
        _release(m.device)
        smallest = [Point("decode", 1, context_len=c) for c in mp.capacity_contexts]
        for p, k in todo + [(p, mp.key(p, m.req)) for p in smallest]:
            _store_point(m, _oom_row(m, p, k, timed_label(m.req.impl, m.device), why), total)
        return
    ncu_pending = m.req.ncu and m.device.type == "cuda"
    for point, key in todo:
        if m.should_stop():
            raise Stopped()
        row = measure_point(m, model, point, key)
        if ncu_pending and point.phase == "decode" and not row["oom"]:
            row, ncu_pending = _with_ncu(m, row, point), False
        _store_point(m, row, total)
    for context in mp.capacity_contexts:
        fits = _capacity_fits(m, mp, context)
        while (b := next_capacity_batch(fits, m.req.capacity_max_batch)) is not None:
            if m.should_stop():
                raise Stopped()
            point = Point("decode", b, context_len=context)
            row = measure_point(m, model, point, mp.key(point, m.req))
            _store_point(m, row, total)
            fits[b] = not row["oom"]
        lo, hi = capacity_boundary(fits)
        m.log(f"{mp.ref.label} @ {context} tokens: largest batch that fits {lo}"
              + (f" (batch {hi} does not)" if hi else ""))
    del model
    _release(m.device)


def _append_error(s: Session, run_id: int, message: str) -> None:
    run = repo.get_run(s, run_id=run_id)
    s.refresh(run)
    repo.update_run(s, run_id=run_id, error="\n".join(x for x in (run.error, message) if x)[:4000])


def run_models(url: str, *, run_id: int, model_indices: list[int], parent_pid: int | None, device: str | None = None,
               build=models.build, log: Callable[[str], None] | None = None) -> int:
    """Measure the given models of a run (indices into its plan) on `device` (default: the request's;
    cuda:0 for "any"); the measuring process's main. Returns 0, 1 when a model failed (its error
    appended to the run), or EXIT_STOPPED."""
    from store.db import get_engine

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    engine = get_engine(url)
    stopper = Stopper(engine, run_id, parent_pid)
    with session(engine) as s:
        run = repo.get_run(s, run_id=run_id)
        req = make_request(run.request)
        if device is not None or req.device == "any":
            req = dataclasses.replace(req, device=device or "cuda:0")
        plans = plan(req)
        device = torch.device(req.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        device_row = ensure_device(s, device)
        if run.device_id is None:
            repo.update_run(s, run_id=run_id, device_id=device_row.id)
        sampler, reader = None, None
        if device.type == "cuda":
            index = nvml_index_for_uuid(device_row.identity)
            if index is None and not os.environ.get("CUDA_VISIBLE_DEVICES"):
                index = device.index  # no UUID match (an old torch): the indices agree without remapping
            reader, why = open_reader(index) if index is not None else (None, "GPU not found in NVML")
            if reader is None:
                log(f"telemetry off: {why}")
            else:
                sampler = Sampler(reader, interval_s=req.telemetry_interval_s).start()
        status = 0
        try:
            for i in model_indices:
                mp = plans[i]
                spec = repo.upsert_model_spec(s, **models.spec_fields(mp.ref))
                m = Meter(s=s, run_id=run_id, req=req, device=device, device_row=device_row, model_row=spec,
                          ref=mp.ref, sampler=sampler, reader=reader, should_stop=stopper, log=log)
                try:
                    measure_model(m, mp, total=run.points_total, build=build)
                except Stopped:
                    raise
                except Exception as exc:
                    status = 1
                    message = f"{mp.ref.label}: {_first_line(exc)}"
                    log(f"FAILED {message}")
                    s.rollback()
                    _append_error(s, run_id, message)
                    _release(device)
        except Stopped:
            log(f"stopped: {stopper.reason}")
            return EXIT_STOPPED
        finally:
            if sampler is not None:
                sampler.stop()
    return status
