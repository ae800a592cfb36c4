"""Settings: where the store is (and choosing another for this session), and the price book the planner
costs with."""

import streamlit as st

from app.ui import context, frames, prices, widgets

st.title("Settings")

st.header("Store")
try:
    facts = context.store_facts()
except context.STORE_ERRORS as exc:
    facts = None
    st.error(context.error_sentence(exc), icon=":material/database:")
if facts is not None:
    st.markdown(f"**{facts['url']}** — {facts['source']}.")
    st.caption(f"Schema version {facts['schema_version']}"
               + (f" · file {facts['file']} ({facts['file_size']})" if facts["file"] else "")
               + " · " + ", ".join(f"{n:,} {t}" for t, n in facts["counts"].items()))
st.caption("To start the app on another store: `streamlit run app/main.py -- --db URL`, or set `SSMPLAN_DB`. "
           "A SQLAlchemy URL (e.g. `postgresql+psycopg://user@host/db`) or a SQLite file path.")

with st.form("store_form"):
    wanted = st.text_input("Use another store for this browser session", placeholder="path/to/store.db or URL",
                           help="A file that does not exist yet becomes a new, empty store.")
    chose = st.form_submit_button("Use this store")
if chose:
    url, problem = context.try_store(wanted)
    if not widgets.field_error(problem):
        context.use_store(url)
        st.rerun()
if context.SESSION_URL_KEY in st.session_state and st.button("Back to the store the app was started with"):
    context.use_store(None)
    st.rerun()

if facts is None:
    st.stop()

st.header("Price book")
st.caption("$/GPU-hour per GPU and tier, with where the price came from and its date. The planner and the "
           "finance export use these; saved in the store's prices table.")
edited = st.data_editor(prices.editable(frames.prices()), num_rows="dynamic", hide_index=True,
                        column_config=prices.EDITOR_COLUMNS, key="price_editor")
rows, problems = prices.check(edited)
for p in problems:
    widgets.field_error(p)
if st.button("Save the price book", type="primary", disabled=bool(problems)):
    prices.save(rows)
    st.success(f"Saved {len(rows)} price(s).")
