"""The `tunelab` command, run as a user runs it: the installed console script, in a
subprocess, against the test run's Postgres."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.tables import ApiToken, Membership, Role, Team, User

TUNELAB = shutil.which("tunelab", path=str(Path(sys.executable).parent)) or "tunelab"


@pytest.fixture
def run(db, settings_env):
    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k.startswith(("TUNELAB_", "PATH", "PYTHONPATH", "HOME", "LANG"))}
        return subprocess.run(
            [TUNELAB, *args], check=False, capture_output=True, text=True, env=env, input=input, timeout=120
        )

    return run


def test_migrate_reports_the_revision(run):
    from app.core.migrations import head_revision

    result = run("migrate")
    assert result.returncode == 0, result.stderr
    assert f"database at revision {head_revision()}\n" == result.stdout


def test_user_and_token_creation_give_a_working_token(run, app, db):
    created = run("user", "create", "Ada@Example.com", "--password", "a long password", "--team", "research", "--admin")
    assert created.returncode == 0, created.stderr
    assert "created team 'research'" in created.stderr and "created user ada@example.com" in created.stderr

    token = run("token", "create", "ada@example.com", "--name", "laptop")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert token.stdout == secret + "\n" and secret.startswith("tl_"), "stdout must be the token alone"

    me = TestClient(app, headers={"Authorization": f"Bearer {secret}"}).get("/api/me").json()
    assert me["email"] == "ada@example.com" and me["is_admin"] is True
    assert me["teams"][0]["name"] == "research" and me["teams"][0]["role"] == "owner"


def test_a_token_created_with_team_works_in_that_team_only(run, app, db):
    for email, team in (("ada@example.com", "research"), ("bob@example.com", "ops")):
        created = run("user", "create", email, "--password", "a long password", "--team", team)
        assert created.returncode == 0, created.stderr
    ops = db.scalar(select(Team).where(Team.name == "ops"))
    research = db.scalar(select(Team).where(Team.name == "research"))
    ada = db.scalar(select(User).where(User.email == "ada@example.com"))
    db.add(Membership(user_id=ada.id, team_id=ops.id, role=Role.member))
    db.commit()

    token = run("token", "create", "ada@example.com", "--team", "ops")
    assert token.returncode == 0, token.stderr
    bound = TestClient(app, headers={"Authorization": f"Bearer {token.stdout.strip()}"})
    assert [team["name"] for team in bound.get("/api/teams").json()] == ["ops"]
    assert bound.get(f"/api/teams/{research.id}/members").status_code == 404

    unknown = run("token", "create", "ada@example.com", "--team", "nope")
    assert unknown.returncode == 1 and "no team named 'nope'" in unknown.stderr
    not_in = run("token", "create", "bob@example.com", "--team", "research")
    assert not_in.returncode == 1 and "bob@example.com is not a member of team 'research'" in not_in.stderr
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(ApiToken)) == 1


def test_password_is_asked_for_when_not_given(run, db):
    result = run("user", "create", "bob@example.com", "--team", "research", input="a long password\na long password\n")
    assert result.returncode == 0, result.stderr
    assert db.scalar(select(User).where(User.email == "bob@example.com")) is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (["user", "create", "not-an-email", "--password", "a long password", "--team", "t"], "not a valid email"),
        (["user", "create", "x@y.test", "--password", "short", "--team", "t"], "at least 8 characters"),
        (["token", "create", "ghost@example.com"], "no user with email ghost@example.com"),
        (["models", "make-tiny", "../escape"], "model names are"),
    ],
)
def test_bad_input_fails_with_a_message_and_changes_nothing(run, db, args, message):
    result = run(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(User)) == 0
    assert db.scalar(select(func.count()).select_from(Team)) == 0


def test_an_email_already_taken_is_refused(run, db):
    assert run("user", "create", "a@b.test", "--password", "a long password", "--team", "t").returncode == 0
    again = run("user", "create", "A@B.test", "--password", "another password", "--team", "t")
    assert again.returncode == 1 and "already exists" in again.stderr
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(User)) == 1
    assert db.scalar(select(func.count()).select_from(ApiToken)) == 0


def test_make_tiny_writes_a_model_that_models_list_shows(run, settings_env):
    result = run("models", "make-tiny", "tiny-llama")
    assert result.returncode == 0, result.stderr
    folder = settings_env / "models" / "tiny-llama"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert any(folder.glob("*.safetensors")) and any(folder.glob("tokenizer*.json"))

    listed = run("models", "list")
    assert listed.returncode == 0
    name, architecture, size = listed.stdout.strip().split("\t")
    assert (name, architecture) == ("tiny-llama", "LlamaForCausalLM") and size.endswith(("K", "M"))

    again = run("models", "make-tiny", "tiny-llama")
    assert again.returncode == 1 and "exists already" in again.stderr


def test_a_worker_given_a_gpu_index_sees_that_gpu_in_nvidia_smis_order(db, settings_env):
    """`--gpus 0` means nvidia-smi's GPU 0: CUDA must count GPUs in PCI bus order too, or on a
    machine with mixed GPUs the worker would train on (and report) another one."""
    import signal
    import time

    from app.core.tables import WorkerProcess

    env = {k: v for k, v in os.environ.items() if k.startswith(("TUNELAB_", "PATH", "HOME", "LANG", "PYTHON"))}
    env.pop("CUDA_DEVICE_ORDER", None)
    process = subprocess.Popen(
        [TUNELAB, "worker", "--gpus", "0", "--queues", "cli-gpu-test"], env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        row = None
        while row is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)
            db.expire_all()
            row = db.scalar(select(WorkerProcess).where(WorkerProcess.pid == process.pid))
        assert row is not None, "the worker did not come up"
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{process.pid}/environ").read_text().split("\0") if "=" in item
        )
        assert environ["CUDA_VISIBLE_DEVICES"] == "0" and environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert row.queues == "cli-gpu-test,cli-gpu-test.1-devices.gang" and row.devices, (
            "its heartbeat says what it runs on"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_a_worker_with_cpu_processes_advertises_them_and_takes_jobs_needing_up_to_that_many(db, settings_env):
    import signal
    import time

    from app.core.tables import WorkerProcess

    env = {k: v for k, v in os.environ.items() if k.startswith(("TUNELAB_", "PATH", "HOME", "LANG", "PYTHON"))}
    process = subprocess.Popen(
        [TUNELAB, "worker", "--cpu-processes", "2", "--queues", "cli-cpu-test"], env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        row = None
        while row is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)
            db.expire_all()
            row = db.scalar(select(WorkerProcess).where(WorkerProcess.pid == process.pid))
        assert row is not None, "the worker did not come up"
        assert row.queues == (
            "cli-cpu-test,cli-cpu-test.1-devices.gang,cli-cpu-test.2-devices,cli-cpu-test.2-devices.gang"
        ), "one- and two-device jobs (and gangs of such nodes), not more"
        assert [(device["kind"], device["processes"]) for device in row.devices] == [("cpu", 2)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_gpus_per_worker_must_divide_the_gpus(run):
    result = run("worker", "--gpus", "0,1,2", "--gpus-per-worker", "2")
    assert result.returncode == 1
    assert "--gpus-per-worker 2 does not divide the 3 GPUs (0, 1, 2)" in result.stderr


def test_token_create_without_a_database_says_so_in_one_line_and_creates_nothing(run, tmp_path, monkeypatch):
    """Run outside the directory `tunelab serve` uses: no embedded database there yet."""
    missing = tmp_path / "elsewhere" / "data"
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(missing))
    monkeypatch.delenv("TUNELAB_DATABASE_URL")

    result = run("token", "create", "ada@example.com")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"no tunelab database at {missing / 'tunelab.db'}" in result.stderr
    assert not missing.exists(), "no empty database (nor its folder) may be left behind"


def test_user_create_on_an_unmigrated_database_asks_for_migrate(run, tmp_path, monkeypatch):
    empty = tmp_path / "empty.db"
    empty.touch()
    monkeypatch.setenv("TUNELAB_DATABASE_URL", f"sqlite:///{empty}")

    result = run("user", "create", "ada@example.com", "--password", "a long password", "--team", "t")

    assert result.returncode == 1
    assert result.stderr == "Error: the database schema is not up to date: run `tunelab migrate` first\n"
