"""The store this session reads: its URL, a cached engine, and store errors shown as sentences.

The URL comes from, in order: a store chosen on the Settings page (this browser session only), `--db`
after `--` on the command line (`streamlit run app/main.py -- --db URL`), `SSMPLAN_DB`, the default
SQLite file. Opening a new store creates its schema and loads the shipped reference bundles once.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Iterator

import streamlit as st
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from store import bundle, repo
from store.db import ENV_VAR, StoreError, describe, get_engine, shared_url, sqlite_path
from store.db import session as store_session
from store.models import Meta

SESSION_URL_KEY = "store_url_override"


def cli_db(argv: list[str] | None = None) -> str | None:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--db")
    args, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args.db


def store_url() -> str:
    return shared_url(st.session_state.get(SESSION_URL_KEY) or cli_db())


def describe_store() -> str:
    """The store's URL (password hidden) for display; never raises."""
    try:
        return describe(store_url())
    except STORE_ERRORS:
        return str(st.session_state.get(SESSION_URL_KEY) or cli_db())


def url_source() -> str:
    """Where the current URL came from, for the Settings page."""
    if st.session_state.get(SESSION_URL_KEY):
        return "chosen on this page for this browser session"
    if cli_db():
        return "--db on the command line"
    if os.environ.get(ENV_VAR, "").strip():
        return f"the {ENV_VAR} environment variable"
    return "the default file in the project's data folder"


@st.cache_resource(show_spinner="Opening the store…")
def _open(url: str) -> tuple[Engine, tuple[str, ...]]:
    engine = get_engine(url)
    with store_session(engine) as s:
        seeded = bundle.seed_reference(s)
    return engine, tuple(seeded)


def engine() -> Engine:
    """The engine of the session's store, opened (and seeded) once per URL per server."""
    return _open(store_url())[0]


def seeded_runs() -> tuple[str, ...]:
    """Uids of the reference runs loaded when this server first opened the store."""
    return _open(store_url())[1]


@contextmanager
def session() -> Iterator[Session]:
    with store_session(engine()) as s:
        yield s


def error_sentence(exc: BaseException, url: str | None = None) -> str:
    """One sentence for a store problem; StoreError messages are already written for people."""
    if isinstance(exc, SQLAlchemyError):
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return f"The store {describe(url) if url else describe_store()} could not be read or written ({detail})."
    return str(exc)


STORE_ERRORS = (StoreError, bundle.BundleError, SQLAlchemyError)


@contextmanager
def guard() -> Iterator[None]:
    """Turn a store error raised while drawing a page into a sentence, then stop the page."""
    try:
        yield
    except STORE_ERRORS as exc:
        st.error(error_sentence(exc), icon=":material/database:")
        st.caption("Choose another store on the Settings page, or restart with `-- --db URL` / `SSMPLAN_DB`.")
        st.stop()


def try_store(text: str) -> tuple[str | None, str | None]:
    """Opens the store `text` names (a URL or a file path; a new file becomes a new store) and returns its
    URL, or a message saying why it cannot be used."""
    if not (text or "").strip():
        return None, "enter a SQLAlchemy URL or a file path"
    try:
        url = shared_url(text)
    except StoreError as exc:
        return None, str(exc)
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        return None, f"there is no folder {path.parent}: a new store goes into a folder that exists"
    try:
        _open(url)
    except STORE_ERRORS as exc:
        return None, error_sentence(exc, url)
    return url, None


def use_store(url: str | None) -> None:
    """Points this browser session at `url` (None: back to the command line / environment / default)."""
    if url is None:
        st.session_state.pop(SESSION_URL_KEY, None)
    else:
        st.session_state[SESSION_URL_KEY] = url


def store_facts() -> dict:
    """Where the store is and what it holds, for the Settings page."""
    url = store_url()
    with session() as s:
        version = s.get(Meta, "schema_version")
        counts = repo.counts(s)
    path = sqlite_path(url)
    size = path.stat().st_size if path is not None and path.exists() else None
    return {
        "url": describe(url),
        "source": url_source(),
        "schema_version": version.value if version else "?",
        "file": str(path) if path is not None else None,
        "file_size": None if size is None else f"{size / 2**20:,.1f} MiB",
        "counts": {t: n for t, n in counts.items() if t != Meta.__tablename__},
    }
