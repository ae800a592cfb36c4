"""Profiling runs as the pages show them: the history table and one run's summary."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts
from app.ui import fmt, frames, launch

ACTIVE = ("queued", "running")
ENDED = ("done", "failed", "cancelled")
RERUNNABLE = launch.RERUNNABLE  # the ended runs that can run again
STATUS_BADGE = {
    "queued": ("gray", ":material/schedule:"),
    "running": ("blue", ":material/autorenew:"),
    "done": ("green", ":material/check_circle:"),
    "failed": ("red", ":material/error:"),
    "cancelled": ("orange", ":material/cancel:"),
}

HEADLINE_COLUMNS = {
    "device": st.column_config.TextColumn("device", help="the GPU or CPU the points were measured on; GPUs first "
                                                         "(a CPU's rows check the pipeline on tiny models)"),
    "decode ms (b=1, short)": st.column_config.NumberColumn(format="%.4g"),
    "decode ms (b=1, long)": st.column_config.NumberColumn(format="%.4g"),
    "best decode tok/s": st.column_config.NumberColumn(format="%.4g"),
    "best prefill tok/s": st.column_config.NumberColumn(format="%.4g"),
}

HISTORY_COLUMNS = {
    # a set width: the table sizes a column by its first rows, which cut a later "cancelled" to "cancelle"
    "status": st.column_config.TextColumn("status", width=100),
    "finished": st.column_config.DatetimeColumn("finished (UTC)", format="YYYY-MM-DD HH:mm", width=140,
                                                help="when the run ended: done, failed or cancelled"),
    "duration": st.column_config.TextColumn("took", width=100,
                                            help="from its start to its end (a resumed run: from its first start)"),
    "progress": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
    "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
}


def models_of(request) -> str:
    """The models a run request names, however the request spells them."""
    if not isinstance(request, dict):
        return ""
    names = request.get("models") or request.get("presets") or request.get("model") or []
    if isinstance(names, (str, dict)):
        names = [names]
    return ", ".join(str(n.get("preset") or n.get("name") or n) if isinstance(n, dict) else str(n) for n in names)


def _utc(values) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True)


def took(run: pd.Series) -> str:
    """How long an ended run took ("never started" for one cancelled while queued); "" while it is active."""
    if run["status"] not in ENDED:
        return ""
    start, end = _utc([run.get("started_at")]).iloc[0], _utc([run.get("finished_at")]).iloc[0]
    if pd.isna(start):
        return "never started"
    return "" if pd.isna(end) else fmt.duration_s((end - start).total_seconds())


def ended(run: pd.Series) -> str:
    """When an ended run finished and how long it took, as words ("" while it is active)."""
    if run["status"] not in ENDED or pd.isna(_utc([run.get("finished_at")]).iloc[0]):
        return ""
    how = took(run)
    verb = "finished" if run["status"] == "done" else run["status"]
    return f"{verb} {fmt.when(run['finished_at'])}" + (
        " (never started)" if how == "never started" else f" after {how}" if how else "")


def history(runs: pd.DataFrame, sizes: dict[int, int]) -> pd.DataFrame:
    """One row per run, newest first, with when it ended, how long it took and how many points it stored
    (`sizes`: run id → points)."""
    stored = pd.Series(sizes, dtype="int64")
    return pd.DataFrame({
        "run": runs["id"].astype(int),
        "label": runs["label"],
        "status": runs["status"],
        "finished": _utc(runs["finished_at"]).where(runs["status"].isin(ENDED).to_numpy()),
        "duration": [took(r) for _, r in runs.iterrows()],
        "progress": runs["progress"].astype(float),
        "points stored": runs["id"].map(stored).fillna(0).astype(int),
        "points planned": runs["points_total"].astype(int),
        "device": runs["device_name"].fillna(""),
        "models": runs["request"].map(models_of),
        "created": _utc(runs["created_at"]),
        "error": runs["error"].fillna(""),
    }, index=runs.index)


def choice_label(run: pd.Series) -> str:
    """A run as a list names it: id, label, models, and how it ended."""
    return " · ".join(x for x in (f"Run {int(run['id'])}", run["label"] or "", models_of(run["request"]),
                                  ended(run) or run["status"]) if x)


def badge(status: str) -> None:
    color, icon = STATUS_BADGE.get(status, ("gray", ":material/help:"))
    st.badge(status, color=color, icon=icon)


def summary(run: pd.Series, sizes: dict[int, int]) -> None:
    """One run: status, what it measured, when, and its error in full when it failed."""
    badge(run["status"])
    stored = sizes.get(int(run["id"]), 0)
    st.markdown(
        f"**Run {int(run['id'])}** {run['label'] or ''} · models: {models_of(run['request']) or 'n/a'} · "
        f"device: {run['device_name'] or 'not yet known'} · {fmt.count(stored)} point(s) stored of "
        f"{fmt.count(run['points_total'])} planned · created {fmt.when(run['created_at'])}"
        + (f" · {ended(run)}" if ended(run) else "")
    )
    if run["status"] == "failed" and run["error"]:
        st.error(f"Run {int(run['id'])} failed: {run['error']}")


def live(run: pd.Series) -> None:
    """An active run: progress, time left, telemetry so far, and a cancel button."""
    run_id = int(run["id"])
    head, button = st.columns([5, 1], vertical_alignment="center")
    with head:
        badge(run["status"])
        st.markdown(f"**Run {run_id}** {run['label'] or ''} · {models_of(run['request'])} · "
                    f"{run['device_name'] if isinstance(run['device_name'], str) else 'device not yet known'}")
    if run["cancel_requested"]:
        button.caption("Cancel requested; stopping at the next point.")
    elif button.button("Cancel", key=f"cancel_{run_id}", icon=":material/stop_circle:"):
        launch.cancel(run_id)
        st.rerun()
    done, total = int(run["points_done"]), int(run["points_total"])
    eta = "" if pd.isna(run["eta_s"]) or run["eta_s"] is None else f" · about {fmt.duration_s(run['eta_s'])} left"
    st.progress(min(max(float(run["progress"]), 0.0), 1.0),
                text=f"{done:,} of {total:,} points{eta}" if total else f"{run['status']}: planning the points…")
    samples = frames.telemetry(run_id)
    if samples.empty:
        st.caption("No telemetry yet (CPU runs have none: NVML reads GPUs only).")
    else:
        st.altair_chart(charts.telemetry(samples.tail(600)), width="stretch")
