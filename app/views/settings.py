"""Settings: where the store is (and choosing another for this session), and the price book the planner
costs with."""

import streamlit as st

from app.ui import context, prices, widgets

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
                           help="A file that does not exist yet becomes a new store, seeded with the shipped "
                                "reference measurements; its folder must exist.")
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
st.caption("$/GPU-hour per GPU type and tier, with where each price came from and when. The planner and the "
           "finance export cost with these; they are saved in the store.")
book, note = prices.current()
if note:
    st.info(note, icon=":material/info:")
shown = book.to_frame()
edited = st.data_editor(shown, num_rows="dynamic", hide_index=True, column_config=prices.EDITOR_COLUMNS,
                        key="price_editor")
st.caption("A price changed without a new source is saved as edited here today, with the price it replaced and "
           "where that came from; rows you leave alone keep their source and date, except reserved and spot rows "
           "derived from an on-demand price you change (their source reads \"on-demand $X × factor\"): those "
           "follow it.")
charge, kwh_col, pue_col = st.columns([1, 1, 1], vertical_alignment="bottom")
charge_energy = charge.checkbox("Charge GPU energy", value=book.usd_per_kwh is not None)
usd_per_kwh = kwh_col.number_input("Energy price ($/kWh)", min_value=0.0, max_value=5.0, step=0.01,
                                   value=float(book.usd_per_kwh if book.usd_per_kwh is not None else 0.12),
                                   disabled=not charge_energy)
pue = pue_col.number_input("PUE (facility ÷ IT power)", min_value=1.0, max_value=3.0, step=0.05, value=float(book.pue))
new_book, problems = prices.check(edited, usd_per_kwh=usd_per_kwh if charge_energy else None, pue=pue,
                                  known_gpus=prices.known_gpus(), before=shown)
for problem in problems:
    widgets.field_error(problem)
if follows := prices.rederived(edited, before=shown):
    st.info("Saving also re-derives " + "; ".join(follows) + ".", icon=":material/sync:")
for warning in new_book.above_on_demand() if new_book is not None else ():
    st.warning(warning[0].upper() + warning[1:] + ".", icon=":material/warning:")
if st.button("Save the price book", type="primary", disabled=bool(problems)):
    prices.save(new_book)
    st.session_state.pop("price_editor", None)  # the editor's pending edits are now the saved table
    st.session_state["prices_saved"] = len(new_book.entries)
    st.rerun()
if saved := st.session_state.pop("prices_saved", None):
    st.success(f"Saved {saved} price(s) to the store.")
