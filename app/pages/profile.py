"""Profile (being built)."""

import streamlit as st

st.title("Profile")
