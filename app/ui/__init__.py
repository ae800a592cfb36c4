"""Helpers the pages share: the store and its cached frames, formatting, field validation, launching the
profiler. Streamlit is imported here; torch never is."""
