"""A profiling request: what a run measures. Torch-free, so the app can build and check one.

The app (or the CLI) stores `Request.to_json()` in the run row; `python -m profiler execute RUN_ID` reads
it back. `make_request` accepts a partial dict (any of `FIELDS`) and fills the rest from the named
scenario, or from the default scenario of the device when no grid is given. Every refusal is a
`RequestError` with a one-line message naming the problem.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from profiler.device import DeviceError, parse_device
from profiler.models import DTYPE_BYTES, ModelRef, ModelRefError, resolve
from profiler.scenarios import KINDS, SCENARIOS, Point, TimingPolicy, default_scenario, grid_points

IMPLS = ("sequential", "chunked", "triton")  # model/scan.py's
GRID_FIELDS = ("batches", "prefill_batches", "prompts", "contexts")
TIMING_FIELDS = tuple(f.name for f in dataclasses.fields(TimingPolicy))


class RequestError(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    kind: str
    models: tuple[str, ...]
    device: str  # "cpu", "cuda:N", or "any" (a GPU: the executing worker's)
    dtype: str
    impl: str
    batches: tuple[int, ...]  # decode batches (and prefill's when `prefill_batches` is not given)
    prefill_batches: tuple[int, ...]
    prompts: tuple[int, ...]
    contexts: tuple[int, ...]
    timing: TimingPolicy
    scenario: str | None = None
    capacity_max_batch: int = 4096
    seed: int = 0
    ncu: bool = False
    telemetry_interval_s: float = 0.1
    time_limit_s: float | None = None
    label: str = ""

    @property
    def device_kind(self) -> str:
        return parse_device(self.device)[0]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update({k: list(getattr(self, k)) for k in ("models", *GRID_FIELDS)})
        d.update(d.pop("timing"))
        return d

    @classmethod
    def from_json(cls, d: dict) -> Request:
        return make_request(d)


FIELDS = tuple(f.name for f in dataclasses.fields(Request) if f.name != "timing") + TIMING_FIELDS


def _ints(name: str, values) -> tuple[int, ...]:
    if isinstance(values, (int, str)):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or isinstance(v, float) and not v.is_integer():
            raise RequestError(f"{name}: {v!r} is not a whole number")
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise RequestError(f"{name}: {v!r} is not a whole number") from None
        if n < 1:
            raise RequestError(f"{name} must be ≥ 1, got {n}")
        out.append(n)
    return tuple(sorted(set(out)))


def _default_device() -> str:
    from profiler.device import nvml_gpus

    gpus, _ = nvml_gpus()
    return "cuda:0" if gpus else "cpu"


def make_request(raw: dict) -> Request:
    """A complete, checked request from a partial one (see the module docstring)."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown request field(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    given = {k: v for k, v in raw.items() if v is not None}
    try:
        kind, index = parse_device(given.get("device") or _default_device())
    except DeviceError as exc:
        raise RequestError(str(exc)) from None
    name = given.get("scenario")
    if name is None and not any(k in given for k in GRID_FIELDS):
        name = default_scenario(kind)
    if name is not None and name not in SCENARIOS:
        raise RequestError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    sc = SCENARIOS.get(name)
    if sc is not None and sc.device == "cpu" and "device" not in given:
        kind, index = "cpu", None
    device = "cpu" if kind == "cpu" else "any" if index is None else f"cuda:{index}"

    def pick(field: str, fallback):
        if field in given:
            return given[field]
        return getattr(sc, field) if sc is not None and hasattr(sc, field) else fallback

    models = given.get("models", sc.models if sc else ())
    models = (models,) if isinstance(models, str) else tuple(models)
    if not models:
        raise RequestError("no models given: name presets or checkpoint folders with --models")
    batches = pick("batches", ())
    if "prefill_batches" in given:
        prefill_batches = given["prefill_batches"]
    elif "batches" in given or sc is None or sc.prefill_batches is None:
        prefill_batches = batches
    else:
        prefill_batches = sc.prefill_batches
    base = sc.timing if sc else TimingPolicy()
    try:
        timing = dataclasses.replace(base, **{k: given[k] for k in TIMING_FIELDS if k in given})
    except (TypeError, ValueError) as exc:
        raise RequestError(str(exc)) from None
    req = Request(
        kind=given.get("kind") or (sc.kind if sc else "grid"), models=models, device=device,
        dtype=given.get("dtype") or (sc.dtype if sc and sc.dtype else "float32" if kind == "cpu" else "bfloat16"),
        impl=given.get("impl") or ("chunked" if kind == "cpu" else "triton"),
        batches=_ints("batch sizes", batches), prefill_batches=_ints("prefill batch sizes", prefill_batches),
        prompts=_ints("prompt lengths", pick("prompts", ())), contexts=_ints("contexts", pick("contexts", ())),
        timing=timing, scenario=name, capacity_max_batch=int(pick("capacity_max_batch", 4096)),
        seed=int(given.get("seed", 0)), ncu=bool(given.get("ncu", False)),
        telemetry_interval_s=float(given.get("telemetry_interval_s", 0.1)),
        time_limit_s=None if given.get("time_limit_s") is None else float(given["time_limit_s"]),
        label=str(given.get("label", "")),
    )
    check(req)
    return req


def check(req: Request) -> list[ModelRef]:
    """Refuse what cannot run; returns the resolved models."""
    if req.kind not in KINDS:
        raise RequestError(f"unknown kind {req.kind!r}; valid: {', '.join(KINDS)}")
    if req.dtype not in DTYPE_BYTES:
        raise RequestError(f"dtype {req.dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    if req.impl not in IMPLS:
        raise RequestError(f"implementation {req.impl!r} is not one of {', '.join(IMPLS)}")
    if req.impl == "triton" and req.device_kind != "cuda":
        raise RequestError("implementation 'triton' needs a CUDA device; use --impl chunked on the CPU")
    if req.kind == "capacity":
        if not req.contexts:
            raise RequestError("a capacity probe needs at least one context (--context)")
        if req.capacity_max_batch < 1:
            raise RequestError(f"capacity_max_batch must be ≥ 1, got {req.capacity_max_batch}")
    else:
        if not req.batches and not req.prefill_batches:
            raise RequestError("no batch sizes given (--batch)")
        if not (req.prompts and req.prefill_batches) and not (req.contexts and req.batches):
            raise RequestError("nothing to measure: give prompt lengths (--prompt) and/or contexts (--context)")
    if not req.telemetry_interval_s > 0 or not math.isfinite(req.telemetry_interval_s):
        raise RequestError(f"telemetry interval must be a finite number of seconds > 0, got {req.telemetry_interval_s}")
    if req.time_limit_s is not None and not (req.time_limit_s > 0 and math.isfinite(req.time_limit_s)):
        raise RequestError(f"time limit must be a finite number of seconds > 0, got {req.time_limit_s}")
    try:
        refs = [resolve(m) for m in req.models]
    except ModelRefError as exc:
        raise RequestError(str(exc)) from None
    for ref in refs:
        limit = ref.config.max_context
        if req.prompts and max(req.prompts) > limit:
            raise RequestError(f"prompt length {max(req.prompts)} exceeds {ref.label}'s maximum context of {limit}")
        if req.contexts and max(req.contexts) + 1 > limit:
            raise RequestError(f"context {max(req.contexts)} exceeds {ref.label}'s maximum context of {limit} "
                               "(a decode step needs room for one more token)")
    return refs


@dataclass(frozen=True)
class ModelPlan:
    ref: ModelRef
    points: tuple[Point, ...]  # grid and paper runs
    capacity_contexts: tuple[int, ...] = ()  # capacity runs: searched adaptively

    def key(self, point: Point, req: Request) -> str:
        return point.key(self.ref.key, req.dtype, req.impl)


def plan(req: Request) -> list[ModelPlan]:
    refs = check(req)
    if req.kind == "capacity":
        return [ModelPlan(ref, (), req.contexts) for ref in refs]
    points = tuple(grid_points(req.prefill_batches, req.prompts, req.batches, req.contexts))
    return [ModelPlan(ref, points) for ref in refs]
