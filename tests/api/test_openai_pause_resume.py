"""OpenAI's pause and resume, driven by the official `openai` package against the app served
by uvicorn and a real worker: a paused job stops at its next step with a checkpoint there, and
resumed, continues the same loss curve with no gap and no duplicate step."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.helpers import TINY_MODEL, chat_rows, jsonl, wait_for

MAX_STEPS = 60


@pytest.fixture
def member(make_account, redis_broker):
    return make_account(team="acme", role="member")


def _state(member, job_id: str) -> dict:
    return member.client.get(f"/api/jobs/{job_id.removeprefix('ftjob-')}").json()


def test_a_paused_job_keeps_its_checkpoint_and_resumes_the_same_curve(member, live_server, workers):
    workers.start()
    client = OpenAI(base_url=f"{live_server}/v1", api_key=member.token, max_retries=0, timeout=60)
    uploaded = client.files.create(file=("colours.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL,
        training_file=uploaded.id,
        hyperparameters={"batch_size": 4},
        extra_body={
            "queue": workers.queue,
            "max_steps": MAX_STEPS,
            "save_steps": 1000,  # no checkpoint but the one the pause makes
            "logging_steps": 1,
            "max_seq_length": 128,
        },
    )
    wait_for(lambda: _state(member, job.id)["step"] >= 3, timeout=240, message="step 3")

    pausing = client.fine_tuning.jobs.pause(job.id)
    assert pausing.status == "paused" and pausing.id == job.id
    paused = wait_for(lambda: (j := _state(member, job.id))["state"] == "paused" and j, timeout=120, message="paused")
    step = paused["step"]
    assert 3 <= step < MAX_STEPS and paused["finished_at"] is None
    checkpoints = member.client.get(f"/api/jobs/{paused['id']}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == [step], "a checkpoint at the step it stopped at"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "succeeded" and j, timeout=300)
    assert done.error is None and done.fine_tuned_model is not None

    job_id = paused["id"]
    train = member.client.get(f"/api/jobs/{job_id}/metrics", params={"split": "train"}).json()
    assert [point["step"] for point in train] == list(range(1, MAX_STEPS + 1)), "no gap, no duplicate"
    events = [e["message"] for e in member.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]
    assert f"Job paused at step {step}; resuming continues from the checkpoint there" in events
    assert f"Resumed by {member.email}: training continues from the checkpoint at step {step}" in events
    assert any(
        message.startswith("Training resumed on ") and message.endswith(f"from step {step}") for message in events
    )
    assert f"Resuming from the checkpoint at step {step}" in events
    assert _state(member, job.id)["attempts"] == 1, "a user's resume starts the attempts afresh"
