"""A profiling request: what a run measures. Torch-free, so the app can build and check one.

The app (or the CLI) stores `Request.to_json()` in the run row; `python -m profiler execute RUN_ID` reads
it back. `make_request` accepts a partial dict (any of `FIELDS`) and fills the rest from the named
scenario, or from the default scenario of the device when no grid is given. Every refusal is a
`RequestError` with a one-line message naming the problem.

On the CPU two more refusals keep a run from running for hours or being killed: a GPU-sized scenario
with a model larger than CPU_MODEL_PARAMS (unless `allow_slow`), and a point whose weights and cache
alone exceed the memory available now.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from model import cost
from profiler.device import DeviceError, available_memory_bytes, parse_device
from profiler.models import DTYPE_BYTES, ModelRef, ModelRefError, resolve
from profiler.scenarios import KINDS, SCENARIOS, Point, TimingPolicy, default_scenario, grid_points

IMPLS = ("sequential", "chunked", "triton")  # model/scan.py's
GRID_FIELDS = ("batches", "prefill_batches", "prompts", "contexts")
TIMING_FIELDS = tuple(f.name for f in dataclasses.fields(TimingPolicy))
CPU_MODEL_PARAMS = 10_000_000  # a model this small runs even a GPU-sized scenario's grid on a CPU in minutes


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
    allow_slow: bool = False  # run a GPU-sized scenario on the CPU all the same

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


def make_request(raw: dict, *, match_weights: bool = True) -> Request:
    """A complete, checked request from a partial one (see the module docstring); `match_weights`: as
    in `check`."""
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
        label=str(given.get("label", "")), allow_slow=bool(given.get("allow_slow", False)),
    )
    check(req, match_weights=match_weights)
    return req


def check(req: Request, *, match_weights: bool = True) -> list[ModelRef]:
    """Refuse what cannot run; returns the resolved models. `match_weights=False` checks a checkpoint
    folder without torch (`profiler.models.resolve`), as the app does; the run checks it fully."""
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
        refs = [resolve(m, match_weights=match_weights) for m in req.models]
    except ModelRefError as exc:
        raise RequestError(str(exc)) from None
    _check_cpu_sized(req, refs)
    for ref in refs:
        limit = ref.config.max_context
        if req.prompts and max(req.prompts) > limit:
            raise RequestError(f"prompt length {max(req.prompts)} exceeds {ref.label}'s maximum context of {limit}")
        if req.contexts and max(req.contexts) + 1 > limit:
            raise RequestError(f"context {max(req.contexts)} exceeds {ref.label}'s maximum context of {limit} "
                               "(a decode step needs room for one more token)")
    if req.device_kind == "cpu":
        _check_memory(req, refs)
    return refs


def _check_cpu_sized(req: Request, refs: list[ModelRef]) -> None:
    """A GPU-sized scenario on the CPU with a model above CPU_MODEL_PARAMS is refused (unless `allow_slow`):
    it would run for hours. With models that small (the *-tiny presets) the same grid takes minutes."""
    sc = SCENARIOS.get(req.scenario)
    if req.device_kind != "cpu" or sc is None or not sc.gpu_sized or req.allow_slow:
        return
    params, largest = max((cost.param_count(ref.config), ref.label) for ref in refs)
    if params <= CPU_MODEL_PARAMS:
        return
    size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    batch = req.capacity_max_batch if req.kind == "capacity" else max((*req.batches, *req.prefill_batches))
    tokens = max((*req.prompts, *req.contexts))
    raise RequestError(
        f"scenario {sc.name!r} is sized for a GPU (batches up to {batch:,}, up to {tokens:,} tokens): with {largest} "
        f"({size} parameters) it would run for hours on the CPU; use the cpu-demo scenario, *-tiny models, or a "
        "small grid of your own (--models mamba3-siso-tiny --batch 1 4 --prompt 64 --context 256), or pass "
        "--allow-slow to run it anyway")


def min_point_bytes(ref: ModelRef, point: Point, dtype: str) -> tuple[int, int]:
    """(weights, cache and activations) bytes a point needs at the least: the weights, the cache it
    allocates (`model.cost.cache_bytes`) and, for a prefill, one layer's input and output over every
    prompt token. A lower bound: a point that exceeds it cannot run."""
    cfg, width = ref.config, DTYPE_BYTES[dtype]
    weights = cost.weight_bytes(cfg, width)
    if point.phase == "prefill":
        held = (cost.cache_bytes(cfg, point.batch, point.prompt_len, width)
                + 2 * point.batch * point.prompt_len * cfg.d_model * width)
    else:
        held = cost.cache_bytes(cfg, point.batch, point.context_len + 1, width)
    return weights, held


def _check_memory(req: Request, refs: list[ModelRef]) -> None:
    """Refuse a CPU point that cannot fit in the memory available now: past it the kernel's OOM killer,
    not an error the profiler could record, would end the run (and perhaps other processes)."""
    available = available_memory_bytes()
    if available is None:
        return
    if req.kind == "capacity":  # the probe's largest try
        points = [Point("decode", req.capacity_max_batch, context_len=max(req.contexts))]
    else:
        points = grid_points(req.prefill_batches, req.prompts, req.batches, req.contexts)
    for ref in refs:
        point = max(points, key=lambda p: sum(min_point_bytes(ref, p, req.dtype)))
        weights, held = min_point_bytes(ref, point, req.dtype)
        if weights + held > available:
            what = (f"prefill of batch {point.batch:,} × {point.prompt_len:,} tokens" if point.phase == "prefill"
                    else f"decode of batch {point.batch:,} at {point.context_len:,} tokens")
            limit = "a smaller --max-batch or context" if req.kind == "capacity" else "smaller batches or lengths"
            raise RequestError(
                f"{ref.label}'s {what} needs at least {_gib(weights + held)} (weights {_gib(weights)}, cache and "
                f"activations {_gib(held)}) but this machine has {_gib(available)} of memory available; "
                f"choose {limit}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


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
