"""Small pieces of screen that several pages draw the same way."""

from __future__ import annotations

import streamlit as st

from app.ui import fmt, points


def field_error(message: str | None) -> bool:
    """Shows a validation message right under the field it belongs to; True when there was one."""
    if message:
        st.markdown(f":red[:material/error: {message}]")
        return True
    return False


def metric_definitions(expanded: bool = False) -> None:
    with st.expander("What the numbers mean", expanded=expanded, icon=":material/menu_book:"):
        st.markdown(fmt.definitions_markdown())
        st.markdown(_provenance_markdown())


def provenance_legend() -> None:
    with st.expander("Where the numbers come from", icon=":material/menu_book:"):
        st.markdown(_provenance_markdown())
        st.markdown(fmt.definitions_markdown())


def _provenance_markdown() -> str:
    return ("Every planned number is marked by where it comes from:\n"
            + "\n".join(f"- **{name}**: {text}" for name, text in fmt.PROVENANCE_LABELS))


def empty_store_next_steps() -> None:
    st.info(
        "The store holds no measurements yet. To get some:\n"
        "- **Profile** the tiny presets on this CPU from the Profile page (about a minute), or real models on a "
        "GPU;\n"
        "- or from a shell: `python -m profiler run` (the CPU demo here, the quick sweep on a GPU; "
        "`python -m profiler --help` for more), or `python -m store import bundle.json` for measurements taken "
        "elsewhere.",
        icon=":material/lightbulb:",
    )
    st.page_link("views/profile.py", label="Go to Profile", icon=":material/play_circle:")


def chart(chart_fn, frame, *args) -> None:
    """Draws `chart_fn(frame, *args)` from at most `points.CHART_ROW_LIMIT` rows, saying when it sampled."""
    frame, left_out = points.capped(frame)
    if left_out:
        st.caption(f"Showing an even sample of {fmt.count(len(frame))} points; {fmt.count(left_out)} more "
                   "match. Narrow the filters to see them all.")
    st.altair_chart(chart_fn(frame, *args), width="stretch")
