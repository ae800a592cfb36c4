"""Plan (being built)."""

import streamlit as st

st.title("Plan")
