"""Export (being built)."""

import streamlit as st

st.title("Export")
