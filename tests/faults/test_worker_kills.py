"""SIGKILL of the worker at a random step (several seeds, checkpoints or not yet): the job
resumes on a new worker and ends with one continuous loss series, counted as one crash."""

from __future__ import annotations

import random

import pytest

from tests.helpers import add_dataset, chat_rows, tiny_spec, wait_for

MAX_STEPS = 24


@pytest.fixture
def member(make_account, redis_broker):
    return make_account(team="acme", role="member")


def _job(account, job_id: int) -> dict:
    return account.client.get(f"/api/jobs/{job_id}").json()


@pytest.mark.parametrize("seed", [2, 11])  # step 2 (before the first checkpoint) and 15
def test_a_worker_killed_at_a_random_step_loses_and_duplicates_nothing(seed, member, db, workers):
    kill_after = random.Random(seed).randint(1, MAX_STEPS - 4)
    first = workers.start()
    dataset = add_dataset(db, member, chat_rows())
    body = {"spec": tiny_spec(max_steps=MAX_STEPS, save_steps=4), "dataset_id": dataset.id, "queue": workers.queue}
    job_id = member.client.post("/api/jobs", json=body).json()["id"]
    wait_for(lambda: _job(member, job_id)["step"] >= kill_after, timeout=240, message=f"step {kill_after}")
    workers.kill(first)

    workers.start()
    job = wait_for(
        lambda: (j := _job(member, job_id))["state"] in ("succeeded", "failed", "cancelled") and j,
        timeout=300,
        message="the resumed job to finish",
    )
    assert job["state"] == "succeeded", job["error"]
    assert job["step"] == MAX_STEPS and job["attempts"] == 2
    train = member.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()
    assert [point["step"] for point in train] == list(range(1, MAX_STEPS + 1)), "no gap, no duplicate"
    events = [e["message"] for e in member.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]
    assert sum(message.startswith("Worker lost") for message in events) == 1
    assert events[-1] == f"Job succeeded after {MAX_STEPS} steps"
    checkpoints = [c["step"] for c in member.client.get(f"/api/jobs/{job_id}/checkpoints").json()]
    assert checkpoints and checkpoints[-1] == MAX_STEPS
