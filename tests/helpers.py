"""What tests share besides fixtures: the test services' addresses, accounts, rows and
specs, sign-in through the form, real worker processes, waiting for a condition, and the
services for a class of tests that share one expensive setup (`SharedServices`, `once`).

Fixtures live in `conftest.py` and use these; tests import them from here."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

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


def warm_and_cool_rows(count: int = 64, seed: int = 0) -> list[dict]:
    """Text+label rows a tiny classifier learns: a few filler words and one warm or cold word."""
    rng = random.Random(seed)
    warm, cold = ["sun", "fire", "summer", "hot"], ["snow", "ice", "winter", "cold"]
    filler = ["the", "a", "day", "was", "very", "and", "today", "really"]
    return [
        {
            "text": " ".join(rng.sample(filler, 4) + [rng.choice(warm if i % 2 else cold)]),
            "label": "warm" if i % 2 else "cool",
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

    def start(
        self, timeout: float = 60, *, queue: str | None = None, max_tasks_per_child: int | None = 1, devices: int = 1
    ):
        """A worker on this test's queue (or `queue`); max_tasks_per_child=None keeps its pool
        process, as `tunelab worker` does for inference workers. `devices`: the CPU processes it
        owns, as `tunelab worker --cpu-processes` gives them (it takes jobs needing up to that many)."""
        from sqlalchemy import select

        from app.core.database import session_scope
        from app.core.queue import worker_queues
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
                ",".join(worker_queues(queue or self.queue, devices)),
                "--hostname",
                name,
                *recycle,
            ],
            env=child_env(TUNELAB_WORKER_CPU_PROCESSES=str(devices)),
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


def add_job(db, account, state, name: str = "job", dataset=None):
    """A job row of the account's team in `state`, on a small dataset (a new one unless given),
    as if it had got there (no worker, no broker): for tests of what comes after."""
    from app.core.tables import Job

    dataset = dataset or add_dataset(db, account, chat_rows(6))
    job = Job(
        team_id=account.team_id,
        created_by_id=account.user_id,
        name=name,
        base_model=TINY_MODEL,
        method="lora",
        spec=tiny_spec(),
        dataset_id=dataset.id,
        state=state,
    )
    db.add(job)
    db.commit()
    return job


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


def create_account(
    session, app, team: str = "acme", role: str = "member", admin: bool = False, email: str | None = None
) -> Account:
    """A user of `team` with `role` and an API token (what the `make_account` fixture hands
    out); the caller closes its client."""
    from app.accounts.teams import find_team
    from app.accounts.tokens import create_api_token
    from app.accounts.users import create_user
    from app.core.tables import Role

    email = email or f"{role}-{uuid.uuid4().hex[:8]}@{team.lower()}.test"
    created_team = find_team(session, team) is None
    user = create_user(
        session,
        email=email,
        password=PASSWORD,
        team_name=team,
        role=Role(role),
        is_admin=admin,
        create_team_if_missing=True,
    )
    if created_team and role != "owner":
        user.memberships[0].role = Role(role)  # create_user makes a new team's first user its owner
    _row, token = create_api_token(session, user=user, name="tests")
    session.commit()
    http = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    return Account(user.id, user.email, user.memberships[0].team_id, team, token, http)


def serve_app(timeout: float = 30) -> tuple[subprocess.Popen, str]:
    """The app served by uvicorn in a subprocess, as the `live_server` fixture serves it: the
    process and its base URL, once /healthz answers."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
        + ["--log-level", "warning"],
        env=child_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code in (200, 503):
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("the app did not start")
        time.sleep(0.1)


class SharedServices:
    """What the function-scoped fixtures give one test (`settings_env`, `models_env`,
    `redis_broker`, `db`, `make_account`, `workers`, `live_server`), for a class of tests that
    share one expensive setup: a job trained once, that each test checks one behaviour of.

    The `db` fixture empties every table before each test, and `settings_env` gives each test
    a data directory of its own, so such tests use none of those: this empties the run's
    database once, when the class starts, and keeps one data directory for the class. Use it
    in a class-scoped fixture (`with SharedServices(...) as services: yield ...`); everything
    it started stops, and the environment is restored, when the class is done."""

    def __init__(self, database_url: str, data_dir: Path, models_dir: Path, redis_url: str, **env: str) -> None:
        self.env = {
            "TUNELAB_DATABASE_URL": database_url,
            "TUNELAB_DATA_DIR": str(data_dir),
            "TUNELAB_MODELS_DIR": str(models_dir),
            "TUNELAB_SECRET_KEY": "test-" + "x" * 40,
            "TUNELAB_BROKER_URL": redis_url,
            "TUNELAB_REDIS_URL": redis_url,
            **env,
        }
        self.workers = WorkerProcesses(queue=f"test-{uuid.uuid4().hex[:10]}")

    def __enter__(self) -> Self:
        from sqlalchemy import text

        from app.core.database import get_engine
        from app.core.tables import Base
        from app.main import create_app

        with ExitStack() as stack:  # undone at once if this fails half-way
            stack.callback(forget_cached_settings)  # last: once the environment is restored
            patch = stack.enter_context(pytest.MonkeyPatch.context())
            patch.delenv("TUNELAB_ENVIRONMENT", raising=False)
            for name, value in self.env.items():
                patch.setenv(name, value)
            forget_cached_settings()
            tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
            with get_engine().begin() as connection:
                connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            stack.callback(self.workers.stop_all)
            self.app = create_app()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def account(self, team: str = "acme", role: str = "member") -> Account:
        from app.core.database import session_scope

        with session_scope() as session:
            account = create_account(session, self.app, team=team, role=role)
        self._stack.callback(account.client.close)
        return account

    def serve(self) -> str:
        """The app served by uvicorn, until the class is done; returns its base URL."""
        process, url = serve_app()
        self._stack.callback(stop_server, process)
        return url


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend in `directory`, started by the
    test and stopped when the `with` block ends. `url` is its tracking URI."""

    def __init__(self, directory: Path, timeout: float = 120) -> None:
        self.directory = directory
        self.timeout = timeout

    def __enter__(self) -> Self:
        import httpx

        self.directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = (self.directory / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            + ["--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}"]
            + ["--default-artifact-root", str(self.directory / "artifacts")],
            env=child_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.__exit__()
                pytest.fail("mlflow server did not start: " + (self.directory / "server.log").read_text()[-2000:])
            time.sleep(0.25)

    def __exit__(self, *exc_info) -> None:
        # The server forks workers into its session: stop them all with it.
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of one metric of a run, in step order."""
        from mlflow import MlflowClient

        history = MlflowClient(tracking_uri=self.url).get_metric_history(run_id, key)
        return sorted((point.step, point.value) for point in history)

    def runs(self, experiment_name: str):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.url)
        experiment = client.get_experiment_by_name(experiment_name)
        return [] if experiment is None else client.search_runs([experiment.experiment_id])


def tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar in the TensorBoard event files under `directory`, read back
    with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events_dir in sorted({path.parent for path in directory.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            points += [(event.step, event.value) for event in accumulator.Scalars(tag)]
    return sorted(points)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


Step = TypeVar("Step", bound=Callable[..., Any])


def once(step: Step) -> Step:
    """A step of a scenario that several tests share (upload a file, launch a job), as a method
    without arguments: it runs in the first test that needs it and its result is kept for the
    others. A step that failed is not run again: the tests after it that need it are skipped,
    naming it, instead of failing again for the same cause."""

    @functools.wraps(step)
    def run(self):
        outcomes = self.__dict__.setdefault("_step_outcomes", {})
        if step.__name__ not in outcomes:
            try:
                outcomes[step.__name__] = (True, step(self))
            except BaseException as error:
                outcomes[step.__name__] = (False, error)
                raise
        succeeded, value = outcomes[step.__name__]
        if not succeeded:
            pytest.fail(f"needs the step {step.__name__!r}, which failed in an earlier test: {value!r}", pytrace=False)
        return value

    return run  # type: ignore[return-value]
