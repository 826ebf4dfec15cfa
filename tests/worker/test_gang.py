"""One job on several workers (num_nodes > 1): two worker processes on this machine, each owning one
CPU process, meet through torchrun's c10d rendezvous on localhost and train one job of two ranks;
a gang that cannot form sends its job back to the queue, saying why."""

from __future__ import annotations

import os
import platform
import signal

import psutil
import pytest
from sqlalchemy import select

from tests.helpers import add_dataset, chat_rows, tiny_spec, wait_for


@pytest.fixture
def acme(make_account, redis_broker):
    return make_account(team="acme", role="member")


@pytest.fixture
def gang_settings(monkeypatch):
    """The workers (started after this) lead their gangs on localhost, with a short timeout."""

    def configure(timeout_s: float) -> None:
        monkeypatch.setenv("TUNELAB_RENDEZVOUS_HOST", "127.0.0.1")
        monkeypatch.setenv("TUNELAB_GANG_TIMEOUT_S", str(timeout_s))

    return configure


def _launch(account, db, workers, **spec) -> int:
    dataset = add_dataset(db, account, chat_rows())
    body = {"spec": tiny_spec(**spec), "dataset_id": dataset.id, "queue": workers.queue}
    response = account.client.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _job(account, job_id) -> dict:
    return account.client.get(f"/api/jobs/{job_id}").json()


def _finished(account, job_id):
    job = _job(account, job_id)
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _events(account, job_id) -> list[dict]:
    return account.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()


def _workers_running(db, job_id: int) -> int:
    from app.core.tables import WorkerProcess

    db.expire_all()
    return sum(row.current_job_id == job_id for row in db.scalars(select(WorkerProcess)))


def test_a_two_worker_gang_forms_over_localhost_and_trains(acme, db, workers, gang_settings):
    gang_settings(timeout_s=120)
    workers.start(devices=1)
    workers.start(devices=1)
    job_id = _launch(acme, db, workers, max_steps=8, batch_size=2, num_nodes=2, num_devices=1)

    wait_for(lambda: _workers_running(db, job_id) == 2, timeout=120, message="both workers to show the job")
    job = wait_for(lambda: _finished(acme, job_id), timeout=300, message="the gang's job")
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1

    points = acme.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()
    assert [point["step"] for point in points] == list(range(1, 9)), "rank 0 alone reports: each step once"
    assert all("tokens_per_second_rank1" in point["values"] for point in points), "both ranks' figures"

    events = _events(acme, job_id)
    assert any(e["message"].startswith("Forming a gang of 2 workers with 1 CPU process each") for e in events)
    (start,) = [e for e in events if e["message"].startswith("Training on 2 nodes x 1 CPU process with DDP")]
    where = start["data"]["placement"]
    assert where["world_size"] == 2 and where["parallelism"] == "ddp"
    assert [node["hostname"] for node in where["nodes"]] == [platform.node(), platform.node()]
    assert all(len(node["devices"]) == 1 for node in where["nodes"])
    assert [name.split(" · ")[1].split(":")[0] for name in where["devices"]] == ["CPU process 0", "CPU process 0"]
    assert sum(e["message"].startswith("Loaded model") for e in events) == 1, "only rank 0 tells"
    wait_for(lambda: _workers_running(db, job_id) == 0, timeout=30, message="both workers to be free again")


def test_a_gang_that_cannot_form_goes_back_to_the_queue_saying_why(acme, db, workers, gang_settings):
    gang_settings(timeout_s=4)
    worker = workers.start(devices=1)
    job_id = _launch(acme, db, workers, max_steps=8, num_nodes=2, num_devices=1)

    def gave_up():
        return [e for e in _events(acme, job_id) if e["message"].startswith("The gang did not form")]

    (event, *_) = wait_for(gave_up, timeout=120, message="the gang to be given up")
    assert event["message"].startswith(
        "The gang did not form: only 1 of 2 workers joined within 4 s; each of them needs 1 CPU process free"
    ), event["message"]
    assert event["message"].endswith("The job goes back to the queue")
    job = _job(acme, job_id)
    assert job["state"] in ("queued", "running") and job["error"] is None, "it waits for workers: no failure"

    # The worker is not stuck: it takes the job again, and a cancel reaches it, forming or queued.
    response = acme.client.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    job = wait_for(lambda: _finished(acme, job_id), timeout=60, message="the cancel")
    assert job["state"] == "cancelled"
    assert worker.poll() is None, "the worker lives on"
    wait_for(lambda: _workers_running(db, job_id) == 0, timeout=30, message="the worker to be free again")


def _follower_ranks(worker) -> list[psutil.Process]:
    """The ranks a worker runs as a gang's follower: those of its torchrun that does not host the rendezvous."""
    found = []
    for process in psutil.Process(worker.pid).children(recursive=True):
        try:
            command = process.cmdline()
            if "torch.distributed.run" in command and any("is_host=false" in part for part in command):
                found += [child for child in process.children() if "worker.distributed_job" in child.cmdline()]
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_follower_rank_killed_mid_job_ends_the_gang_and_the_job_resumes(acme, db, workers, gang_settings):
    gang_settings(timeout_s=120)
    pool = [workers.start(devices=1), workers.start(devices=1)]
    job_id = _launch(acme, db, workers, max_steps=16, save_steps=4, batch_size=2, num_nodes=2, num_devices=1)
    wait_for(
        lambda: len(acme.client.get(f"/api/jobs/{job_id}/checkpoints").json()) >= 2,
        timeout=300,
        message="two checkpoints",
    )
    ranks = [rank for worker in pool for rank in _follower_ranks(worker)]
    assert len(ranks) == 1, "one follower, running one rank"
    os.kill(ranks[0].pid, signal.SIGKILL)

    job = wait_for(lambda: _finished(acme, job_id), timeout=400, message="the resumed job to finish")
    assert job["state"] == "succeeded", job["error"]
    assert job["step"] == 16 and job["attempts"] == 2
    points = acme.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()
    assert [point["step"] for point in points] == list(range(1, 17)), "one continuous series"
    messages = [e["message"] for e in _events(acme, job_id)]
    assert any(m.startswith("Resuming from the checkpoint at step") for m in messages)
    assert sum(m.startswith("Training on 2 nodes") for m in messages) == 2, "the gang formed again"


def test_cancel_stops_the_ranks_on_every_node(acme, db, workers, gang_settings):
    gang_settings(timeout_s=120)
    pool = [workers.start(devices=1), workers.start(devices=1)]
    job_id = _launch(acme, db, workers, max_steps=5000, save_steps=5, batch_size=2, num_nodes=2, num_devices=1)
    wait_for(lambda: _job(acme, job_id)["step"] >= 3, timeout=240, message="training on two nodes")
    assert sum(len(_follower_ranks(worker)) for worker in pool) == 1
    cancel = acme.client.post(f"/api/jobs/{job_id}/cancel").json()
    job = wait_for(lambda: _finished(acme, job_id), timeout=120, message="the cancel")
    assert job["state"] == "cancelled"
    assert cancel["step"] <= job["step"] <= cancel["step"] + 1, "every rank, on both nodes, stopped within a step"
    wait_for(lambda: not any(_follower_ranks(worker) for worker in pool), timeout=30, message="the follower's rank")
    wait_for(lambda: _workers_running(db, job_id) == 0, timeout=30, message="both workers to be free again")
    assert all(worker.poll() is None for worker in pool)
