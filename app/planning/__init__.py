"""The planner: measured latency surfaces → capacity, cost and architecture routing per workload.

Plain Python (no streamlit, no torch). The pages call these and show the frames as they come.

Inputs
    Workload(name, kind, calls_per_task, system_prompt_tokens, tokens_per_call, output_tokens_per_call,
             tasks_per_day, peak_factor=2.0, serving="no-reuse"|"reuse", slo=SLO(ttft_ms, tpot_ms,
             task_latency_s), retrieval_heavy=False, description="")
        kind: "agentic" | "chat" | "long-doc" | "streaming". Validates on construction (PlanningError).
        .to_json() / Workload.from_json(text); .to_dict() / Workload.from_dict(d)
    WORKLOAD_PRESETS: {"coding-agent-15", "research-agent-10", "chat", "doc-qa-32k"} → Workload
    save_workloads(session, [Workload]) adds or replaces those by name (preset names refused);
    load_workloads(session) -> (saved workloads, a sentence per unreadable entry) — the store's settings
    saved_names(session) / remove_saved_workloads(session, [name]) — every saved entry, readable or not
    PriceBook(entries=(PriceEntry(gpu, tier, usd_per_gpu_hour, source, as_of), ...), usd_per_kwh=None, pue=1.0)
        gpu is a datasheet key ("H100-SXM", "A100-80GB", "H200", "L40S", "L4", "T4", ...) or a device name;
        tier in TIERS = ("on-demand", "reserved", "spot").
        default_price_book(); PriceBook.from_frame(store.repo.read_prices(s), usd_per_kwh=, pue=); .to_frame()
        save_price_book(session, book) / load_price_book(session)
    PlanOptions(tier="on-demand", utilisation=0.7, n_plus_1=True, dtype=None, models=None,
                project_to=("A100-80GB", "H200", "L40S", "L4", "T4"), usable_memory_fraction=0.90,
                workspace_bytes=2 GiB, prefill_batch=1, max_concurrency=1024, crossovers=True, sensitivity=True,
                surface_errors=True, bf16_state=False, include_cpu=False)
        (crossovers, sensitivity, surface_errors: turn off for speed; include_cpu: plan measurements taken on a
        CPU beside GPU ones, which are otherwise left out; a store of CPU measurements alone plans them)

Entry point
    plan(workload, measurements, *, price_book, options=None, models=None, devices=None) -> Plan
        measurements: store.repo.read_measurements(s) (the joined frame); models: store.repo.read_models(s)
        (weight sizes and configs: bytes/FLOPs beyond the measured grid then come from model.cost; pass
        it); devices: store.repo.read_devices(s) (a GPU with no measurements is projected from its
        datasheet, or gets a "no data" row when it has none). CPU measurements are left out when GPU ones
        are there (options.include_cpu brings them back); planned, a CPU is priced like any device
        (unpriced unless the book has its name) with a message saying it is not a serving plan.
        Raises PlanningError (a ValueError whose message is a sentence for the user) when no plan can come
        from the input: an empty store, missing columns, unknown presets in options.models, unknown GPU
        keys in options.project_to, bad options. Per-row problems become labelled rows instead.
        Speed: ~0.3 s without crossovers/sensitivity/surface_errors, a few seconds with them: cache it.
        The surfaces and the held-out check depend on the frames and options only, not the workload: they
        are kept for the last few (frames by content), so planning more workloads on one store fits them once.

    Plan (frozen dataclass)
        .workload, .options, .price_book
        .rows            one row per model × GPU (DataFrame, columns below), ok rows first, cheapest first
        .recommendation  Recommendation(model, family, gpu, tier, usd_per_task, usd_per_month, gpus,
                         provenance, reasons: tuple[str, ...], caveats: tuple[str, ...]) or None
                         (then messages[0] says why); .as_frame() gives it as a one-row frame
        .crossovers      gpu, context_tokens, cheaper_below, cheaper_above, why ("cost" or what stopped
                         qualifying), provenance — where the cheapest model flips as the context grows
        .context_sweep   gpu, context_tokens, model, usd_per_task, status — the sweep behind the crossovers
                         (for a $/task-vs-context chart)
        .sensitivity     scenario, model, family, gpu, usd_per_task, feasible, recommended (this row is the
                         scenario's pick), recommended_changes (the pick differs from the base one);
                         scenarios: base, price of <GPU> ±50 %, output ×0.5 / ×2, utilisation 40/60/90 %
        .surface_errors  model, gpu, dtype, phase, implementation, n_points, n_interpolated,
                         median_interp_error, max_interp_error, n_extrapolated, median_extrap_error (0–1
                         relative, leave-one-out), fitted_bw_bytes_per_s, fitted_flops_per_s, fitted_overhead_ms
        .assumptions     name, value, unit, source (usable memory, workspace, utilisation, prices with dates…)
        .messages        tuple[str, ...]: explanations to show above the tables; rows failing for one reason
                         make one note naming them all, "(×N)" after a note that stands for N rows
        .cpu             CpuMeasurements(count, left_out, only_cpu, devices): the CPU measurements given and
                         whether they were planned; .summary is the finance CSV's cpu_measurements

    .rows columns (units in names; ratios 0–1):
        workload, model, family, gpu, device_name, dtype, implementation, gpu_source ("measured"|"projected"),
        status ("ok" | "infeasible" | "no data" | "no price"), reason (text; empty when ok),
        concurrency_per_gpu, bound_by ("memory" | "TPOT SLO" | "TTFT SLO" | "task-latency SLO" |
        "concurrency cap" | "throughput peak" | "context limit"), max_concurrency_memory,
        state_bytes_per_seq, max_context_tokens, gpus_at_peak, gpus_n_plus_1, gpus_billed,
        ttft_ms, tpot_ms, task_latency_p50_s, prefill_gpu_s_per_task, decode_gpu_s_per_task,
        usd_per_task, usd_per_month, usd_per_1m_input_tokens, usd_per_1m_output_tokens,
        energy_per_task_j, energy_usd_per_task, energy_source, fleet_utilisation,
        price_usd_per_gpu_hour, price_tier, price_source, price_as_of,
        provenance ("measured" | "interpolated" | "extrapolated" | "projected": the least direct figure used),
        prefill_provenance, decode_provenance, run_uids
        Figures a row could not compute are NaN (<NA> for counts), and its reason says why.

Export
    finance_table([Plan, ...]) -> DataFrame   one row per workload × model × GPU, FINANCE_COLUMNS order
    finance_csv([Plan, ...]) -> str           the same as CSV, formula-like text neutralised
    FINANCE_COLUMNS: dict column → description with unit (show it beside the download)
    measurements_csv(measurements_df) -> str  the raw measurement frame, neutralised

Analytic stand-in (development and demos only; rows say "analytic-roofline", never measured)
    app.planning.analytic.write_analytic_store(session, gpu="H100-SXM") -> run id

Errors: PlanningError(ValueError).
"""

from app.planning.errors import PlanningError
from app.planning.export import FINANCE_COLUMNS, finance_csv, finance_table, measurements_csv
from app.planning.planner import Plan, PlanOptions, plan
from app.planning.pricing import (
    TIERS,
    PriceBook,
    PriceEntry,
    default_price_book,
    load_price_book,
    save_price_book,
)
from app.planning.routing import Recommendation
from app.planning.workloads import (
    KINDS,
    SERVING_MODES,
    SLO,
    Workload,
    get_workload,
    load_workloads,
    remove_saved_workloads,
    save_workloads,
    saved_names,
)
from app.planning.workloads import PRESETS as WORKLOAD_PRESETS

__all__ = [
    "FINANCE_COLUMNS", "KINDS", "SERVING_MODES", "SLO", "TIERS", "WORKLOAD_PRESETS", "Plan", "PlanOptions",
    "PlanningError", "PriceBook", "PriceEntry", "Recommendation", "Workload", "default_price_book", "finance_csv",
    "finance_table", "get_workload", "load_price_book", "load_workloads", "measurements_csv", "plan",
    "remove_saved_workloads", "save_price_book", "save_workloads", "saved_names",
]
