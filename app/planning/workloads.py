"""Workloads: what is served, how often, and under which latency SLOs. Saved and reloaded as JSON.

Every workload kind shares one shape. A task makes K calls; before call k (1-based) the client adds
`tokens_per_call` tokens (user turn, tool output, question), so call k reads

    context_k = system_prompt_tokens + k·tokens_per_call + (k−1)·output_tokens_per_call

tokens (the history holds every earlier call's input and output) and writes `output_tokens_per_call`.
Serving modes: *no-reuse* re-prefills the whole context on every call (a stateless API); *reuse* keeps
the prefix between calls (a Transformer its KV cache, an SSM its fixed-size state), so call k > 1
prefills only its new tokens on top of the held context.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app.planning.errors import PlanningError

KINDS = ("agentic", "chat", "long-doc", "streaming")
SERVING_MODES = ("no-reuse", "reuse")
SECONDS_PER_DAY = 86_400.0
DAYS_PER_MONTH = 365.25 / 12


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "a whole number" if integer else "a number"
        raise PlanningError(f"{name} must be {kind} (got {value!r})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise PlanningError(f"{name} must be {bound} (got {value!r})")


@dataclass(frozen=True)
class SLO:
    """Latency targets; None means no target. TTFT and TPOT follow the metric definitions in the README."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    task_latency_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "task_latency_s"):
            value = getattr(self, name)
            if value is not None:
                _positive(f"SLO {name}", value)

    def loosened(self, factor: float) -> "SLO":
        """Every target multiplied by `factor` (> 1 loosens)."""
        def scale(v: float | None) -> float | None:
            return None if v is None else v * factor

        return SLO(scale(self.ttft_ms), scale(self.tpot_ms), scale(self.task_latency_s))


@dataclass(frozen=True)
class Call:
    """One model call of a task, in tokens."""

    prefill_tokens: int  # tokens this call prefills
    prior_tokens: int  # context already held when it starts (reuse mode), else 0
    context_tokens: int  # context the call reads = prior + prefill
    output_tokens: int


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str
    calls_per_task: int
    system_prompt_tokens: int  # the fixed prefix: system prompt, or the document for long-doc
    tokens_per_call: int  # added before each call: user turn, tool output + history growth, question
    output_tokens_per_call: int
    tasks_per_day: float
    peak_factor: float = 2.0  # peak-hour arrival rate ÷ daily mean rate
    serving: str = "no-reuse"
    slo: SLO = field(default_factory=SLO)
    retrieval_heavy: bool = False  # needs exact recall of distant tokens
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PlanningError("a workload needs a name")
        if self.kind not in KINDS:
            raise PlanningError(f"workload kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.serving not in SERVING_MODES:
            raise PlanningError(f"serving mode must be one of {', '.join(SERVING_MODES)} (got {self.serving!r})")
        _positive("calls per task", self.calls_per_task, integer=True)
        _positive("system prompt tokens", self.system_prompt_tokens, integer=True, allow_zero=True)
        _positive("tokens added per call", self.tokens_per_call, integer=True, allow_zero=True)
        _positive("output tokens per call", self.output_tokens_per_call, integer=True)
        if self.output_tokens_per_call < 2:
            raise PlanningError("output tokens per call must be at least 2 (TPOT is the time between generated tokens)")
        if self.system_prompt_tokens + self.tokens_per_call < 1:
            raise PlanningError("the first call must read at least one token: set a system prompt or tokens per call")
        _positive("tasks per day", self.tasks_per_day)
        _positive("peak factor", self.peak_factor)
        if self.peak_factor < 1:
            raise PlanningError(f"peak factor is peak rate ÷ mean rate, so at least 1 (got {self.peak_factor!r})")
        if not isinstance(self.slo, SLO):
            raise PlanningError("slo must be an SLO")

    # ------------------------------------------------------------------------------------ derived sizes

    def calls(self) -> tuple[Call, ...]:
        out = []
        s, a, o = self.system_prompt_tokens, self.tokens_per_call, self.output_tokens_per_call
        for k in range(1, self.calls_per_task + 1):
            context = s + k * a + (k - 1) * o
            if self.serving == "reuse" and k > 1:
                prior = context - a
                out.append(Call(prefill_tokens=a, prior_tokens=prior, context_tokens=context, output_tokens=o))
            else:
                out.append(Call(prefill_tokens=context, prior_tokens=0, context_tokens=context, output_tokens=o))
        return tuple(out)

    @property
    def final_context_tokens(self) -> int:
        """Context held when the last call writes its last token: what a sequence slot must hold."""
        k = self.calls_per_task
        return self.system_prompt_tokens + k * (self.tokens_per_call + self.output_tokens_per_call)

    @property
    def input_tokens_per_task(self) -> int:
        """Prompt tokens as an API bills them: the whole context of every call (cached or not)."""
        return sum(c.context_tokens for c in self.calls())

    @property
    def output_tokens_per_task(self) -> int:
        return self.calls_per_task * self.output_tokens_per_call

    @property
    def mean_tasks_per_s(self) -> float:
        return self.tasks_per_day / SECONDS_PER_DAY

    @property
    def peak_tasks_per_s(self) -> float:
        return self.mean_tasks_per_s * self.peak_factor

    @property
    def tasks_per_month(self) -> float:
        return self.tasks_per_day * DAYS_PER_MONTH

    # ------------------------------------------------------------------------------------ variations

    def with_final_context(self, tokens: int) -> "Workload":
        """The same task shape scaled so the final context is `tokens` (prefix and per-call input scale)."""
        k, o = self.calls_per_task, self.output_tokens_per_call
        grow = self.system_prompt_tokens + k * self.tokens_per_call
        room = tokens - k * o
        if room < 1:
            raise PlanningError(f"a final context of {tokens:,} tokens leaves no room for {k}×{o} output tokens")
        scale = room / grow
        s = round(self.system_prompt_tokens * scale)
        a = (room - s) // k if k else 0
        if s + a < 1:
            s = room - k * a
        return replace(self, system_prompt_tokens=int(s), tokens_per_call=int(a))

    def with_output_scale(self, factor: float) -> "Workload":
        return replace(self, output_tokens_per_call=max(2, round(self.output_tokens_per_call * factor)))

    # ------------------------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Workload":
        if not isinstance(data, dict):
            raise PlanningError("a saved workload must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise PlanningError(f"saved workload has unknown field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        slo = values.get("slo") or {}
        if not isinstance(slo, dict) or set(slo) - set(SLO.__dataclass_fields__):
            raise PlanningError(f"saved workload has a malformed slo: {slo!r}")
        values["slo"] = SLO(**slo)
        try:
            return cls(**values)
        except TypeError as exc:
            raise PlanningError(f"saved workload is incomplete: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Workload":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanningError(f"saved workload is not valid JSON ({exc})") from None
        return cls.from_dict(data)


PRESETS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="coding-agent-15", kind="agentic", calls_per_task=15, system_prompt_tokens=4_000,
            tokens_per_call=1_500, output_tokens_per_call=300, tasks_per_day=20_000, peak_factor=2.5,
            serving="reuse", slo=SLO(ttft_ms=2_000, tpot_ms=50, task_latency_s=180),
            description="15 calls; each adds ~1.5k tokens of tool output (files, test logs) and writes 300",
        ),
        Workload(
            name="research-agent-10", kind="agentic", calls_per_task=10, system_prompt_tokens=2_000,
            tokens_per_call=3_000, output_tokens_per_call=500, tasks_per_day=5_000, peak_factor=2.0,
            serving="no-reuse", slo=SLO(ttft_ms=3_000, tpot_ms=60, task_latency_s=300),
            description="10 calls; each adds a fetched page (~3k tokens) and writes a 500-token note",
        ),
        Workload(
            name="chat", kind="chat", calls_per_task=4, system_prompt_tokens=500, tokens_per_call=150,
            output_tokens_per_call=350, tasks_per_day=200_000, peak_factor=3.0, serving="no-reuse",
            slo=SLO(ttft_ms=1_000, tpot_ms=40, task_latency_s=None),
            description="a 4-turn conversation: short user turns, ~350-token answers",
        ),
        Workload(
            name="doc-qa-32k", kind="long-doc", calls_per_task=1, system_prompt_tokens=32_000,
            tokens_per_call=512, output_tokens_per_call=256, tasks_per_day=10_000, peak_factor=2.0,
            serving="no-reuse", slo=SLO(ttft_ms=10_000, tpot_ms=80, task_latency_s=60), retrieval_heavy=True,
            description="one question over a 32k-token document; answers quote exact passages",
        ),
    )
}


def get_workload(name: str) -> Workload:
    try:
        return PRESETS[name]
    except KeyError:
        raise PlanningError(f"no workload preset {name!r}; presets: {', '.join(PRESETS)}") from None


SETTINGS_KEY = "workloads"  # the store's settings row: a list of the workloads people saved (never the presets)


def _entries(saved) -> list:
    """The stored setting's entries as they are, unread; an empty list when none were saved."""
    if saved is None:
        return []
    if not isinstance(saved, list):
        raise PlanningError(f"the store's saved workloads are not a list (got {type(saved).__name__}); "
                            "they are left in the store as they are")
    return list(saved)


def _saved_entries(s) -> list:
    from store import repo

    return _entries(repo.get_setting(s, key=SETTINGS_KEY))


def _entry_label(entry: Any, number: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"“{name}”" if isinstance(name, str) and name.strip() else f"number {number}"


def save_workloads(s, workloads: list[Workload]) -> None:
    """Save each workload with the store, replacing a saved one of the same name; every other saved entry,
    readable or not, is kept as stored. A built-in preset's name is refused: it would hide the preset."""
    for w in workloads:
        if w.name in PRESETS:
            raise PlanningError(f"“{w.name}” is a built-in workload: give yours another name to save it.")
    from store import repo

    def merged(saved):
        fresh = {w.name: w.to_dict() for w in workloads}
        kept = [fresh.pop(e["name"]) if isinstance(e, dict) and e.get("name") in fresh else e
                for e in _entries(saved)]
        return kept + list(fresh.values())

    repo.update_setting(s, key=SETTINGS_KEY, change=merged)


def saved_names(s) -> list[str]:
    """The names of the entries saved with the store, readable or not, in their stored order (an entry without
    a name has none to list)."""
    try:
        entries = _saved_entries(s)
    except PlanningError:
        return []
    names = [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
    return list(dict.fromkeys(names))


def remove_saved_workloads(s, names: list[str]) -> int:
    """Drop every saved entry with one of `names`, readable or not, keeping the others as stored; returns how
    many entries went."""
    from store import repo

    gone = 0

    dropped = set(names)

    def without(saved):
        nonlocal gone
        entries = _entries(saved)
        kept = [e for e in entries if not (isinstance(e, dict) and e.get("name") in dropped)]
        gone = len(entries) - len(kept)
        return kept

    repo.update_setting(s, key=SETTINGS_KEY, change=without)
    return gone


def load_workloads(s) -> tuple[list[Workload], list[str]]:
    """The workloads saved with the store (not the presets), each entry read on its own, and one sentence
    per entry that is not a valid workload; those stay in the store untouched."""
    try:
        saved = _saved_entries(s)
    except PlanningError as exc:
        return [], [str(exc)]
    workloads, problems = [], []
    for number, entry in enumerate(saved, start=1):
        try:
            workloads.append(Workload.from_dict(entry))
        except (TypeError, ValueError) as exc:  # PlanningError is a ValueError
            problems.append(f"saved workload {_entry_label(entry, number)} cannot be used: {exc}")
    return workloads, problems
