"""Profile: choose the device, a scenario or a custom grid and the models; start a run; follow its
progress, time left and telemetry live; cancel it; see every run's status, when it ended and how long it
took, and why a failed one failed; run a failed or cancelled one again."""

import streamlit as st

from app.ui import context, frames, launch, run_form, runs

st.title("Profile")


def active_runs() -> None:
    with context.guard():  # a fragment rerun runs outside main.py's guard
        _active_runs()


def _active_runs() -> None:
    launch.reap()
    history = frames.runs()
    active = history[history["status"].isin(runs.ACTIVE)]
    if active.empty:
        if st.session_state.pop("watching", False):
            st.rerun(scope="app")  # a run just finished: refresh the history below
        return
    st.session_state["watching"] = True
    st.header("Running now")
    for _, run in active.iterrows():
        with st.container(border=True):
            runs.live(run)


history = frames.runs()
live_every = 1.0 if history["status"].isin(runs.ACTIVE).any() else None
st.fragment(active_runs, run_every=live_every)()

st.header("New run")
request, label = run_form.form()
if st.button("Start profiling", type="primary", disabled=request is None, icon=":material/play_arrow:"):
    run_id = launch.start(request, label)
    st.session_state["watching"] = True
    st.toast(f"Run {run_id} started.")
    st.rerun()

st.header("Runs")
if said := st.session_state.pop("ran_again", None):
    st.success(said, icon=":material/replay:")
if history.empty:
    st.caption("No runs yet.")
else:
    st.dataframe(runs.history(history, frames.run_sizes()), hide_index=True, column_config=runs.HISTORY_COLUMNS)
    for _, run in history[history["status"] == "failed"].head(5).iterrows():
        st.error(f"Run {int(run['id'])} ({run['label'] or 'no label'}) {runs.ended(run)}: "
                 f"{run['error'] or 'no reason recorded'}", icon=":material/error:")
    again = history[history["status"].isin(runs.RERUNNABLE)]
    if not again.empty:
        names = {int(r["id"]): runs.choice_label(r) for _, r in again.iterrows()}
        pick, go = st.columns([4, 1], vertical_alignment="bottom")
        chosen = pick.selectbox("A failed or cancelled run", list(names), format_func=names.get, key="run_again_pick",
                                help="a new run with the same request (models, device, grid, dtype, time limit); "
                                     "this run stays as it is, with the points it stored")
        if go.button("Run again", icon=":material/replay:"):
            new_id, said = launch.run_again(chosen)
            if new_id is None:
                st.error(said)
            else:
                st.session_state["ran_again"] = said
                st.session_state["watching"] = True
                st.rerun()
