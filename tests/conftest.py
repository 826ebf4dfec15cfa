"""Shared fixtures: a fresh Postgres database for the run, settings pointed at it, a
clean schema for every test, HTTP clients, and users in teams.

Tests talk to a real PostgreSQL and a real Redis (never mocks). Point them elsewhere with
TUNELAB_TEST_POSTGRES (an admin URL; a database is created for the run and dropped after)
and TUNELAB_TEST_REDIS. If either is unreachable, the run fails: it does not skip.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.helpers import (
    POSTGRES_ADMIN_URL,
    REDIS_URL,
    TINY_MODEL,
    Account,
    WorkerProcesses,
    create_account,
    forget_cached_settings,
    serve_app,
    stop_server,
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own for this test run, so parallel runs never meet."""
    name = f"tunelab_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is required for the tests ({POSTGRES_ADMIN_URL}): {error}", pytrace=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis_lib.RedisError as error:
        pytest.fail(f"Redis is required for the tests ({REDIS_URL}): {error}", pytrace=False)
    return REDIS_URL


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def migrated_database(postgres_url, session_data_dir) -> str:
    """The run's database, upgraded to the latest migration once."""
    os.environ["TUNELAB_DATABASE_URL"] = postgres_url
    os.environ["TUNELAB_DATA_DIR"] = str(session_data_dir)
    forget_cached_settings()
    from app.core import migrations

    migrations.upgrade()
    return postgres_url


@pytest.fixture
def settings_env(migrated_database, tmp_path, monkeypatch):
    """Settings for one test: the run's Postgres, a fresh data dir, the embedded broker."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("TUNELAB_DATABASE_URL", migrated_database)
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TUNELAB_SECRET_KEY", "test-" + "x" * 40)
    for name in ("TUNELAB_BROKER_URL", "TUNELAB_REDIS_URL", "TUNELAB_MODELS_DIR", "TUNELAB_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    forget_cached_settings()
    yield data_dir
    forget_cached_settings()


@pytest.fixture
def db(settings_env):
    """A clean database for the test (every table emptied before it runs)."""
    from app.core.database import get_engine, session_scope
    from app.core.tables import Base

    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with get_engine().begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    with session_scope() as session:
        yield session


@pytest.fixture
def app(db):
    from app.main import create_app

    return create_app()


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def make_account(app, db):
    """make_account(team="acme", role="member", admin=False) -> Account, with its own client."""
    clients = []

    def make(team: str = "acme", role: str = "member", admin: bool = False, email: str | None = None) -> Account:
        account = create_account(db, app, team=team, role=role, admin=admin, email=email)
        clients.append(account.client)
        return account

    yield make
    for http in clients:
        http.close()


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """A models directory with a tiny Llama, written once per run with the CLI's own code."""
    from worker.ml.tiny import make_tiny_model

    path = tmp_path_factory.mktemp("models")
    make_tiny_model(path / TINY_MODEL)
    return path


@pytest.fixture
def models_env(settings_env, shared_models_dir, monkeypatch) -> Path:
    monkeypatch.setenv("TUNELAB_MODELS_DIR", str(shared_models_dir))
    forget_cached_settings()
    return shared_models_dir


@pytest.fixture
def live_server(models_env):
    """The app served by uvicorn in a subprocess, as in production; yields its base URL."""
    process, url = serve_app()
    yield url
    stop_server(process)


@pytest.fixture
def redis_broker(models_env, redis_url, monkeypatch) -> str:
    """Celery on the real Redis (and live push through it), as in production."""
    monkeypatch.setenv("TUNELAB_BROKER_URL", redis_url)
    monkeypatch.setenv("TUNELAB_REDIS_URL", redis_url)
    forget_cached_settings()
    return redis_url


@pytest.fixture
def workers(models_env):
    """Real worker processes on a queue of this test's own, so parallel runs never share jobs."""
    pool = WorkerProcesses(queue=f"test-{uuid.uuid4().hex[:10]}")
    yield pool
    pool.stop_all()
