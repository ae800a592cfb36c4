"""Explore: the measured points as charts — decode and prefill latency, throughput, memory, roofline —
filtered by GPU, model, dtype, run and batch; hover a point for its exact values and provenance."""

import streamlit as st

from app import charts
from app.ui import fmt, frames, points, widgets

st.title("Explore")
meas = frames.measurements()
if meas.empty:
    widgets.empty_store_next_steps()
    st.stop()

gpu, model, dtype, run, batch = st.columns(5)
chosen = points.Filters(
    devices=tuple(gpu.multiselect("GPU", points.options(meas, "device_name"), placeholder="all")),
    presets=tuple(model.multiselect("Model", points.options(meas, "preset"), placeholder="all")),
    dtypes=tuple(dtype.multiselect("dtype", points.options(meas, "dtype"), placeholder="all")),
    run_ids=tuple(run.multiselect("Run", list(run_names := points.run_names(meas)), format_func=run_names.get,
                                  placeholder="all (latest per point)")),
    batches=tuple(batch.multiselect("Batch", points.options(meas, "batch"), placeholder="all")),
)
shown = points.for_charts(meas, chosen)
if shown.empty:
    st.warning("No measurement matches these filters; clear one of them.")
    st.stop()

st.caption(points.notes(shown))

TABS = ["Decode latency", "Prefill latency", "Throughput", "Memory", "Roofline", "Points"]
tabs = dict(zip(TABS, st.tabs(TABS, key="explore_tab", on_change="rerun")))

with tabs["Decode latency"]:
    if tabs["Decode latency"].open:
        widgets.chart(charts.decode_latency_vs_context, shown[shown["phase"] == "decode"])

with tabs["Prefill latency"]:
    if tabs["Prefill latency"].open:
        widgets.chart(charts.prefill_latency_vs_prompt, shown[shown["phase"] == "prefill"])

with tabs["Throughput"]:
    if tabs["Throughput"].open:
        phase = st.segmented_control("Phase", ["decode", "prefill"], default="decode", required=True)
        widgets.chart(charts.throughput_vs_batch, shown[shown["phase"] == phase], phase)

with tabs["Memory"]:
    if tabs["Memory"].open:
        capacity = frames.devices()
        capacity = capacity[capacity["name"].isin(shown["device_name"])].rename(columns={"name": "device_name"})
        widgets.chart(charts.memory_vs_context, shown[shown["phase"] == "decode"],
                      capacity[["device_name", "memory_bytes"]])

with tabs["Roofline"]:
    if tabs["Roofline"].open:
        devices = frames.devices()
        names = points.options(shown, "device_name")
        gpus = set(devices.loc[devices["kind"] == "gpu", "name"])
        name = st.selectbox("Device (the roof is its own)", sorted(names, key=lambda n: n not in gpus))
        device = devices[devices["name"] == name].iloc[0]
        on_device = shown[shown["device_name"] == name]
        roof = points.roof_for(device, on_device)
        measured, sheet = st.columns(2)
        measured.markdown(f"**Measured peaks**: {fmt.bytes_per_s(device['measured_copy_bw_bytes_per_s'])} copy, "
                          f"{fmt.flops_per_s(device['measured_bf16_flops_per_s'])} bf16 GEMM")
        if isinstance(device["datasheet_key"], str) and device["datasheet_key"]:
            sheet.markdown(f"**Datasheet** ({device['datasheet_key']}): "
                           f"{fmt.bytes_per_s(device['datasheet_bw_bytes_per_s'])}, "
                           f"{fmt.flops_per_s(device['datasheet_bf16_flops_per_s'])}")
        else:
            sheet.markdown("**Datasheet**: none for this device")
        if roof.empty:
            st.info("This device has no measured peaks, so no roof is drawn and MBU/MFU read n/a. "
                    "A profiling run on it measures them.")
        widgets.chart(charts.roofline, on_device, roof)

with tabs["Points"]:
    if tabs["Points"].open:
        st.dataframe(shown.drop(columns=["series"]), hide_index=True)

widgets.metric_definitions()
