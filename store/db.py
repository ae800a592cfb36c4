"""Where the store lives, and opening it safely.

The store is any SQLAlchemy URL: `--db` wins, then `SSMPLAN_DB`, then a SQLite file in the project's
`data/` folder. A plain file path is accepted for SQLite. A new SQLite store goes into a folder that
exists (only the default `data/` folder is made): a mistyped path is refused, not created. SQLite runs in
WAL mode with a busy timeout so the app reads while a profiler writes; a new SQLite store is built in a
file beside its path and renamed into place whole, so processes that open one new store at once all find
it complete. Opening never alters a database it does not recognise: a file that is not SQLite, a corrupt
file, a foreign schema or a newer schema version each fail with a `StoreError` that says what to do, and
the file is left as it was.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel, create_engine

from store.models import SCHEMA_VERSION, TABLES, Meta, utcnow

ENV_VAR = "SSMPLAN_DB"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = PROJECT_ROOT / "data" / "ssmplan.db"
BUSY_TIMEOUT_MS = 30_000
CREATION_WAIT_S = 10.0  # how long to wait for another process that is creating the same store
_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(RuntimeError):
    """A store that cannot be opened as asked; the message says why and what to do."""


def resolve_url(db: str | os.PathLike | None = None) -> str:
    """The store URL from `db` (a URL or a file path), else `SSMPLAN_DB`, else the default file; a relative
    SQLite file is made absolute against the current folder. An empty `db` is refused rather than read as
    "not given" (`--db ""`, or a variable that expanded to nothing, would otherwise open the default)."""
    if db is not None and not os.fspath(db).strip():
        raise StoreError("the store location is empty: give --db a SQLAlchemy URL or a SQLite file path, "
                         f"or leave --db out to use ${ENV_VAR} or the default")
    raw = os.fspath(db) if db is not None else os.environ.get(ENV_VAR) or ""
    raw = raw.strip()
    if not raw:
        return f"sqlite:///{DEFAULT_PATH}"
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser().resolve()}"
    try:
        u = make_url(raw)
        u.get_dialect()
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"store URL {raw!r} is not a valid SQLAlchemy URL ({exc})") from None
    path = sqlite_path(raw)
    if path is None or path.is_absolute() or u.query.get("uri"):
        return raw
    # a relative file is made absolute once, here: a process started in another folder (a profiling run the
    # app starts) that is handed this URL then opens the same file
    return u.set(database=str(path.expanduser().resolve())).render_as_string(hide_password=False)


def in_memory(url: str) -> bool:
    """True for an in-memory SQLite store (`sqlite://`, `sqlite:///:memory:`): no other process can see it."""
    u = make_url(url)
    return u.drivername.startswith("sqlite") and u.database in (None, "", ":memory:")


def shared_url(db: str | os.PathLike | None = None) -> str:
    """`resolve_url` for a store that other processes (profiling runs) are handed: an in-memory one is refused."""
    url = resolve_url(db)
    if in_memory(url):
        raise StoreError("an in-memory store cannot be shared with profiling runs; give a file path")
    return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for in-memory or non-SQLite stores)."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or in_memory(url):
        return None
    return Path(u.database)


def describe(url: str) -> str:
    """The URL with any password hidden, for messages and the UI."""
    return make_url(url).render_as_string(hide_password=True)


def _check_sqlite_file(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a database file; point --db or {ENV_VAR} at a file, "
                         f"e.g. {path / 'ssmplan.db'}")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read the store {path} ({exc.strerror}); check its permissions.") from None
    if head != _SQLITE_MAGIC:
        raise StoreError(
            f"{path} is not an SQLite database (it starts with {head[:8]!r}); it was left untouched. "
            f"Point --db or {ENV_VAR} at another file, or move this one away."
        )
    _check_writable(path)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if any(word in str(exc) for word in ("unable to open", "readonly", "read-only")):
            raise StoreError(f"the store {path} cannot be opened ({exc}); check the permissions of the file, "
                             "its folder and any -wal/-shm files beside it; it was left untouched.") from None
        raise StoreError(f"{path} is a damaged SQLite database ({exc}); it was left untouched.") from None
    if row is None or row[0] != "ok":
        raise StoreError(f"{path} failed SQLite's integrity check ({row[0] if row else 'no answer'}); "
                         "it was left untouched.")


def _check_folder(path: Path) -> None:
    """The store's folder must exist: a mistyped path is refused, not created with an empty store in it.
    The default store's folder (the project's data/) is the one made when missing."""
    if path.parent.is_dir():
        return
    if path == DEFAULT_PATH:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store's folder {path.parent}: {exc.strerror}") from None
        return
    what = "is not a folder" if path.parent.exists() else "does not exist"
    raise StoreError(f"the store {path} cannot be opened: its folder {path.parent} {what}; check --db or "
                     f"{ENV_VAR} (a new store goes into a folder that exists)")


def _check_writable(path: Path) -> None:
    """A StoreError that says so when SQLite could not write the store at `path`: the file, or its folder (where
    SQLite writes its -wal and -shm files), is read-only; such a store is not reported as damaged."""
    if path.exists() and not os.access(path, os.W_OK):
        what = f"the file {path} is read-only"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        what = f"its folder {path.parent} is read-only"
    else:
        return
    with suppress(OSError, AttributeError):  # no statvfs on Windows
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            what = f"the file system of {path.parent} is mounted read-only"
    if path.exists() and path.stat().st_size:
        raise StoreError(f"the store {path} cannot be opened for writing: {what}; it was left untouched. Make it "
                         f"writable, or copy it to a writable folder and point --db or {ENV_VAR} at the copy.")
    raise StoreError(f"the store {path} cannot be created: {what}. Point --db or {ENV_VAR} at a writable folder.")


def _on_sqlite_connect(dbapi_con, _record) -> None:
    cur = dbapi_con.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class _BeingCreated(Exception):
    """Some of our tables, or the marker without its version: another process is creating the store."""


def _check_schema(engine: Engine, url: str) -> bool:
    """True when the store is ours at this schema version; False when it is empty (to be created)."""
    names = set(inspect(engine).get_table_names())
    if not names:
        return False
    if Meta.__tablename__ not in names:
        if names <= {t.__tablename__ for t in TABLES}:
            raise _BeingCreated()
        raise StoreError(
            f"{describe(url)} holds tables ({', '.join(sorted(names)[:5])}…) but no ssmplan schema marker: "
            "it is not an ssmplan store, so it was left untouched. Use an empty database or a new file."
        )
    with engine.connect() as con:
        row = con.execute(text("SELECT value FROM ssmplan_meta WHERE key = 'schema_version'")).fetchone()
    if row is None:
        raise _BeingCreated()
    try:
        version = int(row[0])
    except ValueError:
        raise StoreError(f"{describe(url)} has an unreadable schema version {row[0]!r}; left untouched.") from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{describe(url)} was written by a newer ssmplan (schema version {version}; this one reads "
            f"version {SCHEMA_VERSION}). Upgrade ssmplan; the store was left untouched."
        )
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"{describe(url)} uses schema version {version}, which this ssmplan (version {SCHEMA_VERSION}) "
            "has no migration for; it was left untouched."
        )
    return True


def _settled_schema(engine: Engine, url: str) -> bool:
    """`_check_schema`, waiting while another process finishes creating the store."""
    wait_s = CREATION_WAIT_S
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _check_schema(engine, url)
        except _BeingCreated:
            if time.monotonic() > deadline:
                raise StoreError(f"{describe(url)} holds part of an ssmplan schema (no schema version) and "
                                 f"nothing completed it in {wait_s:g} s; it was left untouched.") from None
            time.sleep(0.1)


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(db: str | os.PathLike | None = None) -> Engine:
    """An engine for the store, created (and its schema made) on first use; cached per URL."""
    url = resolve_url(db)
    with _lock:
        if url in _engines:
            return _engines[url]
        path = sqlite_path(url)
        kwargs: dict = {}
        if path is not None:
            _check_sqlite_file(path)
            _check_folder(path)
            if not path.exists() or path.stat().st_size == 0:
                _check_writable(path)
                _publish_new_sqlite_store(path)
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        elif make_url(url).drivername.startswith("sqlite"):
            from sqlalchemy.pool import StaticPool

            kwargs["connect_args"] = {"check_same_thread": False}
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = create_engine(url, **kwargs)
        except (ArgumentError, ModuleNotFoundError) as exc:
            raise StoreError(f"cannot use store {describe(url)}: {exc}") from None
        try:
            # Check with a connection that sets no pragmas: WAL mode would rewrite a foreign file's header.
            known = _settled_schema(engine, url)
            if engine.dialect.name == "sqlite":
                engine.dispose()
                event.listen(engine, "connect", _on_sqlite_connect)
            if not known:
                try:
                    _create_schema(engine)
                except (OperationalError, IntegrityError, ProgrammingError):
                    _settled_schema(engine, url)  # another process created it first: it must be complete now
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open store {describe(url)}: {exc.orig}") from None
        except StoreError:
            engine.dispose()
            raise
        _engines[url] = engine
        return engine


def _create_schema(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine, tables=[t.__table__ for t in TABLES])
    with Session(engine) as s:
        if s.get(Meta, "schema_version") is None:
            s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            s.add(Meta(key="created_at", value=utcnow().isoformat()))
            s.commit()


@contextmanager
def _creation_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the store's folder while one process creates a store in it (POSIX `flock` on the
    folder itself, so no lock file is left behind); without `fcntl` (Windows), or on a file system that
    refuses locks, nothing is locked."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # not POSIX, or a folder this user may write but not read
        yield
        return
    try:
        with suppress(OSError):  # a file system without locks (some network mounts): go on unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _publish_new_sqlite_store(path: Path) -> None:
    """Make a new SQLite store at `path` whole, in WAL mode, before any other process can open it.

    Creating it in place raced: SQLite drops the WAL of a zero-byte database as stale when it opens one, so a
    process that opened the file while another was creating it in WAL mode could erase the other's tables,
    or find the file locked. So the store is built in a private file beside `path` and renamed into place,
    under a lock on the folder that every creator takes: a creator that finds the store made meanwhile keeps
    it. A zero-byte file already at `path` is an empty store and is replaced the same way."""
    tmp = path.with_name(f"{path.name}-new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with _creation_lock(path.parent):
            if path.exists() and path.stat().st_size > 0:
                return  # another process created it while this one waited
            engine = create_engine(f"sqlite:///{tmp}", poolclass=NullPool)
            try:
                _create_schema(engine)
                with engine.connect() as con:
                    con.exec_driver_sql("PRAGMA journal_mode=WAL")  # kept in the file's header
            finally:
                engine.dispose()
            os.replace(tmp, path)
    except (OSError, sqlite3.Error, OperationalError) as exc:
        reason = exc.orig if isinstance(exc, OperationalError) else exc
        raise StoreError(f"cannot create the store {path}: {reason}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            with suppress(OSError):
                leftover.unlink(missing_ok=True)


def dispose_all() -> None:
    """Close every cached engine (tests, and before forking workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session(db: str | os.PathLike | Engine | None = None) -> Iterator[Session]:
    """A session on the store; commits are the caller's."""
    engine = db if isinstance(db, Engine) else get_engine(db)
    with Session(engine, expire_on_commit=False) as s:
        yield s
