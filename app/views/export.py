"""Export: the finance CSV (one row per workload × architecture × GPU, documented columns with units, the
prices with their dates, run ids) and the raw measurements — text a spreadsheet would run as a formula is
neutralised in both."""

import streamlit as st

from app.planning import FINANCE_COLUMNS, PlanningError, finance_csv, finance_table
from app.ui import exports, frames, plans, widgets

st.title("Export")
meas = frames.measurements()
if meas.empty:
    widgets.empty_store_next_steps()
    st.stop()

st.header("Finance")
st.caption("One row per workload × model × GPU for the plans made in this session (on the Plan page, or "
           "all saved workloads at once below), with the price, its source and date, and the runs behind the figures.")
include_cpu = plans.cpu_choice(meas)
if st.button("Plan every workload (presets and saved) with the default options"):
    book = plans.price_book()
    choices, unreadable = plans.workload_choices()
    for problem in unreadable:
        st.warning(f"Not planned: {problem}", icon=":material/warning:")
    for workload in choices.values():
        try:
            plans.compute(workload, plans.PlanOptions(include_cpu=include_cpu), book)
        except PlanningError as exc:
            st.error(f"{workload.name}: {exc}")
made = plans.session_plans()
if made:
    st.dataframe(finance_table(made), hide_index=True, key="finance_preview")
    st.download_button("Download the finance CSV", finance_csv(made), file_name="ssmplan-finance.csv",
                       mime="text/csv", type="primary", icon=":material/download:", on_click="ignore")
else:
    st.info("No plan yet in this session: plan a workload on the Plan page, or press the button above.")
with st.expander("Finance columns"):
    st.dataframe(exports.documentation(FINANCE_COLUMNS), hide_index=True)
with st.expander("Prices used (from the Settings page)"):
    st.dataframe(plans.price_book().to_frame(), hide_index=True)

st.header("Raw measurements")
run_ids = st.multiselect("Runs", sorted(meas["run_id"].unique().tolist(), reverse=True), placeholder="all runs")
chosen = meas[meas["run_id"].isin(run_ids)] if run_ids else meas
st.caption(f"{len(chosen):,} measured point(s), one row each, with device, model and run provenance.")
st.download_button("Download the measurements CSV", lambda: exports.measurement_csv(meas, run_ids),
                   file_name="ssmplan-measurements.csv", mime="text/csv", icon=":material/download:",
                   on_click="ignore")
with st.expander("Measurement columns"):
    st.dataframe(exports.documentation(exports.MEASUREMENT_COLUMNS), hide_index=True)
