"""The embedded (SQLite) or shared (PostgreSQL) store that the profiler writes and the app reads."""
