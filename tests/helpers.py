"""What tests share besides fixtures: the test services' addresses, accounts, rows and
specs, sign-in through the form, real worker processes, and waiting for a condition.

Fixtures live in `conftest.py` and use these; tests import them from here."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

POSTGRES_ADMIN_URL = os.environ.get("TUNELAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TUNELAB_TEST_REDIS", "redis://127.0.0.1:6379/0")
PASSWORD = "correct horse battery"
TINY_MODEL = "tiny-llama"


def forget_cached_settings() -> None:
    """Forget the settings, engines and Celery client built from earlier environment values."""
    from app.config import get_settings
    from app.core import queue
    from app.core.database import reset_engines

    get_settings.cache_clear()
    queue.get_celery.cache_clear()
    reset_engines()


@dataclass
class Account:
    """A user with an API token and an HTTP client that sends it."""

    user_id: int
    email: str
    team_id: int
    team: str
    token: str
    client: TestClient


_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def csrf_from(html: str) -> str:
    match = _CSRF_META.search(html)
    assert match, "page has no CSRF meta tag"
    return match.group(1)


def browser_sign_in(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign a TestClient in through the form, as a browser does; returns the CSRF token."""
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/").text)


def chat_rows(count: int = 48) -> list[dict]:
    things = {"car": "red", "tree": "green", "sky": "blue", "sun": "yellow", "night": "black", "snow": "white"}
    names = sorted(things)
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the {names[i % 6]}?"},
                {"role": "assistant", "content": f"The {names[i % 6]} is {things[names[i % 6]]}."},
            ]
        }
        for i in range(count)
    ]


def jsonl(rows: list[dict]) -> bytes:

    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def free_port() -> int:

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(extra)
    return env


class WorkerProcesses:
    """Start real Celery workers (not eager mode) and kill them as a crash would."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.processes = []

    def start(self, timeout: float = 60, *, queue: str | None = None, max_tasks_per_child: int | None = 1):
        """A worker on this test's queue (or `queue`); max_tasks_per_child=None keeps its pool
        process, as `tunelab worker` does for inference workers."""

        from sqlalchemy import select

        from app.core.database import session_scope
        from app.core.tables import WorkerProcess

        name = f"test-{uuid.uuid4().hex[:8]}@%h"
        recycle = ["--max-tasks-per-child", str(max_tasks_per_child)] if max_tasks_per_child else []
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "1",
                "--queues",
                queue or self.queue,
                "--hostname",
                name,
                *recycle,
            ],
            env=child_env(),
            start_new_session=True,
        )
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

        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, process, timeout: float = 120) -> None:
        """SIGTERM, as `docker stop` or Ctrl-C sends it: a warm shutdown."""

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=timeout)

    def stop_all(self) -> None:

        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # a warm shutdown, which stops the pool child itself
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


def add_dataset(db, account, rows: list[dict], name: str = "colours.jsonl"):
    """A dataset row and its file, as an accepted upload leaves them."""

    from app.contract.formats import detect_format
    from app.core.blobs import blob_store
    from app.core.tables import Dataset

    content = jsonl(rows)
    digest = hashlib.sha256(content).hexdigest()
    key = f"datasets/{account.team_id}/{digest}.jsonl"
    with blob_store().writer(key) as handle:
        handle.write(content)
    dataset = Dataset(
        team_id=account.team_id,
        created_by_id=account.user_id,
        name=name,
        filename=name,
        format=detect_format(rows[0]),
        sha256=digest,
        size_bytes=len(content),
        row_count=len(rows),
        stats={},
        blob_key=key,
    )
    db.add(dataset)
    db.commit()
    return dataset


def tiny_spec(**overrides) -> dict:
    spec = {
        "base_model": TINY_MODEL,
        "method": "lora",
        "max_steps": 12,
        "learning_rate": 5e-3,
        "batch_size": 4,
        "logging_steps": 1,
        "max_seq_length": 128,
    }
    spec.update(overrides)
    return spec


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, message: str = "condition"):

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")
