"""The Plan screen's pieces: a workload editor, the plan options, running the planner (remembered per
inputs), and the plan drawn as tables and the crossover chart. The numbers are the planner's, unchanged;
this module only lays them out."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from app import charts
from app.planning import (
    KINDS,
    SERVING_MODES,
    SLO,
    TIERS,
    WORKLOAD_PRESETS,
    Plan,
    PlanningError,
    PlanOptions,
    PriceBook,
    Workload,
    load_price_book,
    load_workloads,
    plan,
    remove_saved_workloads,
    save_workloads,
    saved_names,
    whatif,
)
from app.planning.planner import cpu_measurements
from app.ui import context, fmt, frames, widgets
from store.datasheets import DATASHEETS

PLANS_KEY = "plans"  # session: {inputs key: Plan}, newest last
WORKLOAD_KEY, SAVED_KEY = "plan_workload", "plan_workload_saved"  # the workload list; a workload just saved
LAST_KEY = "plan_last"
KEEP_PLANS = 8
CPU_LABEL = "Include CPU pipeline-check measurements"
CPU_KEY, CPU_KEPT = "plan_include_cpu", "plan_include_cpu_kept"  # the box; the choice, kept across pages

ROW_COLUMNS = {
    "model": st.column_config.TextColumn("model"),
    "gpu": st.column_config.TextColumn("GPU"),
    "gpu_source": st.column_config.TextColumn("GPU data"),
    # a set width: sized by its first rows (all "ok"), the column cut a later "infeasible"
    "status": st.column_config.TextColumn("status", width=100),
    "usd_per_task": st.column_config.NumberColumn("$/task", format="$%.6f"),
    "usd_per_month": st.column_config.NumberColumn("$/month", format="$%,.0f"),
    "usd_per_1m_input_tokens": st.column_config.NumberColumn("$/1M input tok", format="$%.4f"),
    "usd_per_1m_output_tokens": st.column_config.NumberColumn("$/1M output tok", format="$%.4f"),
    "gpus_billed": st.column_config.NumberColumn("GPUs"),
    "concurrency_per_gpu": st.column_config.NumberColumn(
        "sequences/GPU", help="sequences decoded together on one GPU at the planned utilisation; more of them "
        "cost less per task but each step, and so each output token, takes longer"),
    "bound_by": st.column_config.TextColumn("binding constraint"),
    "ttft_ms": st.column_config.NumberColumn("TTFT ms", format="%.4g"),
    "prefill_provenance": st.column_config.TextColumn("TTFT is"),
    "tpot_ms": st.column_config.NumberColumn(
        "TPOT ms", format="%.4g", help="time per output token at this row's sequences/GPU: a cheaper row may be "
        "slower here because it packs more sequences per GPU"),
    "decode_provenance": st.column_config.TextColumn("TPOT is"),
    "task_latency_p50_s": st.column_config.NumberColumn("task p50 s", format="%.4g"),
    "energy_per_task_j": st.column_config.NumberColumn("energy/task J", format="%.4g"),
    "provenance": st.column_config.TextColumn("numbers are", help="the least direct figure used: measured < "
                                              "interpolated < extrapolated < projected"),
    "reason": st.column_config.TextColumn("why not", width="large"),
}


def workload_choices() -> tuple[dict[str, Workload], list[str]]:
    """Agentic presets first, then the other presets, then workloads saved with the store, by the label the
    list shows; and a sentence per saved entry that cannot be listed (it stays in the store as it is)."""
    presets = sorted(WORKLOAD_PRESETS.values(), key=lambda w: (w.kind != "agentic", w.name))
    out = {w.name: w for w in presets}
    with context.session() as s:
        saved, problems = load_workloads(s)
    mine = [w for w in saved if w.name not in out]
    # saved under a preset's name before such names were refused: listed beside the preset when it differs
    copies = [replace(w, name=f"{w.name} (saved copy)") for w in saved if w.name in out and w != out[w.name]]
    for w in mine + copies:
        out.setdefault(w.name, w)
    return out, problems


def _float(x) -> float | None:
    return None if x is None else float(x)


def _slo_input(column, label: str, hi: float, start: float | None, key: str) -> float | None:
    """An SLO field that starts at `start` and can be cleared to no target. The start goes into the session
    once, not as the widget's default: a field with a default snaps back to it when cleared."""
    st.session_state.setdefault(key, _float(start))
    return column.number_input(label, 0.1, hi, None, key=key, placeholder="none", help="clear it for no target")


def workload_editor(base: Workload, label: str) -> tuple[Workload | None, str | None]:
    """Fields for every workload figure, filled from `base` (listed as `label`); the workload they describe,
    or why not."""
    k = f"wl_{label}_"
    left, mid, right = st.columns(3)
    name = left.text_input("Name", value=base.name, key=k + "name")
    kind = left.selectbox("Kind", KINDS, index=KINDS.index(base.kind), key=k + "kind")
    serving = left.selectbox("Serving", SERVING_MODES, index=SERVING_MODES.index(base.serving), key=k + "serving",
                             help="no-reuse: each call re-prefills its whole context (a stateless API). reuse: the "
                                  "KV prefix / SSM state is kept between calls, only new tokens are prefilled.")
    calls = mid.number_input("Calls per task", 1, 1000, base.calls_per_task, key=k + "calls")
    system = mid.number_input("System prompt tokens", 0, 2_000_000, base.system_prompt_tokens, step=500,
                              key=k + "system")
    per_call = mid.number_input("Tokens added per call", 0, 2_000_000, base.tokens_per_call, step=100,
                                key=k + "per_call", help="user turn, tool output, fetched text")
    output = mid.number_input("Output tokens per call", 2, 100_000, base.output_tokens_per_call, step=50,
                              key=k + "output")
    per_day = right.number_input("Tasks per day", 0.001, 1e9, float(base.tasks_per_day), step=1000.0,
                                 key=k + "per_day")
    peak = right.number_input("Peak factor (peak ÷ mean rate)", 1.0, 100.0, float(base.peak_factor), step=0.5,
                              key=k + "peak")
    retrieval = right.checkbox("Retrieval-heavy (exact recall of distant tokens)", base.retrieval_heavy,
                               key=k + "retrieval")
    ttft, tpot, task = st.columns(3)
    slo = SLO(
        ttft_ms=_slo_input(ttft, "TTFT SLO (ms)", 1e7, base.slo.ttft_ms, k + "ttft"),
        tpot_ms=_slo_input(tpot, "TPOT SLO (ms)", 1e6, base.slo.tpot_ms, k + "tpot"),
        task_latency_s=_slo_input(task, "Task latency SLO (s)", 1e6, base.slo.task_latency_s, k + "task"),
    )
    try:
        w = Workload(name=name.strip(), kind=kind, calls_per_task=int(calls), system_prompt_tokens=int(system),
                     tokens_per_call=int(per_call), output_tokens_per_call=int(output), tasks_per_day=float(per_day),
                     peak_factor=float(peak), serving=serving, slo=slo, retrieval_heavy=retrieval,
                     description=base.description if name.strip() == base.name else "")
    except PlanningError as exc:
        return None, str(exc)
    st.caption(f"Each task reads {fmt.count(w.input_tokens_per_task)} input tokens and writes "
               f"{fmt.count(w.output_tokens_per_task)}; the context reaches {fmt.count(w.final_context_tokens)} "
               f"tokens; {w.tasks_per_day * w.peak_factor / 86_400:.3g} tasks/s at peak.")
    return w, None


def _keep_cpu_choice() -> None:
    st.session_state[CPU_KEPT] = st.session_state[CPU_KEY]


def cpu_choice(meas: pd.DataFrame) -> bool:
    """Whether to plan the store's CPU measurements (tiny pipeline-check models), with a line saying how many
    there are and what becomes of them: a box (unticked) when the store also holds GPU measurements, none
    when it holds only CPU ones (they are planned, so a CPU-only store still plans end to end). The choice
    is kept for the session, so the Plan and Export pages plan alike."""
    _, found = cpu_measurements(meas, include=False)
    if not found.count:
        return False
    n = f"{fmt.count(found.count)} CPU pipeline-check measurement{'s' if found.count != 1 else ''}"
    on = ", ".join(found.devices)
    if found.only_cpu:
        st.info(f"The store holds only CPU measurements: {n} on {on}. The plan uses them, so it runs end to "
                "end, but tiny models on a CPU check the pipeline; they are not serving figures. Profile a GPU, or "
                "import GPU measurements, for a plan to serve from.", icon=":material/memory:")
        return True
    # a widget's own state goes when a page without it is shown: the choice is kept under another key
    st.session_state[CPU_KEY] = st.session_state.get(CPU_KEPT, False)
    include = st.checkbox(CPU_LABEL, key=CPU_KEY, on_change=_keep_cpu_choice,
                          help="tiny models measured on a CPU to check the pipeline; beside GPU measurements "
                               "their rows only crowd the ranking and the CSV")
    st.caption(f":material/memory: {n} (tiny models on {on}) "
               + ("are included in the plan and its CSV." if include else
                  "are left out of the plan and its CSV: the store holds GPU measurements."))
    return include


def options_editor(meas: pd.DataFrame, *, include_cpu: bool = False) -> PlanOptions:
    """Tier, utilisation, N+1, dtype, models and the GPUs to project to, from the measurements to plan
    (`include_cpu`: whether those are with the CPU ones)."""
    tier_col, util_col, spare_col = st.columns(3, vertical_alignment="bottom")
    tier = tier_col.selectbox("Pricing tier", TIERS)
    utilisation = util_col.slider("Target utilisation", 0.1, 1.0, 0.7, 0.05,
                                  help="the busy fraction each GPU is planned to at peak")
    n_plus_1 = spare_col.checkbox("N+1 (bill one spare GPU)", True)
    dtype_col, models_col, project_col = st.columns(3)
    dtypes = sorted(meas["dtype"].dropna().unique()) if not meas.empty else []
    dtype = dtype_col.selectbox("dtype", ["bfloat16 where measured", *dtypes])
    presets = sorted(meas["preset"].dropna().unique()) if not meas.empty else []
    models = models_col.multiselect("Models", presets, placeholder="every measured model")
    project_to = project_col.multiselect("Project to GPUs not measured", list(DATASHEETS),
                                         default=[g for g in PlanOptions().project_to if g in DATASHEETS],
                                         help="projected by the roofline and their datasheets; memory limits exact")
    held_col, state_col = st.columns(2)
    held_out = held_col.checkbox("Check the interpolation on held-out measured points", True,
                                 help="leave-one-out over every measured surface: seconds on a small store, "
                                      "tens of seconds on one with 100,000 points")
    bf16_state = state_col.checkbox(
        f"Also price Mamba-3 with a {whatif.LABEL} (what-if)", False,
        help="adds a row per Mamba-3 model (and hybrid) and GPU whose decode keeps the SSM state in "
             "bf16: the measured decode scaled by its fitted roofline with the state traffic cut as far as the "
             "step kernel realised it when measured (a share that differs by model and GPU generation), and "
             "the SSM state's bytes per sequence halved (a hybrid's "
             "KV cache stays). Its cost: logits drift of about 1 % over 4,096 decode steps (180M models, random "
             "weights; docs/benchmarks.md). Rows are named '… · bf16 state', labelled projected, and never "
             "the recommendation itself.")
    return PlanOptions(tier=tier, utilisation=float(utilisation), n_plus_1=n_plus_1,
                       dtype=None if dtype not in dtypes else dtype, models=tuple(models) or None,
                       project_to=tuple(project_to), surface_errors=held_out, bf16_state=bf16_state,
                       include_cpu=include_cpu)


def price_book() -> PriceBook:
    with context.session() as s:
        return load_price_book(s)


def _key(workload: Workload, options: PlanOptions, book: PriceBook) -> tuple:
    return (context.store_url(), frames.points_version(), workload, options, book)


def compute(workload: Workload, options: PlanOptions, book: PriceBook) -> Plan:
    """The planner's plan for these inputs and the store as it is now; remembered for this session."""
    key = _key(workload, options, book)
    plans: dict = st.session_state.setdefault(PLANS_KEY, {})
    if key not in plans:
        with st.spinner(f"Planning {workload.name}…", show_time=True):
            plans[key] = plan(workload, frames.measurements(), price_book=book, options=options,
                              models=frames.models(), devices=frames.devices())
        for old in list(plans)[:-KEEP_PLANS]:
            del plans[old]
    else:
        plans[key] = plans.pop(key)
    st.session_state[LAST_KEY] = key
    return plans[key]


def last(workload: Workload | None, options: PlanOptions, book: PriceBook) -> tuple[Plan | None, bool]:
    """The plan last computed on this screen, and whether it still matches the inputs shown."""
    key = st.session_state.get(LAST_KEY)
    p = st.session_state.get(PLANS_KEY, {}).get(key)
    return p, p is not None and workload is not None and key == _key(workload, options, book)


def session_plans() -> list[Plan]:
    """Plans computed in this session, newest last, one per workload name."""
    latest: dict[str, Plan] = {}
    for p in st.session_state.get(PLANS_KEY, {}).values():
        latest.pop(p.workload.name, None)
        latest[p.workload.name] = p
    return list(latest.values())


def saved_workload_names() -> list[str]:
    """The names saved with the store, readable or not."""
    with context.session() as s:
        return saved_names(s)


def remove_saved(names: list[str]) -> int:
    """Drop those saved entries, readable or not; the presets are never stored, so they stay."""
    with context.session() as s:
        return remove_saved_workloads(s, names)


def save_workload(workload: Workload) -> None:
    """Add or replace this one workload among those saved; raises PlanningError for a preset's name."""
    with context.session() as s:
        save_workloads(s, [workload])


def show(p: Plan) -> None:
    """The plan: messages, recommendation, per model × GPU table, crossovers, sensitivity, assumptions."""
    rec = p.recommendation
    messages = p.messages  # each note once, "(×N)" after one said N times (planner.plan)
    if messages:
        notes = "\n".join(f"- {m}" for m in messages)
        if rec is None or len(messages) <= 3:
            st.warning(notes, icon=":material/info:")
        else:
            with st.expander(f"{len(messages)} notes from the planner", icon=":material/info:"):
                st.markdown(notes)
    if rec is not None:
        st.success(f"**Recommendation: {rec.model} on {rec.gpu}** ({rec.tier}) — {fmt.usd(rec.usd_per_task)} per "
                   f"task, {fmt.usd(rec.usd_per_month, 0)} per month on {rec.gpus} GPU(s); numbers are "
                   f"**{rec.provenance}**.", icon=":material/recommend:")
        st.markdown("\n".join(f"- {r}" for r in rec.reasons))
        for caveat in rec.caveats:
            st.caption(f":orange[:material/warning:] {caveat}")

    st.subheader("Per model and GPU")
    st.caption("Rows that meet the workload come first, by $/task: the GPU time a task uses at the target "
               "utilisation, as an autoscaled fleet pays it. $/month is a fixed fleet sized for the peak hour, so "
               "a row can cost less per task and more per month when its peak leaves GPUs idle the rest of the day.")
    st.dataframe(p.rows[list(ROW_COLUMNS)], hide_index=True, column_config=ROW_COLUMNS, key="plan_rows")

    if not p.context_sweep.empty:
        st.subheader("Crossover: where the cheapest model changes with context")
        gpus = sorted(p.context_sweep["gpu"].unique())
        gpu = st.selectbox("GPU", gpus, index=gpus.index(rec.gpu) if rec and rec.gpu in gpus else 0, key="plan_xgpu")
        st.altair_chart(charts.crossover(p.context_sweep[p.context_sweep["gpu"] == gpu],
                                         p.crossovers[p.crossovers["gpu"] == gpu]), width="stretch")
        if p.crossovers.empty:
            st.caption("No crossover: the same model stays cheapest over the whole range on every GPU.")
        else:
            st.dataframe(p.crossovers, hide_index=True, key="plan_crossovers")
    if not p.sensitivity.empty:
        with st.expander("Sensitivity: price ±50 %, output length ×0.5 / ×2, utilisation 40–90 %"):
            picked = p.sensitivity[p.sensitivity["recommended"]]
            st.dataframe(picked.drop(columns=["recommended"]), hide_index=True,
                         column_config={"usd_per_task": st.column_config.NumberColumn("$/task", format="$%.6f")})
            moved = p.sensitivity.groupby("scenario", sort=False)["recommended_changes"].first()
            if moved.any():
                st.caption("The recommendation changes under: " + ", ".join(moved[moved].index) + ".")
            else:
                st.caption("The recommendation holds in every scenario.")
    with st.expander("Assumptions"):
        st.dataframe(p.assumptions.astype({"value": str}), hide_index=True)
    if not p.surface_errors.empty:
        with st.expander("Interpolation error on held-out measured points"):
            st.dataframe(p.surface_errors, hide_index=True)
    widgets.provenance_legend()
