"""Fixtures shared by every test folder: stores on both backends.

`pg_server` gives a PostgreSQL server: the one in `SSMPLAN_TEST_PG` (a SQLAlchemy URL to a database the
tests may create databases from), else a throwaway cluster started from Debian's binaries on 127.0.0.1
in a temporary directory (scripts/test.sh installs them when missing). Without either, PostgreSQL tests
skip with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from store import db


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server():
    url = os.environ.get("SSMPLAN_TEST_PG")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL: set SSMPLAN_TEST_PG or install Debian's postgresql (scripts/test.sh does)")
    base = Path(tempfile.mkdtemp(prefix="ssmplan-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(base, 0o700)
    port = _free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "ssmplan", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://ssmplan@127.0.0.1:{port}/postgres"
    finally:
        db.dispose_all()
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_pg_database(server_url: str) -> str:
    """A fresh, empty database on the server; returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    for _ in range(50):
        try:
            with admin.connect() as con:
                con.execute(text(f'CREATE DATABASE "{name}"'))
            break
        except Exception:  # the server may still be starting
            time.sleep(0.2)
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_url(request, tmp_path):
    """An empty store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = new_pg_database(request.getfixturevalue("pg_server"))
    yield url
    db.dispose_all()


@pytest.fixture
def sqlite_url(tmp_path):
    yield f"sqlite:///{tmp_path / 'store.db'}"
    db.dispose_all()


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def load_script():
    """`load_script("plan_rows")`: scripts/plan_rows.py imported as a module (the scripts are no package)."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
