"""The planner: measured latency surfaces → capacity, cost and architecture routing per workload.

Plain Python (no streamlit, no torch). The pages call these and show the frames as they come.

Inputs
    Workload(name, kind, calls_per_task, system_prompt_tokens, tokens_per_call, output_tokens_per_call,
             tasks_per_day, peak_factor=2.0, serving="no-reuse"|"reuse", slo=SLO(ttft_ms, tpot_ms,
             task_latency_s), retrieval_heavy=False, description="")
        kind: "agentic" | "chat" | "long-doc" | "streaming". Validates on construction (PlanningError).
        .to_json() / Workload.from_json(text); .to_dict() / Workload.from_dict(d)
    WORKLOAD_PRESETS: {"coding-agent-15", "research-agent-10", "chat", "doc-qa-32k"} → Workload
    save_workloads(session, [Workload]) / load_workloads(session) — kept in the store's settings
    PriceBook(entries=(PriceEntry(gpu, tier, usd_per_gpu_hour, source, as_of), ...), usd_per_kwh=None, pue=1.0)
        gpu is a datasheet key ("H100-SXM", "A100-80GB", "H200", "L40S", "L4", "T4", ...) or a device name;
        tier in TIERS = ("on-demand", "reserved", "spot").
        default_price_book(); PriceBook.from_frame(store.repo.read_prices(s), usd_per_kwh=, pue=); .to_frame()
        save_price_book(session, book) / load_price_book(session)
    PlanOptions(tier="on-demand", utilisation=0.7, n_plus_1=True, dtype=None, models=None,
                project_to=("A100-80GB", "H200", "L40S", "L4", "T4"), usable_memory_fraction=0.90,
                workspace_bytes=2 GiB, prefill_batch=1, max_concurrency=1024, crossovers=True, sensitivity=True)

Entry point
    plan(workload, measurements, *, price_book, options=PlanOptions(), models=None, devices=None) -> Plan
        measurements: store.repo.read_measurements(s) (the joined frame); models: store.repo.read_models(s);
        devices: store.repo.read_devices(s) (lists GPUs with no measurements as "no data" rows).
        Raises PlanningError (a ValueError with a sentence for the user) for input no plan can come from:
        an empty store, missing columns, unknown GPU keys in project_to, bad options.

    Plan (frozen dataclass)
        .rows            one row per model × GPU (DataFrame, columns below)
        .recommendation  Recommendation(model, family, gpu, tier, usd_per_task, reasons: tuple[str, ...],
                         caveats: tuple[str, ...]) or None (then .messages says why)
        .crossovers      DataFrame: gpu, context_tokens, cheaper_below, cheaper_above, provenance
        .sensitivity     DataFrame: scenario, model, gpu, usd_per_task, feasible, cheapest (bool),
                         recommended_changes (bool)
        .surface_errors  DataFrame: leave-one-out error per (model, gpu, dtype, phase)
        .assumptions     DataFrame: name, value, unit, source
        .messages        tuple[str, ...]: warnings and explanations to show above the tables

    .rows columns (units in names; ratios 0–1):
        workload, model, family, gpu, device_name, dtype, implementation, gpu_source ("measured"|"projected"),
        status ("ok" | "infeasible" | "no data" | "no price"), reason (text; empty when ok),
        concurrency_per_gpu, bound_by ("memory" | "TPOT SLO" | "TTFT SLO" | "task-latency SLO" |
        "concurrency cap" | "throughput peak"), max_concurrency_memory, state_bytes_per_seq,
        gpus_at_peak, gpus_n_plus_1, ttft_ms, tpot_ms, task_latency_p50_s,
        prefill_gpu_s_per_task, decode_gpu_s_per_task, usd_per_task, usd_per_month,
        usd_per_1m_input_tokens, usd_per_1m_output_tokens, energy_per_task_j, energy_source,
        price_usd_per_gpu_hour, price_tier, price_source, price_as_of,
        provenance ("measured" | "interpolated" | "extrapolated" | "projected": the least direct figure used),
        prefill_provenance, decode_provenance, run_uids
        Rows whose status is not "ok" carry NaN in the figures they could not compute, and say why in reason.

Export
    finance_table([Plan, ...]) -> DataFrame   one row per workload × model × GPU, FINANCE_COLUMNS order
    finance_csv([Plan, ...]) -> str           the same as CSV, formula-like text neutralised
    FINANCE_COLUMNS: dict column → description with unit (show it beside the download)
    measurements_csv(measurements_df) -> str  the raw measurement frame, neutralised

Errors: PlanningError(ValueError).
"""

from app.planning.errors import PlanningError
from app.planning.pricing import (
    TIERS,
    PriceBook,
    PriceEntry,
    default_price_book,
    load_price_book,
    save_price_book,
)
from app.planning.workloads import (
    KINDS,
    SERVING_MODES,
    SLO,
    Workload,
    get_workload,
    load_workloads,
    save_workloads,
)
from app.planning.workloads import PRESETS as WORKLOAD_PRESETS

__all__ = [
    "KINDS", "SERVING_MODES", "SLO", "TIERS", "WORKLOAD_PRESETS", "PlanningError", "PriceBook", "PriceEntry",
    "Workload", "default_price_book", "get_workload", "load_price_book", "load_workloads", "save_price_book",
    "save_workloads",
]
