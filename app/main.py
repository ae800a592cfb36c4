"""The ssmplan dashboard: `streamlit run app/main.py [-- --db URL]`.

Routes to the pages and turns store errors into sentences; the pages describe their screens and call
`app.ui` and `app.planning` for everything else. Never imports torch: profiling runs in a subprocess.
"""

import sys
from pathlib import Path

# Run from a checkout without installing: streamlit puts only app/ on the path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.ui import context  # noqa: E402

st.set_page_config(page_title="ssmplan", page_icon=":material/speed:", layout="wide")

# The screens live in views/, not pages/: Streamlit treats a pages/ folder beside the entry script as a
# legacy multipage app and can run those files without this script (no store guard, no navigation).
PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/profile.py", title="Profile", icon=":material/play_circle:"),
    st.Page("views/explore.py", title="Explore", icon=":material/monitoring:"),
    st.Page("views/plan.py", title="Plan", icon=":material/calculate:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
    st.Page("views/settings.py", title="Settings", icon=":material/settings:"),
]

page = st.navigation(PAGES)
st.sidebar.caption(f"Store: `{context.describe_store()}`")
with context.guard():
    page.run()
