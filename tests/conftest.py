"""Shared fixtures: a fresh Postgres database for the run, settings pointed at it, a
clean schema for every test, HTTP clients, and users in teams.

Tests talk to a real PostgreSQL and a real Redis (never mocks). Point them elsewhere with
TUNELAB_TEST_POSTGRES (an admin URL; a database is created for the run and dropped after)
and TUNELAB_TEST_REDIS. If either is unreachable, the run fails: it does not skip.
"""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import text

POSTGRES_ADMIN_URL = os.environ.get("TUNELAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TUNELAB_TEST_REDIS", "redis://127.0.0.1:6379/0")
PASSWORD = "correct horse battery"


def _reset_caches() -> None:
    """Forget settings, engines and the Celery client built from earlier environment values."""
    from app import db, queue
    from app.config import get_settings

    get_settings.cache_clear()
    queue.get_celery.cache_clear()
    for engine in db._engines.values():
        engine.dispose()
    db._engines.clear()
    db._sessionmaker_for.cache_clear()


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
    _reset_caches()
    from app import schema

    schema.upgrade()
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
    _reset_caches()
    yield data_dir
    _reset_caches()


@pytest.fixture
def db(settings_env):
    """A clean database for the test (every table emptied before it runs)."""
    from app.db import get_engine, session_scope
    from app.models import Base

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


@dataclass
class Account:
    """A user with an API token and an HTTP client that sends it."""

    user_id: int
    email: str
    team_id: int
    team: str
    token: str
    client: TestClient


@pytest.fixture
def make_account(app, db):
    """make_account(team="acme", role="member", admin=False) -> Account, with its own client."""
    from app import accounts
    from app.models import Role

    clients = []

    def make(team: str = "acme", role: str = "member", admin: bool = False, email: str | None = None) -> Account:
        email = email or f"{role}-{uuid.uuid4().hex[:8]}@{team.lower()}.test"
        created_team = accounts.find_team(db, team) is None
        user = accounts.create_user(db, email=email, password=PASSWORD, team_name=team, role=Role(role),
                                    is_admin=admin, create_team_if_missing=True)  # fmt: skip
        if created_team and role != "owner":
            # create_user makes the first user of a new team its owner; keep the role asked for.
            user.memberships[0].role = Role(role)
        _row, token = accounts.create_api_token(db, user=user, name="tests")
        db.commit()
        http = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        clients.append(http)
        return Account(user.id, user.email, user.memberships[0].team_id, team, token, http)

    yield make
    for http in clients:
        http.close()


_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def csrf_from(html: str) -> str:
    match = _CSRF_META.search(html)
    assert match, "page has no CSRF meta tag"
    return match.group(1)


def browser_sign_in(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign a TestClient in through the form, as a browser does; returns the CSRF token."""
    page = client.get("/login")
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/").text)


# ---- models, datasets, workers and a live server --------------------------------------------

TINY_MODEL = "tiny-llama"


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> Path:
    """A models directory with a tiny Llama, written once per run with the CLI's own code."""
    from worker.training.tiny import make_tiny_model

    path = tmp_path_factory.mktemp("models")
    make_tiny_model(path / TINY_MODEL)
    return path


@pytest.fixture
def models_env(settings_env, shared_models_dir, monkeypatch) -> Path:
    monkeypatch.setenv("TUNELAB_MODELS_DIR", str(shared_models_dir))
    _reset_caches()
    return shared_models_dir


def chat_rows(count: int = 48) -> list[dict]:
    things = {"car": "red", "tree": "green", "sky": "blue", "sun": "yellow", "night": "black", "snow": "white"}
    names = sorted(things)
    return [
        {"messages": [{"role": "user", "content": f"What colour is the {names[i % 6]}?"},
                      {"role": "assistant", "content": f"The {names[i % 6]} is {things[names[i % 6]]}."}]}
        for i in range(count)
    ]  # fmt: skip


def jsonl(rows: list[dict]) -> bytes:
    import json

    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(extra)
    return env


@pytest.fixture
def live_server(models_env):
    """The app served by uvicorn in a subprocess, as in production; yields its base URL."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env=_child_env(), start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code in (200, 503):
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("the app did not start")
        time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


class WorkerProcesses:
    """Start real Celery workers (not eager mode) and kill them as a crash would."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.processes = []

    def start(self, timeout: float = 60, *, queue: str | None = None, max_tasks_per_child: int | None = 1):
        """A worker on this test's queue (or `queue`); max_tasks_per_child=None keeps its pool
        process, as `tunelab worker` does for inference workers."""
        import subprocess
        import sys
        import time

        from sqlalchemy import select

        from app.db import session_scope
        from app.models import WorkerProcess

        name = f"test-{uuid.uuid4().hex[:8]}@%h"
        recycle = ["--max-tasks-per-child", str(max_tasks_per_child)] if max_tasks_per_child else []
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
             "--concurrency", "1", "--queues", queue or self.queue, "--hostname", name, *recycle],
            env=_child_env(), start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with session_scope() as session:
                if session.scalar(select(WorkerProcess).where(WorkerProcess.pid == process.pid)):
                    return process
            if process.poll() is not None:
                pytest.fail(f"the worker exited with {process.returncode}")
            time.sleep(0.2)
        pytest.fail("the worker did not come up")

    def kill(self, process) -> None:
        """SIGKILL the worker and its pool children: no clean-up, no acknowledgement."""
        import signal

        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, process, timeout: float = 120) -> None:
        """SIGTERM, as `docker stop` or Ctrl-C sends it: a warm shutdown."""
        import signal

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=timeout)

    def stop_all(self) -> None:
        import signal
        import subprocess

        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # a warm shutdown, which stops the pool child itself
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def redis_broker(models_env, redis_url, monkeypatch) -> str:
    """Celery on the real Redis (and live push through it), as in production."""
    monkeypatch.setenv("TUNELAB_BROKER_URL", redis_url)
    monkeypatch.setenv("TUNELAB_REDIS_URL", redis_url)
    _reset_caches()
    return redis_url


@pytest.fixture
def workers(models_env):
    """Real worker processes on a queue of this test's own, so parallel runs never share jobs."""
    pool = WorkerProcesses(queue=f"test-{uuid.uuid4().hex[:10]}")
    yield pool
    pool.stop_all()


def add_dataset(db, account, rows: list[dict], name: str = "colours.jsonl"):
    """A dataset row and its file, as an accepted upload leaves them."""
    import hashlib

    from app.config import get_settings
    from app.formats import detect_format
    from app.models import Dataset
    from app.storage import BlobStore

    content = jsonl(rows)
    digest = hashlib.sha256(content).hexdigest()
    key = f"datasets/{account.team_id}/{digest}.jsonl"
    with BlobStore(get_settings().blobs_path).writer(key) as handle:
        handle.write(content)
    dataset = Dataset(team_id=account.team_id, created_by_id=account.user_id, name=name, filename=name,
                      format=detect_format(rows[0]), sha256=digest, size_bytes=len(content), row_count=len(rows),
                      stats={}, blob_key=key)  # fmt: skip
    db.add(dataset)
    db.commit()
    return dataset


def tiny_spec(**overrides) -> dict:
    spec = {"base_model": TINY_MODEL, "method": "lora", "max_steps": 12, "learning_rate": 5e-3, "batch_size": 4,
            "logging_steps": 1, "max_seq_length": 128}  # fmt: skip
    spec.update(overrides)
    return spec


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, message: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")
