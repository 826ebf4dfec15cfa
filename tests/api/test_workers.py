"""GET /api/workers, the Workers page, the dashboard's GPU counts, the queue warning of a job no
live worker would take, and the memory estimate against the workers' GPUs.

The workers here are heartbeat rows written by the real heartbeat code (`worker.heartbeat`)
with GPU readings in NVML's shape, so that GPUs, hosts and ages can be chosen; the tests with
real Celery worker processes are in tests/worker/test_workers_live.py."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
import redis

from app.core.tables import JobState, WorkerProcess, utcnow
from app.core.worker_registry import set_current_job
from tests.helpers import TINY_MODEL, add_dataset, add_job, chat_rows, tiny_spec
from worker.devices import GpuReading, cpu_entry, gpu_entries
from worker.heartbeat import Heartbeat

GIB = 1024**3


@pytest.fixture
def acme(make_account, redis_broker):
    return make_account(team="acme", role="member")


@pytest.fixture
def globex(make_account, redis_broker):
    return make_account(team="globex", role="member")


@pytest.fixture
def queue_name(redis_url):
    """A queue of this test's own, emptied from Redis afterwards."""
    name = f"nobody-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(redis_url).delete(name)


def _gpu(index: int, name: str, total_gib: float, used_gib: float = 1, uuid_: str | None = None) -> GpuReading:
    return GpuReading(index, name, uuid_ or f"GPU-{uuid.uuid4()}", int(used_gib * GIB), int(total_gib * GIB), 12)


def _worker(db, queues: str, gpus: list[GpuReading] = (), *, host: str | None = None, seen_ago_s: float = 0):
    """A worker's heartbeat row, as `Heartbeat.beat` writes it, on `host`, last seen `seen_ago_s` ago."""
    name = f"test-{uuid.uuid4().hex[:8]}@host"
    Heartbeat(name, queues, devices=lambda: gpu_entries(list(gpus)) or [cpu_entry()]).beat()
    db.expire_all()
    row = db.query(WorkerProcess).filter_by(name=name).one()
    row.hostname = host or row.hostname
    row.pid = 100_000 + row.id  # each its own process, as real workers are
    row.last_seen_at = utcnow() - timedelta(seconds=seen_ago_s)
    db.commit()
    return row


def _runs(db, worker: WorkerProcess, job_id: int | None) -> None:
    set_current_job(db, hostname=worker.hostname, pids=(worker.pid,), job_id=job_id)
    db.commit()


def _launch(account, db, queue: str):
    dataset = add_dataset(db, account, chat_rows(6))
    response = account.client.post("/api/jobs", json={"spec": tiny_spec(), "dataset_id": dataset.id, "queue": queue})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_job_no_live_worker_would_take_is_accepted_with_a_warning_that_goes_when_one_starts(acme, db, queue_name):
    job = _launch(acme, db, queue_name)
    assert job["state"] == "queued"
    assert f"tunelab worker --queues {queue_name}" in job["warning"]
    assert acme.client.get(f"/api/jobs/{job['id']}").json()["warning"] == job["warning"]
    page = acme.client.get(f"/jobs/{job['id']}").text
    assert 'id="job-queue-warning"' in page and f"tunelab worker --queues {queue_name}" in page
    queues = {q["name"]: q for q in acme.client.get("/api/workers").json()["queues"]}
    assert queues[queue_name] == {"name": queue_name, "waiting": 1, "workers": 0}

    worker = _worker(db, f"default,{queue_name}")  # a worker for the queue starts: the job is still queued
    again = acme.client.get(f"/api/jobs/{job['id']}").json()
    assert again["state"] == "queued" and again["warning"] is None
    listed = acme.client.get("/api/jobs").json()["data"]
    assert [(j["id"], j["state"], j["warning"]) for j in listed] == [(job["id"], "queued", None)]
    assert 'id="job-queue-warning"' not in acme.client.get(f"/jobs/{job['id']}").text
    queues = {q["name"]: q for q in acme.client.get("/api/workers").json()["queues"]}
    assert queues[queue_name]["workers"] == 1

    worker.last_seen_at = utcnow() - timedelta(minutes=10)  # and goes silent
    db.commit()
    assert queue_name in acme.client.get(f"/api/jobs/{job['id']}").json()["warning"]


def test_the_warning_comes_with_openais_job_object_too(acme, db, queue_name):
    dataset = add_dataset(db, acme, chat_rows(6))
    body = {"model": TINY_MODEL, "training_file": f"file-{dataset.id}", "queue": queue_name}
    created = acme.client.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    assert f"tunelab worker --queues {queue_name}" in created.json()["warning"]
    assert created.json()["status"] == "queued"
    _worker(db, queue_name)
    assert acme.client.get(f"/v1/fine_tuning/jobs/{created.json()['id']}").json()["warning"] is None


def test_a_job_on_a_served_queue_gets_no_warning(acme, db, queue_name):
    _worker(db, queue_name)
    assert _launch(acme, db, queue_name)["warning"] is None


def test_workers_are_listed_with_their_devices_and_silent_ones_marked_stale_not_hidden(acme, db):
    live = _worker(db, "default", [_gpu(0, "NVIDIA H100 80GB HBM3", 80, used_gib=3)], host="gpu-box-1")
    silent = _worker(db, "a100", host="cpu-box", seen_ago_s=600)
    _worker(db, "default", host="long-gone", seen_ago_s=3 * 86400)  # killed days ago: its row is forgotten

    body = acme.client.get("/api/workers").json()
    workers = {w["name"]: w for w in body["workers"]}
    assert set(workers) == {live.name, silent.name}
    assert workers[live.name]["stale"] is False and workers[silent.name]["stale"] is True
    assert workers[live.name]["hostname"] == "gpu-box-1" and workers[live.name]["queues"] == ["default"]
    (gpu,) = workers[live.name]["devices"]
    assert gpu["kind"] == "gpu" and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert (gpu["memory_used_bytes"], gpu["memory_total_bytes"], gpu["utilization_percent"]) == (3 * GIB, 80 * GIB, 12)
    (cpu,) = workers[silent.name]["devices"]
    assert cpu["kind"] == "cpu" and cpu["cores"] == os.cpu_count()
    # Only live workers serve a queue: nobody takes from a100 now.
    assert {q["name"]: q["workers"] for q in body["queues"]} == {"default": 1}
    assert body["gpus"] == {"total": 1, "busy": 0, "free": 1}


def test_the_job_a_worker_runs_is_named_for_its_team_and_only_busy_for_another(acme, globex, db):
    job = add_job(db, acme, JobState.running, name="acme secret project")
    worker = _worker(db, "default", [_gpu(0, "NVIDIA L4", 24)])
    _runs(db, worker, job.id)

    (ours,) = acme.client.get("/api/workers").json()["workers"]
    assert ours["busy"] is True and ours["job"] == {"id": job.id, "name": "acme secret project"}
    assert ours["busy_since"] is not None

    theirs = globex.client.get("/api/workers")
    (seen,) = theirs.json()["workers"]
    assert seen["busy"] is True and seen["job"] is None
    assert "acme secret project" not in theirs.text
    assert "acme secret project" not in globex.client.get("/workers").text
    assert "acme secret project" in acme.client.get("/workers").text

    _runs(db, worker, None)  # the job finished
    (idle,) = acme.client.get("/api/workers").json()["workers"]
    assert idle["busy"] is False and idle["job"] is None and idle["busy_since"] is None


def test_a_worker_row_left_pointing_at_a_finished_job_is_not_busy(acme, db):
    job = add_job(db, acme, JobState.succeeded)
    _runs(db, _worker(db, "default"), job.id)  # e.g. its process was killed before it could clear the row
    assert acme.client.get("/api/workers").json()["workers"][0]["busy"] is False


def test_the_dashboard_counts_each_machines_gpus_once_free_or_busy(acme, db):
    box_gpus = [_gpu(0, "NVIDIA A100-SXM4-80GB", 80), _gpu(1, "NVIDIA A100-SXM4-80GB", 80)]
    trainer = _worker(db, "default", box_gpus[:1], host="box")
    _worker(db, "default", box_gpus[1:], host="box")
    _worker(db, "inference", box_gpus, host="box")  # sees both GPUs of the box, counted once
    _worker(db, "default", [_gpu(0, "NVIDIA L4", 24)], host="other-box")
    _worker(db, "default", [_gpu(0, "NVIDIA L4", 24)], host="dead-box", seen_ago_s=600)  # stale: not counted
    _runs(db, trainer, add_job(db, acme, JobState.running).id)

    assert acme.client.get("/api/workers").json()["gpus"] == {"total": 3, "busy": 1, "free": 2}
    assert "2 GPUs free · 1 busy" in acme.client.get("/").text


def test_the_dashboard_says_when_no_gpu_worker_is_live(acme, db):
    _worker(db, "default")  # a CPU worker
    assert "No GPU worker live" in acme.client.get("/").text


def test_the_memory_estimate_compares_with_the_gpus_the_workers_have(acme, db):
    estimate = acme.client.post("/api/jobs/estimate", json={"spec": tiny_spec()}).json()
    assert estimate["gpus_from"] == "common sizes" and len(estimate["fits"]) == 4, "no worker reports a GPU"

    _worker(db, "default", [_gpu(0, "NVIDIA H100 80GB HBM3", 80), _gpu(1, "NVIDIA H100 80GB HBM3", 80)])
    _worker(db, "small", [_gpu(0, "Tiny Test GPU", 0.5)])  # less than the CUDA context alone
    _worker(db, "default", [_gpu(0, "NVIDIA B200", 180)], seen_ago_s=600)  # gone: not a choice
    estimate = acme.client.post("/api/jobs/estimate", json={"spec": tiny_spec()}).json()
    assert estimate["gpus_from"] == "workers"
    assert [(fit["gpu"], fit["fits"]) for fit in estimate["fits"]] == [
        ("Tiny Test GPU (0.5 GiB), on the workers", False),
        ("NVIDIA H100 80GB HBM3 (80 GiB) × 2, on the workers", True),
    ]


def test_the_workers_page_needs_a_signed_in_user(client, db):
    assert client.get("/api/workers").status_code == 401
    assert client.get("/workers", follow_redirects=False).status_code in (302, 303)


def test_queue_lengths_come_from_the_embedded_broker_too(make_account, models_env, db):
    from app.config import get_settings
    from app.core.queue import queue_length

    assert get_settings().embedded_broker, "no TUNELAB_BROKER_URL: the embedded broker"
    member = make_account(team="acme", role="member")
    assert queue_length("never-used") == 0
    dataset = add_dataset(db, member, chat_rows(6))
    for _ in range(2):
        body = {"spec": tiny_spec(), "dataset_id": dataset.id, "queue": "embedded-q"}
        assert member.client.post("/api/jobs", json=body).status_code == 201
    queues = {q["name"]: q for q in member.client.get("/api/workers").json()["queues"]}
    assert queues["embedded-q"] == {"name": "embedded-q", "waiting": 2, "workers": 0}
