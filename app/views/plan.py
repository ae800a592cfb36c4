"""Plan: pick or edit a workload (agentic presets first), set SLOs and pricing options, and get per
model × GPU the $/task, $/month, GPUs, latency and binding constraint, the recommendation with its reasons,
the crossover chart and the sensitivity table — every number marked by where it comes from."""

import streamlit as st

from app.planning import PlanningError, finance_csv
from app.planning.planner import cpu_measurements
from app.ui import frames, plans, widgets

st.title("Plan")
meas = frames.measurements()
if meas.empty:
    widgets.empty_store_next_steps()
    st.stop()

choices, unreadable = plans.workload_choices()
if unreadable:
    st.warning("Some saved workloads cannot be listed; they are kept in the store as they are:\n"
               + "\n".join(f"- {p}" for p in unreadable), icon=":material/warning:")
if just_saved := st.session_state.pop(plans.SAVED_KEY, None):
    # listed and chosen at once: set before the list is drawn, which a widget's own key allows only then
    st.session_state[plans.WORKLOAD_KEY] = just_saved
    st.toast(f"Saved {just_saved}.")
name = st.selectbox("Workload", list(choices), key=plans.WORKLOAD_KEY,
                    help="agentic presets first; workloads you saved follow")
st.caption(choices[name].description)
workload, problem = plans.workload_editor(choices[name], name)
widgets.field_error(problem)

include_cpu = plans.cpu_choice(meas)
with st.expander("Pricing and planning options", icon=":material/tune:"):
    options = plans.options_editor(cpu_measurements(meas, include=include_cpu)[0], include_cpu=include_cpu)
    st.page_link("views/settings.py", label="Edit the price book", icon=":material/payments:")

go, save = st.columns([1, 4])
planned = go.button("Plan", type="primary", disabled=workload is None)
if save.button("Save this workload with the store", disabled=workload is None):
    try:
        plans.save_workload(workload)  # a preset's name is refused: it would hide the built-in workload
    except PlanningError as exc:
        st.error(str(exc))
    else:
        st.session_state[plans.SAVED_KEY] = workload.name
        st.rerun()  # the list above was drawn before the save: draw it again with the new workload in it
stored = plans.saved_workload_names()
if stored:
    with st.expander("Workloads saved with the store", icon=":material/bookmarks:"):
        gone = st.multiselect("Remove from the store", stored, key="wl_remove",
                              help="the built-in workloads are not stored, so they stay")
        if st.button("Remove", disabled=not gone):
            plans.remove_saved(gone)
            del st.session_state["wl_remove"]  # its names are gone from the list
            st.toast(f"Removed {', '.join(gone)}.")
            st.rerun()

book = plans.price_book()
try:
    if planned:
        plans.compute(workload, options, book)
except PlanningError as exc:
    st.error(str(exc))
    st.stop()
result, current = plans.last(workload, options, book)
if result is not None:
    if not current:
        st.info(f"Showing the plan for {result.workload.name} as last computed; the inputs have changed since. "
                "Press Plan to update it.", icon=":material/update:")
    plans.show(result)
    st.download_button("Download the finance CSV", finance_csv([result]), mime="text/csv",
                       file_name=f"ssmplan-{result.workload.name}.csv", icon=":material/download:", on_click="ignore")
