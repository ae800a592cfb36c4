"""Overview: what the store holds, the headline comparison, the last run, and what to do next."""

import streamlit as st

from app.ui import fmt, frames, runs, widgets

st.title("Overview")
st.caption("Which architecture, which GPU, how many, at what cost per task — from measurements on your GPUs.")

devices, models, history, meas = frames.devices(), frames.models(), frames.runs(), frames.measurements()

gpu, cpu, n_models, n_runs, n_points = st.columns(5)
gpu.metric("GPUs", int((devices["kind"] == "gpu").sum()))
cpu.metric("CPU devices", int((devices["kind"] == "cpu").sum()))
n_models.metric("Models", len(models))
n_runs.metric("Runs", len(history))
n_points.metric("Measurements", fmt.count(len(meas)))

if meas.empty:
    widgets.empty_store_next_steps()
else:
    st.subheader("Headline")
    st.caption("Latest measurement per point. Decode at batch 1: an SSM's step stays flat as context grows; "
               "a Transformer's rises with its KV cache.")
    st.dataframe(frames.headline(), hide_index=True, column_config=runs.HEADLINE_COLUMNS)
    if meas["device_kind"].eq("cpu").all():
        st.caption("Only CPU measurements so far: useful to check the pipeline, not to size a GPU fleet.")

if not history.empty:
    st.subheader("Last run")
    runs.summary(history.iloc[0], frames.run_sizes())

widgets.metric_definitions()
