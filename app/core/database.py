"""Database engine and sessions: the one place that opens connections.

Web requests get a session through `get_db` (a FastAPI dependency: `app.api.deps.SessionDep`);
the worker and the CLI use `session_scope()`. Both commit on success and roll back on error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the web app read while a worker writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _overflow_is_a_data_error(context) -> None:
    """sqlite3 refuses an integer beyond 64 bits with a bare OverflowError; Postgres (psycopg)
    with a DataError. Make both a DataError, which the API answers as the client's 422."""
    if isinstance(context.original_exception, OverflowError):
        raise DataError(context.statement, context.parameters, context.original_exception)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _overflow_is_a_data_error)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


_engines: dict[str, Engine] = {}


def _private_file(path: Path) -> None:
    """The embedded database holds password hashes and every team's data: only its owner may
    read it (SQLite gives its -wal and -shm files the same mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def get_engine() -> Engine:
    """The engine for the configured database URL, created on first use."""
    url = get_settings().sqlalchemy_url
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite:///"):
            _private_file(Path(url.removeprefix("sqlite:///")))
        engine = _engines[url] = make_engine(url)
    return engine


@lru_cache
def _sessionmaker_for(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def new_session() -> Session:
    return _sessionmaker_for(get_engine())()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_db() -> Iterator[Session]:
    """FastAPI dependency: one session per request."""
    with session_scope() as session:
        yield session


def dispose_engines() -> None:
    """Drop pooled connections without closing them; called in a process right after fork so
    that parent and child never share a socket."""
    for engine in _engines.values():
        engine.dispose(close=False)


def reset_engines() -> None:
    """Close and forget every engine, so the next session follows the settings as they are now
    (tests that change the environment between cases)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sessionmaker_for.cache_clear()
